"""DAGs of the faults tier (tests/faults): tasks that fail the ways a cluster makes tasks fail.

- ``faults_oom``: a task that uses more memory than its pod's limit (pod_override: 256Mi): the
  kernel kills it, the pod's container ends ``OOMKilled``.
- ``faults_rejected``: a pod_override the API server refuses (a label value Kubernetes does not
  allow): no pod is created, the task fails at once.
- ``faults_privileged``: a pod_override that asks for a privileged container, which the
  ``baseline`` and ``restricted`` Pod Security levels refuse (POD_SECURITY): with either, the API
  server refuses the pod and the task fails at once, saying why.
- ``faults_node_loss``: a task on the ``highmem`` pool (NODE_POOLS, k3s/node-pools.example.yaml:
  two nodes) whose first try waits to be lost with its node and whose retry returns at once.
"""

from __future__ import annotations

import time
from datetime import timedelta

from airflow.sdk import dag, get_current_context, task
from kubernetes.client import models as k8s

LIMITED = k8s.V1Pod(
    spec=k8s.V1PodSpec(
        containers=[
            k8s.V1Container(
                name="base",
                resources=k8s.V1ResourceRequirements(
                    requests={"memory": "128Mi"}, limits={"memory": "256Mi"}
                ),
            )
        ]
    )
)
REJECTED = k8s.V1Pod(
    metadata=k8s.V1ObjectMeta(labels={"airflow-k3s/invalid": "not a valid value!"})
)
PRIVILEGED = k8s.V1Pod(
    spec=k8s.V1PodSpec(
        containers=[
            k8s.V1Container(name="base", security_context=k8s.V1SecurityContext(privileged=True))
        ]
    )
)


@task(executor_config={"pod_override": LIMITED})
def hog() -> int:
    """Hold 1 GiB, four times the pod's limit."""
    held = [bytearray(64 * 1024 * 1024) for _ in range(16)]
    return len(held)


@task(executor_config={"pod_override": REJECTED})
def refused() -> None:
    """Never runs: its pod is refused by the API server."""


@task(executor_config={"pod_override": PRIVILEGED})
def privileged() -> None:
    """Refused where the namespace enforces baseline or restricted Pod Security."""


ON_HIGHMEM = k8s.V1Pod(
    spec=k8s.V1PodSpec(
        containers=[k8s.V1Container(name="base")], node_selector={"airflow-k3s/pool": "highmem"}
    )
)


@task(
    executor_config={"pod_override": ON_HIGHMEM},
    retries=1,
    retry_delay=timedelta(seconds=5),
)
def hold() -> str:
    """Try 1 waits (the test stops its node meanwhile); the retry returns at once."""
    try_number = get_current_context()["ti"].try_number
    if try_number == 1:
        time.sleep(900)
    return f"try {try_number}"


@dag(dag_id="faults_oom", schedule=None, catchup=False, tags=["faults"], doc_md=__doc__)
def faults_oom() -> None:
    hog()


@dag(dag_id="faults_rejected", schedule=None, catchup=False, tags=["faults"], doc_md=__doc__)
def faults_rejected() -> None:
    refused()


@dag(dag_id="faults_privileged", schedule=None, catchup=False, tags=["faults"], doc_md=__doc__)
def faults_privileged() -> None:
    privileged()


@dag(dag_id="faults_node_loss", schedule=None, catchup=False, tags=["faults"], doc_md=__doc__)
def faults_node_loss() -> None:
    hold()


faults_oom()
faults_rejected()
faults_privileged()
faults_node_loss()
