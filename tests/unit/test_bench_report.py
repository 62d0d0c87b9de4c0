"""The benchmark's report logic (tests/bench/report.py, measure.py): pure functions, no stack."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from tests.bench.bench import shown_run
from tests.bench.measure import (
    TaskTiming,
    component_of,
    host_share,
    node_cpu_by_component,
    parse_host_counters,
    parse_node_processes,
)
from tests.bench.report import (
    Figure,
    Report,
    cpu_per_task,
    cpu_section,
    experiments_section,
    host_cells,
    load,
    machine_comparison,
    markdown,
    median,
    node_section,
    plot,
    scaling_section,
    slope,
    write,
)


def test_slope_is_least_squares() -> None:
    b, a = slope([(1, 5.0), (10, 32.0), (50, 152.0)])
    assert b == pytest.approx(3.0)
    assert a == pytest.approx(2.0)
    assert all(math.isnan(v) for v in slope([(1, 5.0)])), "one point has no slope"


def test_figure_is_the_median_and_meets_its_target_only_at_or_below_it() -> None:
    assert Figure("x", "x", "s", [3.0, 1.0, 2.0, float("nan")], 2.0).value == 2.0
    assert Figure("x", "x", "s", [1.0, 3.0], 2.0).met is True  # median 2.0
    assert Figure("x", "x", "s", [2.5], 2.0).met is False
    assert Figure("x", "x", "s", [2.5]).met is None, "no target, no verdict"
    assert Figure("x", "x", "s", [float("nan")], 2.0).shown() == "not measured"


def test_task_phases_add_up_to_queued_to_container_finished() -> None:
    t = TaskTiming("noop", 0, 100.0, 104.0, 104.5, 100.5, 101.5, 106.0)
    phases = t.phases()
    assert list(phases) == [
        "queued -> pod created",
        "pod created -> container started",
        "container started -> task started",
        "task ran",
        "task ended -> container finished",
    ]
    assert sum(phases.values()) == pytest.approx(t.container_finished - t.queued)
    assert phases["container started -> task started"] == pytest.approx(2.5)
    assert math.isnan(median([float("nan")]))


def test_cpu_section_divides_by_n_and_counts_the_rest() -> None:
    report = Report(meta={})
    report.scaling.append(
        {
            "n": 10,
            "label": "project settings",
            "wall_s": 20.0,
            "cpu_s": {
                "k3s: pods": 20.0,
                "k3s: node": 5.0,
                "airflow-scheduler": 4.0,
                "airflow-apiserver": 3.0,
                "postgres": 2.0,
                "airflow-dag-processor": 1.0,
                "s3": 1.0,
            },
        }
    )
    report.scaling.append({"n": 1, "label": "no counters", "wall_s": 5.0, "cpu_s": {}})
    lines = cpu_section(report)
    rows = [ln for ln in lines if ln.startswith("| 10 ")]
    assert rows == [
        "| 10 (project settings) | 2.00 | 0.50 | 0.40 | 0.30 | 0.20 | 0.20 | 3.60 | 1.80 |"
    ]
    assert not any(ln.startswith("| 1 ") for ln in lines), "a run without counters has no row"


def test_cpu_section_is_absent_without_counters() -> None:
    report = Report(meta={})
    report.scaling.append({"n": 1, "label": "x", "wall_s": 1.0})
    assert cpu_section(report) == []


def test_markdown_marks_a_missed_target(tmp_path: Path) -> None:
    meta = {
        "command": "nox -s bench",
        "date": "2026-12-02 00:00 UTC",
        "images": "local",
        "git_commit": "abc",
        "duration_s": 60.0,
        "nproc": 2,
        "cpu": "cpu",
        "memory_bytes": 2 * 1024**3,
        "os": "os",
        "kernel": "k",
        "docker_engine": "d",
        "compose": "c",
        "loadavg_start": "0 0 0",
    }
    report = Report(meta=meta)
    report.add(Figure("mapped_50", "50 mapped", "s", [160.0], 150.0))
    text = markdown(report, tmp_path)
    assert "- **missed**: 50 mapped: 160.0 s (target ≤ 150 s)" in text


def paired_report() -> Report:
    """The scaling run, one experiment and its paired run with the project's settings."""
    report = Report(meta={})
    for n, label, wall in (
        (10, "project settings", 40.0),
        (50, "project settings", 150.0),
        (50, "project settings (paired with: batch 1)", 165.0),
        (50, "batch 1", 181.5),
    ):
        report.scaling.append(
            {"n": n, "label": label, "wall_s": wall, "run_span_s": wall, "tasks_per_min": 1.0}
        )
    report.experiments.append(
        {"change": "batch 1", "before": "181.5 s", "after": "165.0 s", "kept": "faster: x"}
    )
    return report


