"""airflow_k3s.doctor: the checks' verdicts, without a Docker engine (probes are faked)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from airflow_k3s import doctor
from airflow_k3s.boundary import Stack
from airflow_k3s.docker import Docker
from airflow_k3s.settings import Settings

REPO = Path(__file__).resolve().parents[2]
MEMINFO = """\
MemTotal:       16303836 kB
MemFree:         1203452 kB
MemAvailable:    8388608 kB
Buffers:          402344 kB
"""


def test_resource_checks() -> None:
    low = doctor.check_resources(mem_gib=1.5, disk_gib=50)
    assert [c.ok for c in low] == [False, True]
    assert low[0].line().startswith("FAIL  memory: 1.5 GiB available")
    assert "the stack needs 4 GiB" in low[0].line()
    assert low[1].line() == "ok    disk: 50.0 GiB free for Docker"
    full = doctor.check_resources(mem_gib=8, disk_gib=5)
    assert [c.ok for c in full] == [True, False]
    assert "`docker system prune`" in full[1].detail


def test_cgroup_check() -> None:
    assert doctor.check_cgroup("2").ok
    assert doctor.check_cgroup("1").line() == "ok    cgroups: cgroup v1"
    assert not doctor.check_cgroup("").ok
    assert "cgroup v1 or v2" in doctor.check_cgroup("3").detail


def test_memory_available_is_memavailable_of_meminfo(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(MEMINFO)
    assert doctor.memory_available_gib(meminfo, engine_total="1073741824") == 8.0


@pytest.mark.parametrize(
    ("engine_total", "gib"), [("8589934592", 8.0), ("", 0.0), ("<no value>", 0.0)]
)
def test_memory_available_without_meminfo_is_the_engines(
    tmp_path: Path, engine_total: str, gib: float
) -> None:
    # macOS, Windows: Docker runs in a VM, the host has no /proc/meminfo.
    assert doctor.memory_available_gib(tmp_path / "missing", engine_total) == gib


def test_memory_available_on_a_kernel_without_memavailable(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16303836 kB\nMemFree:         1203452 kB\n")
    assert doctor.memory_available_gib(meminfo, "4294967296") == 4.0


def test_node_run_options_are_the_overrides_grants() -> None:
    options = doctor.node_run_options(REPO)
    prefixes = ("--cap-add=", "--security-opt=", "--device=", "--cgroupns=")
    assert options
    assert all(option.startswith(prefixes) for option in options), options
    assert "--cgroupns=private" in options
    assert "--device=/dev/kmsg" in options
    assert {"--cap-add=SYS_ADMIN", "--cap-add=NET_ADMIN"} <= set(options)
    assert "--cap-add=SYS_RESOURCE" not in options
    assert {
        "--security-opt=seccomp=unconfined",
        "--security-opt=apparmor=unconfined",
        "--security-opt=systempaths=unconfined",
    } <= set(options)
    assert not [o for o in options if "privileged" in o]
    node = yaml.safe_load((REPO / "local" / "compose.local.yml").read_text())["services"]["k3s"]
    grants = len(node["cap_add"]) + len(node["security_opt"]) + len(node["devices"]) + 1
    assert len(options) == grants, "every grant of the override is probed, and nothing else"


@pytest.mark.parametrize(("images", "privileged"), [("local", False), ("upstream", True)])
def test_privileges_are_probed_with_what_the_node_gets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, images: str, privileged: bool
) -> None:
    seen: list[tuple[str, tuple[str, ...]]] = []

    def try_run(_self: Docker, image: str, *options: str) -> tuple[bool, str]:
        seen.append((image, options))
        return False, "operation not permitted"

    monkeypatch.setattr(Docker, "try_run", try_run)
    cfg = Settings.load({"AIRFLOW_K3S_STATE_DIR": str(tmp_path), "IMAGES": images}, root=REPO)
    check = doctor.probe_privileges(Stack(cfg), "probe:1")
    assert not check.ok
    assert "operation not permitted" in check.detail
    expected = ("--privileged",) if privileged else tuple(doctor.node_run_options(REPO))
    assert seen == [("probe:1", expected)]


@pytest.mark.parametrize(("images", "ok"), [("local", True), ("upstream", False)])
def test_failed_pulls_matter_only_for_upstream_images(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, images: str, ok: bool
) -> None:
    monkeypatch.setattr(Docker, "try_pull", lambda _self, _image: (False, "connection refused"))
    cfg = Settings.load({"AIRFLOW_K3S_STATE_DIR": str(tmp_path), "IMAGES": images}, root=REPO)
    check = doctor.probe_pull(Stack(cfg))
    assert check.ok is ok
    assert "connection refused" in check.detail
    if not ok:
        assert "use IMAGES=local" in check.detail


def test_without_docker_doctor_says_only_that(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("shutil.which", lambda _name, **_kwargs: None)
    cfg = Settings.load({"AIRFLOW_K3S_STATE_DIR": str(tmp_path)}, root=REPO)
    [check] = doctor.run_checks(Stack(cfg), pull=True)
    assert check.name == "docker"
    assert not check.ok
    assert check.detail.startswith("Docker is not installed")
