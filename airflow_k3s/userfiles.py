"""The user's own files, checked before anything uses them: the DAGs folder, the worker's extra
requirements, the pod template (container ``base`` first, valid against the pinned Kubernetes
release's schemas), and the worker's base image (it must carry the cncf.kubernetes provider).
Each problem is one line (ExitCode.USAGE)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import yaml

from airflow_k3s import pools
from airflow_k3s.docker import Docker
from airflow_k3s.exits import ExitCode, UserError
from airflow_k3s.settings import Settings, k3s_kubernetes_version

#: Left out of the worker image's copy of the DAGs folder.
IGNORED = ("__pycache__", "*.pyc", ".git", ".pytest_cache", ".mypy_cache", ".ruff_cache")


def check_dags_dir(path: Path) -> None:
    if not path.is_dir():
        raise UserError(f"DAGS_DIR={path}: no such folder", ExitCode.USAGE)


def check_requirements(path: Path | None) -> None:
    if path is not None and not path.is_file():
        raise UserError(f"WORKER_REQUIREMENTS={path}: no such file", ExitCode.USAGE)


def pod_template_problem(doc: Any, version: str) -> str:
    """What is wrong with a pod template, or '' (the KubernetesExecutor needs a Pod whose first
    container is named ``base``; the rest must be a valid Pod of the cluster's release)."""
    import kubernetes_validate

    if not isinstance(doc, dict) or doc.get("kind") != "Pod":
        return "not a Pod manifest (kind: Pod)"
    containers = (doc.get("spec") or {}).get("containers") or []
    if not containers or not isinstance(containers[0], dict):
        return "spec.containers is empty: the executor needs a container named base"
    if containers[0].get("name") != "base":
        names = ", ".join(str(c.get("name")) for c in containers if isinstance(c, dict))
        return f"the first container must be named base (the task runs in it), not: {names}"
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        where = "/".join(str(p) for p in exc.path) or "(top)"
        return f"{where}: {exc.message.splitlines()[0]}"
    return ""


def check_pod_template(path: Path, version: str) -> None:
    if not path.is_file():
        raise UserError(f"POD_TEMPLATE={path}: no such file", ExitCode.USAGE)
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise UserError(
            f"POD_TEMPLATE={path}: not valid YAML: {str(exc).splitlines()[0]}", ExitCode.USAGE
        ) from None
    problem = pod_template_problem(doc, version)
    if problem:
        raise UserError(f"POD_TEMPLATE={path}: {problem}", ExitCode.USAGE)


def check_all(cfg: Settings) -> None:
    """Every user file the stack will use, before the first build or start."""
    _ = cfg.airflow_env  # read (and checked) once
    check_dags_dir(cfg.dags_dir)
    check_requirements(cfg.worker_requirements)
    check_pod_template(cfg.pod_template, ".".join(k3s_kubernetes_version(cfg.root).split(".")[:2]))
    if cfg.node_pools:
        pools.load(cfg.node_pools)


def worker_context(cfg: Settings) -> Path:
    """.generated/worker-context: the worker image's build context (dags/, empty with
    DAG_SOURCE=git, requirements.txt,
    extra-ca.crt), made anew from the user's files for each build (DAG folders are small)."""
    context = cfg.generated / "worker-context"
    shutil.rmtree(context, ignore_errors=True)
    if cfg.git_dags:  # the pods clone the published version: no DAG file in the image
        (context / "dags").mkdir(parents=True)
    else:
        shutil.copytree(cfg.dags_dir, context / "dags", ignore=shutil.ignore_patterns(*IGNORED))
    requirements = cfg.worker_requirements.read_text() if cfg.worker_requirements else ""
    (context / "requirements.txt").write_text(requirements)
    bundle = Path(cfg.extra_ca_bundle).read_text() if cfg.extra_ca_bundle else ""
    (context / "extra-ca.crt").write_text(bundle)
    return context


def check_worker_base(docker: Docker, image: str) -> None:
    """The user's base image must carry the cncf.kubernetes provider (pods run the task with it)."""
    probe = "import airflow.providers.cncf.kubernetes, airflow.sdk"
    ok, why = docker.try_python(image, probe)
    if not ok:
        raise UserError(
            f"WORKER_BASE_IMAGE={image} cannot run worker pods: `python -c '{probe}'` failed in "
            f"it ({why}); it needs apache-airflow 3 and apache-airflow-providers-cncf-kubernetes",
            ExitCode.USAGE,
        )
