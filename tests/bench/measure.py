"""What the benchmark reads off a running stack: timestamps of task instances and pods, readiness
of services while a command runs, and the stack's memory and CPU (`docker stats`)."""

from __future__ import annotations

import http.client
import json
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from airflow_k3s import shell
from airflow_k3s.cluster import pod_label_value
from tests.bench.report import NODE, PODS
from tests.harness import Stack


def ts(value: str | None) -> float:
    """An RFC 3339 timestamp (Airflow's or Kubernetes') as seconds since the epoch."""
    if not value:
        return float("nan")
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


@dataclass
class TaskTiming:
    """One task instance and its pod, in seconds since the epoch."""

    task_id: str
    map_index: int
    queued: float
    started: float
    ended: float
    pod_created: float
    container_started: float
    container_finished: float

    def phases(self) -> dict[str, float]:
        """Where a task's time goes, in order (Kubernetes stamps whole seconds: ±1 s each)."""
        return {
            "queued -> pod created": self.pod_created - self.queued,
            "pod created -> container started": self.container_started - self.pod_created,
            "container started -> task started": self.started - self.container_started,
            "task ran": self.ended - self.started,
            "task ended -> container finished": self.container_finished - self.ended,
        }


def ended_pods(stack: Stack, selector: str, timeout: float = 180) -> list[dict[str, Any]]:
    """The selector's pods once none is Pending or Running (a task's state is final before its
    pod has ended: the worker uploads the task's log after reporting the state)."""
    deadline = time.monotonic() + timeout
    while True:
        pods = stack.pods(selector)
        if all(p["status"].get("phase") not in ("Pending", "Running") for p in pods):
            return pods
        if time.monotonic() > deadline:
            return pods
        time.sleep(1)


