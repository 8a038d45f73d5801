"""A real 3-node Redis Cluster on free loopback ports, with an ACL user for the gateway."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import redis
from redis.cluster import RedisCluster as SyncCluster

from tests.support.procs import free_port
from tests.support.redis_server import GATEWAY_ACL

USER, PASSWORD = "gateway", "cluster-acl-pass-7f3e"
"""The ACL user every node knows (the default user needs a password too: `ADMIN_PASSWORD`)."""
ADMIN_PASSWORD = "cluster-admin-pass-91c2"


class RedisClusterNodes:
    """Three primaries (no replicas) sharing the 16,384 slots, created by `redis-cli`."""

    def __init__(self, folder: Path, size: int = 3) -> None:
        binary = shutil.which("redis-server")
        if binary is None or shutil.which("redis-cli") is None:
            raise RuntimeError("redis-server is not installed: `make test` installs it")
        self.binary = binary
        self.folder = folder
        self.ports = [free_port() for _ in range(size)]
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def url(self) -> str:
        """One node's URL, as the gateway is given it (it discovers the others)."""
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> RedisClusterNodes:
        for port in self.ports:
            folder = self.folder / str(port)
            folder.mkdir()
            argv = [
                self.binary,
                "--port", str(port),
                "--bind", "127.0.0.1",
                "--cluster-enabled", "yes",
                "--cluster-port", str(free_port()),  # else port + 10000, maybe taken or > 65535
                "--cluster-config-file", str(folder / "nodes.conf"),
                "--cluster-node-timeout", "2000",
                "--save", "",
                "--appendonly", "no",
                "--requirepass", ADMIN_PASSWORD,
                "--user", USER, "on", f">{PASSWORD}", *GATEWAY_ACL,
                "--dir", str(folder),
                "--logfile", str(folder / "redis.log"),
            ]  # fmt: skip
            self.procs.append(
                subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
            )
        for port in self.ports:
            self._wait_up(port)
        create = ["redis-cli", "-a", ADMIN_PASSWORD, "--no-auth-warning", "--cluster", "create"]
        create += [f"127.0.0.1:{port}" for port in self.ports]
        create += ["--cluster-replicas", "0", "--cluster-yes"]
        subprocess.run(create, check=True, capture_output=True, timeout=30)  # noqa: S603
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if all(self._state(port) == "ok" for port in self.ports):
                return self
            time.sleep(0.1)
        raise RuntimeError(f"the cluster on {self.ports} did not reach cluster_state:ok")

    def node(self, port: int) -> redis.Redis:
        """A client of one node alone (decoded strings), as the admin user."""
        return redis.Redis(
            host="127.0.0.1", port=port, password=ADMIN_PASSWORD, decode_responses=True
        )

    def client(self) -> SyncCluster:
        """A cluster client (decoded strings), as the admin user."""
        return SyncCluster(
            host="127.0.0.1", port=self.ports[0], password=ADMIN_PASSWORD, decode_responses=True
        )

    def error_counts(self) -> dict[int, dict[str, int]]:
        """Each node's error replies by code (INFO errorstats), e.g. {"CROSSSLOT": 2}."""
        counts: dict[int, dict[str, int]] = {}
        for port in self.ports:
            info = self.node(port).info("errorstats")
            counts[port] = {
                name.removeprefix("errorstat_"): int(value["count"]) for name, value in info.items()
            }
        return counts

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def _state(self, port: int) -> str:
        info: str = self.node(port).execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
        fields = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
        return fields.get("cluster_state", "").strip()

    def _wait_up(self, port: int) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.node(port).ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server did not start on port {port}")
