"""Typed settings, decoded once from a YAML file.

A bad file fails at startup with a `ConfigError` naming the file, the field path and what was
expected. Secrets are never written in the file itself: ``${VAR}`` (or ``${VAR:-default}``)
expands from the environment when the file is loaded.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml

EMBEDDED = "embedded"
"""`base_url` value that selects the built-in upstream, started inside the gateway process."""

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9-]+$")
_MSGSPEC_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")

PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


_ENUMS = {"level": ("debug", "info", "warning", "error"), "format": ("json", "console")}


class ConfigError(Exception):
    """The configuration file is unusable; the message says where and why."""


class ProviderSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """One upstream provider speaking the OpenAI Responses API."""

    base_url: str
    """Root of the provider's API including the version, e.g. ``https://api.openai.com/v1``;
    ``embedded`` for the built-in upstream."""
    api_key: str | None = None
    """Sent upstream as ``Authorization: Bearer``; expand it from the environment."""
    drop_fields: tuple[str, ...] = ()
    """Top-level request fields removed before forwarding (OpenAI rejects ``stop`` and
    ``stream_options.include_usage`` on /v1/responses: list ``stop`` and ``stream_options``)."""
    headers: dict[str, str] = msgspec.field(default_factory=dict)
    """Extra headers sent with every upstream request (e.g. ``OpenAI-Organization``)."""
    connect_timeout: PositiveFloat = 5.0
    """Seconds to open a connection before answering 502."""
    read_timeout: PositiveFloat = 600.0
    """Longest silence from the upstream, in seconds: before its response headers (the client
    gets 504) and between two chunks of its body (the stream is cut, visibly)."""
    max_connections: Annotated[int, msgspec.Meta(ge=1)] = 1024
    """Most connections open to this provider at once; further requests queue."""
    idle_timeout: PositiveFloat = 4.0
    """Seconds an idle keep-alive connection is kept for reuse; below the provider's own
    keep-alive timeout (uvicorn-based servers such as vLLM close after 5 s)."""


class ModelSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A model clients may ask for, and the provider that serves it."""

    name: Annotated[str, msgspec.Meta(min_length=1)]
    """What clients send as ``model``."""
    provider: str
    """Key of an entry under ``providers``."""
    upstream_model: str | None = None
    """The name the provider knows, when it differs from ``name``."""
    owned_by: str | None = None
    """``owned_by`` in ``/v1/models``; defaults to the provider's key."""
    created: int = 0
    """``created`` (unix seconds) in ``/v1/models``."""


class ServerSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The listening socket and request limits."""

    host: str = "127.0.0.1"
    """Interface to bind; ``--host`` overrides it."""
    port: Port = 8080
    """TCP port; ``--port`` overrides it."""
    max_body_bytes: Annotated[int, msgspec.Meta(ge=1)] = 10 * 1024 * 1024
    """Largest request body accepted, with or without ``Content-Length`` (413 beyond)."""


class LoggingSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Where and how the canonical request lines are written."""

    level: Literal["debug", "info", "warning", "error"] = "info"
    """Lowest level written."""
    format: Literal["json", "console"] = "json"
    """``json``: one object per line on stdout; ``console``: for people at a terminal."""


class Settings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Everything the gateway reads from its configuration file."""

    providers: dict[str, ProviderSettings]
    models: tuple[ModelSettings, ...]
    server: ServerSettings = ServerSettings()
    logging: LoggingSettings = LoggingSettings()
    source: str = "<built-in>"
    """Where these settings came from, for messages."""


def load_settings(path: str | Path, environ: dict[str, str] | None = None) -> Settings:
    """Read, expand and validate a configuration file."""
    path = Path(path)
    env = dict(os.environ) if environ is None else environ
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the configuration file: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: the configuration file is not UTF-8 text") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with `providers` and `models` at the top")
    raw = _expand(raw, env, path, "")
    raw["source"] = str(path)
    return settings_from_dict(raw, str(path))


def settings_from_dict(raw: dict[str, Any], source: str) -> Settings:
    """Validate an already expanded mapping; `source` names it in errors."""
    providers = raw.get("providers")
    if isinstance(providers, dict):
        # Checked one by one first: msgspec names a dict entry `[...]`, not by its key.
        for name, provider in providers.items():
            try:
                msgspec.convert(provider, ProviderSettings, strict=True)
            except msgspec.ValidationError as exc:
                raise ConfigError(_describe(source, str(exc), f"providers.{name}")) from exc
    try:
        settings = msgspec.convert(raw, Settings, strict=True)
    except msgspec.ValidationError as exc:
        raise ConfigError(_describe(source, str(exc))) from exc
    _check_references(settings, source)
    return settings


def _describe(source: str, message: str, prefix: str = "") -> str:
    match = _MSGSPEC_PATH.search(message)
    field = ""
    if match:
        message = message[: match.start()]
        field = match.group("path").lstrip(".")
    if prefix:
        field = f"{prefix}.{field}" if field else prefix
    message = message[0].lower() + message[1:]
    if message.startswith("invalid enum value"):
        allowed = _ENUMS.get(field.rsplit(".", 1)[-1])
        if allowed:
            message = f"expected one of {', '.join(allowed)}, got {message.split(' ', 3)[3]}"
    return f"{source}: {field or '(top level)'}: {message}"


def _check_references(settings: Settings, source: str) -> None:
    if not settings.models:
        raise ConfigError(f"{source}: models: expected at least one model")
    seen: set[str] = set()
    for index, model in enumerate(settings.models):
        if model.provider not in settings.providers:
            known = ", ".join(sorted(settings.providers)) or "none"
            raise ConfigError(
                f"{source}: models[{index}].provider: expected one of the keys under "
                f"`providers` ({known}), got `{model.provider}`"
            )
        if model.name in seen:
            raise ConfigError(f"{source}: models[{index}].name: `{model.name}` is listed twice")
        seen.add(model.name)
    for name, provider in settings.providers.items():
        for header, value in provider.headers.items():
            if not _HEADER_NAME.match(header) or "\r" in value or "\n" in value:
                raise ConfigError(
                    f"{source}: providers.{name}.headers.{header}: expected a header name "
                    "(letters, digits, -) and a value on one line"
                )
        url = provider.base_url
        if url != EMBEDDED and not re.match(r"^https?://[^/\s]+", url):
            raise ConfigError(
                f"{source}: providers.{name}.base_url: expected an http(s) URL or "
                f"`{EMBEDDED}`, got `{url}`"
            )


def _expand(node: Any, env: dict[str, str], path: Path, where: str) -> Any:
    """Replace ${VAR} references in every string of the tree."""
    if isinstance(node, dict):
        return {
            k: _expand(v, env, path, f"{where}.{k}" if where else str(k)) for k, v in node.items()
        }
    if isinstance(node, list):
        return [_expand(v, env, path, f"{where}[{i}]") for i, v in enumerate(node)]
    if isinstance(node, str) and "${" in node:

        def substitute(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in env:
                return env[name]
            if default is not None:
                return default
            raise ConfigError(
                f"{path}: {where}: expected the environment variable {name} to be set"
            )

        return _ENV_REF.sub(substitute, node)
    return node
