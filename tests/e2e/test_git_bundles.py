"""DAG_SOURCE=git on the cluster: the tier's stack switched to DAGs from its git server (`invoke
up` with DAG_SOURCE=git), a DAG published in two versions while a run of the first is in flight.
The run keeps the version it was created with, a new run gets the new one, the API lists both,
and the worker pods of both ran the same image (the DAG came from git, not from the image).
This module runs last in the tier (tests/e2e/conftest.py): the stack stays in git mode.
"""

from __future__ import annotations

import re
import time

import pytest

from airflow_k3s.cluster import pod_bundle, pod_label_value, pod_selector
from tests.harness import Stack

pytestmark = pytest.mark.docker
PROBE = "bundle_probe"
GO = "bundle_probe_go"


def probe_dag(value: str) -> str:
    """The DAG file: its first task waits for the Variable GO, its second returns ``value``."""
    return f'''"""Written by tests/e2e/test_git_bundles.py: which version a run used."""

from __future__ import annotations

import time

from airflow.sdk import Variable, dag, task

VALUE = "{value}"


# The value in the description too: a new DAG version in Airflow is a change of the DAG's
# structure (its serialized form); a change of task code alone is a new bundle version only.
@dag(dag_id="{PROBE}", schedule=None, catchup=False, tags=["test"], description="{value}")
def bundle_probe() -> None:
    @task
    def wait_for_go() -> None:
        deadline = time.monotonic() + 300
        while Variable.get("{GO}", default=None) is None:
            if time.monotonic() > deadline:
                raise TimeoutError("the test did not set {GO}")
            time.sleep(1)

    @task
    def value() -> str:
        return VALUE

    wait_for_go() >> value()


bundle_probe()
'''


@pytest.fixture(scope="module")
def git_stack(stack: Stack) -> Stack:
    """The tier's stack, brought up again with DAG_SOURCE=git (the worker image rebuilt without
    DAG files, the git-server started, the Airflow services given the bundle)."""
    stack.env["DAG_SOURCE"] = "git"
    up = stack.invoke("up", timeout=1800)
    assert up.returncode == 0, up.stderr[-3000:]
    assert "DAG_SOURCE=git" in up.stderr
    return stack


def publish(stack: Stack) -> str:
    """`invoke publish-dags`, which must succeed: the version (a commit) it prints."""
    result = stack.invoke("publish-dags", timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    version = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"[0-9a-f]{40}", version), result.stdout
    return version


