"""Bad input against a running stack: each gets one clear line and a non-zero exit, fast.

Covered in tests/integration already: an unknown DAG id, --conf that is not JSON or not an
object, a stack that is not running.
"""

from __future__ import annotations

import re
import socket
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.faults.faultlib import DAG, one_line_error, variant, wait_for
from tests.harness import Stack, free_port

pytestmark = pytest.mark.docker
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def test_dag_file_that_fails_to_import(stack: Stack) -> None:
    name = f"fault_broken_{uuid.uuid4().hex[:8]}"
    path = stack.dags_dir / f"{name}.py"  # the stack's copy of dags/
    path.write_text(
        '"""Written by tests/faults/test_bad_input.py and removed by it: fails to import."""\n'
        "from airflow.sdk import dag\n"
        f"import no_such_module_{name}  # noqa: F401\n\n\n"
        f'@dag(dag_id="{name}", schedule=None)\n'
        f"def {name}() -> None: ...\n"
    )
    try:
        api = stack.api()
        # The dag-processor lists the folder every 10 s (AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL).
        wait_for(
            f"the import error of {path.name}",
            lambda: any(path.name in e["filename"] for e in api.import_errors()),
            timeout=120,
            poll=2,
        )
        result = stack.invoke("trigger-dag", name)
        line = one_line_error(result)
        assert result.returncode == 6
        assert f"unknown DAG id {name!r}" in line
        assert (
            f"DAG files that fail to import: {path.name}: ModuleNotFoundError: "
            f"No module named 'no_such_module_{name}'"
        ) in line
        # The same file in the worker image: `invoke parse` names it with its line, and fails.
        assert stack.invoke("build", "--worker-only").returncode == 0
        parsed = stack.invoke("parse")
        assert parsed.returncode == 11
        assert (
            f"{path.name}:3: ModuleNotFoundError: No module named 'no_such_module_{name}'"
        ) in parsed.stdout
        assert "1 file(s) with import errors" in parsed.stdout
    finally:
        path.unlink(missing_ok=True)
        assert stack.invoke("build", "--worker-only").returncode == 0


def test_host_port_already_taken(stack: Stack, tmp_path: Path) -> None:
    project = f"airflow-k3s-fault-port-{uuid.uuid4().hex[:6]}"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        names = ("AIRFLOW_PORT", "REGISTRY_PORT", "MOCKSERVER_PORT", "K3S_API_PORT")
        ports = {name: str(free_port()) for name in names}
        other = variant(
            stack,
            COMPOSE_PROJECT_NAME=project,
            AIRFLOW_K3S_STATE_DIR=str(tmp_path),
            S3_PORT=str(taken),
            **ports,
        )
        result = other.invoke("up", timeout=300)
    line = one_line_error(result)
    assert result.returncode == 9
    assert line == (
        f"port {taken} (s3) is already in use: free it or set S3_PORT=<free port> in the "
        "environment or .env"
    )
    assert other.leftovers() == [], "nothing was started"


def test_wrong_password_in_env(stack: Stack, tmp_path: Path) -> None:
    env_text = (stack.state_dir / ".env").read_text()
    real = stack.settings.secrets["AIRFLOW_ADMIN_PASSWORD"]
    (tmp_path / ".env").write_text(env_text.replace(real, "not-the-password"))
    other = variant(stack, AIRFLOW_K3S_STATE_DIR=str(tmp_path))
    result = other.invoke("trigger-dag", DAG)
    line = one_line_error(result)
    assert result.returncode == 5
    assert line == (
        f"login as 'admin' was refused by {stack.settings.airflow_url}: the password in .env "
        "(AIRFLOW_ADMIN_PASSWORD) does not match the running stack"
    )


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ('{"a": 1} trailing', '--conf is not valid JSON (Extra data at character 9): {"a": 1}'),
        ("null", "--conf must be a JSON object like '{\"key\": 1}', not null"),
    ],
)
def test_malformed_conf(stack: Stack, conf: str, message: str) -> None:
    result = stack.invoke("trigger-dag", DAG, "--conf", conf)
    assert message in one_line_error(result)
    assert result.returncode == 2


def test_unknown_task_library_option(stack: Stack) -> None:
    result = stack.invoke("up", "--no-such-flag")
    assert one_line_error(result) == "No idea what '--no-such-flag' is!"
    assert result.returncode == 1


