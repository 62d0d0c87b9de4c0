"""Example: a task that fails, and is retried in a fresh pod.

With the KubernetesExecutor every try of a task is a new pod (its name and hostname differ, its
label ``try_number`` says which try). ``flaky`` fails on its first try and succeeds on the second;
the shared volume keeps a note of the first try so the second can prove it ran in another pod.
"""

from __future__ import annotations

import os
import socket
from datetime import timedelta
from pathlib import Path
from typing import Any

import demo_lib
from airflow.sdk import Variable, dag, get_current_context, task


@task(retries=1, retry_delay=timedelta(seconds=5))
def flaky(run_id: str | None = None) -> dict[str, Any]:
    """Fail on try 1 (noting this pod's name on the shared volume), succeed on try 2."""
    ti = get_current_context()["ti"]
    note = Path(demo_lib.shared_file(Variable.get("SHARED_DIR"), run_id or "none", "first-try.txt"))
    if ti.try_number == 1:
        note.parent.mkdir(parents=True, exist_ok=True)
        note.write_text(socket.gethostname())
        raise RuntimeError(f"failing try 1 on purpose in pod {socket.gethostname()}")
    return {
        "try": ti.try_number,
        "pod": socket.gethostname(),
        "first_try_pod": note.read_text(),
        "pid": os.getpid(),
    }


@dag(
    dag_id="example_retry",
    schedule=None,
    catchup=False,
    doc_md=__doc__,
    tags=["example", "kubernetes"],
)
def example_retry() -> None:
    flaky()


example_retry()
