"""A stack owned by a test session (the Docker tiers), driven through the task library.

Like Airflow's docker-tests: a unique compose project and state dir, free ports, diagnostics dumped
on failure, teardown with `invoke clean` unless AIRFLOW_K3S_KEEP_STACK=1, and a check that nothing
of the project is left behind. Without a Docker engine the tiers FAIL, unless the user opts out
with AIRFLOW_K3S_SKIP_DOCKER_TESTS=1 (then they skip, saying so loudly).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from python_on_whales import DockerClient

from airflow_k3s import compose
from airflow_k3s.airflow_api import AirflowAPI
from airflow_k3s.settings import ROOT, Settings, published_ports

SERVICES = {
    "postgres",
    "s3",
    "mockserver",
    "registry",
    "k3s",
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
}
DEMO = "demo_rest_to_s3"
DEMO_TASKS = {"fetch", "upload", "verify"}


def require_docker() -> None:
    """Fail loudly (or skip, if explicitly asked) when no Docker engine answers."""
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "info"], capture_output=True, check=False).returncode == 0
    ):
        return
    if os.environ.get("AIRFLOW_K3S_SKIP_DOCKER_TESTS") == "1":
        pytest.skip(
            "NO DOCKER ENGINE: the stack tier did NOT run (AIRFLOW_K3S_SKIP_DOCKER_TESTS=1)"
        )
    pytest.fail(
        "no Docker engine answers: this tier needs one (local/ensure-docker.sh starts one on "
        "Debian; AIRFLOW_K3S_SKIP_DOCKER_TESTS=1 skips it on purpose)",
        pytrace=False,
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Stack:
    """A running stack of one compose project, and ways to look into it."""

    images: str
    project: str
    state_dir: Path
    env: dict[str, str]

    @property
    def settings(self) -> Settings:
        return Settings.load(environ=self.env)

    def invoke(self, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        """Run a task of the task library as a user would; echo its output for the test log."""
        result = subprocess.run(
            [sys.executable, "-m", "invoke", *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        print(f"$ invoke {' '.join(args)}  -> exit {result.returncode}")
        print(result.stdout[-4000:], result.stderr[-8000:], sep="\n")
        return result

    def push(self) -> str:
        """`invoke push` (idempotent): the digest the registry holds for the worker image."""
        result = self.invoke("push")
        assert result.returncode == 0, result.stderr
        digest = result.stdout.strip().splitlines()[-1]
        assert digest.startswith("sha256:"), result.stdout
        return digest

    def run_dag(self, dag_id: str, timeout: int = 600, conf: str = "") -> str:
        """`invoke trigger-dag DAG --wait`, which must succeed; the run id."""
        args = ["trigger-dag", dag_id, "--wait", "--timeout", str(timeout)]
        if conf:
            args += ["--conf", conf]
        result = self.invoke(*args, timeout=timeout + 120)
        assert result.returncode == 0, f"{dag_id} failed:\n{result.stderr[-6000:]}"
        assert "ended: success" in result.stderr
        return result.stdout.strip().splitlines()[-1]

    def kubectl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """kubectl against the stack's cluster (the host's kubeconfig copy)."""
        cfg = self.settings
        kubectl = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or "kubectl"
        return subprocess.run(
            [kubectl, "--kubeconfig", str(cfg.host_kubeconfig), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )

    def kubectl_json(self, *args: str) -> Any:
        result = self.kubectl(*args, "-o", "json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    def pods(self, selector: str) -> list[dict[str, Any]]:
        """Pods of the default namespace matching a label selector, oldest first."""
        items: list[dict[str, Any]] = self.kubectl_json("get", "pods", "-l", selector)["items"]
        return sorted(items, key=lambda p: str(p["metadata"]["creationTimestamp"]))

    def docker(self) -> DockerClient:
        return compose.client(self.settings)

    def s3(self) -> Any:
        cfg = self.settings
        return boto3.client(
            "s3",
            endpoint_url=cfg.s3_url,
            region_name="us-east-1",
            aws_access_key_id=cfg.secrets["S3_ACCESS_KEY"],
            aws_secret_access_key=cfg.secrets["S3_SECRET_KEY"],
        )

    def s3_object(self, bucket: str, key: str, timeout: float = 60) -> bytes:
        """An object's bytes, waiting for it: a worker uploads its task log after the task's state
        is already success (Airflow 3's supervisor uploads when the task process has exited)."""
        s3 = self.s3()
        deadline = time.monotonic() + timeout
        while True:
            try:
                return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            except s3.exceptions.NoSuchKey:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)

    def api(self) -> AirflowAPI:
        cfg = self.settings
        return AirflowAPI(cfg.airflow_url, cfg.secrets["AIRFLOW_ADMIN_PASSWORD"])

    def leftovers(self) -> list[str]:
        """Containers, networks and volumes of this project that still exist."""
        docker = DockerClient()
        label = f"com.docker.compose.project={self.project}"
        found = [
            f"container {c.name}"
            for c in docker.container.list(all=True, filters=[("label", label)])
        ]
        found += [f"network {n.name}" for n in docker.network.list(filters=[("label", label)])]
        found += [f"volume {v.name}" for v in docker.volume.list(filters=[("label", label)])]
        return found

    def dump_diagnostics(self) -> None:
        print("=" * 30, f"diagnostics of project {self.project}", "=" * 30)
        self.invoke("status", timeout=120)
        self.invoke("logs", "--tail", "80", timeout=120)
        for args in (
            ("describe", "pods", "-A"),
            ("get", "events", "-A", "--sort-by=.lastTimestamp"),
        ):
            result = self.kubectl(*args)
            print(f"$ kubectl {' '.join(args)}\n{result.stdout[-12000:]}{result.stderr[-2000:]}")


