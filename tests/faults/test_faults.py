"""Faults on a running stack (IMAGES=local), in this order, each leaving the stack usable for the
next: a scheduler restart and an S3 outage during runs, a postgres restart, `invoke up` twice,
`invoke down` + `invoke up`, and last `invoke clean`.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from demo_lib import object_key
from faults.faultlib import DAG, task_states, trigger, wait_for, wait_run
from harness import Stack

import tasks

pytestmark = pytest.mark.docker
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def pod_running(stack: Stack, run_id: str) -> bool:
    """Whether a worker container of the run is running right now."""
    pods = tasks.standin_pods(
        stack.docker(), stack.settings, f"pod.label/run_id={tasks.pod_label_value(run_id)}"
    )
    return any(p.state.running for p in pods)


def state_of(stack: Stack, run_id: str, task_id: str) -> str:
    return task_states(stack, run_id)[1].get(task_id, ("", 0))[0]


def wait_healthy(stack: Stack, timeout: float = 240) -> None:
    docker = stack.docker()
    expected = set(docker.compose.config(return_json=True)["services"])
    wait_for(
        "every service to be healthy again",
        lambda: not tasks.not_ready(tasks.service_states(docker), expected),
        timeout,
        poll=2,
    )


def container_ids(stack: Stack) -> dict[str, str]:
    return {
        (c.config.labels or {})["com.docker.compose.service"]: c.id
        for c in stack.docker().compose.ps(all=True)
    }


def s3_objects(stack: Stack) -> dict[str, str]:
    s3 = stack.s3()
    found: dict[str, str] = {}
    for bucket in ("airflow-data", "airflow-logs"):
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                found[f"{bucket}/{obj['Key']}"] = obj["ETag"]
    return found


def dag_runs(stack: Stack) -> dict[str, str]:
    runs = stack.api().get(f"/api/v2/dags/{DAG}/dagRuns", limit=100)["dag_runs"]
    return {r["dag_run_id"]: r["state"] for r in runs}


def test_scheduler_restart_during_a_run(stack: Stack) -> None:
    run_id = trigger(stack)
    wait_for("a worker pod of the run to be running", lambda: pod_running(stack, run_id), 120)
    stack.docker().compose.restart("airflow-scheduler")
    state, tis = wait_run(stack, run_id)
    assert state == "success", tis
    assert {t: s for t, (s, _try) in tis.items()} == dict.fromkeys(tis, "success")


def test_s3_outage_while_tasks_write(stack: Stack) -> None:
    docker = stack.docker()
    # S3 goes down before the run: fetch needs no S3 (REST endpoint -> shared volume), so the
    # first task to write into the outage is always upload. (Stopping it "while fetch runs" raced
    # with fetch's one-second run.)
    docker.compose.stop("s3")
    try:
        run_id = trigger(stack)
        wait_for(
            "upload's first try to fail",
            lambda: state_of(stack, run_id, "upload") == "up_for_retry",
            180,
        )
    finally:
        docker.compose.start("s3")  # back before the retry (retry_delay 10 s)
    state, tis = wait_run(stack, run_id)
    assert state == "success", tis
    assert tis["upload"] == ("success", 2), "upload succeeded on its retry"
    # Where the failed try's error is visible: S3 had no copy of its log, the pod's output has it.
    shown = stack.invoke("pod-logs", "upload", "--run-id", run_id, "--try-number", "1")
    assert shown.returncode == 0, shown.stderr
    assert (
        "[error] Task failed with exception: EndpointConnectionError: Could not connect to the "
        'endpoint URL: "http://s3:8333/airflow-data/orders/'
    ) in shown.stdout
    assert "(final_state=up_for_retry" in shown.stdout
    through_api = stack.api().task_log(DAG, run_id, "upload", 1)
    print("the API's log of upload try 1:", through_api[-600:])
    # Nothing lost: the object is there and the retry's log reached S3.
    assert stack.s3_object("airflow-data", object_key(run_id))
    key = f"logs/dag_id={DAG}/run_id={run_id}/task_id=upload/attempt=2.log"
    assert "Done. Returned value was" in stack.s3_object("airflow-logs", key).decode()


def test_postgres_restart_during_a_run(stack: Stack) -> None:
    run_id = trigger(stack)
    wait_for("a worker pod of the run to be running", lambda: pod_running(stack, run_id), 120)
    stack.docker().compose.restart("postgres")
    state, tis = wait_run(stack, run_id)
    print(f"the run in flight during the postgres restart ended {state}: {tis}")
    wait_healthy(stack)
    after = stack.invoke("trigger-dag", DAG, "--wait", "--timeout", "400")
    assert after.returncode == 0, after.stderr[-4000:]
    restarts = {
        (c.config.labels or {})["com.docker.compose.service"]: c.restart_count
        for c in stack.docker().compose.ps()
    }
    print("restart counts after the postgres restart:", json.dumps(restarts, sort_keys=True))


def test_up_twice_changes_nothing(stack: Stack) -> None:
    before = container_ids(stack)
    for attempt in (1, 2):
        result = stack.invoke("up", timeout=900)
        assert result.returncode == 0, f"`invoke up` #{attempt}: {result.stderr[-3000:]}"
        assert container_ids(stack) == before, f"`invoke up` #{attempt} replaced containers"
    assert "Traceback" not in result.stderr


def test_down_then_up_keeps_runs_objects_and_images(stack: Stack) -> None:
    registry = f"http://127.0.0.1:{stack.settings.ports['REGISTRY_PORT']}/v2/airflow-worker"
    manifest = httpx.get(f"{registry}/manifests/latest", headers={"Accept": MANIFEST_V2})
    digest = manifest.headers["Docker-Content-Digest"]
    # A second tag that only a kept registry volume can still have after `up` (which re-pushes
    # `latest`).
    put = httpx.put(
        f"{registry}/manifests/kept-by-down",
        content=manifest.content,
        headers={"Content-Type": MANIFEST_V2},
    )
    assert put.status_code == 201, put.text
    runs, objects = dag_runs(stack), s3_objects(stack)
    assert runs
    assert any(k.startswith("airflow-data/orders/") for k in objects)

    down = stack.invoke("down", timeout=300)
    assert down.returncode == 0, down.stderr
    assert not stack.docker().compose.ps(), "containers left running after down"
    up = stack.invoke("up", timeout=900)
    assert up.returncode == 0, up.stderr[-3000:]

    assert dag_runs(stack) == runs
    assert s3_objects(stack).items() >= objects.items()
    kept = httpx.head(f"{registry}/manifests/kept-by-down", headers={"Accept": MANIFEST_V2})
    assert kept.status_code == 200
    assert kept.headers["Docker-Content-Digest"] == digest


def test_clean_leaves_nothing(stack: Stack) -> None:
    result = stack.invoke("clean", timeout=300)
    assert result.returncode == 0, result.stderr
    assert "deleting project" in result.stderr
    assert stack.leftovers() == []
    left: list[Any] = sorted(p.name for p in stack.state_dir.iterdir())
    assert left == [], f"generated files left in {stack.state_dir}: {left}"