def task_timings(stack: Stack, dag_id: str, run_id: str) -> list[TaskTiming]:
    """Every task instance of a run with its pod's timestamps (once its pods have ended)."""
    api = stack.api()
    tis = api.get_all(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances", "task_instances")
    pods = ended_pods(stack, f"dag_id={pod_label_value(dag_id)},run_id={pod_label_value(run_id)}")
    by_key: dict[tuple[str, int], dict[str, Any]] = {}
    for pod in pods:
        labels = pod["metadata"]["labels"]
        key = (labels.get("task_id", ""), int(labels.get("map_index", "-1")))
        by_key[key] = pod  # oldest first: the last try wins
    timings = []
    for ti in tis:
        pod = by_key.get((ti["task_id"], int(ti.get("map_index", -1))), {})
        status = (pod.get("status", {}).get("containerStatuses") or [{}])[0]
        term = (status.get("state") or {}).get("terminated") or {}
        timings.append(
            TaskTiming(
                task_id=ti["task_id"],
                map_index=int(ti.get("map_index", -1)),
                queued=ts(ti.get("queued_when")),
                started=ts(ti.get("start_date")),
                ended=ts(ti.get("end_date")),
                pod_created=ts(pod.get("metadata", {}).get("creationTimestamp")),
                container_started=ts(term.get("startedAt")),
                container_finished=ts(term.get("finishedAt")),
            )
        )
    return timings


def run_span(stack: Stack, dag_id: str, run_id: str) -> float:
    """The run's own duration (start_date to end_date, from the API)."""
    run = stack.api().get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
    return ts(run.get("end_date")) - ts(run.get("start_date"))


def timed(func: Callable[[], Any]) -> tuple[float, Any]:
    started = time.monotonic()
    result = func()
    return time.monotonic() - started, result


@dataclass
class Readiness:
    """When each service was first ready, in seconds after the watch started."""

    started: float = field(default_factory=time.monotonic)
    ready: dict[str, float] = field(default_factory=dict)


def watch_readiness(stack: Stack, stop: threading.Event, into: Readiness) -> None:
    """Poll compose every 0.5 s until ``stop``: first time each service is healthy or done."""
    while not stop.is_set():
        try:  # a new client each time: `up` writes the .env the first client would not have read
            states = stack.docker.service_states()
        except Exception:  # the project may not exist yet at the start of `up`
            states = {}
        now = time.monotonic() - into.started
        for service, state in states.items():
            done = state in ("healthy", "exited(0)") or (
                service == "mockserver" and state == "running"
            )
            if done and service not in into.ready:
                into.ready[service] = now
        stop.wait(0.5)


def invoke_with_readiness(stack: Stack, *args: str) -> tuple[float, Readiness, str]:
    """Run an `invoke` task, watching when each service becomes ready meanwhile."""
    readiness = Readiness()
    stop = threading.Event()
    watcher = threading.Thread(target=watch_readiness, args=(stack, stop, readiness), daemon=True)
    watcher.start()
    took, result = timed(lambda: stack.invoke(*args, timeout=3600))
    stop.set()
    watcher.join()
    if result.returncode != 0:
        raise RuntimeError(f"invoke {' '.join(args)} failed: {result.stderr[-2000:]}")
    return took, readiness, result.stdout


# --------------------------------------------------------------------------- docker stats


def _bytes(text: str) -> float:
    units = {"B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3, "kB": 1e3, "MB": 1e6, "GB": 1e9}
    for unit in sorted(units, key=len, reverse=True):
        if text.endswith(unit):
            return float(text[: -len(unit)]) * units[unit]
    return float(text or 0)


def containers(project: str) -> list[str]:
    """Names of the project's running containers."""
    label = f"label=com.docker.compose.project={project}"
    return shell.run(["docker", "ps", "--filter", label, "--format", "{{.Names}}"]).stdout.split()


def service_of(project: str, container: str) -> str:
    return container.removeprefix(project + "-").rsplit("-", 1)[0]


def stats(project: str) -> dict[str, tuple[float, float]]:
    """service -> (memory bytes, CPU %) of the project's running containers, as `docker stats`
    counts them (memory: usage minus the inactive page cache). The k3s container's figure holds
    its pods: their cgroups are below its own."""
    names = containers(project)
    if not names:
        return {}
    out = shell.run(["docker", "stats", "--no-stream", "--format", "{{json .}}", *names]).stdout
    found = {}
    for line in out.splitlines():
        row = json.loads(line)
        found[service_of(project, row["Name"])] = (
            _bytes(row["MemUsage"].split(" / ")[0]),
            float(row["CPUPerc"].rstrip("%")),
        )
    return found


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, socket_path: str) -> None:
        super().__init__("localhost", timeout=30)
        self.socket_path = socket_path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(self.socket_path)


def _docker_socket() -> str:
    host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    if not host.startswith("unix://"):
        raise RuntimeError(f"the bench reads CPU counters over a local socket, not {host}")
    return host.removeprefix("unix://")


def cpu_seconds(project: str) -> dict[str, float]:
    """service -> CPU seconds its container has used (the Docker API's cumulative counter:
    `docker stats` shows only a rate). The k3s container is split in two: its pods (the
    kubepods cgroup, read inside the node) and the node itself (kubelet, API server,
    containerd and the shims), so that the tasks' own cost is seen apart from Kubernetes'."""
    found: dict[str, float] = {}
    conn = _UnixHTTPConnection(_docker_socket())
    try:
        for name in containers(project):
            conn.request("GET", f"/containers/{name}/stats?stream=false&one-shot=true")
            body = json.loads(conn.getresponse().read())
            used = body.get("cpu_stats", {}).get("cpu_usage", {}).get("total_usage")
            if used is not None:
                found[service_of(project, name)] = used / 1e9
    finally:
        conn.close()
    if "k3s" in found:
        pods = _kubepods_cpu_seconds(f"{project}-k3s-1")
        if not math.isnan(pods):
            found[PODS] = pods
            found[NODE] = found["k3s"] - pods
            del found["k3s"]
    return found


def _kubepods_cpu_seconds(container: str) -> float:
    """CPU seconds of the node's kubepods cgroup: cgroup v1 cpuacct.usage (ns) or v2 cpu.stat's
    usage_usec (us), read inside the node (its own cgroup namespace)."""
    script = (
        "f=/sys/fs/cgroup/cpuacct/kubepods/cpuacct.usage;"
        ' if [ -r "$f" ]; then echo 1e-9 "$(cat "$f")";'
        " else echo 1e-6 \"$(sed -n 's/^usage_usec //p' /sys/fs/cgroup/kubepods/cpu.stat)\"; fi"
    )
    out = shell.run(["docker", "exec", container, "sh", "-c", script], check=False).stdout.split()
    if len(out) != 2:
        return float("nan")
    return float(out[1]) * float(out[0])


# One line per process of the node, outside its pods: "<in kubepods: 0 or more> TAB <argv[0]
# argv[1]> TAB <the /proc stat line>". Run in the node container, so its own PIDs.
NODE_PROCESSES_SCRIPT = r"""for d in /proc/[0-9]*; do
  s=$(cat "$d/stat" 2>/dev/null) || continue
  printf '%s\t%s\t%s\n' "$(grep -c kubepods "$d/cgroup" 2>/dev/null)" \
    "$(tr '\0' ' ' < "$d/cmdline" 2>/dev/null | cut -d' ' -f1,2)" "$s"
done"""
USER_HZ = 100  # /proc/PID/stat counts clock ticks of 1/100 s on Linux, whatever the kernel's HZ
# Processes whose waited-for children are not the node's: the node's init reaps every ended shim
# (with its pods' processes in its children's time), and a shim reaps its containers' processes.
# Only their own CPU time counts.
OWN_TIME_ONLY = {"server", "containerd-shim-runc-v2"}


def component_of(argv: str) -> str:
    """Pure: a node process's component from its first two arguments. The local node runs each
    Kubernetes component as `k3s <component>` (upstream k3s: all in `k3s server`); anything else
    by its program's name."""
    words = argv.split()
    if not words:
        return "?"
    program = words[0].rsplit("/", 1)[-1]
    if program == "k3s" and len(words) > 1:
        return words[1]
    return program


def parse_node_processes(text: str) -> dict[tuple[int, int], tuple[str, float, float]]:
    """Pure: NODE_PROCESSES_SCRIPT's output -> {(pid, start time): (component, its own CPU
    seconds, its waited-for children's)}, the pods' processes left out (the kubepods cgroup is
    counted as the pods)."""
    found: dict[tuple[int, int], tuple[str, float, float]] = {}
    for line in text.splitlines():
        parts = line.split("\t", 2)
        if len(parts) != 3 or parts[0].strip() not in ("0", ""):
            continue
        stat = parts[2]
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after it.
        pid = int(stat.split(" ", 1)[0])
        fields = stat[stat.rindex(")") + 2 :].split()
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        start = int(fields[19])
        found[(pid, start)] = (
            component_of(parts[1]),
            (utime + stime) / USER_HZ,
            (cutime + cstime) / USER_HZ,
        )
    return found


def node_cpu_by_component(
    start: dict[tuple[int, int], tuple[str, float, float]],
    end: dict[tuple[int, int], tuple[str, float, float]],
) -> dict[str, float]:
    """Pure: CPU seconds each node component used between two readings. A process that started
    in between counts whole; one that ended in between is lost (it is in the node's total, not
    in any component). A component's waited-for children count as its own (containerd's CNI
    plugins, say), except for OWN_TIME_ONLY, whose children are the pods'."""
    used: dict[str, float] = {}
    for key, (component, own, children) in end.items():
        before = start.get(key, (component, 0.0, 0.0))
        delta = own - before[1]
        if component not in OWN_TIME_ONLY:
            delta += children - before[2]
        used[component] = used.get(component, 0.0) + delta
    return used


def node_processes(container: str) -> dict[tuple[int, int], tuple[str, float, float]]:
    """The node container's processes (NODE_PROCESSES_SCRIPT), {} if it cannot be read."""
    result = shell.run(
        ["docker", "exec", container, "sh", "-c", NODE_PROCESSES_SCRIPT], check=False
    )
    return parse_node_processes(result.stdout) if result.returncode == 0 else {}


@dataclass(frozen=True)
class HostCounters:
    """The machine's own counters, which tell a slower machine from a slower stack: CPU jiffies
    by kind (/proc/stat's first line) and the memory cgroups the kernel holds (/proc/cgroups,
    dying ones included: each ended pod's stay until their page cache is reclaimed)."""

    user: int
    system: int
    steal: int
    total: int
    memory_cgroups: int


def parse_host_counters(proc_stat: str, proc_cgroups: str) -> HostCounters:
    """Pure: /proc/stat and /proc/cgroups as read."""
    cpu = next(line for line in proc_stat.splitlines() if line.startswith("cpu "))
    # user nice system idle iowait irq softirq steal guest guest_nice
    v = [int(x) for x in cpu.split()[1:]]
    v += [0] * (10 - len(v))
    memory = next(
        (
            int(line.split()[2])
            for line in proc_cgroups.splitlines()
            if line.split()[:1] == ["memory"]
        ),
        -1,
    )
    return HostCounters(
        user=v[0] + v[1],
        system=v[2] + v[5] + v[6],
        steal=v[7],
        total=sum(v[:8]),
        memory_cgroups=memory,
    )


def host_counters() -> HostCounters:
    return parse_host_counters(Path("/proc/stat").read_text(), Path("/proc/cgroups").read_text())


def host_share(start: HostCounters, end: HostCounters) -> dict[str, float]:
    """Pure: over an interval, the share of the machine's CPU time stolen by the hypervisor and
    the kernel's share of the busy time (both in %), and the memory cgroups at its start."""
    total = end.total - start.total
    busy = (end.user - start.user) + (end.system - start.system)
    return {
        "steal_pct": 100 * (end.steal - start.steal) / total if total else float("nan"),
        "kernel_pct": 100 * (end.system - start.system) / busy if busy else float("nan"),
        "memory_cgroups": float(start.memory_cgroups),
    }


class Sampler:
    """`docker stats` of the project every second in the background: the peak total memory and
    CPU while it runs, and the machine's counters over the run (`host`: see host_share)."""

    def __init__(self, project: str) -> None:
        self.project = project
        self.peak_memory = 0.0
        self.peak_cpu = 0.0
        self.cpu_used: dict[str, float] = {}  # service -> CPU seconds used while it ran
        self._cpu_start: dict[str, float] = {}
        self.host: dict[str, float] = {}
        self._host_start: HostCounters  # read by __enter__
        self.node_cpu: dict[str, float] = {}  # node component -> CPU seconds used while it ran
        self._node = f"{project}-k3s-1"
        self._node_start: dict[tuple[int, int], tuple[str, float, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            sample = stats(self.project)
            self.peak_memory = max(self.peak_memory, sum(m for m, _ in sample.values()))
            self.peak_cpu = max(self.peak_cpu, sum(c for _, c in sample.values()))
            self._stop.wait(1)

    def __enter__(self) -> Sampler:
        self._cpu_start = cpu_seconds(self.project)
        self._host_start = host_counters()
        self._node_start = node_processes(self._node)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.host = host_share(self._host_start, host_counters())
        node_end = node_processes(self._node)
        if self._node_start and node_end:
            self.node_cpu = node_cpu_by_component(self._node_start, node_end)
        end = cpu_seconds(self.project)
        self.cpu_used = {
            service: end[service] - self._cpu_start[service]
            for service in end
            if service in self._cpu_start and end[service] >= self._cpu_start[service]
        }
