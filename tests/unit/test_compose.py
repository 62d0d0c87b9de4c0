"""docker-compose.yml (and the IMAGES=local override) follow the project's rules, read as YAML.

Also a scan of every file git would commit (tracked or not ignored) for secrets.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import airflow_k3s
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
LOCAL_FILE = REPO / "tests" / "images" / "compose.local.yml"
AIRFLOW_SERVICES = {
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
}
CONDITIONS = {"service_healthy", "service_completed_successfully", "service_started"}
INTERPOLATION = re.compile(r"\$\{([A-Z0-9_]+)(?::?-([^}]*)|:?\?[^}]*)?\}")


def load(path: Path) -> dict[str, Any]:
    doc = yaml.safe_load(path.read_text())
    assert isinstance(doc, dict)
    return doc


COMPOSE = load(COMPOSE_FILE)
LOCAL = load(LOCAL_FILE)
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]


def resolve_defaults(value: str) -> str:
    """``${VAR:-default}`` -> ``default`` (what compose uses when VAR is unset)."""
    return INTERPOLATION.sub(lambda m: m.group(2) or "", value)


def all_images(doc: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(service, image with defaults resolved, built locally?) for every service with an image."""
    return [
        (name, resolve_defaults(svc["image"]), "build" in svc)
        for name, svc in doc["services"].items()
        if "image" in svc
    ]


# --------------------------------------------------------------------------- images


@pytest.mark.parametrize("doc", [COMPOSE, LOCAL], ids=["compose", "local"])
def test_every_image_is_pinned(doc: dict[str, Any]) -> None:
    images = all_images(doc)
    assert images
    for service, image, built in images:
        name, _, tag = image.rpartition(":")
        assert name, f"{service}: {image} has no tag"
        assert "/" not in tag, f"{service}: {image} has no tag"
        assert tag != "latest", f"{service}: {image} uses latest"
        if not built:  # pulled from a registry: a version, not a moving name
            assert re.search(r"\d+\.\d+", tag), f"{service}: {image} is not a version tag"


def test_build_base_images_are_pinned() -> None:
    args = COMPOSE["x-airflow-common"]["build"]["args"]
    for value in args.values():
        image = resolve_defaults(value)
        assert re.search(r":\d+\.\d+\.\d+", image), f"base image {image} not pinned to a release"


def test_airflow_image_matches_the_installed_airflow() -> None:
    from importlib.metadata import version

    image = resolve_defaults(COMPOSE["x-airflow-common"]["image"])
    assert image.endswith(":" + version("apache-airflow"))
    requirements = (REPO / "airflow" / "requirements.txt").read_text()
    assert f"apache-airflow=={version('apache-airflow')}" in requirements


# --------------------------------------------------------------------------- ports, privileges


def published_ports(doc: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(n, p) for n, s in doc["services"].items() for p in s.get("ports", [])]


@pytest.mark.parametrize("doc", [COMPOSE, LOCAL], ids=["compose", "local"])
def test_every_published_port_binds_to_localhost(doc: dict[str, Any]) -> None:
    for service, port in published_ports(doc):
        if isinstance(port, dict):
            assert port.get("host_ip") == "127.0.0.1", f"{service}: {port}"
        else:
            assert str(port).startswith("127.0.0.1:"), f"{service}: {port} binds to all interfaces"
            assert str(port).count(":") >= 2  # host ip, host port, container port


def test_published_ports_are_configurable_and_avoid_common_clashes() -> None:
    host_ports = []
    for service, port in published_ports(COMPOSE):
        host = str(port).removeprefix("127.0.0.1:").rsplit(":", 1)[0]
        assert INTERPOLATION.fullmatch(host), f"{service}: host port {host} cannot be moved"
        host_ports.append(resolve_defaults(host))
    assert len(host_ports) == len(set(host_ports))
    assert "5000" not in host_ports  # macOS AirPlay


def test_only_k3s_is_privileged() -> None:
    privileged = {n for n, s in SERVICES.items() if s.get("privileged")}
    assert privileged == {"k3s"}
    assert not [n for n, s in LOCAL["services"].items() if s.get("privileged")]
    for name, svc in SERVICES.items():
        assert "SYS_ADMIN" not in svc.get("cap_add", []), name
        assert svc.get("network_mode") != "host", name


# --------------------------------------------------------------------------- health, ordering


def test_every_long_running_service_has_a_healthcheck() -> None:
    one_shot = {n for n, s in SERVICES.items() if s.get("restart") == "no"}
    assert one_shot == {"airflow-init"}
    for name, svc in SERVICES.items():
        if name in one_shot or name == "mockserver":
            continue
        check = svc.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert not check.get("disable"), f"{name}'s healthcheck is disabled"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert check.get("interval"), name
        assert check.get("retries"), name


