"""Example: a task that runs for a while and logs as it goes.

While it runs, its log is read from the pod through the Kubernetes API (the UI's log view, or
`invoke pod-logs progress --dag-id example_progress`); once it ends, from S3. The run's conf can
set the length: ``{"seconds": 30}``. One retry, for the faults tier's restarts.
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from airflow.sdk import dag, get_current_context, task

log = logging.getLogger(__name__)


@task(retries=1, retry_delay=timedelta(seconds=5))
def progress() -> int:
    """Log one line a second for conf["seconds"] seconds (default 20)."""
    seconds = int((get_current_context()["dag_run"].conf or {}).get("seconds", 20))
    for second in range(1, seconds + 1):
        log.info("progress %d/%d", second, seconds)
        time.sleep(1)
    return seconds


@dag(
    dag_id="example_progress",
    schedule=None,
    catchup=False,
    doc_md=__doc__,
    tags=["example"],
)
def example_progress() -> None:
    progress()


example_progress()
