"""Checks of the user's DAGs where they will run: import every DAG file in the worker image itself
(the Python, providers and files the pods get), and show the pod the executor would make for a
task (in the scheduler, which holds the executor's configuration and the pod template)."""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import yaml

from airflow_k3s import identities, shell
from airflow_k3s.boundary import Stack
from airflow_k3s.exits import ExitCode, UserError
from airflow_k3s.generated import worker_secret_data
from airflow_k3s.settings import Settings
from airflow_k3s.shell import say

CONTAINER_CLI = ["python", "-m", "airflow_k3s.container"]


@dataclass(frozen=True)
class DagImportError:
    """One DAG file that does not import: where, and why."""

    file: str
    line: int
    error: str

    def __str__(self) -> str:
        return (
            f"{self.file}:{self.line}: {self.error}" if self.line else f"{self.file}: {self.error}"
        )


def parse_result(stdout: str) -> tuple[list[str], list[DagImportError]]:
    """The container's JSON answer: DAG ids and import errors."""
    doc: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    errors = [
        DagImportError(str(e["file"]), int(e["line"]), str(e["error"])) for e in doc["errors"]
    ]
    return list(doc["dags"]), errors


def parse_dags(stack: Stack) -> tuple[list[str], list[DagImportError]]:
    """Import every DAG file inside the worker image (as a pod would), with the workers' config."""
    cfg = stack.cfg
    # The whole traceback (Airflow keeps its last 2 frames), so that the DAG file's own line is
    # named when the error is raised deep in a library.
    env = {**cfg.airflow_env, "AIRFLOW__CORE__DAGBAG_IMPORT_ERROR_TRACEBACK_DEPTH": "100"}
    env_args = [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]
    # DAG_SOURCE=git: the image has no DAG files; the DAGs folder is what `publish-dags` commits.
    mounts = ["-v", f"{cfg.dags_dir}:/opt/airflow/dags:ro"] if cfg.git_dags else []
    say(f"importing every DAG file in {cfg.worker_image}")
    args = ("run", "--rm", *env_args, *mounts, "--entrypoint", "python", cfg.worker_image)
    result = stack.docker.docker(*args, *CONTAINER_CLI[1:], "parse-dags", check=False)
    if result.returncode != 0:
        if "Unable to find image" in result.stderr or "No such image" in result.stderr:
            raise UserError(
                f"no worker image {cfg.worker_image} here: `invoke build --worker-only` makes it",
                ExitCode.NOT_RUNNING,
            )
        why = shell.failure_line(result.stderr) or "no output"
        raise UserError(f"importing the DAGs in {cfg.worker_image} failed: {why}")
    return parse_result(result.stdout)


def in_scheduler(stack: Stack, *args: str) -> str:
    """Run the container CLI in the scheduler; its stdout, or its one-line error (a user's
    mistake, such as an unknown DAG, when the CLI itself says so)."""
    try:
        return stack.docker.exec("airflow-scheduler", [*CONTAINER_CLI, *args])
    except shell.CommandFailed as exc:
        if "airflow-k3s: ERROR: " in exc.output:
            raise UserError(exc.why, ExitCode.USAGE) from None
        raise UserError(f"the scheduler could not answer: {exc.why}") from None


def pod_yaml(stack: Stack, dag_id: str, task_id: str) -> str:
    stack.require("airflow-scheduler")
    return in_scheduler(stack, "pod-yaml", dag_id, task_id)


def pod_security(stack: Stack, pod: dict[str, Any]) -> dict[str, str]:
    """level -> '' if the API server would admit ``pod`` in a namespace that enforces the level,
    else what it says the pod violates: a server-side dry run in each check namespace
    (k3s/manifests/pod-security-checks.yaml), nothing created."""
    stack.kube.require_kubeconfig()
    verdicts = {}
    for level in identities.CHECKED_LEVELS:
        doc = json.loads(json.dumps(pod))
        doc["metadata"]["namespace"] = identities.check_namespace(level)
        # The account exists in the executor's namespace only; Pod Security does not read it.
        doc["spec"].pop("serviceAccountName", None)
        doc["spec"].pop("serviceAccount", None)
        result = stack.kube.dry_run(doc)
        if result.returncode == 0:
            verdicts[level] = ""
            continue
        found = identities.violations(result.stderr)
        if not found:
            raise UserError(f"the {level} check could not run: {shell.failure_line(result.stderr)}")
        verdicts[level] = found
    return verdicts


#: The Secret the task-test pod reads the metadata DB's address from (`airflow tasks test` runs
#: the task in-process against the DB, unlike a worker pod, which only talks to the api-server).
TASK_TEST_SECRET = "airflow-task-test-env"


def task_test_command(dag_id: str, task_id: str, now: datetime | None = None) -> list[str]:
    """`airflow tasks test DAG TASK DATE`, with a logical date of its own (now, to the microsecond).

    Without a date, Airflow 3.3 (`get_or_create_dagrun`) first deletes the DAG's run whose logical
    date equals None, which is SQL `IS NULL`: one of the runs triggered from the UI or the API,
    since those have no logical date. With a date nobody has, the temporary run replaces nothing
    and is deleted again after the task.
    """
    date = (now or datetime.now(UTC)).isoformat(timespec="microseconds")
    return ["airflow", "tasks", "test", dag_id, task_id, date]


def task_test_pod(stack: Stack, dag_id: str, task_id: str, name: str) -> dict[str, Any]:
    """The task's worker pod, running `airflow tasks test` once, with the DB's address."""
    command = json.dumps(task_test_command(dag_id, task_id))
    doc: dict[str, Any] = yaml.safe_load(
        in_scheduler(stack, "pod-yaml", dag_id, task_id, "--name", name, "--args", command)
    )
    doc["metadata"].setdefault("labels", {})["airflow-k3s/task-test"] = "true"
    base = doc["spec"]["containers"][0]
    base.setdefault("envFrom", []).append({"secretRef": {"name": TASK_TEST_SECRET}})
    return doc


def task_test_secret(cfg: Settings, namespace: str) -> dict[str, Any]:
    secrets = cfg.secrets
    conn = f"postgresql+psycopg2://airflow:{secrets['POSTGRES_PASSWORD']}@postgres/airflow"
    values = {
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": conn,
        "AIRFLOW__CORE__FERNET_KEY": secrets["AIRFLOW_FERNET_KEY"],
    }
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": TASK_TEST_SECRET, "namespace": namespace},
        "type": "Opaque",
        "data": worker_secret_data(values),
    }


def task_test(stack: Stack, dag_id: str, task_id: str, timeout: float) -> int:
    """Run one task once as a pod on the cluster, outside any DAG run; stream its output; the
    container's exit code."""
    stack.require("airflow-scheduler")
    kube = stack.kube
    kube.require_kubeconfig()
    name = (
        f"task-test-{dag_id}-{task_id}".replace("_", "-").lower()[:48] + "-" + secrets.token_hex(3)
    )
    pod = task_test_pod(stack, dag_id, task_id, name)
    namespace = pod["metadata"].get("namespace", kube.namespace)
    kube.apply(task_test_secret(stack.cfg, namespace))
    kube.apply(pod)
    say(f"pod {name} on the cluster: airflow tasks test {dag_id} {task_id}")
    phase = kube.wait_pod_started(name, namespace, timeout)
    kube.stream_logs(name, namespace)
    status = kube.wait_pod_ended(name, namespace, timeout)
    code = status.get("exitCode", 1)
    say(f"pod {name} ended: {status.get('reason') or phase} (exit {code})")
    return int(code)
