"""A stack owned by a test session (the Docker tiers), driven through the task library.

Like Airflow's docker-tests: a unique compose project and state dir, free ports, diagnostics dumped
on failure, teardown with `invoke clean` unless AIRFLOW_K3S_KEEP_STACK=1, and a check that nothing
of the project is left behind. Without a Docker engine the tiers FAIL, unless the user opts out
with AIRFLOW_K3S_SKIP_DOCKER_TESTS=1 (then they skip, saying so loudly).
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from airflow_k3s import shell
from airflow_k3s.airflow_api import AirflowAPI
from airflow_k3s.boundary import Stack as Boundary
from airflow_k3s.cluster import Kubectl
from airflow_k3s.docker import Docker
from airflow_k3s.exits import UserError
from airflow_k3s.settings import NAMESPACE_OPTION, ROOT, Settings, published_ports
from airflow_k3s.userfiles import IGNORED

SERVICES = {
    "postgres",
    "s3",
    "mockserver",
    "registry",
    "k3s",
    "airflow-init",
    "kube-credentials",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
}
DEMO = "demo_rest_to_s3"
DEMO_TASKS = {"fetch", "upload", "verify"}


def require_docker() -> None:
    """Fail loudly (or skip, if explicitly asked) when no Docker engine answers."""
    try:
        Docker(Settings()).check()
        return
    except UserError:
        pass
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
    """A running stack of one compose project, and ways to look into it: the package's own
    boundary (airflow_k3s.boundary.Stack) with this stack's environment."""

    images: str
    project: str
    state_dir: Path
    env: dict[str, str]

    @property
    def settings(self) -> Settings:
        """The settings as they are now (`invoke up` writes .env after the stack is made)."""
        return Settings.load(environ=self.env)

    @property
    def boundary(self) -> Boundary:
        return Boundary.load(self.env)

    @property
    def docker(self) -> Docker:
        """Docker and the stack's compose project, as the package runs them."""
        return self.boundary.docker

    @property
    def dags_dir(self) -> Path:
        """The stack's DAGs folder (a copy of the repo's, see dags_copy)."""
        return self.settings.dags_dir

    @property
    def kube(self) -> Kubectl:
        return self.boundary.kube

    def compose_config(self, images: str) -> dict[str, Any]:
        """`docker compose config` as the task library runs compose for ``images``."""
        return Boundary.load({**self.env, "IMAGES": images}).docker.config()

    def container(self, service: str) -> dict[str, Any]:
        """`docker inspect` of a service's container."""
        docker = self.docker
        name = next(str(c["Name"]) for c in docker.containers(service))
        return docker.inspect("container", name)

    def invoke(self, *args: str, timeout: float = 900) -> shell.Result:
        """Run a task of the task library as a user would; echo its output for the test log."""
        command = [sys.executable, "-m", "invoke", *args]
        result = shell.run(command, check=False, cwd=ROOT, env=self.env, timeout=timeout)
        print(f"$ invoke {' '.join(args)}  -> exit {result.returncode}")
        print(result.stdout[-4000:], result.stderr[-8000:], sep="\n")
        return result

    def start_invoke(self, *args: str) -> Any:
        """Start a task of the task library in the background (a Popen: communicate() waits)."""
        print(f"$ invoke {' '.join(args)} &")
        return shell.start([sys.executable, "-m", "invoke", *args], env=self.env, cwd=ROOT)

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

    def kubectl(self, *args: str) -> shell.Result:
        """kubectl against the stack's cluster (the host's kubeconfig copy), unchecked."""
        return self.kube.run(*args, check=False, timeout=120)

    def kubectl_json(self, *args: str) -> Any:
        return self.kube.json(*args)

    def pods(self, selector: str) -> list[dict[str, Any]]:
        """Pods of the executor's namespace matching a label selector, oldest first."""
        return self.kube.worker_pods(selector)

    def s3(self) -> Any:
        return self.boundary.s3()

    def s3_object(self, bucket: str, key: str, timeout: float = 60) -> bytes:
        """An object's bytes, waiting for it: a worker uploads its task log after the task's state
        is already success (Airflow 3's supervisor uploads when the task process has exited)."""
        s3 = self.s3()

        def fetched() -> bytes:
            try:
                return bytes(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            except s3.exceptions.NoSuchKey:
                return b""

        return shell.poll(f"s3://{bucket}/{key}", fetched, timeout, 1)

    def api(self) -> AirflowAPI:
        """A client logged in anew (a test may have changed the password or restarted the API)."""
        return self.boundary.api()

    def leftovers(self) -> list[str]:
        """Containers, networks and volumes of this project that still exist."""
        docker = self.docker
        return [
            f"{kind} {name}"
            for kind in ("container", "network", "volume")
            for name in docker.project_objects(kind)
        ]

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


def dags_copy(project: str) -> Path:
    """A copy of the repo's DAGs folder for a test stack (DAGS_DIR): tests add and remove DAG
    files there, never in the checkout. Readable by the Airflow containers' user (50000)."""
    folder = Path(tempfile.mkdtemp(prefix=f"{project}-dags-"))
    os.chmod(folder, 0o755)
    shutil.copytree(
        ROOT / "dags", folder, dirs_exist_ok=True, ignore=shutil.ignore_patterns(*IGNORED)
    )
    return folder


def airflow_env_in(folder: Path, namespace: str) -> Path:
    """A copy of the repo's airflow.env in ``folder`` (for $AIRFLOW_ENV_FILE) whose executor runs
    in ``namespace``."""
    text = (ROOT / "airflow" / "airflow.env").read_text()
    line = f"\n{NAMESPACE_OPTION}=default\n"
    assert line in text, "airflow.env no longer names the executor's namespace"
    path = folder / "airflow.env"
    path.write_text(text.replace(line, f"\n{NAMESPACE_OPTION}={namespace}\n"))
    return path


def stack_env(images: str, project: str, state_dir: Path) -> dict[str, str]:
    """The environment of a test stack: its own project, state dir, DAGs folder and free ports."""
    env = {
        **os.environ,
        "IMAGES": images,
        "COMPOSE_PROJECT_NAME": project,
        "AIRFLOW_K3S_STATE_DIR": str(state_dir),
        "DAGS_DIR": str(dags_copy(project)),
    }
    for port in published_ports():
        env[port.variable] = str(free_port())
    return env


def to_terminal(request: pytest.FixtureRequest, text: str) -> None:
    """Write to the terminal past pytest's capture: a figure a test measured shows in the CI log
    whether the test passed or not."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled():
        sys.stderr.write(text + "\n")


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
    to_terminal(request, "\n".join(["", f"`invoke up` of {project}:", *progress, ""]))
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
            shutil.rmtree(stack.env["DAGS_DIR"], ignore_errors=True)
            clean = stack.invoke("clean", timeout=300)
            left = stack.leftovers()
            assert clean.returncode == 0, clean.stderr
            assert not left, f"`invoke clean` left these behind: {left}"
            assert not (state_dir / ".env").exists(), ".env survived `invoke clean`"
