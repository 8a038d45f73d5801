"""A bad configuration stops the gateway at startup, naming the file, the field and the fix."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from gateway.settings import ConfigError, load_settings
from tests.support.procs import ROOT, python_module

GOOD = """
providers:
  openai:
    base_url: https://api.openai.com/v1
    api_key: ${OPENAI_API_KEY}
redis:
  url: embedded
models:
  - name: gpt-4.1-mini
    provider: openai
"""


def _load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    load_settings(path, environ=env if env is not None else {"OPENAI_API_KEY": "sk-x"})


BAD: dict[str, tuple[str, list[str]]] = {
    "yaml": ("providers: [\n", ["invalid YAML"]),
    "not_mapping": ("- 1\n- 2\n", ["expected a mapping"]),
    "base_url_missing": (
        "providers: {openai: {api_key: k}}\nmodels: [{name: m, provider: openai}]\n",
        ["providers.openai", "missing required field `base_url`"],
    ),
    "base_url_not_url": (
        "providers: {openai: {base_url: api.openai.com}}\nmodels: [{name: m, provider: openai}]\n",
        ["providers.openai.base_url", "expected an http(s) URL"],
    ),
    "base_url_type": (
        "providers: {openai: {base_url: 42}}\nmodels: [{name: m, provider: openai}]\n",
        ["providers.openai.base_url", "expected `str`, got `int`"],
    ),
    "unknown_field": (
        "providers: {openai: {bse_url: x}}\nmodels: []\n",
        ["providers.openai", "unknown field `bse_url`"],
    ),
    "unknown_provider": (
        GOOD + "  - name: other\n    provider: opena\n",
        ["models[1].provider", "opena", "openai"],
    ),
    "duplicate_model": (
        GOOD + "  - name: gpt-4.1-mini\n    provider: openai\n",
        ["models[1].name", "listed twice"],
    ),
    "no_models": (
        "providers: {openai: {base_url: 'http://x'}}\nmodels: []\n",
        ["models", "at least one model"],
    ),
    "negative_timeout": (
        GOOD.replace("api_key: ${OPENAI_API_KEY}", "read_timeout: -1"),
        ["providers.openai.read_timeout", "> 0"],
    ),
    "port": (GOOD + "server: {port: 70000}\n", ["server.port", "<= 65535"]),
    "log_format": (GOOD + "logging: {format: xml}\n", ["logging.format", "json", "console"]),
    "header_injection": (
        GOOD.replace("api_key: ${OPENAI_API_KEY}", 'headers: {X-Team: "a\\r\\nHost: evil"}'),
        ["providers.openai.headers.X-Team", "one line"],
    ),
    "redis_policy": (
        GOOD.replace("url: embedded", "{url: embedded, on_failure: ignore}"),
        ["redis.on_failure", "fail_closed", "fail_open"],
    ),
    "redis_url": (
        GOOD.replace("url: embedded", "url: 'http://user:hunter2@cache:6379'"),
        ["redis.url", "redis://", "//***@cache"],
    ),
    "redis_mode": (
        GOOD.replace("url: embedded", "{url: embedded, mode: clustered}"),
        ["redis.mode", "standalone", "sentinel", "cluster"],
    ),
    "sentinel_without_sentinels": (
        GOOD.replace("url: embedded", "{mode: sentinel}"),
        ["redis.sentinels", "at least one `host:port`"],
    ),
    "sentinel_with_url": (
        GOOD.replace(
            "url: embedded", "{mode: sentinel, url: 'redis://x:6379', sentinels: ['s:26379']}"
        ),
        ["redis.url", "none in sentinel mode"],
    ),
    "sentinel_address": (
        GOOD.replace("url: embedded", "{mode: sentinel, sentinels: ['s:26379', 'no-port']}"),
        ["redis.sentinels[1]", "host:port", "no-port"],
    ),
    "cluster_embedded": (
        GOOD.replace("url: embedded", "{url: embedded, mode: cluster}"),
        ["redis.url", "a node of the Redis Cluster"],
    ),
    "tls_over_unix_socket": (
        GOOD.replace("url: embedded", "{url: 'unix:///run/redis.sock', tls: {}}"),
        ["redis.tls", "unix://"],
    ),
    "tls_cert_without_key": (
        GOOD.replace("url: embedded", "{url: 'rediss://r:6379', tls: {cert_file: /etc/hostname}}"),
        ["redis.tls", "both cert_file and key_file"],
    ),
    "tls_missing_ca": (
        GOOD.replace(
            "url: embedded", "{url: 'rediss://r:6379', tls: {ca_file: /nonexistent/ca.pem}}"
        ),
        ["redis.tls.ca_file", "readable file", "/nonexistent/ca.pem"],
    ),
    "negative_drain": (GOOD + "server: {drain_seconds: -1}\n", ["server.drain_seconds", ">= 0"]),
    "tiny_header_limit": (
        GOOD + "server: {max_header_bytes: 100}\n",
        ["server.max_header_bytes", ">= 1024"],
    ),
    "zero_body_rate": (GOOD + "server: {body_min_rate: 0}\n", ["server.body_min_rate", ">= 1"]),
    "zero_header_timeout": (
        GOOD + "server: {header_timeout: 0}\n",
        ["server.header_timeout", "> 0"],
    ),
    "unknown_default_tier": (
        GOOD + "limits: {default_tier: gold, tiers: {silver: {}}}\n",
        ["limits.default_tier", "silver", "gold"],
    ),
    "key_unknown_tier": (
        GOOD + "auth: {keys: [{id: ci, hash: '" + "a" * 64 + "', user: ci, tier: gold}]}\n",
        ["auth.keys[0].tier", "gold"],
    ),
    "key_bad_hash": (
        GOOD + "auth: {keys: [{id: ci, hash: not-hex, user: ci}]}\n",
        ["auth.keys[0].hash", "matching regex"],
    ),
    "key_cache_too_long": (
        GOOD + "auth: {key_cache_seconds: 5}\n",
        ["auth.key_cache_seconds", "<= 1"],
    ),
    "negative_limit": (
        GOOD + "limits: {tiers: {default: {requests_per_minute: -1}}}\n",
        ["limits.tiers", "requests_per_minute", ">= 0"],
    ),
    "auth_without_redis": (
        GOOD.replace("redis:\n  url: embedded\n", ""),
        ["redis.url", "expected the URL", "auth.enabled: false"],
    ),
    "short_admin_key": (
        GOOD + "auth: {admin_key: short}\n",
        ["auth.admin_key", "length >= 16"],
    ),
    "provider_and_deployments": (
        "providers: {a: {base_url: 'http://x'}}\n"
        "models: [{name: m, provider: a, deployments: [{provider: a}]}]\n",
        ["models[0]", "either `provider`", "not both"],
    ),
    "no_provider": (
        "providers: {a: {base_url: 'http://x'}}\nmodels: [{name: m}]\n",
        ["models[0]", "got neither"],
    ),
    "deployment_unknown_provider": (
        "providers: {a: {base_url: 'http://x'}}\n"
        "models: [{name: m, deployments: [{provider: a}, {provider: b, weight: 2}]}]\n",
        ["models[0].deployments[1].provider", "`b`", "(a)"],
    ),
    "upstream_model_beside_deployments": (
        "providers: {a: {base_url: 'http://x'}}\n"
        "models: [{name: m, upstream_model: u, deployments: [{provider: a}]}]\n",
        ["models[0].upstream_model", "each of `deployments`"],
    ),
    "deployment_weight": (
        "providers: {a: {base_url: 'http://x'}}\n"
        "models: [{name: m, deployments: [{provider: a, weight: 0}]}]\n",
        ["models[0].deployments[0].weight", ">= 1"],
    ),
    "key_never_sent": (
        "providers: {vllm: {base_url: 'http://x', api_key: k, auth: none}}\n"
        "models: [{name: m, provider: vllm}]\n",
        ["providers.vllm.api_key", "auth: none"],
    ),
    "auth_style": (
        "providers: {azure: {base_url: 'http://x', api_key: k, auth: header}}\n"
        "models: [{name: m, provider: azure}]\n",
        ["providers.azure.auth", "bearer, api-key, x-api-key, none"],
    ),
    "sso_missing_audience": (
        GOOD + "auth: {sso: {issuer: i, jwks_url: 'https://x/jwks'}}\n",
        ["auth.sso", "missing required field `audience`"],
    ),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_names_file_and_field(tmp_path: Path, case: str) -> None:
    """Each mistake is reported with the file path, the field path and what was expected."""
    text, fragments = BAD[case]
    with pytest.raises(ConfigError) as failure:
        _load(tmp_path, text)
    message = str(failure.value)
    assert str(tmp_path / "gateway.yaml") in message
    for fragment in fragments:
        assert fragment in message, message


def test_missing_file(tmp_path: Path) -> None:
    """A file that does not exist is named."""
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "absent.yaml")


def test_unset_variable_names_it_and_the_field(tmp_path: Path) -> None:
    """`${VAR}` with VAR unset names the variable and the field that uses it."""
    with pytest.raises(ConfigError) as failure:
        _load(tmp_path, GOOD, env={})
    assert "providers.openai.api_key" in str(failure.value)
    assert "OPENAI_API_KEY" in str(failure.value)


def test_variables_expand(tmp_path: Path) -> None:
    """`${VAR}` takes the environment's value and `${VAR:-default}` falls back to the default."""
    path = tmp_path / "gateway.yaml"
    path.write_text(GOOD.replace("https://api.openai.com/v1", "${BASE:-http://fallback:9/v1}"))
    settings = load_settings(path, environ={"OPENAI_API_KEY": "sk-from-env"})
    assert settings.providers["openai"].api_key == "sk-from-env"
    assert settings.providers["openai"].base_url == "http://fallback:9/v1"
    assert settings.source == str(path)


