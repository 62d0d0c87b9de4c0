"""A stack owned by a test session (integration and e2e tiers), driven through the task library.

Like Airflow's docker-tests: a unique compose project and state dir, free ports, diagnostics dumped
on failure, teardown with `invoke clean` unless AIRFLOW_K3S_KEEP_STACK=1, and a check that nothing
of the project is left behind. Without a Docker engine the tiers FAIL, unless the user opts out
with AIRFLOW_K3S_SKIP_DOCKER_TESTS=1 (then they skip, saying so).
"""

from __future__ import annotations

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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "dags"))

import tasks  # noqa: E402  (the task library under test)

SERVICES_LOCAL = {
    "postgres",
    "s3",
    "mockserver",
    "registry",
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
}


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
        "no Docker engine answers: this tier needs one (tests/images/ensure-docker.sh "
        "starts one on Debian; AIRFLOW_K3S_SKIP_DOCKER_TESTS=1 skips it on purpose)",
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
    def settings(self) -> tasks.Settings:
        return tasks.Settings.load(environ=self.env)

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

    def run_dag(self, dag_id: str, timeout: int = 600) -> str:
        """`invoke trigger-dag DAG --wait`, which must succeed; the run id."""
        result = self.invoke(
            "trigger-dag", dag_id, "--wait", "--timeout", str(timeout), timeout=timeout + 120
        )
        assert result.returncode == 0, f"{dag_id} failed:\n{result.stderr[-6000:]}"
        assert "ended: success" in result.stderr
        return result.stdout.strip().splitlines()[-1]

    def docker(self) -> DockerClient:
        return tasks.compose(self.settings)

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

    def api(self) -> tasks.AirflowAPI:
        cfg = self.settings
        return tasks.AirflowAPI(cfg.airflow_url, cfg.secrets["AIRFLOW_ADMIN_PASSWORD"])

    def leftovers(self) -> list[str]:
        """Containers, networks and volumes of this project that still exist."""
        docker = DockerClient()
        label = f"com.docker.compose.project={self.project}"
        found = [
            f"container {c.name}"
            for c in docker.container.list(all=True, filters=[("label", label)])
        ]
        found += [
            f"container {c.name}"
            for c in docker.container.list(
                all=True, filters=[("label", f"airflow-k3s.project={self.project}")]
            )
        ]
        found += [f"network {n.name}" for n in docker.network.list(filters=[("label", label)])]
        found += [f"volume {v.name}" for v in docker.volume.list(filters=[("label", label)])]
        return found

    def dump_diagnostics(self) -> None:
        print("=" * 30, f"diagnostics of project {self.project}", "=" * 30)
        self.invoke("status", timeout=120)
        self.invoke("logs", "--tail", "80", timeout=120)
        if self.images == "upstream":  # k3s: the pods' descriptions and the cluster's events
            self.invoke("kubectl", "--", "describe", "pods", timeout=120)
            self.invoke("kubectl", "--", "get", "events", "-A", "--sort-by=.lastTimestamp")


@contextmanager
def running_stack(request: pytest.FixtureRequest, images: str) -> Iterator[Stack]:
    """Bring a stack up with `invoke up`; on exit dump diagnostics if anything failed, tear down."""
    require_docker()
    project = f"airflow-k3s-test-{uuid.uuid4().hex[:8]}"
    state_dir = Path(tempfile.mkdtemp(prefix=f"{project}-"))
    env = {
        **os.environ,
        "IMAGES": images,
        "COMPOSE_PROJECT_NAME": project,
        "AIRFLOW_K3S_STATE_DIR": str(state_dir),
    }
    for name in tasks.PORTS:
        env[name] = str(free_port())
    stack = Stack(images=images, project=project, state_dir=state_dir, env=env)
    failed_before = request.session.testsfailed
    up = stack.invoke("up", timeout=2400)
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
