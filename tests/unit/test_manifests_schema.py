"""Kubernetes manifests validate strictly (no unknown fields) against the pinned k3s's schemas.

The Kubernetes version is read from the k3s image pinned in docker-compose.yml, so bumping k3s
re-validates everything against the new schemas.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from airflow_k3s import generated, settings

REPO = Path(__file__).resolve().parents[2]
MANIFESTS = sorted((REPO / "k3s" / "manifests").glob("*.yaml"))


def k3s_kubernetes_version() -> str:
    """'1.36.4' from ``image: rancher/k3s:v1.36.4-k3s1`` in docker-compose.yml (one owner:
    airflow_k3s.settings, which the noxfile's schema check reads too)."""
    return settings.k3s_kubernetes_version(REPO)


def validate(doc: dict[str, Any]) -> None:
    version = k3s_kubernetes_version()
    try:
        used = kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as exc:
        path = "/".join(str(p) for p in exc.path)
        pytest.fail(f"{doc['kind']} {doc['metadata'].get('name')}: {path}: {exc.message}")
    # The schemas used must be the pinned minor's, not an older fallback.
    assert used == ".".join(version.split(".")[:2])


def test_k3s_version_is_read_from_compose() -> None:
    assert re.fullmatch(r"1\.\d+\.\d+", k3s_kubernetes_version())


def test_pod_template_validates() -> None:
    doc = yaml.safe_load((REPO / "airflow" / "pod_template.yaml").read_text())
    assert doc["kind"] == "Pod"
    validate(doc)


def test_final_worker_pod_validates(worker_pod: dict[str, Any]) -> None:
    validate(worker_pod)


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_k3s_manifests_validate(path: Path) -> None:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    assert docs, f"{path} is empty"
    for doc in docs:
        validate(doc)


def test_there_are_manifests() -> None:
    assert MANIFESTS, "k3s/manifests/*.yaml: nothing to validate"


def test_rendered_worker_secret_validates(worker_secret_manifest: str) -> None:
    validate(yaml.safe_load(worker_secret_manifest))


@pytest.mark.parametrize("namespace", ["default", "airflow-tasks"])
def test_rendered_namespace_and_shared_volume_validate(namespace: str) -> None:
    docs = list(yaml.safe_load_all(generated.render_executor_namespace(namespace)))
    kinds = ["PersistentVolume", "PersistentVolumeClaim"]
    assert [d["kind"] for d in docs] == (kinds if namespace == "default" else ["Namespace", *kinds])
    for doc in docs:
        validate(doc)


def test_validation_is_strict_and_would_catch_a_typo() -> None:
    doc = yaml.safe_load((REPO / "airflow" / "pod_template.yaml").read_text())
    doc["spec"]["containers"][0]["imagePulPolicy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, k3s_kubernetes_version(), strict=True)


def test_registries_yaml_mirrors_the_compose_registry_over_http() -> None:
    doc = yaml.safe_load((REPO / "k3s" / "registries.yaml").read_text())
    endpoints = doc["mirrors"]["registry:5000"]["endpoint"]
    assert endpoints
    assert endpoints[0] == "http://registry:5000"
    # containerd tries https when the mirror fails: no https-only endpoint in front of it.
    assert all(e.startswith("http://") for e in endpoints)
    # The worker image is pulled through that mirror (the name's first part has a ':').
    template = yaml.safe_load((REPO / "airflow" / "pod_template.yaml").read_text())
    assert template["spec"]["containers"][0]["image"].startswith("registry:5000/")
