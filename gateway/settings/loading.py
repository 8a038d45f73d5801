"""From a YAML file to `Settings`: read, ``${VAR}`` expansion, validation, cross-field checks.

A bad file fails at startup with a `ConfigError` naming the file, the field path and what was
expected. Secrets are never written in the file itself: ``${VAR}`` (or ``${VAR:-default}``)
expands from the environment when the file is loaded.

msgspec validates the types; its messages are reworded here (`_describe`): a dict entry it names
``[...]`` is named by its key, and a value outside a ``Literal`` gets the allowed values, read
from the type of the field at that path, so no second list of them can go stale.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import msgspec
import yaml

from ..headers import forwardable
from .redis import RedisSettings
from .root import Settings
from .schema import EMBEDDED, ProviderSettings
from .walk import allowed, types_at, value_at

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_HEADER_NAME = re.compile(r"^[A-Za-z0-9-]+$")
_MSGSPEC_PATH = re.compile(r" - at `(?P<key>key` in `)?\$(?P<path>[^`]*)`$")
"""Where msgspec says its error is: ``$.a.b[0]``, or ``key` in `$.a`` for a mapping's key."""


class ConfigError(Exception):
    """The configuration file is unusable; the message says where and why."""


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
    try:
        settings = msgspec.convert(raw, Settings, strict=True)
    except msgspec.ValidationError as exc:
        raise _error(source, raw, Settings, str(exc)) from exc
    _check_references(settings, source)
    return settings


def _error(source: str, raw: Any, root: Any, message: str, prefix: str = "") -> ConfigError:
    """The error msgspec found converting `raw` to `root`. msgspec names an entry of a dict
    ``[...]``: the entries are then converted one by one to find the key of the bad one."""
    match = _MSGSPEC_PATH.search(message)
    head, dict_entry, _ = (match.group("path") if match else "").partition("[...]")
    if dict_entry:
        container, value_types = value_at(raw, head), types_at(root, head + "[...]")
        if isinstance(container, dict) and value_types:
            for key, value in container.items():
                try:
                    msgspec.convert(value, value_types[0], strict=True)
                except msgspec.ValidationError as exc:
                    where = f"{prefix}{head}.{key}".lstrip(".")
                    return _error(source, value, value_types[0], str(exc), where)
    return ConfigError(_describe(source, message, prefix, root))


def _describe(source: str, message: str, prefix: str = "", root: Any = Settings) -> str:
    """msgspec's `message` about converting to `root` (found at `prefix`), reworded to name
    `source` and the field path; a field typed by a ``Literal`` gets its allowed values."""
    path, key = "", False
    match = _MSGSPEC_PATH.search(message)
    if match:
        message, path, key = message[: match.start()], match.group("path"), bool(match["key"])
    field = f"{prefix}{path}".lstrip(".")
    message = message[0].lower() + message[1:]
    values = () if key else allowed(root, path)
    if values:
        shown = ", ".join(values)
        got = re.match(r"invalid enum value (.+)$", message) or re.search(r", got (.+)$", message)
        message = f"expected one of {shown}, got {got[1]}" if got else f"{message} ({shown})"
    if key:
        field = f"{field} (a key)"
    return f"{source}: {field or '(top level)'}: {message}"


