"""Benchmarks of airflow-k3s on the real cluster: `nox -s bench` (or `python -m tests.bench.bench`).

On a stack of its own (like the test tiers: own project, ports and state dir, removed at the end)
it measures, with the images already built:

- `invoke up` cold (nothing running, no volumes) and warm (`down`, then `up --no-build`), each
  service's readiness on the way;
- the demo DAG, trigger to success;
- one trivial task (`bench_trivial`): where its time goes, phase by phase, and the floor: the
  same task under `airflow dags test` in one process;
- N mapped trivial tasks (`bench_mapped`) for each N of --sizes: wall time, tasks per minute, the
  slope, peak memory and CPU; and the experiments (the executor's settings the project changed,
  measured once against the other);
- the DAG-edit loop: edit a DAG file, build and push the worker image, trigger, until the task has
  run the new code;
- node pools: an agent node's idle cost, and N mapped tasks on one node against three, same
  run (`--only node-pools` measures just this);
- the two ways of shipping DAGs (DAG_SOURCE image and git), same run: the edit loop and the CPU
  per task of each, with the DAGs folder as it is and with 10 MB more (`--only dag-sources`
  measures just this, into the existing report);
- the stack's memory and CPU when idle.

Writes docs/benchmarks.md, docs/benchmarks.json and docs/bench-scaling.png.
"""

from __future__ import annotations

import argparse
import base64
import os
import platform
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from airflow_k3s import runs, shell
from airflow_k3s.settings import ROOT, Settings
from tests.bench import measure
from tests.bench.measure import Sampler, task_timings, timed
from tests.bench.report import PODS, Figure, Report, load, median, slope, write
from tests.harness import Stack, require_docker, stack_env

GIB = 1024**3
TARGETS = {
    "up_warm": 60.0,
    "demo": 30.0,
    "overhead": 4.0,
    "mapped_50": 150.0,
    "memory_idle": 3 * GIB,
}
EDIT_DAG = "bench_edit"
#: Node pools: the pools file, and the mapped tasks of the one-node/three-node comparison.
POOLS_FILE = ROOT / "k3s" / "node-pools.example.yaml"
POOL_TASKS = 50
#: The DAG-source comparison: mapped tasks per CPU measurement, MB of extra files.
SOURCE_TASKS = 20
EXTRA_MB = 10


@dataclass(frozen=True)
class Floor:
    """One `airflow dags test` run of the trivial task (seconds)."""

    wall_s: float  # the whole command: the CLI's start, the DAG parse, the run
    span_s: float  # the run's start to its end (API)
    task_s: float  # the task's own start to its end: the floor


def machine_meta(cfg: Settings) -> dict[str, Any]:
    def out(*cmd: str) -> str:
        return shell.run(cmd, check=False).stdout.strip()

    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    os_name = next(
        (
            ln.split("=", 1)[1].strip('"')
            for ln in Path("/etc/os-release").read_text().splitlines()
            if ln.startswith("PRETTY_NAME=")
        ),
        platform.platform(),
    )
    return {
        "command": "nox -s bench",
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "images": cfg.images,
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "memory_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "os": os_name,
        "kernel": platform.release(),
        "cgroup": out("docker", "info", "--format", "{{.CgroupVersion}}"),
        "docker_engine": out("docker", "version", "--format", "{{.Server.Version}}"),
        "compose": out("docker", "compose", "version", "--short"),
        "git_commit": out("git", "-C", str(ROOT), "describe", "--always", "--dirty"),
        "loadavg_start": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "kubernetes": "",
    }


def executor_settings(cfg: Settings) -> dict[str, str]:
    """The executor, scheduler and dag-processor settings that decide how fast pods are made and
    how busy the cores are besides (airflow.env)."""
    env = cfg.airflow_env
    defaults = {  # Airflow 3.3's and the cncf provider's own defaults
        "AIRFLOW__CORE__PARALLELISM": "32",
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "16 (bench_mapped: 64)",
        "AIRFLOW__KUBERNETES_EXECUTOR__WORKER_PODS_CREATION_BATCH_SIZE": "1",
        "AIRFLOW__KUBERNETES_EXECUTOR__ASYNC_POD_CREATION": "False",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "5",
        "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
    }
    return {
        key.split("__", 2)[-1].lower(): env.get(key, f"{default} (default)")
        for key, default in defaults.items()
    }


