"""A small client of Airflow's REST API v2 (simple auth manager login), and log generated."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import httpx

from airflow_k3s import shell
from airflow_k3s.exits import ExitCode, UserError
from airflow_k3s.generated import ADMIN_USER


class AirflowAPI:
    """Token login, DAGs, runs, task instances, logs."""

    #: Seconds a new DAG file may take to appear (the dag-processor refreshes every 10 s).
    GRACE = 15.0

    def __init__(
        self,
        base_url: str,
        password: str,
        user: str = ADMIN_USER,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=30, transport=transport)
        response = self.http.post("/auth/token", json={"username": user, "password": password})
        if response.status_code in (401, 403):
            raise UserError(
                f"login as {user!r} was refused by {base_url}: the password in .env "
                f"(AIRFLOW_ADMIN_PASSWORD) does not match the running stack",
                ExitCode.LOGIN_REFUSED,
            )
        response.raise_for_status()
        self.http.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    #: Items per page of a list endpoint: the API server's `[api] maximum_page_limit` (its
    #: default); it cuts a larger `limit` down to this without saying so.
    PAGE = 100

    def get(self, path: str, **params: Any) -> Any:
        response = self.http.get(path, params=params)
        response.raise_for_status()
        return response.json()

    def get_all(self, path: str, key: str, **params: Any) -> list[Any]:
        """Every item of a list endpoint (``key`` names its list), page by page."""
        items: list[Any] = []
        while True:
            page = self.get(path, limit=self.PAGE, offset=len(items), **params)
            batch = list(page.get(key) or [])
            items += batch
            total = page.get("total_entries")
            if not batch or total is None or len(items) >= int(total):
                return items

    def dag_ids(self) -> list[str]:
        return sorted(d["dag_id"] for d in self.get_all("/api/v2/dags", "dags"))

    def import_errors(self) -> list[dict[str, Any]]:
        return self.get_all("/api/v2/importErrors", "import_errors")

    def find_dag(self, dag_id: str, timeout: float) -> None:
        """Wait for ``dag_id`` to be parsed; fail clearly with import errors or the known DAGs.

        With no DAG parsed yet it waits up to ``timeout``; once others are known, one refresh of
        the dag-processor (GRACE seconds) is enough for a new file to show up or fail to import.
        """
        started = time.monotonic()
        errors: list[dict[str, Any]] = []
        known: list[str] = []

        def found_or_hopeless() -> str:
            nonlocal errors, known
            response = self.http.get(f"/api/v2/dags/{dag_id}")
            # A stale DAG (its file was gone at the last parse) is listed, but Airflow refuses
            # to trigger it (404): a file put back is found once the dag-processor has seen it.
            if response.status_code == 200 and not response.json().get("is_stale"):
                return "found"
            errors, known = self.import_errors(), self.dag_ids()
            waited = time.monotonic() - started
            return "hopeless" if errors or (known and waited > min(timeout, self.GRACE)) else ""

        try:
            if shell.poll(f"DAG {dag_id}", found_or_hopeless, timeout, 2) == "found":
                return
        except UserError:
            pass  # timed out: say what is known
        lines = [f"{e['filename']}: {e['stack_trace'].strip().splitlines()[-1]}" for e in errors]
        message = f"unknown DAG id {dag_id!r}; known DAGs: {', '.join(known) or 'none yet'}"
        if lines:
            message += "; DAG files that fail to import: " + "; ".join(lines)
        raise UserError(message, ExitCode.UNKNOWN_DAG)

    def trigger(self, dag_id: str, conf: Mapping[str, Any]) -> dict[str, Any]:
        """Unpause and trigger ``dag_id``: the new run (``dag_run_id``, ``bundle_version``...)."""
        self.http.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
        response = self.http.post(
            f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": dict(conf)}
        )
        response.raise_for_status()
        run: dict[str, Any] = response.json()
        return run

    def run_state(self, dag_id: str, run_id: str) -> tuple[str, dict[str, dict[str, Any]]]:
        """The run's state and its task instances by ``task_id`` (``task_id[3]`` when mapped)."""
        run = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances"
        tis = self.get_all(path, "task_instances")
        return str(run["state"]), {ti_key(ti): ti for ti in tis}

    def xcom(self, dag_id: str, run_id: str, task_id: str, key: str = "return_value") -> Any:
        path = f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/xcomEntries/{key}"
        return self.get(path, deserialize=True).get("value")

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
        response = self.http.get(
            f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
            params={"full_content": True},
            headers={"Accept": "application/json"},
        )
        response.raise_for_status()
        return render_log(response.json().get("content") or [])


def ti_key(ti: dict[str, Any]) -> str:
    """``task_id``, or ``task_id[map_index]`` for a mapped task instance."""
    index = map_index(ti)
    return f"{ti['task_id']}[{index}]" if index >= 0 else str(ti["task_id"])


def map_index(ti: Mapping[str, Any]) -> int:
    """A task instance's map index; -1 when it is not mapped."""
    index = ti.get("map_index")
    return -1 if index is None else int(index)


def render_log(content: list[Any]) -> str:
    """Airflow 3's structured log messages as plain lines: 'timestamp [level] event'."""
    lines = []
    for item in content:
        if not isinstance(item, dict):
            lines.append(str(item))
            continue
        level = f"[{item['level']}]" if item.get("level") else ""
        event = str(item.get("event", ""))
        details = item.get("error_detail")
        if isinstance(details, list) and details and isinstance(details[0], dict):
            event += f": {details[0].get('exc_type', '')}: {details[0].get('exc_value', '')}"
        parts = (str(item.get("timestamp") or ""), level, event)
        lines.append(" ".join(p for p in parts if p))
    return "\n".join(lines)


def render_pod_line(line: str) -> str:
    """A line of a worker pod's output (Airflow logs JSON) as 'time [level] event: error'."""
    try:
        item = json.loads(line)
    except ValueError:
        return line
    if not isinstance(item, dict) or "event" not in item:
        return line
    text = f"{item.get('timestamp', '')} [{item.get('level', '')}] {item['event']}"
    for key in ("error_detail", "exception"):
        details = item.get(key)
        if isinstance(details, list) and details and isinstance(details[0], dict):
            text += f": {details[0].get('exc_type', '')}: {details[0].get('exc_value', '')}"
    if item.get("final_state"):
        text += f" (final_state={item['final_state']}, exit_code={item.get('exit_code')})"
    return text