def test_experiments_state_the_spread_of_the_project_runs() -> None:
    text = "\n".join(experiments_section(paired_report()))
    assert "The 2 runs of 50 tasks with the project's settings took 150.0 to 165.0 s" in text
    assert "(10 %) is within the noise" in text
    assert "| batch 1 | 181.5 s | 165.0 s | faster: x |" in text


def test_the_plot_draws_paired_runs_apart_from_the_scaling_line(tmp_path: Path) -> None:
    path = tmp_path / "plot.png"
    plot(paired_report(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_change_smaller_than_the_spread_is_within_the_noise() -> None:
    report = paired_report()
    report.experiments[0]["delta_pct"] = 10.0 - 0.5  # the spread of the project's runs: 10 %
    assert "within the noise (+10 % with the change)" in "\n".join(experiments_section(report))
    report.experiments[0]["delta_pct"] = 10.5
    assert "| faster: x |" in "\n".join(experiments_section(report))


def test_a_report_renders_again_from_its_json(tmp_path: Path) -> None:
    report = paired_report()
    report.meta.update(
        command="nox -s bench",
        date="d",
        images="local",
        git_commit="c",
        duration_s=60.0,
        nproc=2,
        cpu="cpu",
        memory_bytes=2 * 1024**3,
        os="os",
        kernel="k",
        docker_engine="d",
        compose="c",
        loadavg_start="0 0 0",
    )
    report.add(Figure("mapped_50", "50 mapped", "s", [150.0, 165.0], 150.0))
    report.dag_sources = {
        "meta": {
            "date": "d",
            "git_commit": "c",
            "command": "nox -s bench",
            "runs": 3,
            "n": 20,
            "extra_mb": 10,
        },
        "rows": [
            {
                "source": "image",
                "extra_mb": 0,
                "edit_loop_s": [6.0, 7.0, 6.5],
                "cpu_per_task_s": 1.5,
                "pods_cpu_per_task_s": 1.0,
                "wall_s": 40.0,
            },
            {
                "source": "git",
                "extra_mb": 10,
                "edit_loop_s": [3.0, 2.0, 4.0],
                "cpu_per_task_s": 2.25,
                "pods_cpu_per_task_s": 1.5,
                "wall_s": 50.0,
            },
        ],
    }
    report.node_pools = {
        "meta": {
            "date": "d",
            "git_commit": "c",
            "command": "nox -s bench",
            "pools_file": "k3s/node-pools.example.yaml",
            "agents": 3,
            "n": 50,
        },
        "idle": {"agents": 3, "memory_per_agent_bytes": 300 * 1024**2, "cpu_per_agent_pct": 4.0},
        "runs": [
            {"label": "one node", "wall_s": 100.0, "cpu_per_task_s": 2.0, "nodes_used": 1},
            {"label": "three nodes", "wall_s": 125.0, "cpu_per_task_s": 2.5, "nodes_used": 3},
        ],
    }
    write(report, tmp_path)
    first = (tmp_path / "benchmarks.md").read_text()
    write(load(tmp_path / "benchmarks.json"), tmp_path)
    assert (tmp_path / "benchmarks.md").read_text() == first
    assert "| 50 mapped | 157.5 s | ≤ 150 s | **no** | 2 |" in first
    # The DAG-source comparison: the median edit loop, CPU per task, both ways, one table.
    assert "| `image` | 6.5 s | 1.50 | 1.00 | 40.0 s |" in first
    assert "| `git` +10 MB | 3.0 s | 2.25 | 1.50 | 50.0 s |" in first
    # Node pools: an agent's idle cost, and three nodes against one as ratios.
    assert "| memory | 300 MiB |" in first
    assert "| ratio (three / one) | 1.25 | 1.25 |  |" in first


def machine_report(cpu: str, wall_50: float, pod_cpu: list[float]) -> Report:
    """A finished bench on a machine ``cpu``: its 50-task figure and runs of 50 tasks with the
    project's settings (worker pods' CPU seconds ``pod_cpu``), plus one experiment run."""
    meta = {"command": "nox -s bench", "images": "local", "duration_s": 60.0, "nproc": 2}
    meta |= {"memory_bytes": 2 * 1024**3, "os": "os", "kernel": "k", "docker_engine": "d"}
    meta |= {"compose": "c", "loadavg_start": "0 0 0", "cpu": cpu, "git_commit": "abc"}
    report = Report(meta=meta | {"date": "2026-12-06 09:00 UTC"})
    report.add(Figure("mapped_50", "50 mapped", "s", [wall_50], 150.0))
    report.add(Figure("slope", "slope", "s", [3.0]))  # no target: not compared
    labels = ["project settings"] + ["project settings (paired with: x)"] * (len(pod_cpu) - 1)
    for label, pods in zip(labels, pod_cpu, strict=True):
        report.scaling.append(
            {"n": 50, "label": label, "wall_s": wall_50, "cpu_s": {"k3s: pods": pods, "s3": 50.0}}
        )
    report.scaling.append(
        {"n": 50, "label": "x", "wall_s": 1.0, "cpu_s": {"k3s: pods": 9999.0, "s3": 50.0}}
    )
    for run in report.scaling:
        run |= {"run_span_s": run["wall_s"], "tasks_per_min": 50 / run["wall_s"] * 60}
    return report


def test_cpu_per_task_is_the_median_of_the_project_runs_only() -> None:
    total, pods = cpu_per_task(machine_report("cpu", 100.0, [100.0, 150.0, 300.0]))
    assert pods == pytest.approx(3.0), "the median run, the experiment's run left out"
    assert total == pytest.approx(4.0)
    assert all(math.isnan(v) for v in cpu_per_task(Report(meta={}))), "no runs, no figure"


def test_other_machines_are_compared_figure_by_figure(tmp_path: Path) -> None:
    assert machine_comparison(machine_report("Xeon", 100.0, [100.0]), tmp_path) == []
    write(machine_report("EPYC", 204.0, [237.0]), tmp_path)
    (tmp_path / "benchmarks.json").rename(tmp_path / "benchmarks-machine-epyc.json")
    text = "\n".join(machine_comparison(machine_report("Xeon", 100.0, [100.0]), tmp_path))
    assert "| figure | this run: Xeon, 2026-12-06 (abc) | EPYC, 2026-12-06 (abc) |" in text
    assert "| 50 mapped (target ≤ 150 s) | 100.0 s | 204.0 s (missed) |" in text
    assert "| CPU s per task, 50 tasks, the worker pods | 2.00 | 4.74 |" in text
    assert "slope" not in text, "figures without a target are not compared"
    assert "[benchmarks-machine-epyc.json](benchmarks-machine-epyc.json)" in text


PROC_CGROUPS = "#subsys_name hierarchy num_cgroups enabled\ncpu 3 1 1\nmemory 4 {n} 1\n"


def test_host_share_reads_steal_and_the_kernels_share_of_busy_time() -> None:
    #                user nice system idle iowait irq softirq steal
    start = parse_host_counters(
        "cpu  100 0 50 800 0 0 0 50 0 0\ncpu0 1\n", PROC_CGROUPS.format(n=7)
    )
    end = parse_host_counters("cpu  400 0 150 1100 0 0 0 150 0 0\n", PROC_CGROUPS.format(n=90))
    assert start.memory_cgroups == 7
    share = host_share(start, end)
    assert share["steal_pct"] == pytest.approx(100 * 100 / 800)  # 800 jiffies in all
    assert share["kernel_pct"] == pytest.approx(100 * 100 / 400)  # 300 user, 100 system
    assert share["memory_cgroups"] == 7, "the count at the run's start"
    assert host_cells(share) == ["12.5 %", "25 %", "7"]
    assert host_cells({}) == ["-", "-", "-"], "a run measured before the counters existed"


def test_runs_of_one_size_fit_no_line_and_an_experiment_shows_cpu_per_task() -> None:
    report = Report(meta={})
    for wall in (200.0, 210.0):
        report.scaling.append(
            {"n": 50, "label": "project settings", "wall_s": wall, "tasks_per_min": 15.0}
        )
    report.scaling[0]["run_span_s"] = report.scaling[1]["run_span_s"] = 190.0
    assert not any("Fitted" in line for line in scaling_section(report))
    run = {"n": 50, "wall_s": 200.0, "tasks_per_min": 15.0, "cpu_s": {"a": 300.0, "b": 60.0}}
    assert shown_run(run) == "200.0 s (15 tasks/min, 7.20 CPU s/task)"


def _stat(pid: int, comm: str, utime: int, stime: int, cutime: int, cstime: int, start: int) -> str:
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime
    # stime cutime cstime priority nice threads itrealvalue starttime ...
    return (
        f"{pid} ({comm}) S 1 1 1 0 -1 0 0 0 0 0 {utime} {stime} {cutime} {cstime} 20 0 9 0 "
        f"{start} 1000 10"
    )


def test_node_cpu_is_split_by_component_with_children_and_reaped_processes() -> None:
    assert component_of("/usr/bin/k3s kube-apiserver") == "kube-apiserver"
    assert component_of("/bin/k3s server") == "server"
    assert component_of("/usr/local/bin/containerd --config") == "containerd"
    assert component_of("") == "?"

    def reading(api: int, init_children: int, cni: int, shim: bool) -> str:
        lines = [
            f"0\t/bin/k3s server\t{_stat(1, 'k3s', 10, 0, init_children, 0, 5)}",
            f"0\t/usr/bin/k3s kube-apiserver\t{_stat(104, 'k3s', api, 0, 0, 0, 9)}",
            f"0\t/usr/local/bin/containerd --config\t{_stat(55, 'containerd', 100, 0, cni, 0, 7)}",
            # a pod's process: counted as the pods', not the node's
            f"9\t/coredns -conf\t{_stat(386, 'coredns', 999, 0, 0, 0, 11)}",
        ]
        if shim:  # a process whose name holds a space and a parenthesis
            lines.append(
                f"0\t/usr/local/bin/containerd-shim-runc-v2 -namespace\t"
                f"{_stat(700, 'shim (x) y', 30, 20, 70, 0, 300)}"
            )
        return "\n".join(lines) + "\n"

    start = parse_node_processes(reading(api=200, init_children=0, cni=50, shim=False))
    assert {c for c, _, _ in start.values()} == {"server", "kube-apiserver", "containerd"}
    assert start[(55, 7)] == ("containerd", 1.0, 0.5)
    end = parse_node_processes(reading(api=500, init_children=40, cni=80, shim=True))
    used = node_cpu_by_component(start, end)
    assert used["kube-apiserver"] == pytest.approx(3.0)
    assert used["containerd"] == pytest.approx(0.3), "with the CNI plugins it waited for"
    assert used["containerd-shim-runc-v2"] == pytest.approx(0.5), "new: whole, its own time only"
    assert used["server"] == pytest.approx(0.0), "the ended shims it reaped hold the pods' CPU"

    report = Report(meta={})
    report.scaling.append(
        {
            "n": 10,
            "label": "project settings",
            "wall_s": 20.0,
            "cpu_s": {"k3s: node": 5.0},
            "node_cpu_s": used,
        }
    )
    report.scaling.append({"n": 1, "label": "old run", "wall_s": 5.0, "cpu_s": {"k3s: node": 1.0}})
    lines = node_section(report)
    rows = [ln for ln in lines if ln.startswith("| 10 ")]
    assert len(rows) == 1
    assert rows[0].startswith("| 10 (project settings) | 0.30 | 0.05 | 0.03 |")
    assert rows[0].endswith("| 0.12 | 0.50 |"), "the rest: node total minus the components"
    assert not any(ln.startswith("| 1 ") for ln in lines), "a run without the split has no row"
    assert node_section(Report(meta={})) == []
