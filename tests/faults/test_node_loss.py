"""A node lost mid-run (NODE_POOLS): the running stack gets the example's pools (`invoke up` with
NODE_POOLS), a task runs on one of the two `highmem` agents, that agent's container is killed, and
Airflow retries the task on the other one: the run succeeds. The time from the loss to the retry
is measured and printed (docs/reliability.md has the figure and the settings that decide it). The
agent started again rejoins as the same node; `invoke up` without NODE_POOLS then removes the
agents, containers and Node objects both.
"""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any

import pytest

from airflow_k3s import pools
from airflow_k3s.cluster import pod_selector
from airflow_k3s.settings import ROOT
from tests.faults.faultlib import variant, wait_for, wait_run
from tests.harness import Stack, to_terminal

pytestmark = pytest.mark.docker
DAG = "faults_node_loss"
EXAMPLE = ROOT / "k3s" / "node-pools.example.yaml"
#: [scheduler] task_instance_heartbeat_timeout (airflow.env) and its detection interval, the
#: retry delay and a pod's start: the loss-to-retry time stays under this.
RECOVERY_LIMIT = 150.0


def node_ready(stack: Stack, name: str) -> dict[str, Any] | None:
    node = stack.kubectl_json("get", "node", name)
    conditions = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    return node if conditions.get("Ready") == "True" else None


def hold_pods(stack: Stack, run_id: str) -> dict[int, dict[str, Any]]:
    """try_number -> the pod of that try of `hold`."""
    pods = stack.pods(pod_selector(DAG, "hold", run_id))
    return {int(p["metadata"]["labels"]["try_number"]): p for p in pods}


def started(pod: dict[str, Any]) -> float:
    stamp = str(pod["metadata"]["creationTimestamp"])
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def test_a_task_lost_with_its_node_is_retried_on_another_and_the_node_rejoins(
    stack: Stack, request: pytest.FixtureRequest
) -> None:
    pooled = variant(stack, NODE_POOLS=str(EXAMPLE))
    up = pooled.invoke("up", "--no-build", timeout=900)
    assert up.returncode == 0, up.stderr[-3000:]
    try:
        names = pools.node_names(pools.load(EXAMPLE))
        for name in names:
            wait_for(f"node {name} Ready", lambda n=name: node_ready(stack, n), 180, 2)

        trigger = pooled.invoke("trigger-dag", DAG, timeout=300)
        assert trigger.returncode == 0, trigger.stderr[-2000:]
        run_id = trigger.stdout.strip().splitlines()[-1]

        def first_running() -> dict[str, Any] | None:
            pod = hold_pods(stack, run_id).get(1)
            return pod if pod and pod["status"].get("phase") == "Running" else None

        first = wait_for("try 1 of hold running", first_running, 300, 1)
        lost = str(first["spec"]["nodeName"])
        assert lost.startswith("agent-highmem-"), lost
        uid = stack.kubectl_json("get", "node", lost)["metadata"]["uid"]
        time.sleep(10)  # the task is past its start: it heartbeats from the lost node
        killed_at = time.time()
        pooled.docker.docker("kill", f"{stack.project}-{lost}-1")

        state, tasks = wait_run(pooled, run_id, DAG, timeout=400)
        assert state == "success", tasks
        assert tasks["hold"] == ("success", 2)
        retry = hold_pods(stack, run_id)[2]
        moved = str(retry["spec"]["nodeName"])
        assert moved.startswith("agent-highmem-"), moved
        assert moved != lost
        recovery = started(retry) - killed_at
        to_terminal(
            request,
            f"\nnode loss: {lost} killed; the retry's pod was made {recovery:.0f} s later, on "
            f"{moved}",
        )
        assert 0 < recovery < RECOVERY_LIMIT, recovery
        assert stack.api().xcom(DAG, run_id, "hold") == "try 2"

        # The node back: the same Node object (uid), Ready again.
        pooled.docker.docker("start", f"{stack.project}-{lost}-1")
        again = wait_for(f"node {lost} Ready again", lambda: node_ready(stack, lost), 240, 2)
        assert again["metadata"]["uid"] == uid
    finally:
        back = stack.invoke("up", "--no-build", timeout=600)  # NODE_POOLS unset: agents go
    assert back.returncode == 0, back.stderr[-3000:]
    nodes = stack.kubectl_json("get", "nodes")["items"]
    assert [n["metadata"]["name"] for n in nodes] == ["k3s"]
    assert not [s for s in stack.docker.service_states() if s.startswith("agent-")]
