"""DAGs of the faults tier (tests/faults): tasks that fail the ways a cluster makes tasks fail.

- ``faults_oom``: a task that uses more memory than its pod's limit (pod_override: 256Mi): the
  kernel kills it, the pod's container ends ``OOMKilled``.
- ``faults_rejected``: a pod_override the API server refuses (a label value Kubernetes does not
  allow): no pod is created, the task fails at once.
- ``faults_privileged``: a pod_override that asks for a privileged container, which the
  ``baseline`` and ``restricted`` Pod Security levels refuse (POD_SECURITY): with either, the API
  server refuses the pod and the task fails at once, saying why.
"""

from __future__ import annotations

from airflow.sdk import dag, task
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


@dag(dag_id="faults_oom", schedule=None, catchup=False, tags=["faults"], doc_md=__doc__)
def faults_oom() -> None:
    hog()


@dag(dag_id="faults_rejected", schedule=None, catchup=False, tags=["faults"], doc_md=__doc__)
def faults_rejected() -> None:
    refused()


@dag(dag_id="faults_privileged", schedule=None, catchup=False, tags=["faults"], doc_md=__doc__)
def faults_privileged() -> None:
    privileged()


faults_oom()
faults_rejected()
faults_privileged()
