"""The executor in a namespace of the user's choice, on the running stack: a copy of airflow.env
($AIRFLOW_ENV_FILE) names `airflow-tasks`, `invoke up` makes it (the Namespace, its shared volume,
the identities, the worker Secret, each service's credential), the demo runs its pods there and
nowhere else, and `invoke up` with the repo's airflow.env brings the stack back to `default`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_k3s import identities
from airflow_k3s.cluster import pod_label_value
from airflow_k3s.generated import SHARED_CLAIM, shared_volume_name
from tests.faults.faultlib import DAG, kubectl_as, service_kubeconfig, variant, whoami
from tests.harness import DEMO_TASKS, Stack, airflow_env_in

pytestmark = pytest.mark.docker
NAMESPACE = "airflow-tasks"


def test_the_executor_runs_its_pods_in_the_namespace_airflow_env_names(
    stack: Stack, tmp_path: Path
) -> None:
    moved = variant(stack, AIRFLOW_ENV_FILE=str(airflow_env_in(tmp_path, NAMESPACE)))
    up = moved.invoke("up", "--no-build", timeout=600)
    assert up.returncode == 0, up.stderr[-3000:]
    try:
        labels = stack.kubectl_json("get", "namespace", NAMESPACE)["metadata"]["labels"]
        assert labels["app.kubernetes.io/part-of"] == "airflow-k3s"
        assert labels["pod-security.kubernetes.io/enforce"] == "privileged", "POD_SECURITY's"

        run_id = moved.run_dag(DAG, timeout=400)
        selector = f"run_id={pod_label_value(run_id)}"
        pods = stack.kubectl_json("get", "pods", "--all-namespaces", "-l", selector)["items"]
        assert {p["metadata"]["namespace"] for p in pods} == {NAMESPACE}, "none in default"
        assert {p["metadata"]["labels"]["task_id"] for p in pods} == DEMO_TASKS
        claim = stack.kubectl_json("get", "pvc", SHARED_CLAIM, "-n", NAMESPACE)
        assert claim["status"]["phase"] == "Bound"
        assert claim["spec"]["volumeName"] == shared_volume_name(NAMESPACE)

        # The scheduler's own credential, as its container holds it after the move.
        scheduler = service_kubeconfig(stack, "airflow-scheduler", tmp_path)
        assert whoami(scheduler) == identities.account(identities.SCHEDULER, NAMESPACE)
        assert kubectl_as(scheduler, "auth", "can-i", "create", "pods", "-n", NAMESPACE) == "yes"
        assert kubectl_as(scheduler, "auth", "can-i", "create", "pods", "-n", "default") == "no"
    finally:
        back = stack.invoke("up", "--no-build", timeout=600)  # the repo's airflow.env again
    assert back.returncode == 0, back.stderr[-3000:]
    scheduler = service_kubeconfig(stack, "airflow-scheduler", tmp_path)
    assert whoami(scheduler) == identities.account(identities.SCHEDULER, "default")
