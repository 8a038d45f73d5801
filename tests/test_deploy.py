"""deploy/ and the Dockerfile, checked with the real tools: kustomize (kubectl) renders base and
every overlay, kubernetes-validate checks each object against the Kubernetes schemas, hadolint
lints the Dockerfile; then what the schemas cannot say: locked-down pods, probes and a grace
period that fit the gateway's own drain, CPU requests that match its workers, and a
configuration that the gateway loads in the environment the pod would give it."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from fnmatch import fnmatch
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]  # ships no type information
import pytest
import trustme
import yaml

from gateway.metrics import Metrics
from gateway.settings import Settings, load_settings
from tests.support.redis_server import GATEWAY_ACL

pytestmark = pytest.mark.processes  # kubectl, promtool, hadolint

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
TARGETS = ("base", "overlays/dev", "overlays/prod")
OVERLAYS = ("overlays/dev", "overlays/prod")

KUBERNETES_VERSIONS = ("1.30", "1.37")
"""The oldest Kubernetes these manifests support (the preStop `sleep` action is on by default
from 1.30) and the newest whose schemas kubernetes-validate ships."""
CRDS = {"monitoring.coreos.com/v1": {"ServiceMonitor", "PrometheusRule"}}
"""Kinds that come from CustomResourceDefinitions: no schema in kubernetes-validate; each is
checked by hand below."""

GATEWAY = "llm-gateway"
GATEWAY_UID = 10001
CONFIG_PATH = "/etc/gateway/gateway.yaml"
POD_TMP = "/tmp"  # noqa: S108  # the pod's emptyDir (its $TMPDIR), not a file of this machine
LEDGER_FLUSH_SECONDS = 10
"""What the gateway gives the usage ledger to be written out at shutdown, after the drain."""
GRACE_MARGIN_SECONDS = 5

POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}

Obj = dict[str, Any]


def _tool(name: str) -> str:
    """A console script of the dev extras: in this interpreter's bin/, else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        how = "`make promtool`" if name == "promtool" else "the dev extras (`make test`)"
        pytest.fail(f"`{name}` is missing: install {how}")
    return found


