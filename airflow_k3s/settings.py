"""Settings: everything configurable, in one place.

Read once per task from the environment over the git-ignored .env (ports, IMAGES, generated
secrets). Defaults that the compose files define (published ports, image names) are read from them,
so each value has one owner: docker-compose.yml and local/compose.local.yml.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import yaml

from airflow_k3s.exits import ExitCode, UserError
from airflow_k3s.generated import SECRET_KEYS, parse_env_file

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = "docker-compose.yml"
LOCAL_COMPOSE_FILE = "local/compose.local.yml"
NODE_VERSIONS_FILE = "local/node/versions.env"
IMAGE_SOURCES = ("upstream", "local")
#: Pod Security Standards levels, as the namespace label pod-security.kubernetes.io/enforce takes
#: them: privileged enforces nothing (most clusters' namespaces), restricted the most.
POD_SECURITY_LEVELS = ("privileged", "baseline", "restricted")
#: Where the DAGs come from: baked into the worker image (Airflow's DAGs folder), or a versioned
#: DAG bundle cloned from the stack's git server (airflow_k3s/bundles.py).
DAG_SOURCES = ("image", "git")
DEMO_DAG = "demo_rest_to_s3"
#: Where hosts keep the CA bundle they trust (Debian/Ubuntu, Fedora/RHEL, macOS/Alpine): image
#: builds use the first that exists unless EXTRA_CA_BUNDLE names another, or `none`.
HOST_CA_BUNDLES = (
    Path("/etc/ssl/certs/ca-certificates.crt"),
    Path("/etc/pki/tls/certs/ca-bundle.crt"),
    Path("/etc/ssl/cert.pem"),
)
NO_CA_BUNDLE = "none"

#: The Airflow option that names the executor's namespace, and a name Kubernetes takes for one
#: (an RFC 1123 label: lowercase letters, digits and '-', at most 63).
NAMESPACE_OPTION = "AIRFLOW__KUBERNETES_EXECUTOR__NAMESPACE"
_NAMESPACE_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
#: "${NAME:-default}" in a compose value.
_VARIABLE = re.compile(r"\$\{(?P<name>[A-Z0-9_]+):-(?P<default>[^}]*)\}")


@dataclass(frozen=True)
class PublishedPort:
    """A port the stack publishes on 127.0.0.1: its variable, default and service."""

    variable: str
    default: int
    service: str


def _compose(root: Path, name: str) -> dict[str, Any]:
    doc = yaml.safe_load((root / name).read_text())
    return doc if isinstance(doc, dict) else {}


@functools.cache
def published_ports(root: Path = ROOT) -> tuple[PublishedPort, ...]:
    """The ports docker-compose.yml publishes, from "127.0.0.1:${S3_PORT:-8333}:8333" entries."""
    found = []
    for service, spec in _compose(root, COMPOSE_FILE)["services"].items():
        for entry in spec.get("ports", []):
            match = _VARIABLE.search(str(entry))
            if match:
                found.append(PublishedPort(match["name"], int(match["default"]), service))
    return tuple(found)


def compose_default(value: str) -> str:
    """The default of a "${NAME:-default}" value, or the value itself."""
    match = _VARIABLE.fullmatch(value.strip())
    return match["default"] if match else value


@functools.cache
def compose_images(root: Path = ROOT) -> dict[str, dict[str, str]]:
    """service -> image, for each image source (defaults of "${VAR:-image}" resolved)."""
    upstream: dict[str, str] = {}
    base = _compose(root, COMPOSE_FILE)
    common = base.get("x-airflow-common", {})
    for service, spec in base["services"].items():
        image = spec.get("image") or (common.get("image") if "airflow" in service else None)
        if image:
            upstream[service] = compose_default(image)
    local = dict(upstream)
    for service, spec in _compose(root, LOCAL_COMPOSE_FILE)["services"].items():
        if spec.get("image"):
            local[service] = compose_default(spec["image"])
    return {"upstream": upstream, "local": local}


@functools.cache
def k3s_kubernetes_version(root: Path = ROOT) -> str:
    """'1.36.4' from the k3s image docker-compose.yml pins: the one owner of the version the
    schema checks (lint, unit, POD_TEMPLATE) validate against."""
    image = compose_images(root)["upstream"]["k3s"]
    match = re.fullmatch(r"rancher/k3s:v(\d+\.\d+\.\d+)-k3s\d+", image)
    if not match:
        raise UserError(f"docker-compose.yml's k3s image is not a pinned release: {image}")
    return match.group(1)


@functools.cache
def node_versions(root: Path = ROOT) -> dict[str, str]:
    """local/node/versions.env: the versions of the local node image."""
    return parse_env_file((root / NODE_VERSIONS_FILE).read_text())


@overload
def _path(value: str | None, default: Path) -> Path: ...
@overload
def _path(value: str | None, default: None) -> Path | None: ...
def _path(value: str | None, default: Path | None) -> Path | None:
    """A path setting: absolute, or relative to the current directory; ``default`` if unset."""
    return Path(value).expanduser().resolve() if value else default


def _choice(merged: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """The value of setting ``name``, one of ``choices`` (the first when unset), or a UserError."""
    value = merged.get(name) or choices[0]
    if value not in choices:
        raise UserError(
            f"{name} must be one of {', '.join(choices)}, not {value!r}", ExitCode.USAGE
        )
    return value


def ca_bundle(value: str | None, candidates: tuple[Path, ...] = HOST_CA_BUNDLES) -> str:
    """The CA bundle image builds add: $EXTRA_CA_BUNDLE, none with `none`, else the host's own
    (a TLS-inspecting proxy the host trusts is then trusted by the builds too)."""
    if value and value.strip().lower() == NO_CA_BUNDLE:
        return ""
    if value:
        return str(_path(value, None))
    return next((str(p) for p in candidates if p.is_file() and p.stat().st_size), "")


@dataclass(frozen=True)
class Settings:
    """Everything configurable, read once from the environment and the generated .env."""

    images: str = "upstream"
    project: str = "airflow-k3s"
    ports: Mapping[str, int] = field(default_factory=dict)
    #: The CA bundle added to image builds ('' for none): see ca_bundle().
    extra_ca_bundle: str = ""
    secrets: Mapping[str, str] = field(default_factory=dict)
    root: Path = ROOT
    #: Where .env and .generated/ live: the checkout, or $AIRFLOW_K3S_STATE_DIR (tests: a temp dir).
    state_dir: Path = ROOT
    #: The Airflow image (compose's ${AIRFLOW_IMAGE:-...}).
    airflow_image: str = ""
    #: Connections, variables and pools applied at `up` ($AIRFLOW_SETTINGS).
    settings_file: Path = ROOT / "airflow" / "settings.yaml"
    #: The user's own work: the DAGs folder the dag-processor reads and the worker image bakes
    #: ($DAGS_DIR), the worker's base image ($WORKER_BASE_IMAGE, default the Airflow image),
    #: extra worker requirements ($WORKER_REQUIREMENTS) and the pod template ($POD_TEMPLATE).
    dags_dir: Path = ROOT / "dags"
    worker_base_image: str = ""
    worker_requirements: Path | None = None
    pod_template: Path = ROOT / "airflow" / "pod_template.yaml"
    #: The Airflow configuration of every service and worker pod ($AIRFLOW_ENV_FILE).
    airflow_env_file: Path = ROOT / "airflow" / "airflow.env"
    #: The Pod Security level the executor's namespace enforces ($POD_SECURITY).
    pod_security: str = "privileged"
    #: Where the DAGs come from ($DAG_SOURCE): `image` or `git` (see DAG_SOURCES).
    dag_source: str = "image"
    #: The node pools file ($NODE_POOLS): agent nodes beside the server; None: the server alone.
    node_pools: Path | None = None

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, root: Path = ROOT) -> Settings:
        """Settings from ``environ`` (default os.environ) over the state dir's .env."""
        environ = os.environ if environ is None else environ
        state_dir = Path(environ.get("AIRFLOW_K3S_STATE_DIR") or root)
        env_file = state_dir / ".env"
        dotenv = parse_env_file(env_file.read_text()) if env_file.exists() else {}
        merged = {**dotenv, **environ}
        images = merged.get("IMAGES", "upstream")
        if images not in IMAGE_SOURCES:
            raise UserError(f"IMAGES must be 'upstream' or 'local', not {images!r}", ExitCode.USAGE)
        pod_security = _choice(merged, "POD_SECURITY", POD_SECURITY_LEVELS)
        dag_source = _choice(merged, "DAG_SOURCE", DAG_SOURCES)
        ports: dict[str, int] = {}
        for port in published_ports(root):
            raw = merged.get(port.variable, str(port.default))
            if not raw.isdigit() or not 0 < int(raw) < 65536:
                raise UserError(
                    f"{port.variable} must be a port number, not {raw!r}", ExitCode.USAGE
                )
            ports[port.variable] = int(raw)
        return cls(
            images=images,
            project=merged.get("COMPOSE_PROJECT_NAME", "airflow-k3s"),
            ports=ports,
            extra_ca_bundle=ca_bundle(merged.get("EXTRA_CA_BUNDLE")),
            # compose lets a shell variable beat .env; so do we.
            secrets={k: merged[k] for k in SECRET_KEYS if k in merged},
            root=root,
            state_dir=state_dir,
            airflow_image=merged.get("AIRFLOW_IMAGE")
            or compose_images(root)["upstream"]["airflow-apiserver"],
            settings_file=_path(merged.get("AIRFLOW_SETTINGS"), root / "airflow" / "settings.yaml"),
            dags_dir=_path(merged.get("DAGS_DIR"), root / "dags"),
            worker_base_image=merged.get("WORKER_BASE_IMAGE", ""),
            worker_requirements=_path(merged.get("WORKER_REQUIREMENTS"), None),
            pod_template=_path(merged.get("POD_TEMPLATE"), root / "airflow" / "pod_template.yaml"),
            airflow_env_file=_path(
                merged.get("AIRFLOW_ENV_FILE"), root / "airflow" / "airflow.env"
            ),
            pod_security=pod_security,
            dag_source=dag_source,
            node_pools=_path(merged.get("NODE_POOLS"), None),
        )

    @functools.cached_property
    def airflow_env(self) -> dict[str, str]:
        """airflow/airflow.env ($AIRFLOW_ENV_FILE): the Airflow configuration of every service
        and worker pod."""
        try:
            return parse_env_file(self.airflow_env_file.read_text())
        except FileNotFoundError:
            raise UserError(
                f"AIRFLOW_ENV_FILE={self.airflow_env_file}: no such file", ExitCode.USAGE
            ) from None

    @property
    def namespace(self) -> str:
        """The executor's namespace (airflow.env): its pods, their Secret, the identities, the
        shared volume."""
        name = self.airflow_env.get(NAMESPACE_OPTION, "default")
        if not _NAMESPACE_NAME.fullmatch(name):
            raise UserError(
                f"{NAMESPACE_OPTION} in {self.airflow_env_file} must be a namespace name "
                f"(lowercase letters, digits and '-', at most 63), not {name!r}",
                ExitCode.USAGE,
            )
        return name

    @property
    def git_dags(self) -> bool:
        """Whether the DAGs come from the stack's git server (DAG_SOURCE=git)."""
        return self.dag_source == "git"

    @property
    def dags_repo(self) -> Path:
        """The stack's DAG repository (bare; DAG_SOURCE=git), which the git-server serves."""
        return self.generated / "dags.git"

    @property
    def local(self) -> bool:
        """Whether every image is built here from packages (IMAGES=local)."""
        return self.images == "local"

    @property
    def compose_files(self) -> list[Path]:
        files = [self.root / COMPOSE_FILE]
        if self.local:
            files.append(self.root / LOCAL_COMPOSE_FILE)
        if self.node_pools and self.agents_file.exists():  # rendered by `up` (pools.py)
            files.append(self.agents_file)
        return files

    @property
    def agents_file(self) -> Path:
        """The compose file of the agent nodes of NODE_POOLS (.generated/compose.agents.yml)."""
        return self.generated / "compose.agents.yml"

    @property
    def env_file(self) -> Path:
        return self.state_dir / ".env"

    @property
    def generated(self) -> Path:
        return self.state_dir / ".generated"

    @property
    def host_kubeconfig(self) -> Path:
        return self.generated / "kubeconfig.yaml"

    @property
    def service_images(self) -> dict[str, str]:
        """service -> image in this image source."""
        return compose_images(self.root)[self.images]

    @property
    def compose_env(self) -> dict[str, str]:
        """Variables the compose file interpolates that tasks decide (image source, state dir)."""
        env = {
            "AIRFLOW_K3S_GENERATED": str(self.generated),
            "AIRFLOW_IMAGE": self.airflow_image,
            "DAGS_DIR": str(self.dags_dir),
            "POD_TEMPLATE": str(self.pod_template),
            "AIRFLOW_ENV_FILE": str(self.airflow_env_file),
            "AIRFLOW_K3S_NAMESPACE": self.namespace,
            # The git-server service runs with DAG_SOURCE=git only.
            "COMPOSE_PROFILES": "git" if self.git_dags else "",
        }
        if self.local:
            env["PYTHON_BASE_IMAGE"] = LOCAL_PYTHON_IMAGE
        return env

    @property
    def airflow_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['AIRFLOW_PORT']}"

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['S3_PORT']}"

    @property
    def worker_image(self) -> str:
        """The worker image as the host pushes it (in the stack: registry:5000/airflow-worker)."""
        return f"127.0.0.1:{self.ports['REGISTRY_PORT']}/airflow-worker:latest"


#: IMAGES=local: the bases every local image builds on (made by images.ensure_local_bases).
LOCAL_DEBIAN_IMAGE = "airflow-k3s/debian:bookworm-local"
LOCAL_PYTHON_IMAGE = "airflow-k3s/python:3.11-local"
