"""Example: two executors at once. airflow.env configures
``AIRFLOW__CORE__EXECUTOR=KubernetesExecutor,LocalExecutor``: the first is the default, so every
task runs in its own pod unless it names another executor, as ``in_the_scheduler`` does. That one
runs as a process of the scheduler's container (light, quick tasks that need no pod).
"""

from __future__ import annotations

import socket

from airflow.sdk import dag, task


@task
def in_a_pod() -> str:
    """The default executor: a worker pod. Returns the pod's name."""
    return socket.gethostname()


@task(executor="LocalExecutor")
def in_the_scheduler() -> str:
    """Pinned to LocalExecutor: a process in the scheduler's container. Returns its hostname."""
    return socket.gethostname()


@dag(
    dag_id="example_two_executors",
    schedule=None,
    catchup=False,
    doc_md=__doc__,
    tags=["example", "kubernetes"],
)
def example_two_executors() -> None:
    in_a_pod() >> in_the_scheduler()


example_two_executors()