def wait_for_state(stack: Stack, run_id: str, task_id: str, want: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        _, tis = stack.api().run_state(PROBE, run_id)
        state = tis.get(task_id, {}).get("state")
        if state == want:
            return
        assert state not in ("failed", "upstream_failed"), f"{task_id} of {run_id} is {state}"
        assert time.monotonic() < deadline, f"{task_id} of {run_id} is {state}, not {want}"
        time.sleep(1)


def test_the_worker_image_holds_no_dag_file(git_stack: Stack) -> None:
    image = git_stack.settings.worker_image
    listing = git_stack.docker.docker(
        "run",
        "--rm",
        "--entrypoint",
        "python",
        image,
        "-c",
        "import os; print(sorted(os.listdir('/opt/airflow/dags')))",
    )
    assert listing.stdout.strip() == "[]"


def test_a_run_keeps_its_version_while_a_new_one_is_published(git_stack: Stack) -> None:
    stack = git_stack
    api = stack.api()
    api.http.delete(f"/api/v2/variables/{GO}")  # absent: the first task waits
    (stack.dags_dir / "bundle_probe.py").write_text(probe_dag("v1"))
    v1 = publish(stack)

    trigger = stack.invoke("trigger-dag", PROBE, timeout=300)
    assert trigger.returncode == 0, trigger.stderr[-3000:]
    first_run = trigger.stdout.strip().splitlines()[-1]
    assert f"bundle dags@{v1[:12]}" in trigger.stderr
    wait_for_state(stack, first_run, "wait_for_go", "running", timeout=300)

    (stack.dags_dir / "bundle_probe.py").write_text(probe_dag("v2"))
    v2 = publish(stack)
    assert v2 != v1
    api.http.post("/api/v2/variables", json={"key": GO, "value": "1"}).raise_for_status()
    wait_for_state(stack, first_run, "value", "success", timeout=300)
    assert api.xcom(PROBE, first_run, "value") == "v1"  # the version it was created with

    second_run = stack.run_dag(PROBE, timeout=300)
    assert api.xcom(PROBE, second_run, "value") == "v2"

    versions = api.get(f"/api/v2/dags/{PROBE}/dagVersions")["dag_versions"]
    assert {v["bundle_version"] for v in versions} >= {v1, v2}, versions
    assert all(v["bundle_name"] == "dags" for v in versions)

    pods = stack.pods(pod_selector(PROBE))
    by_run: dict[str, set[str]] = {}
    for pod in pods:
        by_run.setdefault(pod["metadata"]["labels"]["run_id"], set()).add(pod_bundle(pod))
    assert by_run == {
        pod_label_value(first_run): {f"dags@{v1[:12]}"},
        pod_label_value(second_run): {f"dags@{v2[:12]}"},
    }
    image_ids = {pod["status"]["containerStatuses"][0]["imageID"] for pod in pods}
    assert len(image_ids) == 1, image_ids  # one image, two versions of the DAG

    logs = stack.invoke("pod-logs", "value", "--dag-id", PROBE, "--run-id", first_run)
    assert logs.returncode == 0, logs.stderr[-2000:]
    assert f"DAG bundle dags@{v1[:12]}" in logs.stdout


def test_a_broken_version_is_named_and_stalls_the_runs_in_flight_until_fixed(
    git_stack: Stack,
) -> None:
    """What Airflow 3.3 does with a DAG whose file fails to import in a new version (written
    down in the README): publish names the file, line and error (exit 11); the DAG goes stale,
    and a run of it in flight stops being scheduled (its running task ends, the next one waits)
    until a version that imports is published; then it goes on, at its own commit."""
    stack = git_stack
    api = stack.api()
    api.http.delete(f"/api/v2/variables/{GO}")
    path = stack.dags_dir / "bundle_probe.py"
    path.write_text(probe_dag("v3"))
    good = publish(stack)
    trigger = stack.invoke("trigger-dag", PROBE, timeout=300)
    assert trigger.returncode == 0, trigger.stderr[-3000:]
    run_id = trigger.stdout.strip().splitlines()[-1]
    wait_for_state(stack, run_id, "wait_for_go", "running", timeout=300)

    path.write_text(probe_dag("v4") + "\nraise RuntimeError('broken on purpose')\n")
    broken = stack.invoke("publish-dags", timeout=300)
    assert broken.returncode == 11, broken.stderr[-2000:]  # ExitCode.IMPORT_ERRORS
    line = len(probe_dag("v4").splitlines()) + 2
    assert (
        f"bundle_probe.py: line {line}: RuntimeError: broken on purpose"
        in broken.stderr.strip().splitlines()[-1]
    )
    api.http.post("/api/v2/variables", json={"key": GO, "value": "1"}).raise_for_status()
    wait_for_state(stack, run_id, "wait_for_go", "success", timeout=120)
    time.sleep(30)  # several scheduler loops
    _, tis = api.run_state(PROBE, run_id)
    assert tis["value"].get("state") in (None, ""), tis["value"]  # not scheduled: stalled

    path.write_text(probe_dag("v4"))
    publish(stack)
    wait_for_state(stack, run_id, "value", "success", timeout=120)
    assert api.xcom(PROBE, run_id, "value") == "v3"  # the run's own commit, good's
    assert f"bundle dags@{good[:12]}" in trigger.stderr
