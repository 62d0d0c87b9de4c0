"""Helpers of the faults tier: polling, a run's state through the REST API, pods on the cluster, a
service's own credential."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from airflow_k3s import shell
from airflow_k3s.cluster import kubectl_binary, pod_label_value
from airflow_k3s.docker import not_ready
from airflow_k3s.exits import UserError
from tests.harness import DEMO, Stack

DAG = DEMO


def wait_for(what: str, check: Any, timeout: float, poll: float = 0.5) -> Any:
    """Poll ``check()`` until it returns something truthy (the package's shell.poll); the test
    fails with ``what`` after ``timeout``."""
    try:
        return shell.poll(what, check, timeout, poll)
    except UserError as exc:
        pytest.fail(exc.message, pytrace=False)


def task_states(
    stack: Stack, run_id: str, dag_id: str = DAG
) -> tuple[str, dict[str, tuple[str, int]]]:
    """The run's state and each task's (state, try_number)."""
    state, tis = stack.api().run_state(dag_id, run_id)
    return state, {
        t: (str(ti.get("state") or ""), int(ti.get("try_number") or 0)) for t, ti in tis.items()
    }


def trigger(stack: Stack, dag_id: str = DAG, conf: str = "") -> str:
    """Trigger a DAG through the task library (no --wait); return the run id."""
    args = ["trigger-dag", dag_id] + (["--conf", conf] if conf else [])
    result = stack.invoke(*args, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def wait_run(
    stack: Stack, run_id: str, dag_id: str = DAG, timeout: float = 420
) -> tuple[str, dict[str, tuple[str, int]]]:
    """Wait for the run to end; return its final state and the tasks' (state, try).

    API errors while a fault lasts (e.g. 500 while postgres restarts) are printed and polled
    through."""
    errors: list[str] = []

    def ended() -> tuple[str, dict[str, tuple[str, int]]] | None:
        try:
            state = task_states(stack, run_id, dag_id)
        except httpx.HTTPError as exc:
            errors.append(str(exc).splitlines()[0])
            print(f"API error while polling: {errors[-1]}")
            return None
        return state if state[0] in ("success", "failed") else None

    final: tuple[str, dict[str, tuple[str, int]]] = wait_for(
        f"run {run_id} to end", ended, timeout, 2
    )
    print(f"run {run_id}: {final}; API errors meanwhile: {len(errors)}")
    return final


def running_pod(stack: Stack, run_id: str) -> str:
    """The name of a worker pod of the run that is Running now, or ''."""
    result = stack.kubectl(
        "get",
        "pods",
        "-n",
        stack.kube.namespace,
        "-l",
        f"run_id={pod_label_value(run_id)}",
        "--field-selector=status.phase=Running",
        "-o",
        "name",
    )
    return result.stdout.strip().splitlines()[0] if result.stdout.strip() else ""


def wait_healthy(stack: Stack, timeout: float = 300) -> None:
    docker = stack.docker
    expected = set(docker.config()["services"])
    wait_for(
        "every service to be healthy again",
        lambda: not not_ready(docker.service_states(), expected),
        timeout,
        poll=2,
    )


def variant(stack: Stack, **env: str) -> Stack:
    """The same stack seen with other settings (another state dir, image source, port ...)."""
    return Stack(
        images=env.get("IMAGES", stack.images),
        project=env.get("COMPOSE_PROJECT_NAME", stack.project),
        state_dir=Path(env.get("AIRFLOW_K3S_STATE_DIR", str(stack.state_dir))),
        env={**stack.env, **env},
    )


def one_line_error(result: shell.Result) -> str:
    """The task library's answer to a mistake: non-zero, exactly one line, no traceback."""
    assert result.returncode != 0, result.stdout
    # Progress lines ("==> ...") may come first; the mistake itself is one line.
    lines = [ln for ln in result.stderr.splitlines() if ln.strip() and not ln.startswith("==> ")]
    assert "Traceback" not in result.stderr + result.stdout
    assert len(lines) == 1, f"expected one line, got: {lines}"
    return lines[0]


def in_container(stack: Stack, service: str, script: str) -> shell.Result:
    """``sh -c script`` in a service's container, unchecked."""
    name = str(stack.container(service)["Name"]).lstrip("/")
    return stack.docker.docker("exec", name, "sh", "-c", script, check=False)


def service_kubeconfig(stack: Stack, service: str, folder: Path) -> Path:
    """The kubeconfig Airflow uses in ``service`` (its ServiceAccount's token), copied into
    ``folder`` for the host: the server is the stack's published API port."""
    shown = in_container(stack, service, "cat /opt/airflow/kube/config")
    assert shown.returncode == 0, f"{service} has no kubeconfig: {shown.stderr}"
    config = yaml.safe_load(shown.stdout)
    port = stack.settings.ports["K3S_API_PORT"]
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"
    copy = folder / f"{service}.yaml"
    copy.write_text(yaml.safe_dump(config))
    return copy


def kubectl_as(kubeconfig: Path, *args: str) -> str:
    """kubectl with a service's own kubeconfig (service_kubeconfig), unchecked (`auth can-i`
    exits 1 for "no"): its stdout, stripped."""
    argv: list[str | Path] = [kubectl_binary(), "--kubeconfig", kubeconfig, *args]
    return shell.run(argv, check=False, timeout=60).stdout.strip()


def whoami(kubeconfig: Path) -> str:
    """The user the API server takes a kubeconfig's credential for."""
    return kubectl_as(kubeconfig, "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}")
