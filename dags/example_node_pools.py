"""Example: tasks placed on node pools with their ``pod_override`` (NODE_POOLS).

Runs on a cluster with the pools of k3s/node-pools.example.yaml (`NODE_POOLS=k3s/node-pools.
example.yaml invoke up`): a pool `highmem` of two untainted nodes and a pool `gpu` of one node
tainted `airflow-k3s/pool=gpu:NoSchedule`. Every agent node carries `airflow-k3s/pool=<pool>`.

- ``on_gpu``: a ``nodeSelector`` for the gpu pool and a toleration of its taint (both are needed:
  the selector picks the pool, the toleration lets the pod onto its tainted nodes).
- ``on_highmem``: a required node affinity for the highmem pool (affinity can say more than a
  selector: ``In`` several pools, ``NotIn``, preferences).
- ``anywhere``: nothing asked; it lands on any node that does not repel it (not the gpu node).

Each returns the name of the node it ran on (the downward API's ``spec.nodeName``). Without the
pools, ``on_gpu`` and ``on_highmem`` have no node to go to: `invoke trigger-dag
example_node_pools --wait` says so at once, with the scheduler's reason.
"""

from __future__ import annotations

import os

from airflow.sdk import dag, task
from kubernetes.client import models as k8s

POOL_LABEL = "airflow-k3s/pool"
NODE_NAME = k8s.V1EnvVar(
    name="NODE_NAME",
    value_from=k8s.V1EnvVarSource(field_ref=k8s.V1ObjectFieldSelector(field_path="spec.nodeName")),
)


def _pod(spec: dict[str, object]) -> k8s.V1Pod:
    """A pod_override: the ``base`` container told its node's name, and ``spec`` beside it."""
    return k8s.V1Pod(
        spec=k8s.V1PodSpec(containers=[k8s.V1Container(name="base", env=[NODE_NAME])], **spec)
    )


ON_GPU = _pod(
    {
        "node_selector": {POOL_LABEL: "gpu"},
        "tolerations": [
            k8s.V1Toleration(key=POOL_LABEL, operator="Equal", value="gpu", effect="NoSchedule")
        ],
    }
)
ON_HIGHMEM = _pod(
    {
        "affinity": k8s.V1Affinity(
            node_affinity=k8s.V1NodeAffinity(
                required_during_scheduling_ignored_during_execution=k8s.V1NodeSelector(
                    node_selector_terms=[
                        k8s.V1NodeSelectorTerm(
                            match_expressions=[
                                k8s.V1NodeSelectorRequirement(
                                    key=POOL_LABEL, operator="In", values=["highmem"]
                                )
                            ]
                        )
                    ]
                )
            )
        )
    }
)
ANYWHERE = _pod({})


def _node() -> str:
    return os.environ.get("NODE_NAME", "?")


@task(executor_config={"pod_override": ON_GPU})
def on_gpu() -> str:
    return _node()


@task(executor_config={"pod_override": ON_HIGHMEM})
def on_highmem() -> str:
    return _node()


@task(executor_config={"pod_override": ANYWHERE})
def anywhere() -> str:
    return _node()


@dag(
    dag_id="example_node_pools",
    schedule=None,
    catchup=False,
    tags=["example", "node-pools"],
    doc_md=__doc__,
)
def example_node_pools() -> None:
    on_gpu()
    on_highmem()
    anywhere()


example_node_pools()