class Bench:
    """One benchmark run on its own stack."""

    def __init__(self, runs: int, sizes: list[int], experiments: bool, only: str = "") -> None:
        self.runs = runs
        self.only = only
        self.sizes = sizes
        self.experiments = experiments
        project = f"airflow-k3s-bench-{uuid.uuid4().hex[:6]}"
        state = Path(tempfile.mkdtemp(prefix=f"{project}-"))
        images = os.environ.get("IMAGES", "local")
        self.stack = Stack(images, project, state, stack_env(images, project, state))
        self.report = Report(meta=machine_meta(self.stack.settings))
        self.report.meta["executor_settings"] = executor_settings(self.stack.settings)
        self.started = time.monotonic()
        self.pods_cleared = 0  # ended pods deleted before the mapped runs

    def trigger(self, dag_id: str, conf: str = "", timeout: int = 900) -> tuple[float, str]:
        """`invoke trigger-dag --wait`: (wall seconds, run id)."""
        took, run_id = timed(lambda: self.stack.run_dag(dag_id, timeout=timeout, conf=conf))
        return took, run_id

    # ----------------------------------------------------------------------- up

    def up_cold(self) -> None:
        took, ready, _ = measure.invoke_with_readiness(self.stack, "up")
        self.report.add(
            Figure(
                "up_cold",
                "`invoke up`, cold (no container, no volume; images built)",
                "s",
                [took],
                note="to all healthy, node Ready, worker image pushed",
            )
        )
        self.report.readiness["cold up"] = ready.ready
        version = self.stack.kubectl_json("get", "node", "k3s")["status"]["nodeInfo"][
            "kubeletVersion"
        ]
        self.report.meta["kubernetes"] = version

    def up_warm(self) -> None:
        samples = []
        for attempt in range(self.runs):
            assert self.stack.invoke("down", timeout=300).returncode == 0
            took, ready, _ = measure.invoke_with_readiness(self.stack, "up", "--no-build")
            samples.append(took)
            if attempt == 0:
                self.report.readiness["warm up (`down`, then `up --no-build`)"] = ready.ready
        self.report.add(
            Figure(
                "up_warm",
                "`invoke up --no-build` after `invoke down` (warm)",
                "s",
                samples,
                TARGETS["up_warm"],
                "volumes kept: the node keeps its etcd, images and pods",
            )
        )

    # ----------------------------------------------------------------------- runs

    def demo(self) -> None:
        samples, spans = [], []
        for _ in range(self.runs):
            took, run_id = self.trigger("demo_rest_to_s3")
            samples.append(took)
            spans.append(measure.run_span(self.stack, "demo_rest_to_s3", run_id))
            timings = task_timings(self.stack, "demo_rest_to_s3", run_id)
        self.report.add(
            Figure(
                "demo",
                "Demo DAG, `invoke trigger-dag demo_rest_to_s3 --wait`",
                "s",
                samples,
                TARGETS["demo"],
                f"the run itself (API): {median(spans):.1f} s; "
                f"`--wait` polls every {runs.POLL_SECONDS:g} s",
            )
        )
        self.report.phases["demo (last run, 3 tasks)"] = phase_medians(timings)

    def per_task(self) -> None:
        walls, spans, all_timings = [], [], []
        for _ in range(self.runs):
            took, run_id = self.trigger("bench_trivial")
            walls.append(took)
            spans.append(measure.run_span(self.stack, "bench_trivial", run_id))
            all_timings += task_timings(self.stack, "bench_trivial", run_id)
        floor_runs = [self.floor() for _ in range(self.runs)]
        floors = [f.task_s for f in floor_runs]
        self.report.add(
            Figure(
                "trivial",
                "One trivial task, trigger to success",
                "s",
                walls,
                note=f"the run itself (API): {median(spans):.1f} s",
            )
        )
        self.report.add(
            Figure(
                "floor",
                "The floor: the same task under `airflow dags test`, in one process (its duration)",
                "s",
                floors,
                note="no executor, no pod: the task's start to its end in the scheduler "
                f"container; that run's span {median([f.span_s for f in floor_runs]):.1f} s, "
                "the whole command (CLI start, DAG parse) "
                f"{median([f.wall_s for f in floor_runs]):.1f} s",
            )
        )
        # What the executor path adds to the task: the run's span (scheduling, queueing, the pod,
        # Python's start in it, reporting back) minus the task's own run in its pod. Against the
        # `dags test` floor the difference is about zero or below: in one process the task takes
        # longer (`dags test` serves the Execution API in-process and parses the DAG first), so
        # that floor bounds nothing and the target is judged against the task's own run instead.
        ran = [t.ended - t.started for t in all_timings]
        overhead = [span - r for span, r in zip(spans, ran, strict=True)]
        self.report.add(
            Figure(
                "overhead",
                "Per-task overhead: the executor run's span minus the task's own run in its pod",
                "s",
                overhead,
                TARGETS["overhead"],
                f"the task ran {median(ran):.1f} s; the span minus the `dags test` floor: "
                f"{median(spans) - median(floors):+.1f} s (the floor is slower: see Notes)",
            )
        )
        self.report.phases["one trivial task"] = phase_medians(all_timings)
        self.report.notes.append(
            "The floor, `airflow dags test` in one process, is slower than the executor for a "
            "trivial task: it parses the DAG, then runs the task through an in-process supervisor "
            "that serves the Execution API itself (InProcessExecutionAPI), where the executor's "
            "pod talks to an api-server that is already warm. So the per-task overhead is judged "
            "against the task's own run in its pod, the stricter measure."
        )

    def floor(self) -> Floor:
        """`airflow dags test bench_trivial DATE` in the scheduler container, the floor of a task:
        its own duration with no executor and no pod, the run's span and the command's time."""
        # A logical date of its own: without one, `dags test` deletes a run that has none.
        date = datetime.now(UTC)
        cmd = ["airflow", "dags", "test", "bench_trivial", date.isoformat(timespec="microseconds")]
        took, _ = timed(lambda: self.stack.docker.exec("airflow-scheduler", cmd))
        runs = self.stack.api().get("/api/v2/dags/bench_trivial/dagRuns", limit=100)["dag_runs"]
        run = next(
            r for r in runs if abs(measure.ts(r.get("logical_date")) - date.timestamp()) < 1e-3
        )
        run_id = run["dag_run_id"]
        (ti,) = self.stack.api().get(f"/api/v2/dags/bench_trivial/dagRuns/{run_id}/taskInstances")[
            "task_instances"
        ]
        assert ti["state"] == "success", f"`dags test` ran the task to {ti['state']}"
        return Floor(
            wall_s=took,
            span_s=measure.run_span(self.stack, "bench_trivial", run_id),
            task_s=measure.ts(ti["end_date"]) - measure.ts(ti["start_date"]),
        )

    def scaling(self) -> None:
        for n in self.sizes:
            try:
                self.report.scaling.append(self.mapped(n, "project settings"))
            except AssertionError as exc:  # a failed run is a result too: say so, go on
                lines = [ln for ln in str(exc).splitlines() if ln.startswith("==> noop")]
                self.report.notes.append(
                    f"bench_mapped N={n} did not succeed; its last state: "
                    + (lines[-1].removeprefix("==> ") if lines else str(exc)[:300])
                )
        points = [(float(r["n"]), float(r["wall_s"])) for r in self.report.scaling]
        b, a = slope(points)
        self.report.add(
            Figure(
                "slope",
                "Scaling: seconds per extra mapped task (least squares)",
                "s",
                [b],
                note=f"intercept {a:.1f} s",
            )
        )
        fifty = next((r for r in self.report.scaling if r["n"] == 50), None)
        if fifty:
            self.report.add(
                Figure(
                    "mapped_50",
                    "50 mapped trivial tasks, trigger to success",
                    "s",
                    [fifty["wall_s"]],
                    TARGETS["mapped_50"],
                    f"{fifty['tasks_per_min']:.0f} tasks/min",
                )
            )
            self.report.add(
                Figure(
                    "memory_peak",
                    "Memory, peak of the stack during the 50-task run",
                    "B",
                    [fifty["peak_memory_gib"] * GIB],
                    note=f"CPU peak {fifty['peak_cpu']:.0f} % (200 % = both cores)",
                )
            )

    def clear_ended_pods(self) -> int:
        """Delete the worker pods that have ended (DELETE_WORKER_PODS=False keeps them): each run
        starts on a node holding none, so that runs compare. Returns how many there were."""
        ended = "status.phase!=Running,status.phase!=Pending"
        names = self.stack.kubectl(
            "get", "pods", "--field-selector", ended, "-o", "name"
        ).stdout.split()
        if names:
            result = self.stack.kubectl("delete", "pods", "--field-selector", ended, "--wait")
            assert result.returncode == 0, result.stderr
        return len(names)

    def mapped(self, n: int, label: str) -> dict[str, Any]:
        self.pods_cleared += self.clear_ended_pods()
        with Sampler(self.stack.project) as sampler:
            took, run_id = self.trigger("bench_mapped", conf=f'{{"n": {n}}}', timeout=1800)
        span = measure.run_span(self.stack, "bench_mapped", run_id)
        timings = [
            t for t in task_timings(self.stack, "bench_mapped", run_id) if t.task_id == "noop"
        ]
        self.report.phases[f"bench_mapped N={n} ({label})"] = phase_medians(timings)
        return {
            "n": n,
            "label": label,
            "wall_s": took,
            "run_span_s": span,
            "tasks_per_min": n / took * 60,
            "peak_memory_gib": sampler.peak_memory / GIB,
            "peak_cpu": sampler.peak_cpu,
            "cpu_s": sampler.cpu_used,
            "host": sampler.host,
            "node_cpu_s": sampler.node_cpu,
        }

    def experiment(self, label: str, change: str, services: dict[str, dict[str, Any]]) -> None:
        """N=50 with some services changed (``services``: a compose override of them, which the
        bench applies by recreating just those services), against a run with the project's
        settings just before it: one run against the other, minutes apart, so that a machine
        that drifts slower over the bench does not decide the verdict."""
        baseline = self.mapped(50, f"project settings (paired with: {label})")
        self.report.scaling.append(baseline)
        mapped_50 = self.report.figure("mapped_50")
        if mapped_50 is not None:
            mapped_50.samples.append(baseline["wall_s"])
            mapped_50.note = (
                f"{50 / mapped_50.value * 60:.0f} tasks/min (median); the samples: the scaling "
                "run and the experiments' paired runs"
            )
        name = "".join(c if c.isalnum() else "-" for c in label)
        override = self.stack.state_dir / f"experiment-{name}.yml"
        override.write_text(yaml.safe_dump({"services": services}, sort_keys=False))
        compose_up(self.stack, [override], list(services))
        try:
            changed = self.mapped(50, label)
        finally:
            compose_up(self.stack, [], list(services))
        self.report.scaling.append(changed)
        delta = (changed["wall_s"] - baseline["wall_s"]) / baseline["wall_s"] * 100
        faster = "the project's settings" if delta > 0 else "the change"
        self.report.experiments.append(
            {
                "change": f"{change} (50 mapped tasks)",
                "before": shown_run(changed),
                "after": shown_run(baseline),
                "delta_pct": delta,
                "kept": f"faster: {faster} ({delta:+.0f} % with the change)",
            }
        )

    def experiments_run(self) -> None:
        settings = self.report.meta["executor_settings"]
        batch = settings.get("worker_pods_creation_batch_size")
        parallelism = settings.get("parallelism")
        self.experiment(
            "batch size 1 (the provider's default)",
            f"worker_pods_creation_batch_size 1 (provider default), against {batch}",
            scheduler_env(AIRFLOW__KUBERNETES_EXECUTOR__WORKER_PODS_CREATION_BATCH_SIZE="1"),
        )
        self.experiment(
            "sequential pod creation (the provider's default)",
            "async_pod_creation False (provider default: one create call after the other), "
            f"against {settings.get('async_pod_creation')}",
            scheduler_env(AIRFLOW__KUBERNETES_EXECUTOR__ASYNC_POD_CREATION="False"),
        )
        for value, why in (("32", "Airflow's default"), ("4", "")):
            self.experiment(
                f"parallelism {value}",
                f"[core] parallelism {value}"
                + (f" ({why})" if why else "")
                + f", against {parallelism}",
                scheduler_env(AIRFLOW__CORE__PARALLELISM=value),
            )
        digest = self.stack.push()  # idempotent: the digest the registry holds
        by_digest = scheduler_env(
            AIRFLOW__KUBERNETES_EXECUTOR__WORKER_CONTAINER_TAG=f"latest@{digest}"
        )
        by_digest["airflow-scheduler"]["volumes"] = [
            self.pod_template(
                "ifnotpresent", "imagePullPolicy: Always", "imagePullPolicy: IfNotPresent"
            )
        ]
        self.experiment(
            "image by digest, IfNotPresent",
            "the worker image pinned by digest (tag latest@sha256:...) with imagePullPolicy "
            "IfNotPresent, against tag latest with Always (a registry check per pod)",
            by_digest,
        )
        no_token = self.pod_template(
            "no-token",
            "  restartPolicy: Never\n",
            "  restartPolicy: Never\n  automountServiceAccountToken: false\n"
            "  enableServiceLinks: false\n",
        )
        self.experiment(
            "no service account token, no service links",
            "worker pods without a service account token (automountServiceAccountToken false: "
            "no token request, no projected volume) and without service environment variables "
            "(enableServiceLinks false), against Kubernetes' defaults (both on)",
            {"airflow-scheduler": {"volumes": [no_token]}},
        )
        self.experiment(
            "dag-processor reparsing every 30 s",
            "the dag-processor parses every unchanged DAG file every 30 s (Airflow's default "
            "min_file_process_interval), against every "
            f"{settings.get('min_file_process_interval')} s",
            {
                "airflow-dag-processor": {
                    "environment": {"AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30"}
                }
            },
        )
        self.experiment(
            "healthchecks by airflow jobs check",
            "the dag-processor's and triggerer's healthchecks by `airflow jobs check` every 10 s "
            "(an Airflow CLI start each), against one query every 5 s (job-alive)",
            {
                service: {
                    "healthcheck": {
                        "test": ["CMD-SHELL", check],
                        "interval": "10s",
                        "timeout": "30s",
                    }
                }
                for service, check in AIRFLOW_JOBS_CHECK.items()
            },
        )

    def pod_template(self, name: str, old: str, new: str) -> str:
        """A copy of the project's pod template with ``old`` replaced by ``new``, as a volume
        entry that mounts it over the scheduler's template."""
        template = (self.stack.settings.root / "airflow" / "pod_template.yaml").read_text()
        assert old in template, f"the pod template no longer holds {old!r}"
        path = self.stack.state_dir / f"experiment-pod-template-{name}.yaml"
        path.write_text(template.replace(old, new))
        return f"{path}:/opt/airflow/pod_template.yaml:ro"

    # ----------------------------------------------------------------------- edit loop

    def edit_samples(self) -> list[float]:
        """Seconds from a DAG file's edit to a run whose task returned the new value, the DAG
        shipped the stack's way (DAG_SOURCE: image build and push, or publish), self.runs times."""
        path = self.stack.dags_dir / f"{EDIT_DAG}.py"  # the stack's copy of dags/
        samples = []
        try:
            write_edit_dag(path, "v0")
            self.ship()
            self.trigger(EDIT_DAG)
            for i in range(1, self.runs + 1):
                value = f"v{i}"
                started = time.monotonic()
                write_edit_dag(path, value)
                self.ship()
                _, run_id = self.trigger(EDIT_DAG)
                samples.append(time.monotonic() - started)
                got = self.stack.api().xcom(EDIT_DAG, run_id, "which")
                assert got == value, f"the task ran {got!r}, not the edited {value!r}"
        finally:
            path.unlink(missing_ok=True)
            self.ship()
        return samples

    def edit_loop(self) -> None:
        samples = self.edit_samples()
        self.report.add(
            Figure(
                "edit_loop",
                "DAG-edit loop: edit a DAG file, `build --worker-only`, `push`, trigger, until "
                "the task ran the new code",
                "s",
                samples,
                note="the new code is asserted through the task's XCom",
            )
        )

    def ship(self) -> None:
        """The DAGs folder to the pods: the worker image built and pushed, or a new version."""
        git = self.stack.settings.git_dags
        for args in [("publish-dags",)] if git else [("build", "--worker-only"), ("push",)]:
            result = self.stack.invoke(*args, timeout=600)
            assert result.returncode == 0, result.stderr[-2000:]

    # ----------------------------------------------------------------------- node pools

    def node_pools(self) -> None:
        """The server alone, then with the example's pools: N mapped tasks on each, and the
        agents' idle cost. Ends without pools (`up` again: the agents go)."""
        one = self.pool_run("one node (no pools)")
        self.stack.env["NODE_POOLS"] = str(POOLS_FILE)
        try:
            assert self.stack.invoke("up", "--no-build", timeout=1800).returncode == 0
            time.sleep(30)  # the agents' start settles
            idle = self.agents_idle()
            three = self.pool_run("three nodes (pools)")
        finally:
            del self.stack.env["NODE_POOLS"]
            assert self.stack.invoke("up", "--no-build", timeout=1800).returncode == 0
        self.report.node_pools = {
            "meta": {
                **self.section_meta(),
                "pools_file": str(POOLS_FILE.relative_to(ROOT)),
                "agents": idle["agents"],
                "n": POOL_TASKS,
            },
            "idle": idle,
            "runs": [one, three],
        }

    def section_meta(self) -> dict[str, str]:
        """When, at which commit and by which command a section was measured (a section can be
        measured again alone, into an older report: `--only`)."""
        return {
            "date": datetime.now(UTC).strftime("%Y-%m-%d"),
            "git_commit": str(self.report.meta.get("git_commit", "?")),
            "command": "nox -s bench" + (f" -- --only {self.only}" if self.only else ""),
        }

    def pool_run(self, label: str) -> dict[str, Any]:
        run = self.mapped(POOL_TASKS, label)
        pods = self.stack.pods("dag_id=bench_mapped")
        newest = max(p["metadata"]["labels"]["run_id"] for p in pods)
        used = {
            p["spec"].get("nodeName") for p in pods if p["metadata"]["labels"]["run_id"] == newest
        }
        return {
            "label": label,
            "wall_s": run["wall_s"],
            "cpu_per_task_s": sum(run["cpu_s"].values()) / POOL_TASKS,
            "nodes_used": len(used),
        }

    def agents_idle(self) -> dict[str, float]:
        """Memory and CPU of the agent containers, per agent (five samples' median)."""
        memory, cpu, agents = [], [], 0
        for _ in range(5):
            sample = {
                s: v for s, v in measure.stats(self.stack.project).items() if s.startswith("agent-")
            }
            agents = len(sample)
            memory.append(sum(m for m, _ in sample.values()) / max(agents, 1))
            cpu.append(sum(c for _, c in sample.values()) / max(agents, 1))
            time.sleep(2)
        return {
            "agents": agents,
            "memory_per_agent_bytes": median(memory),
            "cpu_per_agent_pct": median(cpu),
        }

    # ----------------------------------------------------------------------- DAG sources

    def dag_sources(self) -> None:
        """DAG_SOURCE=image against git on this stack: each one's edit loop and CPU per task,
        with the DAGs folder as it is and with EXTRA_MB more. Ends in git mode."""
        rows = []
        for source in ("image", "git"):
            if source == "git":
                self.stack.env["DAG_SOURCE"] = "git"
                up = self.stack.invoke("up", timeout=1800)
                assert up.returncode == 0, up.stderr[-2000:]
            for extra_mb in (0, EXTRA_MB):
                extra = write_extra_files(self.stack.dags_dir, extra_mb)
                try:
                    self.ship()
                    rows.append(self.dag_source_row(source, extra_mb))
                finally:
                    for file in extra:
                        file.unlink()
        self.ship()
        self.report.dag_sources = {
            "meta": {
                **self.section_meta(),
                "runs": self.runs,
                "n": SOURCE_TASKS,
                "extra_mb": EXTRA_MB,
            },
            "rows": rows,
        }

    def dag_source_row(self, source: str, extra_mb: int) -> dict[str, Any]:
        loop = self.edit_samples()
        label = f"DAG_SOURCE={source}" + (f" +{extra_mb} MB" if extra_mb else "")
        run = self.mapped(SOURCE_TASKS, label)
        used: dict[str, float] = run["cpu_s"]
        return {
            "source": source,
            "extra_mb": extra_mb,
            "edit_loop_s": loop,
            "cpu_per_task_s": sum(used.values()) / SOURCE_TASKS,
            "pods_cpu_per_task_s": used.get(PODS, float("nan")) / SOURCE_TASKS,
            "wall_s": run["wall_s"],
        }

    # ----------------------------------------------------------------------- resources

    def idle(self) -> None:
        time.sleep(30)  # let the start settle
        memory, cpu = [], []
        for _ in range(5):
            sample = measure.stats(self.stack.project)
            memory.append(sum(m for m, _ in sample.values()))
            cpu.append(sum(c for _, c in sample.values()))
            time.sleep(2)
        biggest = sorted(sample.items(), key=lambda kv: -kv[1][0])[:3]
        note = "biggest: " + ", ".join(f"{s} {m / 1024**2:.0f} MiB" for s, (m, _) in biggest)
        self.report.add(
            Figure(
                "memory_idle",
                "Memory, idle stack with the node (sum over containers)",
                "B",
                memory,
                TARGETS["memory_idle"],
                note + "; the k3s figure holds its pods",
            )
        )
        self.report.add(
            Figure(
                "cpu_idle",
                "CPU, idle stack (sum of `docker stats` %, 200 % = both cores)",
                "%",
                cpu,
            )
        )

    # ----------------------------------------------------------------------- all

    def run(self) -> int:
        require_docker()
        if self.only:
            return self.run_only()
        try:
            self.up_cold()
            self.idle()
            self.up_warm()
            self.demo()
            self.per_task()
            self.scaling()
            if self.experiments and any(r["n"] == 50 for r in self.report.scaling):
                self.experiments_run()
            self.edit_loop()
            self.node_pools()
            self.dag_sources()
        finally:
            self.report.notes.append(
                "Each mapped run starts on a node without ended pods: the bench deleted "
                f"{self.pods_cleared} of them before those runs (the project keeps them, "
                "DELETE_WORKER_PODS=False; docs/reliability.md has what hundreds of them cost)."
            )
            self.report.meta["duration_s"] = time.monotonic() - self.started
            self.report.meta["loadavg_end"] = " ".join(
                Path("/proc/loadavg").read_text().split()[:3]
            )
            write(self.report, ROOT / "docs")
            if os.environ.get("AIRFLOW_K3S_KEEP_STACK") != "1":
                self.stack.invoke("clean", timeout=300)
        print(f"wrote {ROOT / 'docs' / 'benchmarks.md'}")
        return 0

    def run_only(self) -> int:
        """`--only SECTION`: that section alone, into the existing docs/benchmarks.json."""
        docs = ROOT / "docs"
        report = load(docs / "benchmarks.json")
        try:
            assert self.stack.invoke("up", timeout=3600).returncode == 0
            if self.only == "node-pools":
                self.node_pools()
                report.node_pools = self.report.node_pools
            else:
                self.dag_sources()
                report.dag_sources = self.report.dag_sources
            write(report, docs)
        finally:
            if os.environ.get("AIRFLOW_K3S_KEEP_STACK") != "1":
                self.stack.invoke("clean", timeout=300)
        print(f"wrote the {self.only} section of {docs / 'benchmarks.md'}")
        return 0


