"""Checks of the user's DAGs where they will run: import every DAG file in the worker image itself
(the Python, providers and files the pods get), and show the pod the executor would make for a
task (in the scheduler, which holds the executor's configuration and the pod template)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from typing import Any

from airflow_k3s import compose
from airflow_k3s.compose import say
from airflow_k3s.exits import ExitCode, UserError
from airflow_k3s.rendering import parse_env_file
from airflow_k3s.settings import Settings

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


def parse_dags(cfg: Settings) -> tuple[list[str], list[DagImportError]]:
    """Import every DAG file inside the worker image (as a pod would), with the workers' config."""
    env = parse_env_file((cfg.root / "airflow" / "airflow.env").read_text())
    env_args = [arg for key, value in env.items() for arg in ("-e", f"{key}={value}")]
    say(f"importing every DAG file in {cfg.worker_image}")
    result = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            *env_args,
            "--entrypoint",
            "python",
            cfg.worker_image,
            *CONTAINER_CLI[1:],
            "parse-dags",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        if "Unable to find image" in result.stderr or "No such image" in result.stderr:
            raise UserError(
                f"no worker image {cfg.worker_image} here: `invoke build --worker-only` makes it",
                ExitCode.NOT_RUNNING,
            )
        raise UserError(f"importing the DAGs in {cfg.worker_image} failed: {last}")
    return parse_result(result.stdout)


def in_scheduler(cfg: Settings, *args: str) -> str:
    """Run the container CLI in the scheduler; its stdout, or its one-line error."""
    result = subprocess.run(
        [*compose.cli(cfg), "exec", "-T", "airflow-scheduler", *CONTAINER_CLI, *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        lines = [ln for ln in result.stderr.strip().splitlines() if ln.strip()]
        error = next((ln for ln in reversed(lines) if "airflow-k3s: ERROR: " in ln), "")
        if error:
            raise UserError(error.split("airflow-k3s: ERROR: ", 1)[1], ExitCode.USAGE)
        raise UserError(f"the scheduler could not answer: {lines[-1] if lines else 'no output'}")
    return result.stdout


def pod_yaml(cfg: Settings, dag_id: str, task_id: str) -> str:
    compose.require_running(cfg, "airflow-scheduler")
    return in_scheduler(cfg, "pod-yaml", dag_id, task_id)