@cache
def _render(target: str) -> tuple[Obj, ...]:
    result = subprocess.run(  # noqa: S603  # the dev extras' kubectl, fixed arguments
        [_tool("kubectl"), "kustomize", str(DEPLOY / target)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, f"kubectl kustomize {target} failed:\n{result.stderr}"
    objects = tuple(o for o in yaml.safe_load_all(result.stdout) if o is not None)
    assert objects, f"kubectl kustomize {target} rendered nothing"
    return objects


@pytest.fixture(params=TARGETS)
def target(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def _find(objects: tuple[Obj, ...], kind: str, name: str | None = None) -> list[Obj]:
    return [
        o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]


def _one(objects: tuple[Obj, ...], kind: str, name: str) -> Obj:
    found = _find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _pod_specs(objects: tuple[Obj, ...]) -> Iterator[tuple[str, Obj]]:
    for o in objects:
        where = f"{o['kind']}/{o['metadata']['name']}"
        if o["kind"] in POD_TEMPLATE_KINDS:
            yield where, o["spec"]["template"]["spec"]
        elif o["kind"] == "CronJob":
            yield where, o["spec"]["jobTemplate"]["spec"]["template"]["spec"]
        elif o["kind"] == "Pod":
            yield where, o["spec"]


def _containers(spec: Obj) -> list[Obj]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def _gateway(objects: tuple[Obj, ...]) -> tuple[Obj, Obj]:
    """The gateway's Deployment and its container."""
    deployment = _one(objects, "Deployment", GATEWAY)
    containers = deployment["spec"]["template"]["spec"]["containers"]
    gateway = [c for c in containers if c["name"] == "gateway"]
    assert len(gateway) == 1, "expected one container named `gateway`"
    return deployment, gateway[0]


def _mounted_config(objects: tuple[Obj, ...]) -> str:
    """The gateway.yaml that the gateway container reads: the ConfigMap mounted at
    /etc/gateway, found through the Deployment (kustomize renamed it with a hash)."""
    deployment, container = _gateway(objects)
    mount_dir, file_name = CONFIG_PATH.rsplit("/", 1)
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mount_dir in mounts, f"nothing is mounted at {mount_dir}"
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    volume = volumes[mounts[mount_dir]]
    assert "configMap" in volume, f"{mount_dir} is not a ConfigMap volume: {volume}"
    config_map = _one(objects, "ConfigMap", volume["configMap"]["name"])
    assert file_name in config_map["data"], f"the ConfigMap has no {file_name}"
    text: str = config_map["data"][file_name]
    return text


def _raw_config(objects: tuple[Obj, ...]) -> Obj:
    raw: Obj = yaml.safe_load(_mounted_config(objects))
    return raw


_K8S_REF = re.compile(r"\$\((\w+)\)")


def _container_env(objects: tuple[Obj, ...]) -> dict[str, str]:
    """The environment Kubernetes would give the gateway container: `envFrom` Secrets first
    (the rendered Secret, else the keys of the example that the real one must have), then
    `env`, with `$(VAR)` expanded as the kubelet does."""
    _, container = _gateway(objects)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        name = source["secretRef"]["name"]
        rendered = _find(objects, "Secret", name)
        secret = rendered[0] if rendered else _example_secret()
        env.update(secret.get("stringData", {}))
    for var in container.get("env", []):
        assert "value" in var, f"env {var['name']}: only plain values are simulated here"
        env[var["name"]] = _K8S_REF.sub(lambda m: env.get(m[1], m[0]), var["value"])
    return env


def _example_secret() -> Obj:
    secret: Obj = yaml.safe_load((DEPLOY / "base" / "secret.example.yaml").read_text())
    return secret


def _load_mounted(objects: tuple[Obj, ...], tmp_path: Path) -> Settings:
    """Load the rendered gateway.yaml as the pod would: its environment, and the files of the
    Secret volumes it mounts (made here: a CA certificate for `ca.crt`) at their paths."""
    deployment, container = _gateway(objects)
    text = _mounted_config(objects)
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    ca = trustme.CA()
    for mount in container["volumeMounts"]:
        if "secret" not in volumes[mount["name"]]:
            continue
        folder = tmp_path / mount["name"]
        folder.mkdir()
        ca.cert_pem.write_to_path(str(folder / "ca.crt"))
        ca.cert_pem.write_to_path(str(folder / "tls.crt"))
        ca.private_key_pem.write_to_path(str(folder / "tls.key"))
        text = text.replace(mount["mountPath"].rstrip("/") + "/", f"{folder}/")
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return load_settings(path, environ=_container_env(objects))


def _cpu(quantity: str | int | float) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


_MEMORY_UNITS = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "K": 10**3, "M": 10**6, "G": 10**9}


def _bytes(quantity: str | int) -> int:
    match = re.fullmatch(r"(\d+)([KMG]i?)?", str(quantity))
    assert match, f"unexpected memory quantity {quantity}"
    return int(match[1]) * _MEMORY_UNITS.get(match[2] or "", 1)


# --- rendering and schemas ---------------------------------------------------------------

EXPECTED_KINDS = {
    "base": {
        "ServiceAccount", "Secret", "ConfigMap", "Deployment", "Service",
        "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "ServiceMonitor",
        "PrometheusRule",
    },
    "overlays/dev": {
        "Namespace", "ServiceAccount", "Secret", "ConfigMap", "Deployment", "Service",
        "StatefulSet", "PodDisruptionBudget", "NetworkPolicy",
    },
    "overlays/prod": {
        "Namespace", "ServiceAccount", "ConfigMap", "Deployment", "Service",
        "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy", "ServiceMonitor",
        "PrometheusRule",
    },
}  # fmt: skip


def test_renders_the_expected_objects(target: str) -> None:
    """Each target renders its kinds, none twice, all labelled; an overlay's in its namespace."""
    objects = _render(target)
    assert {o["kind"] for o in objects} == EXPECTED_KINDS[target]
    names = [(o["kind"], o["metadata"]["name"]) for o in objects]
    assert len(names) == len(set(names)), f"duplicates in {names}"
    if target != "base":  # an overlay puts everything in its namespace, which it creates
        namespace = _one(objects, "Namespace", _find(objects, "Namespace")[0]["metadata"]["name"])
        name = namespace["metadata"]["name"]
        assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == (
            "restricted"
        )
        for o in objects:
            if o["kind"] != "Namespace":
                assert o["metadata"].get("namespace") == name, f"{o['kind']} outside {name}"
    for o in objects:
        labels = o["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == GATEWAY, o["metadata"]["name"]
        if o["kind"] != "Namespace" and o["metadata"]["name"].startswith(GATEWAY):
            assert labels["app.kubernetes.io/name"] == GATEWAY


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_matches_the_kubernetes_schema(target: str, version: str) -> None:
    """Every object but the CRDs validates strictly on the oldest and the newest Kubernetes."""
    checked = 0
    for o in _render(target):
        if o["kind"] in CRDS.get(o["apiVersion"], set()):
            continue  # test_service_monitor, test_prometheus_rule_*
        where = f"{target}: {o['kind']}/{o['metadata']['name']}"
        try:
            kubernetes_validate.validate(o, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{where} is invalid for Kubernetes {version}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            pytest.fail(f"{where}: {exc.message}")
        checked += 1
    assert checked >= 7


SERVICE_MONITOR_SPEC = {"selector", "endpoints", "namespaceSelector", "jobLabel"}
SERVICE_MONITOR_ENDPOINT = {"port", "path", "scheme", "interval", "scrapeTimeout", "honorLabels"}


def test_service_monitor() -> None:
    """The ServiceMonitor's CRD has no schema here: its structure is checked by hand, and it
    must select the gateway's Service and scrape /metrics on its port."""
    for target in ("base", "overlays/prod"):
        objects = _render(target)
        monitor = _one(objects, "ServiceMonitor", GATEWAY)
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        spec = monitor["spec"]
        assert set(spec) <= SERVICE_MONITOR_SPEC, (
            f"unknown fields {set(spec) - SERVICE_MONITOR_SPEC}"
        )
        selector = spec["selector"]["matchLabels"]
        service = _one(objects, "Service", GATEWAY)
        assert selector.items() <= service["metadata"]["labels"].items()
        assert len(spec["endpoints"]) == 1
        endpoint = spec["endpoints"][0]
        assert set(endpoint) <= SERVICE_MONITOR_ENDPOINT
        assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
        assert endpoint["path"] == "/metrics"
        assert endpoint.get("scheme", "http") == "http"
        for field in ("interval", "scrapeTimeout"):
            assert re.fullmatch(r"\d+[smh]", endpoint[field]), f"{field}: {endpoint[field]}"
        assert _raw_config(objects)["metrics"]["enabled"] is True


ALERT_RULE = {"alert", "expr", "for", "labels", "annotations"}
SCRAPE_LABELS = {"namespace", "job", "pod", "instance", "service", "endpoint", "container"}
"""Labels the Prometheus Operator gives every series it scrapes through the ServiceMonitor."""


def _alert_rules() -> dict[str, Obj]:
    """The PrometheusRule's alerts by name; the same object in base and prod."""
    rules = [_one(_render(t), "PrometheusRule", GATEWAY) for t in ("base", "overlays/prod")]
    assert rules[0]["spec"] == rules[1]["spec"]
    found = [r for group in rules[0]["spec"]["groups"] for r in group["rules"]]
    return {r["alert"]: r for r in found}


def _exported() -> dict[str, set[str]]:
    """Every series name the gateway's metrics can expose, with the labels of each."""
    names: dict[str, set[str]] = {}
    suffixes = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}
    collectors: list[Any] = list(Metrics().registry._collector_to_names)  # no public list
    for collector in collectors:
        labels = set(collector._labelnames)
        for family in collector.describe():
            for suffix in suffixes[family.type]:
                names[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return names


def test_prometheus_rule_is_well_formed_and_reads_only_exported_metrics() -> None:
    """The PrometheusRule's CRD has no schema here: its structure is checked by hand; every
    series an alert reads is one the gateway exports, by the labels it has (a renamed metric or
    label would silence an alert for good)."""
    exported = _exported()
    alerts = _alert_rules()
    assert len(alerts) >= 8
    for name, rule in alerts.items():
        assert set(rule) <= ALERT_RULE, f"{name}: unknown fields {set(rule) - ALERT_RULE}"
        assert re.fullmatch(r"LLMGateway[A-Za-z]+", name)
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert {"summary", "description"} <= set(rule["annotations"]), name
        if "for" in rule:
            assert re.fullmatch(r"\d+[smh]", rule["for"]), f"{name}: for {rule['for']}"
        parts = re.split(r"\s/\s", rule["expr"])  # each side of a ratio, on its own series
        assert all(_series_read(part, exported) for part in parts), f"{name}: {rule['expr']}"


def _series_read(expr: str, exported: dict[str, set[str]]) -> set[str]:
    """The gateway's series that `expr` reads (no binary operator but comparisons), each
    checked to exist and to have every label that `expr` selects or groups it by."""
    grouped = set()
    for by in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", expr):
        grouped |= {label.strip() for label in by.split(",")}
    rest = re.sub(r"\b(?:by|on)\s*\([^)]*\)", "", expr)  # what is left names series
    selectors = re.findall(r"\b([a-z_:][a-z0-9_:]*)\s*(\{[^}]*\})?\s*(?:\[|\)|>|$)", rest)
    series = {(n, sel) for n, sel in selectors if n.startswith(("gateway_", "gen_ai_"))}
    for metric, selector in series:
        assert metric in exported, f"{metric} is not a metric the gateway exports"
        known = exported[metric] | SCRAPE_LABELS
        used = set(re.findall(r"([a-z_]+)\s*[=!]", selector)) | grouped
        assert used <= known, f"{metric} has no label {used - known}"
    return {metric for metric, _ in series}


def test_prometheus_rule_alerts_fire_when_they_should(tmp_path: Path) -> None:
    """promtool (Prometheus's own rule checker) checks the rules, then runs the unit tests of
    tests/alerts/rules_test.yaml on them: each alert fires on the series it is for, with its
    labels and text, and stays silent on ordinary ones."""
    spec = _one(_render("base"), "PrometheusRule", GATEWAY)["spec"]
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(spec))
    shutil.copy(ROOT / "tests" / "alerts" / "rules_test.yaml", tmp_path / "rules_test.yaml")
    promtool = _tool("promtool")
    for command in (["check", "rules", "rules.yaml"], ["test", "rules", "rules_test.yaml"]):
        result = subprocess.run(  # noqa: S603  # promtool with fixed arguments
            [promtool, *command], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, f"promtool {' '.join(command)}:\n{result.stdout}"
    tested = set(re.findall(r"alertname: (\w+)", (tmp_path / "rules_test.yaml").read_text()))
    assert tested == set(_alert_rules()), "every alert has a unit test, and only those"


# --- pods ----------------------------------------------------------------------------------


def test_every_pod_is_locked_down(target: str) -> None:
    """Every container runs non-root under seccomp, read-only, without capabilities, with limits."""
    specs = list(_pod_specs(_render(target)))
    assert specs
    for where, spec in specs:
        pod = spec["securityContext"]
        assert pod["runAsNonRoot"] is True, where
        assert pod["seccompProfile"] == {"type": "RuntimeDefault"}, where
        assert pod["runAsUser"] > 0, where
        assert pod["runAsGroup"] > 0, where
        assert spec["automountServiceAccountToken"] is False, where
        for field in ("hostNetwork", "hostPID", "hostIPC"):
            assert not spec.get(field), f"{where}: {field}"
        assert all("hostPath" not in v for v in spec.get("volumes", [])), where
        for container in _containers(spec):
            at = f"{where} container {container['name']}"
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True, at
            assert sc["runAsUser"] == pod["runAsUser"], at
            assert sc["runAsGroup"] == pod["runAsGroup"], at
            assert sc["allowPrivilegeEscalation"] is False, at
            assert sc["readOnlyRootFilesystem"] is True, at
            assert sc.get("privileged", False) is False, at
            assert sc["capabilities"] == {"drop": ["ALL"]}, at
            assert sc["seccompProfile"] == {"type": "RuntimeDefault"}, at
            image = container["image"]
            assert re.search(r":[\w.-]+$", image.rsplit("/", 1)[-1]), f"{at}: untagged {image}"
            assert not image.endswith(":latest"), at
            resources = container["resources"]
            assert {"cpu", "memory"} <= resources["requests"].keys(), at
            assert "memory" in resources["limits"], at
            assert _bytes(resources["limits"]["memory"]) >= _bytes(
                resources["requests"]["memory"]
            ), at


def test_gateway_pod_runs_as_the_image_user_with_a_writable_tmp(target: str) -> None:
    """The gateway runs as the image's uid, no token mounted, $TMPDIR and metrics on an emptyDir."""
    objects = _render(target)
    deployment, container = _gateway(objects)
    spec = deployment["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsUser"] == GATEWAY_UID
    assert spec["securityContext"]["runAsGroup"] == GATEWAY_UID
    assert container["securityContext"]["runAsUser"] == GATEWAY_UID
    assert spec["serviceAccountName"] == GATEWAY
    account = _one(objects, "ServiceAccount", GATEWAY)
    assert account["automountServiceAccountToken"] is False
    # The root filesystem is read-only: $TMPDIR and the metrics directory are on an emptyDir.
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    assert "emptyDir" in mounts[POD_TMP]
    env = {v["name"]: v.get("value") for v in container["env"]}
    assert env["TMPDIR"] == POD_TMP
    assert _raw_config(objects)["metrics"]["multiproc_dir"].startswith(f"{POD_TMP}/")


def test_probes_and_graceful_shutdown(target: str) -> None:
    """Probes hit /healthz and /readyz; preStop, drain and ledger flush fit in the grace period."""
    objects = _render(target)
    deployment, container = _gateway(objects)
    config = _raw_config(objects)
    port = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port["http"] == config["server"]["port"] == 8080
    assert config["server"]["host"] == "0.0.0.0"
    for probe, path in (
        ("livenessProbe", "/healthz"),
        ("readinessProbe", "/readyz"),
        ("startupProbe", "/healthz"),
    ):
        get = container[probe]["httpGet"]
        assert (get["path"], get["port"]) == (path, "http"), probe
    pre_stop = container["lifecycle"]["preStop"]
    assert set(pre_stop) == {"sleep"}, "preStop is the native sleep action, nothing else"
    sleep = pre_stop["sleep"]["seconds"]
    assert sleep == 5
    assert "drain_seconds" in config["server"], "server.drain_seconds is set explicitly"
    drain = config["server"]["drain_seconds"]
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    needed = sleep + drain + LEDGER_FLUSH_SECONDS + GRACE_MARGIN_SECONDS
    assert grace >= needed, f"terminationGracePeriodSeconds {grace} < {needed}"
    rolling = deployment["spec"]["strategy"]["rollingUpdate"]
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert rolling["maxUnavailable"] == 0, "a new pod is ready before an old one drains"


def test_cpu_request_is_one_core_per_worker(target: str) -> None:
    """The gateway requests one CPU per configured worker and memory for that many workers."""
    objects = _render(target)
    _, container = _gateway(objects)
    workers = _raw_config(objects)["server"]["workers"]
    resources = container["resources"]
    assert _cpu(resources["requests"]["cpu"]) == workers
    assert _cpu(resources["limits"]["cpu"]) >= workers
    # Memory sized from the measured RSS: ~75 MiB of supervisor, ~190 MiB per worker.
    assert _bytes(resources["requests"]["memory"]) >= (64 + 160 * workers) * 2**20


def test_pods_spread_over_zones_and_hosts(target: str) -> None:
    """Gateway pods spread evenly (maxSkew 1) over zones and over hosts."""
    deployment, _ = _gateway(_render(target))
    spec = deployment["spec"]["template"]["spec"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    keys = set()
    for constraint in spec["topologySpreadConstraints"]:
        keys.add(constraint["topologyKey"])
        assert constraint["labelSelector"]["matchLabels"].items() <= labels.items()
        assert constraint["maxSkew"] == 1
    assert keys == {"topology.kubernetes.io/zone", "kubernetes.io/hostname"}


def test_service_and_selectors_reach_the_gateway_pods(target: str) -> None:
    """The Deployment, Service and PodDisruptionBudget all select the gateway's pods."""
    objects = _render(target)
    deployment, _ = _gateway(objects)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    service = _one(objects, "Service", GATEWAY)
    assert service["spec"]["selector"].items() <= labels.items()
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
    ]
    budget = _one(objects, "PodDisruptionBudget", GATEWAY)
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert budget["spec"]["maxUnavailable"] == 1, "never blocks a node drain"


def test_autoscaler_owns_the_replica_count(target: str) -> None:
    """Outside dev an HPA on CPU owns the replica count and the Deployment sets none."""
    objects = _render(target)
    deployment, _ = _gateway(objects)
    autoscalers = _find(objects, "HorizontalPodAutoscaler")
    if target == "overlays/dev":
        assert not autoscalers
        assert deployment["spec"]["replicas"] == 1
        return
    (hpa,) = autoscalers
    assert "replicas" not in deployment["spec"], "every kubectl apply would reset it"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": GATEWAY,
    }
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource"
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["type"] == "Utilization"
    assert 50 <= metric["resource"]["target"]["averageUtilization"] <= 80
    assert hpa["spec"]["minReplicas"] >= 2
    if target == "overlays/prod":
        assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 20)


def test_network_policy(target: str) -> None:
    """The gateway takes traffic on 8080 only and reaches out only to DNS, Redis and HTTPS."""
    objects = _render(target)
    policy = _one(objects, "NetworkPolicy", GATEWAY)
    deployment, _ = _gateway(objects)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    spec = policy["spec"]
    assert spec["podSelector"]["matchLabels"].items() <= labels.items()
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    ingress = [(p["port"], p["protocol"]) for rule in spec["ingress"] for p in rule["ports"]]
    assert ingress == [(8080, "TCP")]
    assert all(rule.get("ports") for rule in spec["egress"]), "every egress rule names ports"
    egress = {(p["port"], p["protocol"]) for rule in spec["egress"] for p in rule["ports"]}
    assert egress == {(53, "UDP"), (53, "TCP"), (6379, "TCP"), (26379, "TCP"), (443, "TCP")}


# --- the gateway's configuration -------------------------------------------------------------


def test_the_gateway_loads_its_configuration(target: str, tmp_path: Path) -> None:
    """Each target's gateway.yaml loads with the pod's env and files, as the overlay intends."""
    objects = _render(target)
    settings = _load_mounted(objects, tmp_path)
    raw = _raw_config(objects)
    assert settings.server.workers == raw["server"]["workers"]
    assert settings.server.drain_seconds == raw["server"]["drain_seconds"]
    assert settings.metrics.multiproc_dir == f"{POD_TMP}/metrics"
    assert settings.logging.format == "json"
    assert settings.redis.on_failure == "fail_closed"
    assert settings.auth.admin_key is not None
    assert settings.auth.pepper
    assert all(m.provider in settings.providers for m in settings.models)
    env = _container_env(objects)
    assert settings.redis.url == env["REDIS_URL"]
    assert settings.redis.password == env["REDIS_PASSWORD"]
    if target == "overlays/dev":
        assert settings.redis.url == "redis://redis:6379/0"
    if target == "overlays/prod":
        tls = settings.redis.tls
        assert settings.redis.mode == "cluster"
        assert settings.redis.url is not None
        assert settings.redis.url.startswith("rediss://")
        assert settings.redis.username == env["REDIS_USERNAME"]
        assert tls is not None
        assert tls.ca_file == str(tmp_path / "redis-tls" / "ca.crt")


def test_prod_shows_a_working_sentinel_alternative(tmp_path: Path) -> None:
    """The commented Sentinel variant in the prod gateway.yaml, uncommented in place of the
    Cluster's `mode` and `url`, loads too."""
    text = (DEPLOY / "overlays/prod/gateway.yaml").read_text()
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "# mode: sentinel")
    block = []
    for line in lines[start:]:
        if not line.strip().startswith("#"):
            break
        block.append(line.replace("# ", "", 1))
    sentinel: Obj = yaml.safe_load(textwrap.dedent("\n".join(block)))
    assert sentinel["mode"] == "sentinel"
    assert len(sentinel["sentinels"]) >= 3
    raw: Obj = yaml.safe_load(text)
    redis = {k: v for k, v in raw["redis"].items() if k not in ("mode", "url")}
    raw["redis"] = {**redis, **sentinel}
    objects = _render("overlays/prod")
    folder = tmp_path / "redis-tls"
    folder.mkdir()
    trustme.CA().cert_pem.write_to_path(str(folder / "ca.crt"))
    raw["redis"]["tls"]["ca_file"] = str(folder / "ca.crt")
    path = tmp_path / "gateway.yaml"
    path.write_text(yaml.safe_dump(raw))
    env = {**_container_env(objects), "REDIS_SENTINEL_PASSWORD": "placeholder"}
    settings = load_settings(path, environ=env)
    assert settings.redis.mode == "sentinel"
    assert settings.redis.url is None
    assert settings.redis.sentinels == tuple(sentinel["sentinels"])


ALLOWED_CHANGES = {
    "overlays/dev": {"server.workers", "ledger.retention_days"},
    "overlays/prod": {"redis"},
}
"""What each overlay's gateway.yaml may change from base's: the rest is kept identical."""


def _differences(base: Any, other: Any, where: str = "") -> set[str]:
    if isinstance(base, dict) and isinstance(other, dict):
        found: set[str] = set()
        for key in base.keys() | other.keys():
            found |= _differences(base.get(key), other.get(key), f"{where}.{key}".lstrip("."))
        return found
    return set() if base == other else {where}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_configuration_is_base_but_for_its_changes(overlay: str) -> None:
    """An overlay's gateway.yaml differs from base's only in the settings it may change."""
    base = _raw_config(_render("base"))
    changed = _differences(base, _raw_config(_render(overlay)))
    allowed = ALLOWED_CHANGES[overlay]
    stray = {c for c in changed if not any(c == a or c.startswith(a + ".") for a in allowed)}
    assert not stray, f"{overlay}/gateway.yaml differs from base's in {sorted(stray)}"


# --- secrets, Redis -------------------------------------------------------------------------


def test_secret_is_an_example_with_placeholders() -> None:
    """The example Secret holds only placeholders, and prod never applies it."""
    example = _example_secret()
    values = example["stringData"]
    assert set(values) == {
        "OPENAI_API_KEY",
        "GATEWAY_ADMIN_KEY",
        "GATEWAY_KEY_PEPPER",
        "REDIS_PASSWORD",
    }
    assert all("REPLACE-ME" in v for v in values.values()), "obviously placeholders"
    assert len(values["GATEWAY_ADMIN_KEY"]) >= 16, "the gateway requires 16 characters"
    for target in TARGETS:
        secrets = _find(_render(target), "Secret")
        if target == "overlays/prod":  # the real one comes from the secret manager
            assert not secrets, "prod must never apply the placeholders over the real Secret"
        else:
            assert [s["stringData"] for s in secrets] == [values]


def test_dev_runs_its_own_redis_on_a_volume() -> None:
    """dev runs one persistent redis-server on a PVC, reachable from gateway pods only."""
    objects = _render("overlays/dev")
    redis = _one(objects, "StatefulSet", "redis")
    assert redis["spec"]["replicas"] == 1
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    assert re.fullmatch(r"redis:7(\.\d+)*", container["image"])
    args = container["args"]
    flags = dict(zip(args[1::2], args[2::2], strict=True))
    assert args[0] == "redis-server"
    assert flags["--appendonly"] == "yes"
    assert flags["--dir"] == "/data"
    assert flags["--requirepass"] == "$(REDIS_PASSWORD)"
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/data"] == claim["metadata"]["name"], "the data directory is on the PVC"
    assert redis["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == 999
    service = _one(objects, "Service", "redis")
    assert (
        service["spec"]["selector"].items()
        <= redis["spec"]["template"]["metadata"]["labels"].items()
    )
    assert [p["port"] for p in service["spec"]["ports"]] == [6379]
    assert _container_env(objects)["REDIS_URL"] == "redis://redis:6379/0"
    policy = _one(objects, "NetworkPolicy", "redis")
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": GATEWAY}}}]
    assert rule["ports"] == [{"port": 6379, "protocol": "TCP"}]
    assert "egress" not in policy["spec"]
    assert "Egress" in policy["spec"]["policyTypes"]


def test_prod_mounts_the_redis_ca_where_the_configuration_reads_it() -> None:
    """prod mounts the redis-tls Secret read-only at the CA path its configuration reads."""
    objects = _render("overlays/prod")
    deployment, container = _gateway(objects)
    ca_file = _raw_config(objects)["redis"]["tls"]["ca_file"]
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    mount = next(m for m in container["volumeMounts"] if ca_file.startswith(m["mountPath"] + "/"))
    assert mount.get("readOnly") is True
    assert volumes[mount["name"]]["secret"]["secretName"] == "redis-tls"
    assert not container["image"].startswith(f"{GATEWAY}:"), "prod names its registry"


# --- the image ------------------------------------------------------------------------------


@dataclass
class Instruction:
    name: str
    args: str
    stage: int


def _dockerfile() -> list[Instruction]:
    """The Dockerfile's instructions (continuations joined, comments dropped), by stage."""
    text = (ROOT / "Dockerfile").read_text()
    logical: list[str] = []
    current = ""
    for line in text.splitlines():
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.rstrip().endswith("\\"):
            current += line.rstrip()[:-1] + " "
            continue
        logical.append(current + line)
        current = ""
    instructions = []
    stage = -1
    for line in logical:
        name, _, args = line.strip().partition(" ")
        if name.upper() == "FROM":
            stage += 1
        instructions.append(Instruction(name.upper(), args.strip(), stage))
    return instructions


def test_hadolint_passes() -> None:
    """hadolint finds nothing to say about the Dockerfile."""
    result = subprocess.run(  # noqa: S603  # the dev extras' hadolint, fixed arguments
        [_tool("hadolint"), "Dockerfile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert result.returncode == 0, f"hadolint:\n{result.stdout}{result.stderr}"


def _ignored(path: str, patterns: list[str]) -> bool:
    """Whether .dockerignore keeps `path` out of the build context (the last matching pattern
    decides; a pattern matching a parent folder matches everything in it)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        negated = pattern.startswith("!")
        bare = pattern.lstrip("!").rstrip("/")
        candidates = [bare, bare.removeprefix("**/")]
        if any(fnmatch(p, c) for p in prefixes for c in candidates) or (
            bare.startswith("**/") and any(fnmatch(part, bare[3:]) for part in parts)
        ):
            ignored = not negated
    return ignored


def test_the_image_is_built_from_files_in_the_context() -> None:
    """The Dockerfile COPYs files that exist and that .dockerignore lets in; the rest stays out."""
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    copied = []
    for step in _dockerfile():
        if step.name in ("COPY", "ADD") and "--from=" not in step.args:
            assert step.name == "COPY", "ADD fetches and unpacks: COPY only"
            copied += shlex.split(step.args)[:-1]
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), f"the Dockerfile copies {source}, which is missing"
        assert not _ignored(source, patterns), f".dockerignore keeps {source} out"
    # what `uv sync` needs is copied: the project, its lock, its readme, its package
    pyproject = (ROOT / "pyproject.toml").read_text()
    readme = re.search(r'^readme = "([^"]+)"', pyproject, re.M)
    assert readme
    assert readme[1] in copied
    assert "pyproject.toml" in copied
    assert "uv.lock" in copied
    assert "gateway" in copied
    kept_out_paths = (".venv", ".git", ".pytest_cache", ".mypy_cache", ".ruff_cache", "tests")
    more = (
        "gateway/__pycache__",
        "gateway/state/lua/__pycache__",
        "gateway/x.pyc",
        "bench",
        "deploy",
    )
    for kept_out in (*kept_out_paths, *more):
        assert _ignored(kept_out, patterns), f".dockerignore lets {kept_out} in"


def _make_uv_version() -> str:
    """The uv version the Makefile installs the virtualenv with."""
    found = re.search(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M)
    assert found, "the Makefile pins uv in UV_VERSION"
    return found[1]


def test_the_final_image_runs_the_gateway_as_non_root() -> None:
    """The final stage is the locked venv alone, run as uid 10001 the way the Deployment runs it."""
    steps = _dockerfile()
    stages = max(s.stage for s in steps) + 1
    assert stages == 2, "a builder and a final stage"
    froms = [s.args for s in steps if s.name == "FROM"]
    assert froms == ["python:3.11-slim AS builder", "python:3.11-slim"]
    builder = [s for s in steps if s.stage == 0]
    final = [s for s in steps if s.stage == 1]
    (installs,) = [shlex.split(s.args) for s in builder if s.name == "RUN" and "sync" in s.args]
    assert installs[:2] == ["uv", "sync"], "the project and exactly its lock"
    assert "--locked" in installs, "a lock that pyproject.toml outgrew fails the build"
    assert "--no-editable" in installs, "the final stage has no sources"
    assert not {"--extra", "--all-extras", "--group", "--all-groups"} & set(installs), "no dev"
    environment = " ".join(s.args for s in builder if s.name == "ENV")
    assert "UV_PROJECT_ENVIRONMENT=/opt/venv" in environment.split()
    assert any(s.name == "RUN" and f"uv=={_make_uv_version()}" in s.args for s in builder), (
        "the builder's uv is the Makefile's"
    )
    assert not any(s.name == "HEALTHCHECK" for s in steps), "Kubernetes probes do that"
    copies = [s.args for s in final if s.name in ("COPY", "ADD")]
    assert copies == ["--from=builder /opt/venv /opt/venv"], "only the virtualenv"
    for step in final:
        if step.name == "RUN":
            assert not re.search(r"apt-get|apk |pip |gcc|build-essential", step.args), step.args
    (user,) = [s.args for s in final if s.name == "USER"]
    uid, _, gid = user.partition(":")
    assert uid == str(GATEWAY_UID), "a numeric uid (runAsNonRoot can check it)"
    assert gid == "" or int(gid) == GATEWAY_UID
    assert final[-1].name in ("CMD", "ENTRYPOINT", "USER", "EXPOSE")
    last_user = max(i for i, s in enumerate(final) if s.name == "USER")
    assert all(s.name != "RUN" for s in final[last_user:]), "nothing runs as root after USER"
    env = " ".join(s.args for s in final if s.name == "ENV")
    for setting in ("PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1", "PATH=/opt/venv/bin:$PATH"):
        assert setting in env.split(), setting
    (expose,) = [s.args for s in final if s.name == "EXPOSE"]
    (entrypoint,) = [json.loads(s.args) for s in final if s.name == "ENTRYPOINT"]
    (cmd,) = [json.loads(s.args) for s in final if s.name == "CMD"]
    assert entrypoint == ["gateway", "serve"]
    assert re.search(
        r'^gateway = "gateway\.cli:main"$', (ROOT / "pyproject.toml").read_text(), re.M
    )
    assert cmd == ["--config", CONFIG_PATH]
    # ... and the Deployment runs it that way, on the port the image exposes
    for target in TARGETS:
        _, container = _gateway(_render(target))
        assert container["args"] == cmd
        assert "command" not in container
        assert [p["containerPort"] for p in container["ports"]] == [int(expose)]


def test_readme_says_how_to_deploy() -> None:
    """README's Kubernetes section gives the apply commands and the gateway's Redis ACL."""
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Deploying on Kubernetes", 1)
    assert len(section) == 2, "README has a section `Deploying on Kubernetes`"
    for command in (
        "kubectl apply -k deploy/overlays/dev",
        "kubectl apply -k deploy/overlays/prod",
    ):
        assert command in section[1]
    # the Redis ACL it recommends is the one the tests' Redis servers give the gateway's user
    flowing = " ".join(section[1].split())
    assert f"ACL SETUSER llm-gateway on >PASSWORD {' '.join(GATEWAY_ACL)}`" in flowing