def stack_env(images: str, project: str, state_dir: Path) -> dict[str, str]:
    """The environment of a test stack: its own project, state dir and free ports."""
    env = {
        **os.environ,
        "IMAGES": images,
        "COMPOSE_PROJECT_NAME": project,
        "AIRFLOW_K3S_STATE_DIR": str(state_dir),
    }
    for port in published_ports():
        env[port.variable] = str(free_port())
    return env


@contextmanager
def running_stack(request: pytest.FixtureRequest, images: str) -> Iterator[Stack]:
    """Bring a stack up with `invoke up`; on exit dump diagnostics if anything failed, tear down."""
    require_docker()
    project = f"airflow-k3s-test-{uuid.uuid4().hex[:8]}"
    state_dir = Path(tempfile.mkdtemp(prefix=f"{project}-"))
    stack = Stack(images, project, state_dir, stack_env(images, project, state_dir))
    failed_before = request.session.testsfailed
    up = stack.invoke("up", timeout=3600)
    # What `up` did (builds and their times, waits) goes to the terminal, past pytest's capture,
    # so that a CI log shows where a cold start spent its time.
    progress = [ln for ln in up.stderr.splitlines() if ln.startswith(("==> ", "    node build:"))]
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        sys.stderr.write("\n".join(["", f"`invoke up` of {project}:", *progress, ""]) + "\n")
    try:
        if up.returncode != 0:
            pytest.fail(
                f"`invoke up` failed with exit {up.returncode}: {up.stderr[-2000:]}", pytrace=False
            )
        yield stack
    finally:
        if up.returncode != 0 or request.session.testsfailed > failed_before:
            stack.dump_diagnostics()
        if os.environ.get("AIRFLOW_K3S_KEEP_STACK") == "1":
            print(f"AIRFLOW_K3S_KEEP_STACK=1: keeping project {project} (state in {state_dir})")
        else:
            clean = stack.invoke("clean", timeout=300)
            left = stack.leftovers()
            assert clean.returncode == 0, clean.stderr
            assert not left, f"`invoke clean` left these behind: {left}"
            assert not (state_dir / ".env").exists(), ".env survived `invoke clean`"
