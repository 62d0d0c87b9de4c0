"""Node pools on the cluster. First, on the tier's single node, a task that asks for a pool no node
has: `trigger-dag --wait` names the scheduler's reason within seconds. Then the stack gets the
example's pools (`invoke up` with NODE_POOLS=k3s/node-pools.example.yaml: `highmem`, two untainted
agents; `gpu`, one tainted agent), and each placement of example_node_pools is asserted from the
API server (the pod's node, that node's labels and taints), and the shared volume is asserted
across three nodes. This module runs before test_git_bundles.py (tests/e2e/conftest.py), which
then runs on the pools too.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from airflow_k3s import pools
from airflow_k3s.cluster import pod_selector
from airflow_k3s.settings import ROOT
from tests.harness import DEMO, DEMO_TASKS, Stack, to_terminal

pytestmark = pytest.mark.docker
EXAMPLE = ROOT / "k3s" / "node-pools.example.yaml"
PLACED = "example_node_pools"
SHARED = "shared_across_nodes"


def test_a_task_no_node_can_take_is_named_at_once(
    stack: Stack, request: pytest.FixtureRequest
) -> None:
    """One node, no pools: on_gpu's pod is Pending for good; the follower says why at once."""
    follower = stack.start_invoke("trigger-dag", PLACED, "--wait", "--timeout", "90")
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(follower.stderr), daemon=True)
    reader.start()
    started = time.monotonic()
    try:
        while not any("on_gpu: no node can take pod" in line for line in lines):
            assert time.monotonic() - started < 60, "".join(lines)[-3000:]
            time.sleep(0.5)
        took = time.monotonic() - started
    finally:
        follower.kill()
        follower.wait()
    said = next(line for line in lines if "on_gpu: no node can take pod" in line)
    to_terminal(request, f"\nunschedulable, said after {took:.1f} s: {said.strip()}")
    assert "0/1 nodes are available" in said
    assert "(it asks for: nodeSelector airflow-k3s/pool=gpu; " in said
    assert "tolerates airflow-k3s/pool=gpu:NoSchedule)" in said


@pytest.fixture(scope="module")
def pooled(stack: Stack) -> Stack:
    """The tier's stack with the example's pools, for the rest of the tier."""
    stack.env["NODE_POOLS"] = str(EXAMPLE)
    up = stack.invoke("up", "--no-build", timeout=900)
    assert up.returncode == 0, up.stderr[-3000:]
    return stack


def nodes(stack: Stack) -> dict[str, dict[str, Any]]:
    return {n["metadata"]["name"]: n for n in stack.kubectl_json("get", "nodes")["items"]}


def taints(node: dict[str, Any]) -> set[str]:
    return {
        f"{t['key']}={t.get('value', '')}:{t['effect']}" for t in node["spec"].get("taints") or []
    }


def test_every_pools_node_joined_with_its_labels_and_taints(pooled: Stack) -> None:
    found = nodes(pooled)
    expected = pools.load(EXAMPLE)
    assert set(found) == {"k3s", *pools.node_names(expected)}
    for pool in expected:
        for name in pool.node_names():
            node = found[name]
            ready = {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]
            assert ready == "True", name
            labels = node["metadata"]["labels"]
            assert {k: labels.get(k) for k in pool.node_labels()} == pool.node_labels()
            assert taints(node) == set(pool.taints), name
    status = pooled.invoke("status")
    assert status.returncode == 0, status.stderr[-2000:]
    rows = [line.split() for line in status.stdout.splitlines()]
    assert ["agent-gpu-1", "healthy"] in rows  # the service
    row = next(r for r in rows if r[:2] == ["agent-gpu-1", "Ready"])  # the node
    assert row[-1] == "gpu"  # the POOL column


