"""Example: a task that launches its own pod with the KubernetesPodOperator.

The task itself runs in a worker pod (KubernetesExecutor); from there the operator asks the API
server, in-cluster, for one more pod and follows it to its end, its output in the task's log. The
worker pod runs as the ServiceAccount ``airflow-kpo`` (a ``pod_override``), which `invoke up`
renders together with a Role that allows exactly this in the executor's namespace: make, watch and
delete pods, read their logs and events (`kubectl auth can-i` checks it in the faults tier). The
pod goes to that namespace: [kubernetes_executor] namespace, which airflow.env sets for the
services and, through the worker Secret, for the worker pods.
"""

from __future__ import annotations

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk import conf, dag
from kubernetes.client import models as k8s

SERVICE_ACCOUNT = "airflow-kpo"
AS_KPO = k8s.V1Pod(
    spec=k8s.V1PodSpec(
        service_account_name=SERVICE_ACCOUNT, containers=[k8s.V1Container(name="base")]
    )
)


@dag(
    dag_id="example_kpo",
    schedule=None,
    catchup=False,
    doc_md=__doc__,
    tags=["example", "kubernetes"],
)
def example_kpo() -> None:
    KubernetesPodOperator(
        task_id="launch",
        name="example-kpo-child",
        namespace=conf.get("kubernetes_executor", "namespace"),
        image="registry:5000/airflow-worker:latest",
        cmds=["python", "-c"],
        arguments=["print('hello from the pod the task launched')"],
        in_cluster=True,
        get_logs=True,
        on_finish_action="delete_pod",
        labels={"app.kubernetes.io/part-of": "airflow-k3s", "example": "kpo-child"},
        executor_config={"pod_override": AS_KPO},
    )


example_kpo()
