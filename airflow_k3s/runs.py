"""DAG runs: trigger one, follow it to its end, report it (and on failure, diagnose it)."""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections import Counter
from collections.abc import Mapping
from typing import Any

import httpx

from airflow_k3s import bundles, cluster, dag_checks, shell
from airflow_k3s.airflow_api import AirflowAPI, map_index, render_pod_line
from airflow_k3s.boundary import Stack
from airflow_k3s.exits import ExitCode, UserError
from airflow_k3s.settings import DEMO_DAG
from airflow_k3s.shell import say


def parse_conf(conf: str) -> dict[str, Any]:
    """The --conf of a DAG run: a JSON object, or a clear UserError."""
    if not conf:
        return {}
    try:
        value = json.loads(conf)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"--conf is not valid JSON ({exc.msg} at character {exc.pos}): {conf}", ExitCode.USAGE
        ) from None
    if not isinstance(value, dict):
        raise UserError(
            f"--conf must be a JSON object like '{{\"key\": 1}}', not {conf}", ExitCode.USAGE
        )
    return value


def state_changes(before: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
    """Lines 'task: old -> new' for every task whose state changed."""
    return [
        f"{task_id}: {before.get(task_id) or 'none'} -> {state or 'none'}"
        for task_id, state in sorted(after.items())
        if before.get(task_id, "") != state
    ]


def progress(tis: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Each task's state; a mapped task's instances counted: 'noop (100 mapped)': 'success 100'."""
    shown: dict[str, str] = {}
    mapped: dict[str, Counter[str]] = {}
    for key, ti in tis.items():
        state = str(ti.get("state") or "")
        if map_index(ti) >= 0:
            mapped.setdefault(str(ti["task_id"]), Counter())[state or "none"] += 1
        else:
            shown[key] = state
    for task_id, counts in mapped.items():
        total = sum(counts.values())
        shown[f"{task_id} ({total} mapped)"] = ", ".join(
            f"{s} {n}" for s, n in sorted(counts.items())
        )
    return shown


POLL_SECONDS = 1.0
"""How often ``follow_run`` asks the API for the run's state: one small request (the run and its
task instances), so the run's end is seen within a second."""


def passing_outage(exc: httpx.HTTPError) -> bool:
    """Whether an API error is one that waiting mends: the API server restarting (connection
    refused or reset, a timeout) or failing for a moment (5xx while its database restarts)."""
    if isinstance(exc, httpx.TransportError):
        return True
    return isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code >= 500


class PlacementWatch:
    """Says, while a run is followed, why no node takes a task's pod (the scheduler's own words
    and what the pod asks for), as soon as the scheduler says it: without it such a task waits
    in `queued` until `task_queued_timeout` fails it. Looks (one kubectl call) only while a task
    has been queued for QUEUED_SECONDS, and at most every QUEUED_SECONDS."""

    QUEUED_SECONDS = 5.0

    def __init__(self, stack: Stack, dag_id: str, run_id: str) -> None:
        self.stack, self.selector = stack, cluster.pod_selector(dag_id, run_id=run_id)
        self.queued_since: float | None = None
        self.last_look = 0.0
        self.said: set[str] = set()

    def check(self, states: Mapping[str, str], now: float) -> None:
        if not any("queued" in state for state in states.values()):  # mapped: "queued 3, ..."
            self.queued_since = None
            return
        self.queued_since = self.queued_since or now
        wait = self.QUEUED_SECONDS
        if now - self.queued_since < wait or now - self.last_look < wait:
            return
        self.last_look = now
        try:
            pods = self.stack.kube.worker_pods(self.selector)
        except UserError:
            return  # no kubeconfig yet, or the API is away: the run's end will say more
        for pod in pods:
            for line in unschedulable_lines(pod):
                if line not in self.said:
                    self.said.add(line)
                    say(line)


def unschedulable_lines(pod: dict[str, Any]) -> list[str]:
    """'task T: no node can take pod P: <scheduler's reason> (it asks for: ...)', or none."""
    reason = cluster.unschedulable(pod)
    if not reason:
        return []
    labels = pod.get("metadata", {}).get("labels") or {}
    asks = cluster.placement(pod) or "nothing in particular"
    return [
        f"{labels.get('task_id', '?')}: no node can take pod {pod['metadata']['name']}: "
        f"{reason} (it asks for: {asks})"
    ]


def follow_run(stack: Stack, client: AirflowAPI, dag_id: str, run_id: str, timeout: float) -> str:
    """Print task state changes until the run ends, riding out API outages (the run goes on
    without the API); on failure print logs and pod diagnostics. The run's final state."""
    seen: dict[str, str] = {}
    tis: dict[str, dict[str, Any]] = {}
    outage = False
    placement = PlacementWatch(stack, dag_id, run_id)

    def ended() -> str:
        nonlocal seen, tis, outage
        try:
            state, tis = client.run_state(dag_id, run_id)
        except httpx.HTTPError as exc:
            if not passing_outage(exc):
                raise
            if not outage:
                say(f"waiting for the Airflow API ({str(exc).splitlines()[0]}); the run goes on")
            outage = True
            return ""
        if outage:
            say("the Airflow API answers again")
            outage = False
        now = progress(tis)
        for line in state_changes(seen, now):
            say(line)
        seen = now
        placement.check(now, time.monotonic())
        return state if state in ("success", "failed") else ""

    def timed_out() -> UserError:
        print_failures(stack, client, dag_id, run_id, tis, only_failed=False)
        return UserError(
            f"timed out after {timeout:.0f} s waiting for {dag_id} run {run_id}"
            f"{' (the API did not answer)' if outage else ''}; see `invoke status` and the UI at "
            f"{stack.cfg.airflow_url}",
            ExitCode.TIMEOUT,
        )

    state = shell.poll(f"{dag_id} run {run_id}", ended, timeout, POLL_SECONDS, timed_out)
    say(f"run {run_id} of {dag_id} ended: {state}")
    if state != "success":
        print_failures(stack, client, dag_id, run_id, tis)
    return state


def print_failures(
    stack: Stack,
    client: AirflowAPI,
    dag_id: str,
    run_id: str,
    tis: Mapping[str, Mapping[str, Any]],
    only_failed: bool = True,
) -> None:
    """For each failed (or, on a timeout, unfinished) task: its log and its pod's diagnostics."""
    for task_id, ti in sorted(tis.items()):
        state = ti.get("state")
        if state == "success" or (only_failed and state not in ("failed", "upstream_failed")):
            continue
        if state == "upstream_failed":
            continue
        try_number = int(ti.get("try_number") or 0)
        if not ti.get("start_date"):
            # The task never ran: no log to read; the executor may say why its pod was refused.
            refusal = executor_refusal(
                stack.docker.service_log("airflow-scheduler"), dag_id, task_id, run_id
            )
            if refusal:
                print(
                    f"----- {task_id}: the executor could not start its pod: {refusal}",
                    file=sys.stderr,
                )
        elif try_number and state in ("failed", "up_for_retry"):
            print(f"----- log of {task_id} (try {try_number})", file=sys.stderr)
            try:
                log = client.task_log(dag_id, run_id, task_id, try_number)
            except httpx.HTTPError as exc:
                log = f"(task log not readable through the API: {exc})"
            print(log, file=sys.stderr)
        stack.kube.print_pod_diagnostics(cluster.pod_selector(dag_id, task_id, run_id))


def executor_refusal(scheduler_log: str, dag_id: str, task_id: str, run_id: str) -> str:
    """The API server's message for a pod the executor could not create (the scheduler logs the
    ApiException's body after "reported that the task instance <TaskInstance: DAG.TASK RUN"),
    or ''."""
    marker = f"reported that the task instance <TaskInstance: {dag_id}.{task_id} {run_id} "
    lines = scheduler_log.splitlines()
    for index in range(len(lines) - 1, -1, -1):
        if marker not in lines[index]:
            continue
        for line in lines[index : index + 6]:
            body = line.partition("HTTP response body: ")[2]
            if body:
                try:
                    return f"API server: {json.loads(body)['message']}"
                except (ValueError, KeyError, TypeError):
                    return f"API server: {body[:500]}"
        return lines[index].partition("Extra info: ")[2][:500]
    return ""


def run_version(run: Mapping[str, Any]) -> str:
    """', DAG version N (bundle dags@commit)' for a run whose DAG comes from a versioned bundle
    (DAG_SOURCE=git): the version every task of the run uses; '' otherwise."""
    bundle = run.get("bundle_version")
    if not bundle:
        return ""
    numbers = [str(v.get("version_number")) for v in run.get("dag_versions") or []]
    which = f"DAG version {', '.join(numbers)} " if numbers else ""
    return f", {which}(bundle {bundles.BUNDLE}@{str(bundle)[:12]})"


def run_dag(
    stack: Stack, dag_id: str, conf: Mapping[str, Any], parse_timeout: float, timeout: float | None
) -> str:
    """Trigger ``dag_id``; with a ``timeout``, follow the run: fail unless it succeeds."""
    client = stack.api()
    try:
        client.find_dag(dag_id, parse_timeout)
    except UserError as exc:
        if exc.code is not ExitCode.UNKNOWN_DAG or "fail to import" in exc.message:
            raise
        # The dag-processor names no broken file: import the files as a pod would, in the worker
        # image (a file that imports here but not there is named so).
        _, errors = dag_checks.parse_dags(stack)
        if errors:
            lines = "; ".join(map(str, errors))
            raise UserError(f"{exc.message}; in the worker image: {lines}", exc.code) from None
        raise
    run = client.trigger(dag_id, conf)
    run_id = str(run["dag_run_id"])
    say(f"triggered {dag_id}: run {run_id}{run_version(run)}")
    if timeout is not None:
        state = follow_run(stack, client, dag_id, run_id, timeout)
        if state != "success":
            raise UserError(f"{dag_id} run {run_id} ended {state} (log above)")
    return run_id


def show_demo_result(stack: Stack, run_id: str) -> None:
    """The demo run's pods and the S3 object it wrote (named by verify's return value)."""
    print(f"\nPods of {DEMO_DAG} (one per task):")
    stack.kube.show_pods(cluster.pod_selector(DEMO_DAG, run_id=run_id))
    summary = stack.api().xcom(DEMO_DAG, run_id, "verify")
    body = stack.s3().get_object(Bucket=summary["bucket"], Key=summary["key"])["Body"].read()
    orders = json.loads(body).get("orders", [])
    print(
        f"\nS3 object: s3://{summary['bucket']}/{summary['key']}  {len(body)} bytes, "
        f"{len(orders)} orders, sha256 {hashlib.sha256(body).hexdigest()[:16]}…"
    )
    print(f"UI: {stack.cfg.airflow_url}/dags/{DEMO_DAG}")


def pod_logs(
    stack: Stack, dag_id: str, task_id: str, run_id: str, try_number: int, tail: int
) -> int:
    """A task's worker pod output (kubectl logs), oldest try first; for a pod that never started,
    why. Returns kubectl's exit code."""
    selector = cluster.pod_selector(dag_id, task_id, run_id, try_number)
    kube = stack.kube
    kube.require_kubeconfig()
    pods = kube.worker_pods(selector)
    if pods and not run_id:  # the newest run only
        newest = pods[-1]["metadata"]["labels"].get("run_id")
        pods = [p for p in pods if p["metadata"]["labels"].get("run_id") == newest]
    if not pods:
        raise UserError(
            f"no worker pod of {dag_id}.{task_id} was found ({selector}); `invoke status` lists "
            "the pods",
            ExitCode.NOT_RUNNING,
        )
    code = 0
    for pod in pods:
        meta = pod["metadata"]
        problem = cluster.pod_problem(pod)
        bundle = cluster.pod_bundle(pod)
        print(
            f"----- pod {meta['name']} (run label {meta['labels'].get('run_id')}, try "
            f"{meta['labels'].get('try_number')}, {pod['status'].get('phase')}"
            + (f", DAG bundle {bundle}" if bundle else "")
            + ")"
            + (f": {problem}" if problem else "")
        )
        result = kube.run("logs", "-n", kube.namespace, meta["name"], f"--tail={tail}", check=False)
        for line in result.stdout.splitlines():
            print(render_pod_line(line))
        if result.returncode:
            print(result.stderr.strip(), file=sys.stderr)
            code = code or result.returncode
    return code
