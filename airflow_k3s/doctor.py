"""`invoke doctor`: checks of the machine before anything starts, and one policy that judges them.

Each probe returns a Check, judged for the image source in use: IMAGES=local needs no pulls and
no --privileged, but the node's explicit capability set; IMAGES=upstream needs both.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from airflow_k3s.boundary import Stack
from airflow_k3s.exits import UserError
from airflow_k3s.lifecycle import port_conflicts, port_taken
from airflow_k3s.settings import LOCAL_COMPOSE_FILE, LOCAL_DEBIAN_IMAGE

MIN_MEMORY_GIB = 4.0
MIN_DISK_GIB = 20.0
PULL_PROBE = "registry:2.8.3"


@dataclass(frozen=True)
class Check:
    """One line of `invoke doctor`: what was checked, whether it passed, what to do if not."""

    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name}: {self.detail}"


def check_resources(mem_gib: float, disk_gib: float) -> list[Check]:
    """Memory and disk against what the stack needs."""
    mem_ok, disk_ok = mem_gib >= MIN_MEMORY_GIB, disk_gib >= MIN_DISK_GIB
    return [
        Check(
            "memory",
            mem_ok,
            f"{mem_gib:.1f} GiB available"
            + (
                ""
                if mem_ok
                else f"; the stack needs {MIN_MEMORY_GIB:.0f} GiB: stop other containers or give "
                "Docker more memory"
            ),
        ),
        Check(
            "disk",
            disk_ok,
            f"{disk_gib:.1f} GiB free for Docker"
            + (
                ""
                if disk_ok
                else f"; {MIN_DISK_GIB:.0f} GiB needed: `docker system prune` frees space"
            ),
        ),
    ]


def check_cgroup(version: str) -> Check:
    ok = version in ("1", "2")
    return Check(
        "cgroups",
        ok,
        f"cgroup v{version}"
        if ok
        else "unknown cgroup version: a Kubernetes node needs cgroup v1 or v2 with the cpu and "
        "memory controllers",
    )


def memory_available_gib(meminfo: Path = Path("/proc/meminfo"), engine_total: str = "") -> float:
    """Available memory: the host's MemAvailable on Linux; elsewhere (macOS, Windows: Docker runs
    in a VM) the engine's total memory as `docker info` reports it."""
    if meminfo.exists():
        for line in meminfo.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024**2
    return int(engine_total) / 1024**3 if engine_total.isdigit() else 0.0


def node_run_options(root: Path) -> list[str]:
    """The `docker run` options local/compose.local.yml gives the node instead of privileged."""
    spec: dict[str, Any] = yaml.safe_load((root / LOCAL_COMPOSE_FILE).read_text())["services"][
        "k3s"
    ]
    options = [f"--cap-add={cap}" for cap in spec.get("cap_add", [])]
    options += [f"--security-opt={opt}" for opt in spec.get("security_opt", [])]
    options += [f"--device={dev}" for dev in spec.get("devices", [])]
    if spec.get("cgroup"):
        options.append(f"--cgroupns={spec['cgroup']}")
    return options


def probe_privileges(stack: Stack, image: str) -> Check:
    """Whether the engine grants what the k3s node needs: --privileged (upstream), or the local
    node's explicit capability set (IMAGES=local)."""
    if stack.cfg.local:
        ok, why = stack.docker.try_run(image, *node_run_options(stack.cfg.root))
        return Check(
            "privileged",
            ok,
            "not needed with IMAGES=local; the node's capability set (every capability but "
            "SYS_RESOURCE, unconfined seccomp/AppArmor/systempaths) is granted"
            if ok
            else f"the engine refuses the local node's capability set ({why})",
        )
    ok, why = stack.docker.try_run(image, "--privileged")
    return Check(
        "privileged",
        ok,
        "the engine runs privileged containers (k3s needs them)"
        if ok
        else f"the engine refuses privileged containers ({why}): rancher/k3s cannot run here; "
        "IMAGES=local runs a node with an explicit capability set instead",
    )


def probe_pull(stack: Stack) -> Check:
    """Whether pinned upstream images can be pulled (else IMAGES=local)."""
    ok, why = stack.docker.try_pull(PULL_PROBE)
    if ok:
        return Check("image pulls", True, f"{PULL_PROBE} pulled: IMAGES=upstream works")
    if stack.cfg.local:
        return Check(
            "image pulls", True, f"not needed with IMAGES=local (cannot pull {PULL_PROBE}: {why})"
        )
    return Check(
        "image pulls",
        False,
        f"cannot pull {PULL_PROBE} ({why}): use IMAGES=local (every image built from packages)",
    )


def run_checks(stack: Stack, pull: bool) -> list[Check]:
    """Every check, in the order they are printed."""
    cfg, docker = stack.cfg, stack.docker
    try:
        docker.check()
    except UserError as exc:
        return [Check("docker", False, exc.message)]
    checks = [Check("docker", True, "engine and compose v2 answer")]
    info = docker.engine_info()
    checks.append(
        Check(
            "versions",
            True,
            f"engine {info.get('version')}, compose {info.get('compose')}, {info.get('os')}",
        )
    )
    disk = shutil.disk_usage(info.get("root_dir") or "/").free / 1024**3
    checks += check_resources(memory_available_gib(engine_total=info.get("mem_total", "")), disk)
    conflicts = port_conflicts(cfg, docker.running_services(), port_taken)
    listed = ", ".join(f"{cfg.ports[p]}" for p in sorted(cfg.ports))
    checks.append(Check("ports", not conflicts, "; ".join(conflicts) or f"{listed} free or ours"))
    checks.append(check_cgroup(info.get("cgroup", "")))
    probe_image = next(
        (i for i in (LOCAL_DEBIAN_IMAGE, cfg.airflow_image) if docker.image_exists(i)), ""
    )
    if probe_image:
        checks.append(probe_privileges(stack, probe_image))
    else:
        checks.append(
            Check(
                "privileged",
                False,
                "not probed yet (no image built here): run `invoke build` first",
            )
        )
    if pull:
        checks.append(probe_pull(stack))
    return checks