def test_mockserver_healthcheck_is_disabled_with_a_reason_and_probed_by_init() -> None:
    assert SERVICES["mockserver"]["healthcheck"] == {"disable": True}
    block = COMPOSE_FILE.read_text().split("\n  mockserver:\n", 1)[1].split("\n  registry:\n")[0]
    comment = " ".join(line for line in block.splitlines() if line.strip().startswith("#"))
    assert "healthcheck" in block
    assert re.search(r"distroless|no shell|probe", comment), (
        "the disabled healthcheck needs its reason in a comment"
    )
    # airflow-init probes it instead, and every other Airflow service waits for airflow-init.
    init_deps = SERVICES["airflow-init"]["depends_on"]
    assert init_deps["mockserver"]["condition"] == "service_started"
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        assert SERVICES[name]["depends_on"]["airflow-init"]["condition"] == (
            "service_completed_successfully"
        )


def test_airflow_init_waits_for_everything_it_sets_up() -> None:
    deps = SERVICES["airflow-init"]["depends_on"]
    for name in ("postgres", "s3", "registry", "k3s"):
        assert deps[name]["condition"] == "service_healthy", name


@pytest.mark.parametrize("doc", [COMPOSE, LOCAL], ids=["compose", "local"])
def test_depends_on_uses_conditions(doc: dict[str, Any]) -> None:
    merged = {**SERVICES, **doc["services"]}
    for name, svc in doc["services"].items():
        deps = svc.get("depends_on", {})
        assert isinstance(deps, dict), f"{name}: depends_on must be a mapping with conditions"
        for dep, spec in deps.items():
            assert dep in merged, f"{name} depends on unknown service {dep}"
            assert spec.get("condition") in CONDITIONS, f"{name} -> {dep}: {spec}"
            if spec["condition"] == "service_healthy" and doc is COMPOSE:
                check = SERVICES[dep].get("healthcheck", {})
                assert check, f"{name} waits for {dep}'s health, it has no healthcheck"
                assert not check.get("disable"), f"{name} waits for {dep}'s disabled health"


# --------------------------------------------------------------------------- Airflow services


def test_airflow_services_share_one_common_definition() -> None:
    common = COMPOSE["x-airflow-common"]
    text = COMPOSE_FILE.read_text()
    assert text.count("x-airflow-common: &airflow-common\n") == 1
    assert text.count("<<: *airflow-common\n") == len(AIRFLOW_SERVICES)
    image_users = {n for n, s in SERVICES.items() if s.get("image") == common["image"]}
    assert image_users == AIRFLOW_SERVICES
    for name in AIRFLOW_SERVICES:
        svc = SERVICES[name]
        for key in ("image", "build", "user", "env_file", "environment", "volumes"):
            assert svc[key] == common[key], f"{name}.{key} differs from x-airflow-common"


def test_airflow_services_get_the_config_file_and_secrets_by_interpolation() -> None:
    common = COMPOSE["x-airflow-common"]
    assert common["env_file"] == [{"path": "./airflow/airflow.env"}]
    assert common["user"].startswith("50000:")
    for key, value in common["environment"].items():
        if re.search(r"PASSWORD|SECRET|FERNET|KEY_ID|SQL_ALCHEMY_CONN", key):
            assert "${" in value, f"{key} must come from the generated .env"
    mounts = {v.split(":")[1] for v in common["volumes"]}
    assert "/opt/airflow/pod_template.yaml" in mounts


def test_k3s_mounts_the_registry_mirror_and_manifests() -> None:
    volumes = SERVICES["k3s"]["volumes"]
    assert "./k3s/registries.yaml:/etc/rancher/k3s/registries.yaml:ro" in volumes
    assert any(v.startswith("./k3s/manifests:") for v in volumes)
    assert "--tls-san=k3s" in SERVICES["k3s"]["command"]


