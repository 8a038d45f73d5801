"""Usage reports through a real gateway and redis-server: `/admin/usage` sums, a caller's own
`/v1/usage` with what remains of its limits, and `gateway usage export` round trips."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

import httpx
import msgspec
import pytest
import redis

from gateway.ledger.record import UsageRecord
from gateway.ledger.reports import MEASURES, PAGE_ENTRIES, csv_header, csv_line
from tests.support.admin import admin_client, create_key
from tests.support.gateway import ADMIN_KEY, GatewayFactory, eventually
from tests.support.ledger import append_batch, ledger_lines, record_from_csv
from tests.support.procs import ServerProcess
from tests.support.redis_server import RedisServer

pytestmark = pytest.mark.processes  # the `gateway usage` CLI

TOKENS = ("input_tokens", "cached_input_tokens", "output_tokens", "reasoning_tokens")


@pytest.fixture(scope="module")
def reporting(
    gateway_factory: GatewayFactory, redis_server: RedisServer, mock_upstream: ServerProcess
) -> ServerProcess:
    return gateway_factory(
        {
            "providers": {"mock": {"base_url": mock_upstream.url + "/v1", "api_key": "k"}},
            "models": [
                {"name": "mock-gpt", "provider": "mock"},
                {"name": "mock-mini", "provider": "mock", "upstream_model": "mock-gpt"},
            ],
            "redis": {"url": redis_server.url},
            "auth": {"admin_key": "${ADMIN_KEY}"},
            "limits": {
                "default_output_tokens": 100,
                "tiers": {
                    "default": {
                        "requests_per_minute": 50,
                        "tokens_per_minute": 100_000,
                        "tokens_per_day": 1_000_000,
                        "concurrent_requests": 4,
                        "models": {"mock-mini": {"requests_per_minute": 10}},
                    }
                },
            },
        }
    )


def _post(url: str, key: str, model: str, text: str) -> dict[str, Any]:
    response = httpx.post(
        f"{url}/v1/responses",
        json={"model": model, "input": text},
        headers={"authorization": f"Bearer {key}"},
        timeout=15,
    )
    assert response.status_code == 200, response.text
    usage: dict[str, Any] = response.json()["usage"]
    return usage


def _records(client: redis.Redis, users: set[str]) -> list[UsageRecord]:
    found = [msgspec.json.decode(line, type=UsageRecord) for line in ledger_lines(client)]
    return [r for r in found if r.user in users]


def _sum(usages: list[dict[str, Any]]) -> dict[str, int]:
    out = {"requests": len(usages), "total_tokens": sum(u["total_tokens"] for u in usages)}
    out["input_tokens"] = sum(u["input_tokens"] for u in usages)
    out["output_tokens"] = sum(u["output_tokens"] for u in usages)
    out["cached_input_tokens"] = sum(u["input_tokens_details"]["cached_tokens"] for u in usages)
    out["reasoning_tokens"] = sum(u["output_tokens_details"]["reasoning_tokens"] for u in usages)
    return out


@pytest.fixture(scope="module")
def traffic(
    reporting: ServerProcess, redis_server: RedisServer, secrets_seen: list[str]
) -> dict[str, Any]:
    """Two users' requests over two models; returns who sent what, once all is in the ledger."""
    started = time.time()
    alice, bob = f"alice-{uuid.uuid4().hex[:6]}", f"bob-{uuid.uuid4().hex[:6]}"
    _, alice_key = create_key(reporting.url, secrets_seen, user=alice)
    _, bob_key = create_key(reporting.url, secrets_seen, user=bob)
    sent: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for user, key, model, count in (
        (alice, alice_key, "mock-gpt", 3),
        (alice, alice_key, "mock-mini", 2),
        (bob, bob_key, "mock-gpt", 2),
    ):
        sent[(user, model)] = [
            _post(reporting.url, key, model, f"question {i} " * (i + 1)) for i in range(count)
        ]
    client = redis_server.client()
    eventually(lambda: len(_records(client, {alice, bob})) == 7)
    return {
        "alice": alice, "bob": bob, "alice_key": alice_key, "sent": sent,
        "started": started, "ended": time.time(),
    }  # fmt: skip


