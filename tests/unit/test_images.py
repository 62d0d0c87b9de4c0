"""airflow_k3s.images: what is built, what is pulled, when the local node is rebuilt."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from airflow_k3s import images
from airflow_k3s.exits import ExitCode, UserError
from airflow_k3s.settings import Settings

REPO = Path(__file__).resolve().parents[2]

# --------------------------------------------------------------------------- compose config

AIRFLOW_BUILD = {"context": "/r", "dockerfile": "airflow/Dockerfile", "args": {"BASE_IMAGE": "b"}}
CONFIG: dict[str, Any] = {
    "services": {
        "airflow-init": {"image": "airflow-k3s/airflow:3.3.2", "build": AIRFLOW_BUILD},
        "airflow-scheduler": {"image": "airflow-k3s/airflow:3.3.2", "build": AIRFLOW_BUILD},
        "postgres": {"image": "airflow-k3s/postgres:15-local", "build": {"context": "/r/local"}},
        "registry": {"image": "registry:2.8.3"},
        "s3": {"image": "chrislusf/seaweedfs:4.48"},
        "k3s": {"image": "rancher/k3s:v1.36.4-k3s1"},
        "mockserver": {"image": "mockserver/mockserver:5.15.0"},
        "sidecar": {"build": {"context": "/r/x"}},  # no image: compose names it, nothing to tag
    }
}


def test_build_specs_builds_each_image_once_and_only_active_services() -> None:
    specs = images.build_specs(CONFIG, active={"airflow-init", "airflow-scheduler", "registry"})
    assert specs == {"airflow-k3s/airflow:3.3.2": AIRFLOW_BUILD}


def test_build_specs_of_every_service() -> None:
    specs = images.build_specs(CONFIG, active=set(CONFIG["services"]))
    assert specs == {
        "airflow-k3s/airflow:3.3.2": AIRFLOW_BUILD,
        "airflow-k3s/postgres:15-local": {"context": "/r/local"},
    }
    assert images.build_specs({}, active={"postgres"}) == {}


def test_pull_specs_are_the_images_not_built_sorted_once() -> None:
    config = {"services": {**CONFIG["services"], "again": {"image": "registry:2.8.3"}}}
    assert images.pull_specs(config) == [
        "chrislusf/seaweedfs:4.48",
        "mockserver/mockserver:5.15.0",
        "rancher/k3s:v1.36.4-k3s1",
        "registry:2.8.3",
    ]
    assert images.pull_specs({}) == []


# --------------------------------------------------------------------------- the node's sources


def fake_node(root: Path) -> Path:
    """A small node source tree: what the hash covers, and what it must not."""
    files = {
        "main.go": "package main\n",
        "go.mod": "module example.com/node\n",
        "go.sum": "",
        "build.sh": "#!/bin/sh\n",
        "versions.env": "KUBERNETES_VERSION=v1.36.3\n",
        "Dockerfile": "FROM scratch\n",
        "builder.Dockerfile": "FROM scratch\n",
        "internal/node/server.go": "package node\n",
        "internal/node/deeper/pki.go": "package deeper\n",
        "tools/imagetar/main.go": "package main\n",
        "README.md": "notes\n",
        "_build/k3s": "binary output\n",
        "extra-ca/ca-bundle.crt": "",
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


@pytest.fixture
def node(tmp_path: Path) -> Path:
    return fake_node(tmp_path / "node")


@pytest.mark.parametrize(
    "source",
    [
        "internal/node/server.go",
        "internal/node/deeper/pki.go",
        "main.go",
        "tools/imagetar/main.go",
        "go.sum",
        "versions.env",
        "build.sh",
        "builder.Dockerfile",
    ],
)
def test_node_hash_changes_when_a_source_changes(node: Path, source: str) -> None:
    before = images.node_source_hash(node)
    with (node / source).open("a") as handle:
        handle.write("// edited\n")
    assert images.node_source_hash(node) != before


def test_node_hash_changes_when_a_go_file_is_added_or_renamed(node: Path) -> None:
    before = images.node_source_hash(node)
    added = node / "internal" / "node" / "new.go"
    added.write_text("package node\n")
    with_new = images.node_source_hash(node)
    assert with_new != before
    added.rename(node / "internal" / "node" / "renamed.go")
    assert images.node_source_hash(node) not in (before, with_new)


@pytest.mark.parametrize("other", ["README.md", "_build/k3s", "extra-ca/ca-bundle.crt"])
def test_node_hash_ignores_what_the_build_does_not_read(node: Path, other: str) -> None:
    before = images.node_source_hash(node)
    (node / other).write_text("changed\n")
    (node / "_build" / "containerd").write_text("more output\n")
    assert images.node_source_hash(node) == before


def test_node_hash_does_not_depend_on_where_the_checkout_is(node: Path, tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere" / "node"
    shutil.copytree(node, copy)
    assert images.node_source_hash(copy) == images.node_source_hash(node)
    assert len(images.node_source_hash(node)) == 16
    int(images.node_source_hash(node), 16)


def test_node_hash_covers_every_source_of_the_real_node() -> None:
    node = REPO / "local" / "node"
    go_files = [p for p in node.rglob("*.go") if "_build" not in p.relative_to(node).parts]
    assert go_files
    covered = {p for pattern in images.NODE_SOURCES for p in node.glob(pattern)}
    assert set(go_files) <= covered, "a Go file outside NODE_SOURCES would not trigger a rebuild"
    for name in ("go.mod", "go.sum", "build.sh", "node-init.sh", "versions.env", "Dockerfile"):
        assert node / name in covered, name


# --------------------------------------------------------------------------- extra CA


def test_sync_extra_ca_copies_into_every_context_only_when_set(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    bundle = tmp_path / "corp.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n")
    assert images.EXTRA_CA_CONTEXTS == ("airflow", "local/images", "local/node")
    images.sync_extra_ca(Settings(root=root, state_dir=tmp_path, extra_ca_bundle=str(bundle)))
    for folder in images.EXTRA_CA_CONTEXTS:
        assert (root / folder / "extra-ca" / "ca-bundle.crt").read_text() == bundle.read_text()
    images.sync_extra_ca(Settings(root=root, state_dir=tmp_path))
    for folder in images.EXTRA_CA_CONTEXTS:
        assert not (root / folder / "extra-ca" / "ca-bundle.crt").exists()


def test_sync_extra_ca_refuses_a_missing_bundle(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(UserError) as exc:
        images.sync_extra_ca(Settings(root=tmp_path, extra_ca_bundle=str(missing)))
    assert exc.value.code is ExitCode.USAGE
    assert exc.value.message == f"EXTRA_CA_BUNDLE={missing} is not a file"