def _check_references(settings: Settings, source: str) -> None:
    if not settings.models:
        raise ConfigError(f"{source}: models: expected at least one model")
    seen: set[str] = set()
    known = ", ".join(sorted(settings.providers)) or "none"
    for index, model in enumerate(settings.models):
        where = f"{source}: models[{index}]"
        if (model.provider is None) == (not model.deployments):
            raise ConfigError(
                f"{where}: expected either `provider` (one upstream) or `deployments` (several), "
                f"{'not both' if model.provider is not None else 'got neither'}"
            )
        if model.deployments and model.upstream_model is not None:
            raise ConfigError(
                f"{where}.upstream_model: expected it on each of `deployments`, not on the model"
            )
        for position, deployment in enumerate(model.served_by()):
            if deployment.provider not in settings.providers:
                field = f"deployments[{position}].provider" if model.deployments else "provider"
                raise ConfigError(
                    f"{where}.{field}: expected one of the keys under `providers` ({known}), "
                    f"got `{deployment.provider}`"
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
        _check_forward_headers(name, provider, source)
        if provider.auth == "none" and provider.api_key:
            raise ConfigError(
                f"{source}: providers.{name}.api_key: expected no key with `auth: none` (the "
                "key would never be sent): remove it, or choose how it is sent"
            )
        url = provider.base_url
        if url != EMBEDDED and not re.match(r"^https?://[^/\s]+", url):
            raise ConfigError(
                f"{source}: providers.{name}.base_url: expected an http(s) URL or "
                f"`{EMBEDDED}`, got `{url}`"
            )
    _check_auth(settings, source)
    _check_redis(settings.redis, source)
    ledger = settings.ledger
    if ledger.orphan_seconds < 3 * ledger.checkpoint_seconds:
        raise ConfigError(
            f"{source}: ledger.orphan_seconds: expected at least 3 times ledger.checkpoint_seconds "
            f"({3 * ledger.checkpoint_seconds:g}), got {ledger.orphan_seconds:g}: a running "
            "stream would be taken for one whose replica died"
        )
    if ledger.dedupe_seconds < 10 * ledger.orphan_seconds:
        raise ConfigError(
            f"{source}: ledger.dedupe_seconds: expected at least 10 times ledger.orphan_seconds "
            f"({10 * ledger.orphan_seconds:g}), got {ledger.dedupe_seconds}: a stream's record "
            "and the one written from its save could then both count"
        )


def _check_forward_headers(name: str, provider: ProviderSettings, source: str) -> None:
    fixed = {header.lower() for header in provider.headers}
    for index, header in enumerate(provider.forward_headers):
        where = f"{source}: providers.{name}.forward_headers[{index}]"
        if not _HEADER_NAME.match(header):
            raise ConfigError(
                f"{where}: expected a header name (letters, digits, -), got `{header}`"
            )
        if not forwardable(header):
            raise ConfigError(
                f"{where}: `{header}` is never forwarded: the gateway sets it or withholds it "
                "(credentials, cookies, framing, client addresses)"
            )
        if header.lower() in fixed:
            raise ConfigError(
                f"{where}: `{header}` is also set in providers.{name}.headers, which replaces "
                "the client's: list it in one of them"
            )


def _check_auth(settings: Settings, source: str) -> None:
    tiers = settings.limits.tiers
    if settings.limits.default_tier not in tiers:
        raise ConfigError(
            f"{source}: limits.default_tier: expected one of the keys under `limits.tiers` "
            f"({', '.join(sorted(tiers)) or 'none'}), got `{settings.limits.default_tier}`"
        )
    named = [(f"auth.keys[{i}].tier", k.tier) for i, k in enumerate(settings.auth.keys)]
    if settings.auth.sso is not None:
        named += [(f"auth.sso.tiers.{g}", t) for g, t in settings.auth.sso.tiers.items()]
    for where, tier in named:
        if tier is not None and tier not in tiers:
            raise ConfigError(
                f"{source}: {where}: expected one of the keys under `limits.tiers` "
                f"({', '.join(sorted(tiers))}), got `{tier}`"
            )
    ids = [k.id for k in settings.auth.keys]
    for index, key_id in enumerate(ids):
        if key_id in ids[:index]:
            raise ConfigError(f"{source}: auth.keys[{index}].id: `{key_id}` is listed twice")
    url = settings.redis.url
    if url is None:
        if settings.auth.enabled and settings.redis.mode != "sentinel":
            raise ConfigError(
                f"{source}: redis.url: expected the URL of the Redis that keys and quotas live "
                f"in (redis://host:6379/0), or `{EMBEDDED}` for a private one (demo only), "
                "or auth.enabled: false"
            )
    elif url != EMBEDDED and not re.match(r"^(rediss?|unix)://", url):
        raise ConfigError(
            f"{source}: redis.url: expected a redis://, rediss:// or unix:// URL or "
            f"`{EMBEDDED}`, got `{_redact_url(url)}`"
        )
    elif url == EMBEDDED and settings.server.workers > 1:
        raise ConfigError(
            f"{source}: server.workers: expected 1 with redis.url `{EMBEDDED}` (each worker "
            f"would start a Redis of its own and keep quotas apart), got "
            f"{settings.server.workers}; give a shared redis.url for several workers"
        )


def _check_redis(redis: RedisSettings, source: str) -> None:
    if redis.mode == "sentinel":
        if not redis.sentinels:
            raise ConfigError(
                f"{source}: redis.sentinels: expected at least one `host:port` in sentinel mode"
            )
        if redis.url is not None:
            raise ConfigError(
                f"{source}: redis.url: expected none in sentinel mode (the Sentinels name the "
                "primary: set redis.sentinels, redis.sentinel_master and redis.db)"
            )
    for index, address in enumerate(redis.sentinels):
        if not re.match(r"^([^\s:/\[\]]+|\[[0-9A-Fa-f:.]+\]):\d{1,5}$", address):
            raise ConfigError(
                f"{source}: redis.sentinels[{index}]: expected `host:port`, got `{address}`"
            )
    if redis.mode == "cluster" and redis.url is not None and not redis.url.startswith("redis"):
        raise ConfigError(
            f"{source}: redis.url: expected a node of the Redis Cluster (redis:// or "
            f"rediss://), got `{_redact_url(redis.url)}`"
        )
    tls = redis.tls
    if tls is not None:
        if redis.url is not None and redis.url.startswith("unix://"):
            raise ConfigError(f"{source}: redis.tls: expected none with a unix:// redis.url")
        if (tls.cert_file is None) != (tls.key_file is None):
            raise ConfigError(
                f"{source}: redis.tls: expected both cert_file and key_file, or neither"
            )
        for field in ("ca_file", "cert_file", "key_file"):
            name = getattr(tls, field)
            if name is not None and not (Path(name).is_file() and os.access(name, os.R_OK)):
                raise ConfigError(
                    f"{source}: redis.tls.{field}: expected a readable file, got `{name}`"
                )


def _redact_url(url: str) -> str:
    return re.sub(r"//[^@/]*@", "//***@", url)


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