def test_each_task_lands_where_it_asked(pooled: Stack, request: pytest.FixtureRequest) -> None:
    run_id = pooled.run_dag(PLACED, timeout=400)
    found = nodes(pooled)
    placed = {}
    for pod in pooled.pods(pod_selector(PLACED, run_id=run_id)):
        task_id = pod["metadata"]["labels"]["task_id"]
        node = found[pod["spec"]["nodeName"]]
        placed[task_id] = node["metadata"]["name"]
        assert pooled.api().xcom(PLACED, run_id, task_id) == placed[task_id]  # the downward API
    pool_of = {name: n["metadata"]["labels"].get(pools.POOL_LABEL) for name, n in found.items()}
    to_terminal(request, f"\nexample_node_pools placed: {placed}")
    assert pool_of[placed["on_gpu"]] == "gpu"
    assert pool_of[placed["on_highmem"]] == "highmem"
    assert not taints(found[placed["anywhere"]])  # not the tainted gpu node


def shared_dag(nodes_in_order: list[str]) -> str:
    """A DAG whose three tasks run on the three given nodes and hand a file on through the shared
    volume: each reads what the one before wrote and adds its node."""
    steps = "\n".join(
        f"    s{i} = step.override(task_id='s{i}', executor_config=on('{node}'))({i})"
        for i, node in enumerate(nodes_in_order)
    )
    chain = " >> ".join(f"s{i}" for i in range(len(nodes_in_order)))
    return f'''"""Written by tests/e2e/test_node_pools.py: the shared volume across nodes."""

from __future__ import annotations

import os
from pathlib import Path

from airflow.sdk import dag, get_current_context, task
from kubernetes.client import models as k8s


def on(node: str) -> dict[str, k8s.V1Pod]:
    return {{"pod_override": k8s.V1Pod(spec=k8s.V1PodSpec(
        containers=[k8s.V1Container(name="base", env=[k8s.V1EnvVar(
            name="NODE_NAME", value_from=k8s.V1EnvVarSource(
                field_ref=k8s.V1ObjectFieldSelector(field_path="spec.nodeName")))])],
        node_selector={{"kubernetes.io/hostname": node}},
        tolerations=[k8s.V1Toleration(operator="Exists")]))}}


@task
def step(index: int) -> list[str]:
    run_id = get_current_context()["run_id"].replace(":", "_").replace("+", "_")
    path = Path("/shared") / "{SHARED}" / run_id
    path.parent.mkdir(parents=True, exist_ok=True)
    seen = path.read_text().split() if index else []
    assert len(seen) == index, seen
    path.write_text(" ".join([*seen, os.environ["NODE_NAME"]]))
    return path.read_text().split()


@dag(dag_id="{SHARED}", schedule=None, catchup=False, tags=["test"])
def shared_across_nodes() -> None:
{steps}
    {chain}


shared_across_nodes()
'''


def test_the_shared_volume_is_the_same_on_every_node(pooled: Stack) -> None:
    order = ["k3s", "agent-highmem-1", "agent-gpu-1"]
    (pooled.dags_dir / f"{SHARED}.py").write_text(shared_dag(order))
    for args in (("build", "--worker-only"), ("push",)):
        result = pooled.invoke(*args, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
    run_id = pooled.run_dag(SHARED, timeout=400)
    assert pooled.api().xcom(SHARED, run_id, "s2") == order


def test_the_demo_runs_on_the_pools(pooled: Stack, request: pytest.FixtureRequest) -> None:
    """The demo as it is (no placement asked): green, wherever the scheduler put its pods."""
    run_id = pooled.run_dag(DEMO, timeout=400)
    placed = {
        p["metadata"]["labels"]["task_id"]: p["spec"]["nodeName"]
        for p in pooled.pods(pod_selector(DEMO, run_id=run_id))
    }
    to_terminal(request, f"\ndemo placed: {placed}")
    assert set(placed) == DEMO_TASKS
    assert "agent-gpu-1" not in placed.values()  # tainted: the demo does not tolerate it