def write_extra_files(folder: Path, megabytes: int) -> list[Path]:
    """``megabytes`` MB of Python data modules in ``folder`` (one per MB; random, so that neither
    git nor an image layer compresses them away; no DAG in them, so nothing is parsed)."""
    files = []
    for i in range(megabytes):
        path = folder / f"bench_extra_{i:02d}.py"
        data = base64.b64encode(os.urandom(3 * 1024 * 1024 // 4)).decode()
        path.write_text(
            f'"""Written by tests/bench/bench.py, removed after it."""\n\nDATA = "{data}"\n'
        )
        files.append(path)
    return files


def shown_run(run: dict[str, Any]) -> str:
    """A mapped run as an experiment's row shows it: wall time, pace and CPU seconds per task
    (all containers; steadier than the wall time on a machine shared with others)."""
    cpu = sum(run.get("cpu_s", {}).values()) / run["n"]
    return f"{run['wall_s']:.1f} s ({run['tasks_per_min']:.0f} tasks/min, {cpu:.2f} CPU s/task)"


def phase_medians(timings: Sequence[measure.TaskTiming]) -> dict[str, float]:
    phases = [t.phases() for t in timings]
    if not phases:
        return {}
    return {name: median([p[name] for p in phases]) for name in phases[0]}


def scheduler_env(**env: str) -> dict[str, dict[str, Any]]:
    """A compose override that sets the scheduler's environment variables ``env``."""
    return {"airflow-scheduler": {"environment": env}}


#: The healthchecks the dag-processor and triggerer had before job-alive (docker-compose.yml).
AIRFLOW_JOBS_CHECK = {
    service: f'airflow jobs check --job-type {job} --hostname "$${{HOSTNAME}}"'
    for service, job in (
        ("airflow-dag-processor", "DagProcessorJob"),
        ("airflow-triggerer", "TriggererJob"),
    )
}


def compose_up(stack: Stack, extra: list[Path], services: list[str]) -> None:
    """Recreate ``services`` with extra compose files (an experiment's settings), wait healthy."""
    docker = stack.docker
    shell.run([*docker.compose_cli(*extra), "up", "-d", "--no-build", *services], env=stack.env)
    docker.wait_healthy(timeout=300)


def write_edit_dag(path: Path, value: str) -> None:
    path.write_text(
        '"""Written by the DAG-edit loop of tests/bench/bench.py, removed after it."""\n\n'
        "from airflow.sdk import dag, task\n\n\n"
        "@task\n"
        "def which() -> str:\n"
        f"    return {value!r}\n\n\n"
        f'@dag(dag_id="{EDIT_DAG}", schedule=None, catchup=False, tags=["bench"])\n'
        f"def {EDIT_DAG}() -> None:\n"
        "    which()\n\n\n"
        f"{EDIT_DAG}()\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3, help="runs of each repeated figure")
    parser.add_argument("--sizes", default="1,10,50,100", help="N of the mapped-task runs")
    parser.add_argument(
        "--no-experiments", action="store_true", help="skip the settings experiments"
    )
    parser.add_argument(
        "--only",
        choices=["dag-sources", "node-pools"],
        default="",
        help="measure one section again into the existing report",
    )
    args = parser.parse_args(argv)
    sizes = [int(n) for n in args.sizes.split(",") if n]
    return Bench(args.runs, sizes, not args.no_experiments, args.only).run()


if __name__ == "__main__":
    sys.exit(main())
