"""DAGs of the benchmark (`nox -s bench`, tests/bench): trivial tasks, to measure what the
KubernetesExecutor and the cluster add to each task.

- ``bench_trivial``: one task that returns at once.
- ``bench_mapped``: ``n`` mapped copies of it (the run's conf: ``{"n": 50}``), after one task that
  makes the list to map over.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import dag, get_current_context, task


@task
def noop(x: int = 0) -> int:
    """Return at once: what is left of the task's time is the executor's and the pod's."""
    return x


@task
def items() -> list[int]:
    """The list the mapped task runs over: range(conf["n"])."""
    conf: dict[str, Any] = get_current_context()["dag_run"].conf or {}
    return list(range(int(conf.get("n", 10))))


@dag(dag_id="bench_trivial", schedule=None, catchup=False, tags=["bench"], doc_md=__doc__)
def bench_trivial() -> None:
    noop()


@dag(
    dag_id="bench_mapped",
    schedule=None,
    catchup=False,
    tags=["bench"],
    doc_md=__doc__,
    max_active_tasks=64,
)
def bench_mapped() -> None:
    noop.expand(x=items())


bench_trivial()
bench_mapped()
