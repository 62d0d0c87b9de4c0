"""The benchmark's report: docs/benchmarks.json (every sample), docs/benchmarks.md (the figures,
their targets, where the time goes) and the scaling plot, drawn with matplotlib."""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

STANDIN_FILE = "benchmarks-standin-2026-11-25.json"
#: Earlier full runs of this bench on another kind of machine, kept whole to compare against.
MACHINE_FILES = "benchmarks-machine-*.json"
PLOT_FILE = "bench-scaling.png"


def median(values: Sequence[float]) -> float:
    """The median of the values that are numbers; NaN when there are none."""
    clean = [v for v in values if not math.isnan(v)]
    return statistics.median(clean) if clean else float("nan")


@dataclass
class Figure:
    """One measured figure: the median of its samples, against a target if it has one."""

    key: str
    name: str
    unit: str
    samples: list[float]
    target: float | None = None
    note: str = ""

    @property
    def value(self) -> float:
        return median(self.samples)

    @property
    def met(self) -> bool | None:
        if self.target is None or math.isnan(self.value):
            return None
        return self.value <= self.target

    def shown(self) -> str:
        if math.isnan(self.value):
            return "not measured"
        if self.unit == "B":
            return f"{self.value / 1024**3:.2f} GiB"
        if self.unit == "s":
            return f"{self.value:.1f} s"
        return f"{self.value:.1f} {self.unit}"

    def shown_target(self) -> str:
        if self.target is None:
            return "-"
        return (
            f"≤ {self.target / 1024**3:.0f} GiB"
            if self.unit == "B"
            else f"≤ {self.target:g} {self.unit}"
        )