def test_repository_config_loads() -> None:
    """config/gateway.yaml, the documented example, is valid."""
    env = {"OPENAI_API_KEY": "k", "GATEWAY_ADMIN_KEY": "a-long-enough-admin-key"}
    settings = load_settings(ROOT / "config" / "gateway.yaml", environ=env)
    assert settings.providers["openai"].drop_fields == ("stop", "stream_options")
    assert [m.name for m in settings.models] == ["gpt-4.1-mini", "gpt-4.1", "mock-gpt"]


@pytest.mark.processes  # the only test here that starts one: `gateway serve`
def test_serve_refuses_bad_config(tmp_path: Path) -> None:
    """`gateway serve` with a bad file exits non-zero at once, naming file and field."""
    path = tmp_path / "bad.yaml"
    path.write_text(BAD["unknown_provider"][0])
    done = subprocess.run(  # noqa: S603  (argv built here)
        python_module("gateway", "serve", "--config", str(path)),
        capture_output=True,
        text=True,
        timeout=30,
        env={"OPENAI_API_KEY": "k", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert done.returncode == 2
    assert str(path) in done.stderr
    assert "models[1].provider" in done.stderr


def test_benchmark_configs_load(tmp_path: Path) -> None:
    """`make bench` starts its gateways from these; a config rule they break stops the bench."""
    from bench.run import gateway_configs

    for name, text in gateway_configs(1, 2, "redis://127.0.0.1:3/0").items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        settings = load_settings(path, environ={})
        assert settings.auth.enabled == (name != "open")
        assert settings.ledger.enabled == (name not in ("no-ledger", "twin"))