def _report(url: str, **params: str) -> httpx.Response:
    with admin_client(url) as client:
        return client.get("/admin/usage", params=params)


def test_admin_report_by_model_and_by_user(
    reporting: ServerProcess, traffic: dict[str, Any]
) -> None:
    """`/admin/usage` sums each measure by model, by user and by day as the answers reported."""
    alice, bob, sent = traffic["alice"], traffic["bob"], traffic["sent"]
    by_model = _report(reporting.url, user=alice, group_by="model")
    assert by_model.status_code == 200, by_model.text
    rows = {row["model"]: row for row in by_model.json()["data"]}
    assert set(rows) == {"mock-gpt", "mock-mini"}
    for model in ("mock-gpt", "mock-mini"):
        expected = _sum(sent[(alice, model)])
        assert {m: rows[model][m] for m in MEASURES} == expected
    by_user = _report(reporting.url, model="mock-gpt", group_by="user").json()["data"]
    mine = {row["user"]: row for row in by_user if row["user"] in (alice, bob)}
    assert mine[alice]["requests"] == 3
    assert {m: mine[bob][m] for m in MEASURES} == _sum(sent[(bob, "mock-gpt")])
    today = time.strftime("%Y-%m-%d", time.gmtime())
    by_day = _report(reporting.url, user=bob, group_by="day,model", to=today).json()
    assert by_day["data"] == [{"day": today, "model": "mock-gpt", **_sum(sent[(bob, "mock-gpt")])}]


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"group_by": "week"}, "group_by"),
        ({"group_by": "day,day"}, "group_by"),
        ({"from": "2026-13-01"}, "from"),
        ({"from": "2026-11-20", "to": "2026-11-01"}, "from"),
        ({"from": "2020-01-01", "to": "2026-01-01"}, "from"),
        ({"to": "yesterday"}, "to"),
    ],
)
def test_admin_report_refuses_bad_parameters(
    reporting: ServerProcess, params: dict[str, str], param: str
) -> None:
    """A bad group_by or date range is a 400 naming the parameter, in the OpenAI error shape."""
    response = _report(reporting.url, **params)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert set(error) == {"message", "type", "param", "code"}


