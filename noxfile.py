"""nox sessions of airflow-k3s (`nox --list`). Default: lint and unit, which need no Docker.

Every session installs from uv.lock (and the Airflow image's own lock for the unit tests), so a
session runs the same versions everywhere. Arguments after `--` go to pytest.

The Docker tiers (integration, e2e, faults) are one definition: each brings up its own stack
(tests/conftest.py) with IMAGES from the environment (default local: every image built here) and
FAILS, never skips, where no Docker engine answers.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.needs_version = ">=2025.2.9"
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.error_on_external_run = True
nox.options.reuse_venv = "yes"
nox.options.sessions = ["lint", "unit"]

PYTHON = "3.11"  # the Airflow image's Python (airflow/requirements.txt is locked for it)
AIRFLOW_LOCK = "airflow/requirements.txt"
K8S_MANIFESTS = [
    "airflow/pod_template.yaml",
    *sorted(str(p) for p in Path("k3s/manifests").glob("*.yaml")),
]


def k8s_schema_version() -> str:
    """The Kubernetes minor of the pinned k3s image, as x.y.0 (read where the package reads it)."""
    from airflow_k3s.settings import k3s_kubernetes_version

    major, minor, _patch = k3s_kubernetes_version().split(".")
    return f"{major}.{minor}.0"


def sync(session: nox.Session, *groups: str) -> None:
    """Install the project and exactly these dependency groups from uv.lock."""
    args = ["uv", "sync", "--frozen", "--no-default-groups", *(f"--group={g}" for g in groups)]
    session.run_install(
        *args,
        env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location},
        external=True,
        silent=True,
    )


def shell_files() -> list[str]:
    return sorted(
        str(p)
        for d in ("k3s", "airflow", "local", "tests", ".ci")
        for p in Path(d).rglob("*")
        if (p.suffix == ".sh" or p.name == "run") and "_build" not in p.parts
    )


def dockerfiles() -> list[str]:
    skip = {".nox", ".venv", "_build"}
    return sorted(str(p) for p in Path(".").glob("**/*Dockerfile") if not skip & set(p.parts))


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff, mypy, yamllint, hadolint, shellcheck and Kubernetes schema validation."""
    sync(session, "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")
    session.run("yamllint", "--strict", ".")
    session.run("hadolint", *dockerfiles())
    session.run("shellcheck", "--external-sources", "--source-path=SCRIPTDIR", *shell_files())
    session.run("kubernetes-validate", "--strict", "-k", k8s_schema_version(), *K8S_MANIFESTS)


@nox.session(python=PYTHON)
def unit(session: nox.Session) -> None:
    """Unit tests, no Docker: task logic, kubeconfig, config rendering, pod generation, DAGs."""
    sync(session, "test", "lint")
    session.run_install(
        "uv",
        "pip",
        "install",
        "--quiet",
        "-r",
        AIRFLOW_LOCK,
        env={"VIRTUAL_ENV": session.virtualenv.location},
        external=True,
    )
    session.run("pytest", "tests/unit", *session.posargs)


def docker_tier(session: nox.Session, tier: str) -> None:
    """One Docker tier against a stack of its own (tests/conftest.py owns it)."""
    sync(session, "test")
    env = {"IMAGES": os.environ.get("IMAGES", "local")}
    args = ["-p", "no:cacheprovider", "--durations=0", *session.posargs]
    session.run("pytest", f"tests/{tier}", *args, env=env)


@nox.session(python=PYTHON, default=False)
def integration(session: nox.Session) -> None:
    """The stack's services for real: health, loopback ports, registry round trip, DNS bridge."""
    docker_tier(session, "integration")


@nox.session(python=PYTHON, default=False)
def e2e(session: nox.Session) -> None:
    """The demo and the executor's features as pods on the cluster, asserted through kubectl."""
    docker_tier(session, "e2e")


@nox.session(python=PYTHON, default=False)
def faults(session: nox.Session) -> None:
    """Faults and bad input on a real stack: restarts, outages, refusals, security."""
    docker_tier(session, "faults")


@nox.session(python=PYTHON, default=False)
def bench(session: nox.Session) -> None:
    """Measure up, the demo, per-task overhead, scaling, the edit loop: docs/benchmarks.md."""
    sync(session, "bench")
    session.run("python", "-m", "tests.bench.bench", *session.posargs)