@dataclass
class Report:
    meta: dict[str, Any]
    figures: list[Figure] = field(default_factory=list)
    phases: dict[str, dict[str, float]] = field(default_factory=dict)
    scaling: list[dict[str, Any]] = field(default_factory=list)
    experiments: list[dict[str, Any]] = field(default_factory=list)
    readiness: dict[str, dict[str, float]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    #: DAG_SOURCE=image against git, measured in one run (its own commit and date: `--only
    #: dag-sources` measures it again into an existing report): {"meta": ..., "rows": [...]}
    dag_sources: dict[str, Any] = field(default_factory=dict)
    #: Node pools' cost, measured in one run (`--only node-pools` again into a report):
    #: {"meta": ..., "idle": {...}, "runs": [...]}
    node_pools: dict[str, Any] = field(default_factory=dict)

    def add(self, figure: Figure) -> Figure:
        self.figures.append(figure)
        return figure

    def figure(self, key: str) -> Figure | None:
        return next((f for f in self.figures if f.key == key), None)


def write(report: Report, docs: Path) -> None:
    docs.mkdir(parents=True, exist_ok=True)
    data = {
        "meta": report.meta,
        "figures": [
            {**asdict(f), "value": f.value, "met": f.met, "shown": f.shown()}
            for f in report.figures
        ],
        "phases": report.phases,
        "scaling": report.scaling,
        "experiments": report.experiments,
        "readiness": report.readiness,
        "notes": report.notes,
        "dag_sources": report.dag_sources,
        "node_pools": report.node_pools,
    }
    (docs / "benchmarks.json").write_text(json.dumps(data, indent=1, default=str) + "\n")
    if report.scaling:
        plot(report, docs / PLOT_FILE)
    (docs / "benchmarks.md").write_text(markdown(report, docs))


def slope(points: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares line through (x, y): (slope, intercept)."""
    n = len(points)
    if n < 2:
        return float("nan"), float("nan")
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    sxy = sum((x - mx) * (y - my) for x, y in points)
    b = sxy / sxx if sxx else float("nan")
    return b, my - b * mx


def plot(report: Report, path: Path) -> None:
    """Wall time against the number of mapped tasks, with the fitted line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = [
        (float(r["n"]), float(r["wall_s"]))
        for r in report.scaling
        if r.get("label") == "project settings"
    ]
    fig, ax = plt.subplots(figsize=(9.6, 4.4), dpi=110)
    ax.plot(
        [x for x, _ in points], [y for _, y in points], "o-", label="measured (project settings)"
    )
    b, a = slope(points)
    if not math.isnan(b):
        xs = [0.0, max(x for x, _ in points)]
        ax.plot(xs, [a + b * x for x in xs], "--", label=f"fit: {a:.1f} s + {b:.2f} s/task")
    # The experiments' paired baselines are project settings too: drawn as one marker series.
    paired = [r for r in report.scaling if str(r.get("label")).startswith("project settings (")]
    if paired:
        ax.plot(
            [r["n"] for r in paired],
            [r["wall_s"] for r in paired],
            ".",
            color="grey",
            label="project settings, the experiments' paired runs",
        )
    others = [r for r in report.scaling if not str(r.get("label")).startswith("project settings")]
    for row in others:
        ax.plot([row["n"]], [row["wall_s"]], "x", markersize=9, label=row["label"])
    target = report.figure("mapped_50")
    if target is not None and target.target is not None:
        ax.plot([50], [target.target], "v", color="red", markersize=9, label="target: 50 tasks")
    ax.set_xlabel("mapped trivial tasks in one run (N)")
    ax.set_ylabel("trigger to success (s)")
    ax.set_title("KubernetesExecutor on the local k3s node, 2 cores")
    ax.grid(alpha=0.3)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # beside the points
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def markdown(report: Report, docs: Path) -> str:
    sections = (
        header(report.meta),
        figures_table(report),
        phases_section(report),
        readiness_section(report),
        scaling_section(report),
        cpu_section(report),
        node_section(report),
        experiments_section(report),
        dag_sources_section(report),
        node_pools_section(report),
        ["", "## Notes", ""] + [f"- {n}" for n in report.notes] if report.notes else [],
        machine_comparison(report, docs),
        standin_comparison(report, docs),
    )
    return "\n".join(line for section in sections for line in section) + "\n"


def header(meta: dict[str, Any]) -> list[str]:
    return [
        "# Benchmarks",
        "",
        "<!-- Generated by tests/bench/bench.py (`nox -s bench`); do not edit by hand. -->",
        "",
        f"Produced by `{meta['command']}` on {meta['date']}, with **IMAGES={meta['images']}**: the "
        "real KubernetesExecutor against the local Kubernetes node (upstream Kubernetes "
        f"{meta.get('kubernetes', '?')}, containerd, CoreDNS; see the README). Checkout "
        f"{meta['git_commit']}; the run took {meta['duration_s'] / 60:.1f} min.",
        "",
        f"Machine: {meta['nproc']} cores ({meta['cpu']}), "
        f"{meta['memory_bytes'] / 1024**3:.1f} GiB, "
        f"{meta['os']}, kernel {meta['kernel']}, cgroup v{meta.get('cgroup', '?')}; Docker "
        f"{meta['docker_engine']}, compose {meta['compose']}. Load average at the start "
        f"{meta['loadavg_start']}, at the end {meta.get('loadavg_end', '?')}.",
        "",
        "Each figure is the median of its samples (all in [benchmarks.json](benchmarks.json)).",
        f"Executor settings of the run: {meta.get('executor_settings', '?')}.",
        "",
    ]


def figures_table(report: Report) -> list[str]:
    rows = []
    for f in report.figures:
        met = {True: "yes", False: "**no**", None: "-"}[f.met]
        rows.append([f.name, f.shown(), f.shown_target(), met, str(len(f.samples)), f.note])
    out = _table(["figure", "value", "target", "met?", "samples", "note"], rows)
    out += ["", "## Targets", ""]
    for f in report.figures:
        if f.met is not None:
            verdict = "met" if f.met else "**missed**"
            out.append(f"- {verdict}: {f.name}: {f.shown()} (target {f.shown_target()})")
    return out


def phases_section(report: Report) -> list[str]:
    if not report.phases:
        return []
    out = ["", "## Where a task's time goes", ""]
    out.append(
        "Medians over the tasks measured, from the task instance's timestamps (API) and the "
        "pod's (kube API; whole seconds, so each phase is ±1 s):"
    )
    out.append("")
    names = list(next(iter(report.phases.values())))
    rows = [
        [label, *(f"{report.phases[label].get(n, float('nan')):.1f} s" for n in names)]
        for label in report.phases
    ]
    return out + _table(["tasks", *names], rows)


def readiness_section(report: Report) -> list[str]:
    if not report.readiness:
        return []
    out = ["", "## `up`: when each service was ready (s after the command started)", ""]
    for label, ready in report.readiness.items():
        order = ", ".join(f"{s} {t:.0f}" for s, t in sorted(ready.items(), key=lambda kv: kv[1]))
        out.append(f"- {label}: {order}")
    return out


def host_cells(host: dict[str, float]) -> list[str]:
    """The machine's counters of one run (measure.host_share), '-' where the run has none."""
    if not host:
        return ["-", "-", "-"]
    return [
        f"{host['steal_pct']:.1f} %",
        f"{host['kernel_pct']:.0f} %",
        f"{host['memory_cgroups']:.0f}",
    ]


def scaling_section(report: Report) -> list[str]:
    if not report.scaling:
        return []
    out = ["", "## Scaling: N mapped trivial tasks", ""]
    rows = [
        [
            str(r["n"]),
            r["label"],
            f"{r['wall_s']:.1f} s",
            f"{r['tasks_per_min']:.0f}",
            f"{r['run_span_s']:.1f} s",
            f"{r.get('peak_memory_gib', float('nan')):.2f} GiB",
            *host_cells(r.get("host") or {}),
        ]
        for r in report.scaling
    ]
    header = ["N", "settings", "trigger to success", "tasks/min", "run (API)", "peak memory"]
    header += ["steal", "kernel share", "memory cgroups"]
    out += _table(header, rows)
    out += [
        "",
        "The last three columns are the machine's, from /proc: the CPU time the hypervisor stole "
        "over the run, the kernel's share of the busy CPU time, and the memory cgroups the kernel "
        "held when the run started (dying ones included). They tell a machine that got slower "
        "from a stack that did.",
    ]
    points = [
        (float(r["n"]), float(r["wall_s"]))
        for r in report.scaling
        if r["label"] == "project settings"
    ]
    b, a = slope(points)
    if not math.isnan(b):  # one size, however many runs, fits no line
        out += ["", f"Fitted: **{a:.1f} s + {b:.2f} s per task** (least squares over N)."]
    return [*out, "", f"![wall time against N]({PLOT_FILE})"]


PODS = "k3s: pods"  # the keys measure.cpu_seconds splits the k3s container into
NODE = "k3s: node"
CPU_COLUMNS = (
    (PODS, "worker pods"),
    (NODE, "node (kubelet, API server, containerd)"),
    ("airflow-scheduler", "scheduler"),
    ("airflow-apiserver", "api-server"),
    ("postgres", "postgres"),
)


def cpu_section(report: Report) -> list[str]:
    """CPU seconds per task by service during each mapped run: what the 2 cores were busy with."""
    rows = []
    for r in report.scaling:
        used: dict[str, float] = r.get("cpu_s") or {}
        if not used:
            continue
        total = sum(used.values())
        named = [used.get(key, float("nan")) for key, _ in CPU_COLUMNS]
        rest = total - sum(v for v in named if not math.isnan(v))
        rows.append(
            [
                f"{r['n']} ({r['label']})",
                *(f"{v / r['n']:.2f}" for v in named),
                f"{rest / r['n']:.2f}",
                f"{total / r['n']:.2f}",
                f"{total / r['wall_s']:.2f}",
            ]
        )
    if not rows:
        return []
    out = ["", "## Where the CPU goes: CPU seconds per task, by service", ""]
    out.append(
        "CPU time each container used while the run went on (the Docker API's counters; the node's "
        "pods read from its kubepods cgroup), divided by N. The last column is the average number "
        "of cores busy over the run (2 = both)."
    )
    out.append("")
    header = ["N", *(name for _, name in CPU_COLUMNS), "the rest", "total", "cores busy"]
    return out + _table(header, rows)


NODE_COLUMNS = 6  # the node's components shown by name; the others are summed into one column


def node_section(report: Report) -> list[str]:
    """The node's CPU seconds per task by component (measure.node_cpu_by_component) during each
    mapped run: which part of Kubernetes the node's share of the cores goes to."""
    runs = [r for r in report.scaling if r.get("node_cpu_s") and (r.get("cpu_s") or {}).get(NODE)]
    if not runs:
        return []
    totals: dict[str, float] = {}
    for r in runs:
        for component, used in r["node_cpu_s"].items():
            totals[component] = totals.get(component, 0.0) + used / r["n"]
    named = sorted(totals, key=lambda c: -totals[c])[:NODE_COLUMNS]
    rows = []
    for r in runs:
        n, used = r["n"], r["node_cpu_s"]
        shown = [used.get(c, 0.0) for c in named]
        rest = r["cpu_s"][NODE] - sum(shown)
        rows.append(
            [
                f"{n} ({r['label']})",
                *(f"{v / n:.2f}" for v in shown),
                f"{rest / n:.2f}",
                f"{r['cpu_s'][NODE] / n:.2f}",
            ]
        )
    out = ["", "## Where the node's CPU goes: CPU seconds per task, by component", ""]
    out.append(
        "The node's column above, split by process (from /proc inside the node: each process's "
        "own CPU time and that of the children it waited for, such as containerd's CNI plugins; "
        "a shim's own time only, its children being the pod's processes). The rest is what no "
        "running process accounts for: the shims of pods that ended, the runc calls they made, "
        "the healthcheck's kubectl and the bench's own `docker exec`."
    )
    out.append("")
    return out + _table(["N", *named, "the rest", "node total"], rows)


def experiments_section(report: Report) -> list[str]:
    if not report.experiments:
        return []
    out = ["", "## Experiments: what each change gave (one run against the other)", ""]
    out.append(
        "Each change ran right after a run with the project's settings (its pair, in the scaling "
        "table above), so both saw the machine in the same state."
    )
    walls = [float(r["wall_s"]) for r in project_runs(report, 50)]
    spread = (max(walls) - min(walls)) / min(walls) * 100 if len(walls) > 1 else None
    if spread is not None:
        out.append(
            f"The {len(walls)} runs of 50 tasks with the project's settings took "
            f"{min(walls):.1f} to {max(walls):.1f} s: a difference smaller than that spread "
            f"({spread:.0f} %) is within the noise."
        )
    out.append("")
    rows = [[e["change"], e["before"], e["after"], verdict(e, spread)] for e in report.experiments]
    return out + _table(
        ["experiment", "with it", "its paired run, project settings", "verdict"], rows
    )


#: The git-mode edit loop's target (issue #28): edit, publish, trigger, the new code ran.
GIT_EDIT_LOOP_TARGET = 3.0


def dag_sources_section(report: Report) -> list[str]:
    """Image mode against git mode, same run: the edit loop and the CPU each task costs, with the
    DAGs folder as it is and with 10 MB more in it."""
    section = report.dag_sources
    if not section.get("rows"):
        return []
    meta = section["meta"]
    out = ["", "## Shipping DAGs: the worker image against the git server (DAG_SOURCE)", ""]
    out.append(
        f"Measured in one run ({meta['date']}, commit {meta['git_commit']}, "
        f"`{meta['command']}`), both ways on one stack. Edit loop: write a DAG file, ship it "
        "(`build --worker-only` and `push`; or `publish-dags`), trigger, until the task returned "
        f"the new value (median of {meta['runs']}; target for git: ≤ {GIT_EDIT_LOOP_TARGET:g} s). "
        f"CPU per task: a run of {meta['n']} mapped trivial tasks, CPU seconds of every "
        "container (and of the pods alone) divided by N: in git mode each pod clones the "
        f"repository. '+{meta['extra_mb']} MB': that many MB of Python data modules added to the "
        "DAGs folder (no DAG in them: the dag-processor skips them), what a pod then clones and "
        "an image build then copies."
    )
    out.append("")
    rows = [
        [
            f"`{r['source']}`" + (f" +{r['extra_mb']} MB" if r["extra_mb"] else ""),
            f"{median(r['edit_loop_s']):.1f} s",
            f"{r['cpu_per_task_s']:.2f}",
            f"{r['pods_cpu_per_task_s']:.2f}",
            f"{r['wall_s']:.1f} s",
        ]
        for r in section["rows"]
    ]
    header = ["DAG_SOURCE", "edit loop", "CPU s / task", "pods' CPU s / task", f"N={meta['n']} run"]
    return out + _table(header, rows)


def node_pools_section(report: Report) -> list[str]:
    """What an agent node costs idle, and N mapped tasks on the server alone against the same on
    three schedulable nodes (the example's pools), same run: the ratio is the figure."""
    section = report.node_pools
    if not section.get("runs"):
        return []
    meta, idle = section["meta"], section["idle"]
    one, three = section["runs"]
    out = ["", "## Node pools: what an agent node costs", ""]
    out.append(
        f"Measured in one run ({meta['date']}, commit {meta['git_commit']}, `{meta['command']}`) "
        f"with the pools of `{meta['pools_file']}` ({meta['agents']} agents). Idle: the agents' "
        "containers, averaged over five `docker stats` samples, per agent. Runs: "
        f"{meta['n']} mapped trivial tasks on the server alone, then with the pools (the tasks "
        "may use the server and the untainted agents: three nodes); CPU seconds of every "
        "container divided by N; the ratio is three nodes' over one node's, so the machine's "
        "speed cancels out."
    )
    out.append("")
    out += _table(
        ["idle, per agent node", "value"],
        [
            ["memory", f"{idle['memory_per_agent_bytes'] / 1024**2:.0f} MiB"],
            ["CPU", f"{idle['cpu_per_agent_pct']:.1f} % of a core"],
        ],
    )
    out.append("")
    rows = [
        [r["label"], f"{r['wall_s']:.1f} s", f"{r['cpu_per_task_s']:.2f}", str(r["nodes_used"])]
        for r in (one, three)
    ]
    rows.append(
        [
            "ratio (three / one)",
            f"{three['wall_s'] / one['wall_s']:.2f}",
            f"{three['cpu_per_task_s'] / one['cpu_per_task_s']:.2f}",
            "",
        ]
    )
    return out + _table([f"N={meta['n']}", "wall", "CPU s / task", "nodes used"], rows)


def verdict(experiment: dict[str, Any], spread: float | None) -> str:
    """The experiment's verdict; "within the noise" when the change moved the time by less than
    the spread of the runs with the project's settings (both in %)."""
    delta = experiment.get("delta_pct")
    if delta is not None and spread is not None and abs(delta) < spread:
        return f"within the noise ({delta:+.0f} % with the change)"
    return str(experiment["kept"])


def load(path: Path) -> Report:
    """A Report from its benchmarks.json, to render again (the samples are not touched)."""
    data = json.loads(path.read_text())
    fields = {"key", "name", "unit", "samples", "target", "note"}
    return Report(
        meta=data["meta"],
        figures=[Figure(**{k: v for k, v in f.items() if k in fields}) for f in data["figures"]],
        phases=data["phases"],
        scaling=data["scaling"],
        experiments=data["experiments"],
        readiness=data["readiness"],
        notes=data["notes"],
        dag_sources=data.get("dag_sources") or {},
        node_pools=data.get("node_pools") or {},
    )


def cpu_per_task(report: Report, n: int = 50) -> tuple[float, float]:
    """CPU seconds per task of the N-task runs with the project's settings (median over them):
    (all containers, the worker pods alone); NaN without counters."""
    counted = [r["cpu_s"] for r in project_runs(report, n) if r.get("cpu_s")]
    return (
        median([sum(used.values()) / n for used in counted]),
        median([used.get(PODS, float("nan")) / n for used in counted]),
    )


def project_runs(report: Report, n: int) -> list[dict[str, Any]]:
    """The runs of N tasks with the project's settings: the scaling run and the experiments'
    paired runs."""
    return [
        r for r in report.scaling if r["n"] == n and str(r["label"]).startswith("project settings")
    ]


def machine_comparison(report: Report, docs: Path) -> list[str]:
    """This run's targeted figures and CPU per task next to earlier full runs of the bench on
    other kinds of machine (docs/benchmarks-machine-*.json): what the machine alone changes."""
    paths = sorted(docs.glob(MACHINE_FILES))
    if not paths:
        return []
    earlier = [load(path) for path in paths]
    runs = [report, *earlier]
    header = ["figure"] + [
        ("this run: " if r is report else "")
        + f"{r.meta['cpu']}, {r.meta['date'][:10]} ({r.meta['git_commit']})"
        for r in runs
    ]
    rows = []
    for figure in report.figures:
        if figure.target is None:
            continue
        cells = []
        for r in runs:
            same = r.figure(figure.key)
            cells.append(
                "-" if same is None else same.shown() + (" (missed)" if same.met is False else "")
            )
        rows.append([f"{figure.name} (target {figure.shown_target()})", *cells])
    per_task = [cpu_per_task(r) for r in runs]
    rows.append(["CPU s per task, 50 tasks, all containers", *(f"{t:.2f}" for t, _ in per_task)])
    rows.append(["CPU s per task, 50 tasks, the worker pods", *(f"{p:.2f}" for _, p in per_task)])
    names = ", ".join(f"[{p.name}]({p.name})" for p in paths)
    return [
        "",
        "## The same bench on another kind of machine",
        "",
        "The CI machines are not all alike. The first column is this run; the others are earlier "
        f"full runs of this bench on 2-core machines of another kind ({names}), kept whole. The "
        "tasks are CPU-bound, so how fast the machine's cores are decides most of the difference "
        "([worker-startup.md](worker-startup.md)).",
        "",
        *_table(header, rows),
    ]


def standin_comparison(report: Report, docs: Path) -> list[str]:
    """The stand-in executor's figures of 2026-11-25, labelled, next to today's."""
    path = docs / STANDIN_FILE
    if not path.exists():
        return []
    old = {f["key"]: f for f in json.loads(path.read_text())["figures"]}
    pairs = [
        ("demo", "demo_trigger_to_success", "Demo DAG, trigger to success"),
        ("up_warm", "up_total", "`invoke up --no-build` from stopped"),
        ("memory_idle", "memory_idle", "Memory of the idle stack"),
    ]
    rows = []
    for new_key, old_key, label in pairs:
        new = report.figure(new_key)
        was = old.get(old_key)
        if new is None or was is None:
            continue
        unit = was.get("unit", "")
        value = was.get("value")
        shown = f"{value / 1024**3:.2f} GiB" if unit in ("B", "bytes") else f"{value:.1f} {unit}"
        rows.append([label, new.shown(), shown])
    if not rows:
        return []
    return [
        "",
        "## For comparison only: the stand-in executor (2026-11-25)",
        "",
        "Before the real cluster ran here, tasks ran as Docker containers started by a stand-in "
        f"executor; its figures ([{STANDIN_FILE}]({STANDIN_FILE})) measured something else and "
        "are kept only to compare:",
        "",
        *_table(["figure", "real cluster (this run)", "stand-in, no cluster"], rows),
    ]


if __name__ == "__main__":
    # `python -m tests.bench.report [DOCS]`: render benchmarks.md and the plot again from
    # benchmarks.json, after a change to this module's layout; the samples stay as measured.
    import sys

    folder = Path(sys.argv[1] if len(sys.argv) > 1 else "docs")
    write(load(folder / "benchmarks.json"), folder)
    print(f"rendered {folder / 'benchmarks.md'} again from {folder / 'benchmarks.json'}")