def test_admin_usage_needs_the_admin_key(reporting: ServerProcess, traffic: dict[str, Any]) -> None:
    """The usage report and records need the admin key: none or a client key is a 401."""
    for headers in ({}, {"authorization": f"Bearer {traffic['alice_key']}"}):
        for path in ("/admin/usage", "/admin/usage/records?since=0"):
            response = httpx.get(reporting.url + path, headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "invalid_api_key"


def test_a_caller_sees_its_own_usage_and_what_remains(
    reporting: ServerProcess, traffic: dict[str, Any]
) -> None:
    """`/v1/usage` gives a caller its sums today and this month and what remains of each limit."""
    alice, sent = traffic["alice"], traffic["sent"]
    response = httpx.get(
        f"{reporting.url}/v1/usage", headers={"authorization": f"Bearer {traffic['alice_key']}"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["user"] == alice
    everything = sent[(alice, "mock-gpt")] + sent[(alice, "mock-mini")]
    today = {m: body["today"][m] for m in MEASURES}
    assert today == _sum(everything)
    assert body["this_month"]["requests"] == 5  # a new user: this month is today
    assert body["today"]["by_model"]["mock-mini"]["requests"] == 2
    scopes = {s["scope"]: s["limits"] for s in body["limits"]}
    assert set(scopes) == {"user", "model:mock-mini"}
    user = scopes["user"]
    assert time.time() - traffic["started"] < 55, "too slow: the traffic left the last minute"
    assert user["requests_per_minute"] == {"limit": 50, "used": 5, "remaining": 45}
    tokens = sum(u["total_tokens"] for u in everything)  # settled to the real usage
    assert user["tokens_per_minute"]["used"] == tokens
    assert scopes["model:mock-mini"]["requests_per_minute"]["used"] == 2
    assert user["tokens_per_day"]["used"] == sum(u["total_tokens"] for u in everything)
    assert user["concurrent_requests"] == {"limit": 4, "used": 0, "remaining": 4}


def test_v1_usage_needs_a_valid_key(reporting: ServerProcess) -> None:
    """`/v1/usage` without a key or with an unknown one is a 401."""
    for headers in ({}, {"authorization": "Bearer sk-gw-nope_nope"}):
        response = httpx.get(f"{reporting.url}/v1/usage", headers=headers)
        assert response.status_code == 401
        assert response.json()["error"]["code"] == "invalid_api_key"


def _export(url: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "GATEWAY_URL": url, "GATEWAY_ADMIN_KEY": ADMIN_KEY}
    return subprocess.run(  # noqa: S603
        [sys.executable, "-m", "gateway", "usage", "export", *args],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )


def test_export_round_trips_in_jsonl_and_csv(
    reporting: ServerProcess, redis_server: RedisServer, traffic: dict[str, Any]
) -> None:
    """`gateway usage export` gives the stored records in JSONL and CSV, summing to the report."""
    users = {traffic["alice"], traffic["bob"]}
    since, until = str(traffic["started"] - 1), str(traffic["ended"] + 1)
    stored = sorted(_records(redis_server.client(), users), key=lambda r: r.id)
    assert len(stored) == 7
    jsonl = _export(reporting.url, "--since", since, "--until", until)
    assert jsonl.returncode == 0, jsonl.stderr
    lines = jsonl.stdout.decode().splitlines()
    exported = [msgspec.json.decode(line, type=UsageRecord) for line in lines]
    assert sorted((r for r in exported if r.user in users), key=lambda r: r.id) == stored
    assert all(traffic["started"] - 1 <= r.time < traffic["ended"] + 1 for r in exported)
    table = _export(reporting.url, "--since", since, "--until", until, "--format", "csv")
    assert table.returncode == 0, table.stderr
    rows = list(csv.DictReader(io.StringIO(table.stdout.decode())))
    assert [record_from_csv(row) for row in rows] == exported
    # the export's sums are the report's
    by_user = _report(reporting.url, group_by="user").json()["data"]
    for row in (r for r in by_user if r["user"] in users):
        mine = [r for r in exported if r.user == row["user"]]
        assert row["requests"] == len(mine)
        for measure in (*TOKENS, "total_tokens"):
            assert row[measure] == sum(getattr(r, measure) for r in mine)


def test_export_range_and_errors(reporting: ServerProcess, traffic: dict[str, Any]) -> None:
    """The export keeps to its range; a bad --since exits 1 with the HTTP 400, no admin key 2."""
    before = _export(reporting.url, "--since", "2020-01-01", "--until", str(traffic["started"] - 1))
    assert before.returncode == 0
    users = {traffic["alice"], traffic["bob"]}
    assert not [line for line in before.stdout.decode().splitlines()
                if json.loads(line)["user"] in users]  # fmt: skip
    for since in ("-1", "1e300", "0001-01-01"):
        out_of_range = _export(reporting.url, "--since", since)
        assert out_of_range.returncode == 1
        assert b"HTTP 400" in out_of_range.stderr
    bad = _export(reporting.url, "--since", "last tuesday")
    assert bad.returncode == 1
    assert b"HTTP 400" in bad.stderr
    assert b"'since'" in bad.stderr
    no_key = subprocess.run(
        [sys.executable, "-m", "gateway", "usage", "export", "--since", "0"],
        env={k: v for k, v in os.environ.items() if k != "GATEWAY_ADMIN_KEY"},
        capture_output=True,
        check=False,
    )
    assert no_key.returncode == 2
    assert b"GATEWAY_ADMIN_KEY" in no_key.stderr


def test_export_reads_every_batch_across_pages(
    reporting: ServerProcess, redis_server: RedisServer
) -> None:
    """Each stream entry is a batch; the export reads 8 to 128 entries a round trip (fewer the
    larger the batches): batches of 1 to 200 records over several pages all come out, in the
    order written, and records outside the range (before and after) stay out."""
    client, writer = redis_server.client(), uuid.uuid4().hex
    user, now = f"pages-{uuid.uuid4().hex[:6]}", time.time()
    written: list[str] = []
    sizes = [1] * 300 + [200] * 30 + [1, 40, 3] * 20  # pages of 128 entries, then of 10
    for number, size in enumerate(sizes, 1):
        batch = [
            UsageRecord(f"req-{number}-{i}", now + {2: -1000, 3: 1000}.get(i, 0), "completed",
                        200, False, id=uuid.uuid4().hex, user=user, model="mock-gpt")
            for i in range(size)
        ]  # fmt: skip
        assert append_batch(client, writer, number, *batch) == len(batch)
        written += [r.id for r in batch if r.time == now]
    exported = _export(reporting.url, "--since", str(now - 60), "--until", str(now + 60))
    assert exported.returncode == 0, exported.stderr
    lines = [json.loads(line) for line in exported.stdout.decode().splitlines()]
    assert [r["id"] for r in lines if r["user"] == user] == written
    assert len(sizes) > 2 * PAGE_ENTRIES[1]


def test_a_made_up_model_name_never_reaches_the_sums(
    reporting: ServerProcess, redis_server: RedisServer, secrets_seen: list[str]
) -> None:
    """An unknown model (404) is recorded without the client's text: a name with a TAB, or a
    new name per request, must not break the reports or grow the sums."""
    user = f"odd-{uuid.uuid4().hex[:6]}"
    _, key = create_key(reporting.url, secrets_seen, user=user)
    for model in ("no\tsuch\tmodel", f"made-up-{uuid.uuid4().hex}"):
        response = httpx.post(
            f"{reporting.url}/v1/responses",
            json={"model": model, "input": "x"},
            headers={"authorization": f"Bearer {key}"},
        )
        assert response.status_code == 404
    too_long = httpx.post(
        f"{reporting.url}/v1/responses",
        json={"model": "m" * 257, "input": "x"},
        headers={"authorization": f"Bearer {key}"},
    )
    assert too_long.status_code == 400
    assert too_long.json()["error"]["param"] == "model"
    eventually(lambda: len(_records(redis_server.client(), {user})) == 3)
    assert all(r.model is None for r in _records(redis_server.client(), {user}))
    report = _report(reporting.url, user=user, group_by="model")
    assert report.status_code == 200
    assert report.json()["data"] == [{"model": "-", **dict.fromkeys(MEASURES, 0), "requests": 3}]
    mine = httpx.get(f"{reporting.url}/v1/usage", headers={"authorization": f"Bearer {key}"})
    assert mine.status_code == 200
    assert mine.json()["today"]["requests"] == 3


@pytest.mark.parametrize(
    "text",
    ['=HYPERLINK("http://x","y")', "+1+1", "-A1", "@SUM(A1)", "\tx", "\rx", "'", "'=1", "ok-1"],
)
def test_csv_cells_a_spreadsheet_would_run_are_defused_and_read_back(text: str) -> None:
    """Billing exports are opened in spreadsheets, and some text fields are the caller's own
    (the request's `user`, `x-request-id`): a cell that would run as a formula gets a `'`
    before it, and `record_from_csv` takes it off again."""
    record = UsageRecord(
        id="rec-1", request_id=text, time=1.5, end="completed", status=200, stream=False,
        user="u", model="m", request_user=text, metadata={"k": text},
    )  # fmt: skip
    table = (csv_header() + csv_line(record)).decode()
    [row] = list(csv.DictReader(io.StringIO(table, newline="")))
    dangerous = text[:1] in ("=", "+", "-", "@", "\t", "\r", "'")
    for name in ("request_id", "request_user"):
        assert row[name] == ("'" + text if dangerous else text)
    assert row["metadata"].startswith("{")  # JSON: never a formula
    assert record_from_csv(row) == record
