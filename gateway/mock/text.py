"""What the mock says, and how it counts tokens.

Tokenizer: a token is a run of word characters (`\\w+`, Unicode-aware) or one other
non-space character, together with the whitespace before it; whitespace at the very end of
a text is one last token of its own:

    re.findall(r"\\s*(?:\\w+|[^\\w\\s])|\\s+", text)

So "héllo wörld 😀 日本語" is ["héllo", " wörld", " 😀", " 日本語"], and the tokens of any text
concatenate back to exactly that text. The answer is streamed one token per delta, hence
`output_tokens` is the number of deltas; `input_tokens` is the sum of the token counts of the
instructions and of every text in the input.
"""

from __future__ import annotations

import re
from typing import Any

_TOKEN = re.compile(r"\s*(?:\w+|[^\w\s])|\s+")
_QUOTED_WORDS = 24  # the reply quotes at most this many words of the question


def tokenize(text: str) -> list[str]:
    """Split `text` into tokens whose concatenation is `text`."""
    return _TOKEN.findall(text)


def count_tokens(text: str) -> int:
    """How many tokens `text` holds."""
    return len(_TOKEN.findall(text))


def input_tokens(body: dict[str, Any]) -> int:
    """Tokens of everything the request gives the model: instructions and every input text."""
    total = 0
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        total += count_tokens(instructions)
    given = body.get("input")
    if isinstance(given, str):
        return total + count_tokens(given)
    for item in given or ():
        if isinstance(item, dict):
            total += count_tokens(item_text(item))
    return total


def item_text(item: dict[str, Any]) -> str:
    """The text of one input item: a message's content, a tool's output or a call's arguments."""
    kind = item.get("type")
    if kind == "function_call_output":
        return _content_text(item.get("output"))
    if kind == "function_call":
        arguments = item.get("arguments")
        return arguments if isinstance(arguments, str) else ""
    return _content_text(item.get("content"))


def _content_text(content: Any) -> str:
    # Content is a string or a list of parts; only parts with text (input_text, output_text)
    # count, images and files are not text.
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def last_user_text(body: dict[str, Any]) -> str:
    """The text of the last user message (the whole input when it is a string)."""
    given = body.get("input")
    if isinstance(given, str):
        return given
    for item in reversed(given or ()):
        if isinstance(item, dict) and item.get("role") == "user":
            return item_text(item)
    return ""


def reply_for(body: dict[str, Any]) -> str:
    """A deterministic answer: it quotes the question, or the tool output it was given."""
    given = body.get("input")
    if isinstance(given, list) and given and isinstance(given[-1], dict):
        last = given[-1]
        if last.get("type") == "function_call_output":
            return f"The tool answered: {item_text(last)[:200]}. That settles it."
    asked = " ".join(last_user_text(body).split()[:_QUOTED_WORDS]) or "nothing"
    return (
        f'You said: "{asked}". This is the mock upstream answering; '
        "every word here is one token of the stream."
    )
