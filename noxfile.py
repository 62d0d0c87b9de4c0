"""nox sessions of airflow-k3s (`nox --list`). Default: lint and unit, which need no Docker.

Every session installs from uv.lock (and the Airflow image's own lock for the unit tests), so a
session runs the same versions everywhere. Arguments after `--` go to pytest.
"""

from __future__ import annotations

from pathlib import Path

import nox

nox.needs_version = ">=2025.2.9"
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.error_on_external_run = True
nox.options.reuse_venv = "yes"
nox.options.sessions = ["lint", "unit"]

PYTHON = "3.11"  # the Airflow image's Python (airflow/requirements.txt is locked for it)
AIRFLOW_LOCK = "airflow/requirements.txt"
K8S_MANIFESTS = ["airflow/pod_template.yaml", "k3s/manifests/shared-volume.yaml"]
K8S_VERSION = "1.36.0"  # schemas of the pinned k3s (rancher/k3s:v1.36.4-k3s1)


def sync(session: nox.Session, *groups: str) -> None:
    """Install exactly these dependency groups from uv.lock into the session's venv."""
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
        for d in ("k3s", "airflow", "tests", ".ci")
        for p in Path(d).rglob("*")
        if p.suffix == ".sh" or p.name == "run"
    )


def dockerfiles() -> list[str]:
    return sorted(
        str(p)
        for p in Path(".").glob("**/*Dockerfile")
        if ".nox" not in p.parts and ".venv" not in p.parts
    )


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff, mypy, yamllint, hadolint, shellcheck and Kubernetes schema validation."""
    sync(session, "lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")
    session.run("yamllint", "--strict", ".")
    session.run("hadolint", *dockerfiles())
    session.run("shellcheck", *shell_files())
    session.run("kubernetes-validate", "--strict", "-k", K8S_VERSION, *K8S_MANIFESTS)


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


@nox.session(python=PYTHON, default=False)
def integration(session: nox.Session) -> None:
    """The stack for real without k3s (IMAGES=local): needs a Docker engine, fails without one."""
    sync(session, "test")
    env = {"IMAGES": "local"}
    session.run("pytest", "tests/integration", "-p", "no:cacheprovider", *session.posargs, env=env)


@nox.session(python=PYTHON, default=False)
def faults(session: nox.Session) -> None:
    """Faults and bad input on a real stack (IMAGES=local): restarts, outages, refusals."""
    sync(session, "test")
    session.run(
        "pytest",
        "tests/faults",
        "-p",
        "no:cacheprovider",
        *session.posargs,
        env={"IMAGES": "local"},
    )


@nox.session(python=PYTHON, default=False)
def bench(session: nox.Session) -> None:
    """Measure the loops (build, DAG edit, up, demo run, memory): writes docs/benchmarks.md."""
    sync(session, "test")
    session.run("python", "tests/bench/bench.py", *session.posargs)


@nox.session(python=PYTHON, default=False)
def e2e(session: nox.Session) -> None:
    """The whole stack with k3s (upstream images): up, demo DAG, pods, S3 object, task logs."""
    sync(session, "test")
    session.run("pytest", "tests/e2e", *session.posargs, env={"IMAGES": "upstream"})