@pytest.mark.parametrize("doc", [COMPOSE, LOCAL], ids=["compose", "local"])
def test_bind_mount_sources_exist(doc: dict[str, Any]) -> None:
    for name, svc in doc["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith("./") and not source.startswith("./.generated"):
                assert (REPO / source).exists(), f"{name}: {source} is missing"


def test_no_old_kubernetes_section_names() -> None:
    for path in (
        REPO / "airflow" / "airflow.env",
        COMPOSE_FILE,
        LOCAL_FILE,
        REPO / "airflow" / "pod_template.yaml",
    ):
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if line.lstrip().startswith("#"):
                continue  # the comments explain that the old names are ignored
            assert "AIRFLOW__KUBERNETES__" not in line, f"{path.name}:{number}: {line}"


def test_airflow_env_reads_the_same_in_compose_and_in_the_worker_secret() -> None:
    # compose interpolates $ and strips inline comments in unquoted values; parse_env_file does
    # not. Values needing either are single-quoted (literal in both).
    for line in (REPO / "airflow" / "airflow.env").read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        _, _, value = line.partition("=")
        if value.startswith("'") and value.endswith("'"):
            assert "'" not in value[1:-1], line
        else:
            assert not re.search(r"[$\"'\s#\\]", value), f"quote this value: {line}"


# --------------------------------------------------------------------------- secrets


def committable_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [REPO / name for name in out.split("\0") if name and (REPO / name).is_file()]


SECRET_NAMES = (
    *airflow_k3s.SECRET_KEYS,
    "AIRFLOW__CORE__FERNET_KEY",
    "AIRFLOW__API_AUTH__JWT_SECRET",
    "AIRFLOW__API__SECRET_KEY",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
)
# NAME=value / NAME: value, where value is not an interpolation, an env lookup or empty.
ASSIGNED = re.compile(
    r"^\s*(?:-\s*|ENV\s+|export\s+)?(" + "|".join(SECRET_NAMES) + r")\s*[:=]\s*(\S.*)$", re.M
)
PEM_PRIVATE = re.compile("-----BEGIN ([A-Z]+ )?" + "PRIVATE KEY-----")
# A key naming a password (not a password file or path) with a value.
PASSWORD_VALUE = re.compile(
    r"(?i)^\s*[\w.-]*password(?![\w.-]*(?:file|path|dir))[\w.-]*\s*[:=]\s*(\S.*)$", re.M
)
URL_CREDENTIALS = re.compile(r"://[\w.+-]+:([^@\s/${}]+)@")
KUBE_CLIENT_KEY = re.compile(r"client-key-data:\s*[A-Za-z0-9+/=]{40,}")
AWS_KEY_ID = re.compile(r"\bAKIA[0-9A-Z]{16}\b")
CONFIG_SUFFIXES = {".yml", ".yaml", ".env", ".json", ".cfg", ".ini", ".toml", ".conf", ".sh"}


def is_reference(value: str) -> bool:
    value = value.strip().strip("'\"")
    return value == "" or value.startswith(("${", "$(", "$")) or value in ("null", "~")


def test_secret_scan_finds_nothing_in_committable_files() -> None:
    files = committable_files()
    assert REPO / "docker-compose.yml" in files
    assert not [f for f in files if f.name == ".env"], ".env must be git-ignored"
    problems: list[str] = []
    for path in files:
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        rel = path.relative_to(REPO)
        for m in ASSIGNED.finditer(text):
            if not is_reference(m.group(2)):
                problems.append(f"{rel}: {m.group(1)} has a literal value")
        if PEM_PRIVATE.search(text):
            problems.append(f"{rel}: PEM private key")
        if KUBE_CLIENT_KEY.search(text):
            problems.append(f"{rel}: kubeconfig client key")
        if AWS_KEY_ID.search(text):
            problems.append(f"{rel}: AWS access key id")
        is_config = path.suffix in CONFIG_SUFFIXES or path.name.endswith("Dockerfile")
        if is_config:
            for m in PASSWORD_VALUE.finditer(text):
                if not is_reference(m.group(1)):
                    problems.append(f"{rel}: password value {m.group(0).strip()[:60]!r}")
            for m in URL_CREDENTIALS.finditer(text):
                problems.append(f"{rel}: credentials in a URL ({m.group(0)[:40]})")
    assert problems == []


@pytest.mark.parametrize(
    ("text", "hits"),
    [
        ("POSTGRES_PASSWORD=hunter2\n", 1),
        ("  AWS_SECRET_ACCESS_KEY: abc\n", 1),
        ("ENV AIRFLOW__CORE__FERNET_KEY=abc\n", 1),
        ("POSTGRES_PASSWORD: ${POSTGRES_PASSWORD:?missing}\n", 0),
        ("S3_SECRET_KEY=\n", 0),
    ],
)
def test_secret_scan_patterns_catch_literals(text: str, hits: int) -> None:
    found = [m for m in ASSIGNED.finditer(text) if not is_reference(m.group(2))]
    assert len(found) == hits
    assert PEM_PRIVATE.search("-----BEGIN RSA " + "PRIVATE KEY-----")
    assert URL_CREDENTIALS.search("postgresql://airflow:hunter2@postgres/airflow")
    assert not URL_CREDENTIALS.search("postgresql://airflow:${POSTGRES_PASSWORD:?x}@postgres/db")
    password = PASSWORD_VALUE.search("  admin_password: hunter2\n")
    assert password
    assert not is_reference(password.group(1))
    assert not PASSWORD_VALUE.search(
        "SIMPLE_AUTH_MANAGER_PASSWORDS_FILE=/opt/airflow/auth/p.json\n"
    )


def test_generated_files_are_git_ignored() -> None:
    ignored = subprocess.run(
        ["git", "check-ignore", ".env", ".generated/k3s/worker-secret.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert ignored == [".env", ".generated/k3s/worker-secret.yaml"]