def test_worker_image_missing_from_the_registry(stack: Stack) -> None:
    """The pod cannot pull: the task fails fast (the executor treats ErrImagePull as fatal) and
    the output shows the pod's pull error, which says "not found" (no HTTPS fallback of the
    mirrored registry: --disable-default-registry-endpoint)."""
    registry = f"http://127.0.0.1:{stack.settings.ports['REGISTRY_PORT']}/v2/airflow-worker"
    head = httpx.head(f"{registry}/manifests/latest", headers={"Accept": MANIFEST_V2})
    digest = head.headers["Docker-Content-Digest"]
    assert httpx.delete(f"{registry}/manifests/{digest}").status_code == 202
    try:
        assert httpx.head(f"{registry}/manifests/latest").status_code == 404
        started = time.monotonic()
        result = stack.invoke("trigger-dag", DAG, "--wait", "--timeout", "300")
        took = time.monotonic() - started
        assert result.returncode == 1
        assert took < 150, f"the run took {took:.0f} s to fail: it should fail fast"
        assert re.search(r"fetch: \S+ -> (failed|up_for_retry)", result.stderr)
        assert "ended: failed" in result.stderr
        assert re.search(r"----- pod demo-rest-to-s3-fetch-\S+: (Pending|Failed)", result.stderr)
        assert "ErrImagePull" in result.stderr or "ImagePullBackOff" in result.stderr
        assert "registry:5000/airflow-worker:latest" in result.stderr
        assert "not found" in result.stderr
        assert "HTTP response to HTTPS client" not in result.stderr
        assert "Traceback" not in result.stderr
    finally:
        pushed = stack.invoke("push", timeout=300)
    assert pushed.returncode == 0, pushed.stderr
    assert pushed.stdout.strip().splitlines()[-1] == digest, "the same image is back"


@pytest.mark.parametrize(
    ("task", "setting", "value", "message"),
    [
        ("build", "DAGS_DIR", "{tmp}/no-such-dags", "DAGS_DIR={tmp}/no-such-dags: no such folder"),
        (
            "up",
            "POD_TEMPLATE",
            "{tmp}/pod.yaml",
            "POD_TEMPLATE={tmp}/pod.yaml: the first container must be named base "
            "(the task runs in it), not: worker",
        ),
        (
            "up",
            "WORKER_REQUIREMENTS",
            "{tmp}/none.txt",
            "WORKER_REQUIREMENTS={tmp}/none.txt: no such file",
        ),
    ],
)
def test_users_own_files_are_checked_first(
    stack: Stack, tmp_path: Path, task: str, setting: str, value: str, message: str
) -> None:
    (tmp_path / "pod.yaml").write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: mine}\n"
        "spec: {containers: [{name: worker, image: registry:5000/airflow-worker:latest}]}\n"
    )
    other = variant(stack, **{setting: value.format(tmp=tmp_path)})
    result = other.invoke(task, timeout=300)
    assert one_line_error(result) == message.format(tmp=tmp_path)
    assert result.returncode == 2


def test_a_worker_base_image_without_the_provider_is_refused(stack: Stack) -> None:
    # An image with Python but no Airflow (the local Python base) stands for a wrong base.
    other = variant(stack, WORKER_BASE_IMAGE="airflow-k3s/python:3.11-local")
    result = other.invoke("build", "--worker-only", timeout=300)
    line = one_line_error(result)
    assert result.returncode == 2
    assert line.startswith("WORKER_BASE_IMAGE=airflow-k3s/python:3.11-local cannot run worker pods")
    assert "ModuleNotFoundError: No module named 'airflow'" in line
    assert "apache-airflow-providers-cncf-kubernetes" in line


def test_up_where_images_cannot_be_pulled_names_images_local(stack: Stack, tmp_path: Path) -> None:
    """IMAGES=upstream on a machine that reaches no image registry (these machines)."""
    project = f"airflow-k3s-fault-pull-{uuid.uuid4().hex[:6]}"
    ports = {name: str(free_port()) for name in stack.settings.ports}
    other = variant(
        stack,
        IMAGES="upstream",
        COMPOSE_PROJECT_NAME=project,
        AIRFLOW_K3S_STATE_DIR=str(tmp_path),
        **ports,
    )
    result = other.invoke("up", timeout=600)
    line = one_line_error(result)
    assert result.returncode == 8
    assert line.startswith("cannot pull ")
    assert "run with IMAGES=local, which builds every image here from packages" in line
    assert other.leftovers() == [], "nothing was started"
