"""docker-compose.yml (and the IMAGES=local override) follow the project's rules, read as YAML.

Also a scan of every file git would commit (tracked or not ignored) for secrets.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from airflow_k3s import generated, settings, shell

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "docker-compose.yml"
LOCAL_FILE = REPO / "local" / "compose.local.yml"
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


def test_published_ports_are_the_ones_the_settings_read() -> None:
    in_file = []
    for service, port in published_ports(COMPOSE):
        match = INTERPOLATION.search(str(port))
        assert match, f"{service}: {port}"
        in_file.append((match.group(1), int(match.group(2)), service))
    read = [(p.variable, p.default, p.service) for p in settings.published_ports(REPO)]
    assert read == in_file
    assert {variable for variable, _, _ in read} == {
        "AIRFLOW_PORT",
        "REGISTRY_PORT",
        "S3_PORT",
        "MOCKSERVER_PORT",
        "K3S_API_PORT",
    }


def test_only_k3s_is_privileged() -> None:
    privileged = {n for n, s in SERVICES.items() if s.get("privileged")}
    assert privileged == {"k3s"}
    assert not [n for n, s in LOCAL["services"].items() if s.get("privileged")]
    for name, svc in SERVICES.items():
        # kube-credentials runs as root to hand each kubeconfig to the Airflow user: CHOWN only.
        assert svc.get("cap_add", []) == (["CHOWN"] if name == "kube-credentials" else []), name
        if name == "kube-credentials":
            assert svc["cap_drop"] == ["ALL"]
        assert not svc.get("security_opt"), name
        assert svc.get("network_mode") != "host", name
    for name, svc in LOCAL["services"].items():
        if name != "k3s":
            assert not svc.get("cap_add"), name
            assert not svc.get("security_opt"), name
            assert svc.get("network_mode") != "host", name


def test_the_local_node_gets_an_explicit_capability_set_instead_of_privileged() -> None:
    node = LOCAL["services"]["k3s"]
    assert node["privileged"] is False, "the override must switch privileged off explicitly"
    caps = node["cap_add"]
    assert len(caps) == len(set(caps))
    assert "SYS_RESOURCE" not in caps, "the hosts it is for refuse CAP_SYS_RESOURCE"
    assert "ALL" not in caps
    assert {"SYS_ADMIN", "NET_ADMIN", "NET_RAW", "SYS_PTRACE", "MKNOD"} <= set(caps)
    assert all(re.fullmatch(r"[A-Z_]+", cap) and not cap.startswith("CAP_") for cap in caps)
    assert set(node["security_opt"]) == {
        "seccomp=unconfined",
        "apparmor=unconfined",
        "systempaths=unconfined",
    }
    assert node["devices"] == ["/dev/kmsg"]
    assert node["cgroup"] == "private"
    # node-init runs first, then the same entrypoint as upstream's k3s service.
    entrypoint = node["entrypoint"]
    assert entrypoint[0] == "/usr/local/bin/airflow-k3s-node-init"
    assert entrypoint[1:] == SERVICES["k3s"]["entrypoint"]


def test_the_local_node_config_drop_in_is_mounted_into_k3s_config_dir() -> None:
    volumes = LOCAL["services"]["k3s"]["volumes"]
    assert volumes == [
        "./local/node/config.yaml:/etc/rancher/k3s/config.yaml.d/50-airflow-k3s-local.yaml:ro"
    ]
    assert yaml.safe_load((REPO / "local" / "node" / "config.yaml").read_text())


def test_every_service_of_the_override_uses_a_local_image() -> None:
    overridden = LOCAL["services"]
    assert set(overridden) == {
        "postgres",
        "s3",
        "registry",
        "mockserver",
        "k3s",
        "kube-credentials",
    }
    assert set(overridden) <= set(SERVICES)
    for name, svc in overridden.items():
        image = svc["image"]
        assert image.startswith("airflow-k3s/"), f"{name}: {image}"
        assert image.endswith(("-local", ":local")), f"{name}: {image}"
        upstream = resolve_defaults(SERVICES[name]["image"])
        assert image != upstream, name
    local_images = settings.compose_images(REPO)["local"]
    assert {n: local_images[n] for n in overridden} == {
        n: s["image"] for n, s in overridden.items()
    }


def test_local_builds_use_the_local_bases_and_their_dockerfiles_exist() -> None:
    bases = {settings.LOCAL_DEBIAN_IMAGE, settings.LOCAL_PYTHON_IMAGE}
    for name, svc in LOCAL["services"].items():
        build = svc.get("build")
        if build is None:
            assert name in ("k3s", "kube-credentials"), (
                f"{name} is neither built by compose nor by the task library"
            )
            continue
        dockerfile = REPO / build["context"] / build["dockerfile"]
        assert dockerfile.is_file(), f"{name}: {dockerfile}"
        for arg in ("DEBIAN_IMAGE", "PYTHON_IMAGE"):
            if arg in build["args"]:
                assert build["args"][arg] in bases, f"{name}: {arg}={build['args'][arg]}"


def test_mockserver_version_is_one_pin_in_three_files() -> None:
    upstream = SERVICES["mockserver"]["image"]
    match = re.fullmatch(r"mockserver/mockserver:(\d+\.\d+\.\d+)", upstream)
    assert match, upstream
    version = match.group(1)
    assert version == "5.15.0"
    local = LOCAL["services"]["mockserver"]
    assert local["build"]["args"]["MOCKSERVER_VERSION"] == version
    assert local["image"] == f"airflow-k3s/mockserver:{version}-local"
    dockerfile = (REPO / "local" / "images" / "mockserver.Dockerfile").read_text()
    defaults = re.findall(r"^ARG MOCKSERVER_VERSION=(\S+)$", dockerfile, re.M)
    assert defaults == [version]


def test_the_local_node_runs_the_minor_of_the_pinned_k3s() -> None:
    upstream = SERVICES["k3s"]["image"]
    match = re.fullmatch(r"rancher/k3s:v(\d+)\.(\d+)\.(\d+)-k3s\d+", upstream)
    assert match, upstream
    kubernetes = settings.node_versions(REPO)["KUBERNETES_VERSION"]
    node = re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)", kubernetes)
    assert node, kubernetes
    assert node.group(1, 2) == match.group(1, 2), f"{kubernetes} is not the minor of {upstream}"
    assert LOCAL["services"]["k3s"]["image"] == f"airflow-k3s/k3s:{kubernetes}-local"


def test_every_named_volume_is_declared() -> None:
    declared = set(COMPOSE["volumes"])
    used: set[str] = set()
    for name, svc in {**SERVICES, "x-airflow-common": COMPOSE["x-airflow-common"]}.items():
        for volume in svc.get("volumes", []):
            source = str(volume).split(":")[0]
            if not source.startswith(("./", "/", "${")):
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
    assert used == declared, f"declared but unused: {declared - used}"
    k3s_volumes = {str(v).split(":")[0] for v in SERVICES["k3s"]["volumes"]}
    assert {"k3s-data", "k3s-kubelet", "k3s-cni", "k3s-log", "k3s-node"} <= k3s_volumes


def test_k3s_command_fixes_the_node_name_and_pulls_through_the_mirror_only() -> None:
    command = SERVICES["k3s"]["command"]
    assert command[0] == "server"
    assert "--node-name=k3s" in command
    assert "--disable-default-registry-endpoint" in command
    assert "--disable=local-storage" in command, "the shared volume is a static PV, no provisioner"
    assert "--kubelet-arg=registry-qps=0" in command, "32 pods at once exceed 5 pulls a second"
    assert len(command) == len(set(command))
    # The healthcheck waits for the node by that name.
    assert "node/k3s" in " ".join(SERVICES["k3s"]["healthcheck"]["test"])


# --------------------------------------------------------------------------- health, ordering


def test_every_long_running_service_has_a_healthcheck() -> None:
    one_shot = {n for n, s in SERVICES.items() if s.get("restart") == "no"}
    assert one_shot == {"airflow-init", "kube-credentials"}
    for name, svc in SERVICES.items():
        if name in one_shot or name == "mockserver":
            continue
        check = svc.get("healthcheck")
        assert check, f"{name} has no healthcheck"
        assert not check.get("disable"), f"{name}'s healthcheck is disabled"
        assert check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert check.get("interval"), name
        assert check.get("retries"), name


def test_mockserver_healthcheck_is_disabled_and_probed_by_init() -> None:
    """MockServer's image has no shell to probe with: airflow-init waits for its status endpoint
    (container.wait_http), and every other Airflow service waits for airflow-init."""
    assert SERVICES["mockserver"]["healthcheck"] == {"disable": True}
    # airflow-init probes it instead, and every other Airflow service waits for airflow-init.
    init_deps = SERVICES["airflow-init"]["depends_on"]
    assert init_deps["mockserver"]["condition"] == "service_started"
    for name in AIRFLOW_SERVICES - {"airflow-init"}:
        assert SERVICES[name]["depends_on"]["airflow-init"]["condition"] == (
            "service_completed_successfully"
        )


def test_airflow_init_waits_for_everything_it_sets_up() -> None:
    deps = SERVICES["airflow-init"]["depends_on"]
    for name in ("postgres", "s3", "registry"):
        assert deps[name]["condition"] == "service_healthy", name
    # It needs no cluster: it runs while the node starts, and waits for no kubeconfig.
    assert "k3s" not in deps
    assert SERVICES["airflow-init"]["environment"]["AIRFLOW_K3S_KUBECONFIG_SRC"] == ""


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
    # The git-server runs git from the Airflow image (it has git for GitDagBundle), not Airflow.
    assert image_users == AIRFLOW_SERVICES | {"git-server"}
    for name in AIRFLOW_SERVICES:
        svc = SERVICES[name]
        for key in ("image", "build", "user", "env_file", "environment", "volumes"):
            value = svc[key]
            if name in NO_CLUSTER_CREDENTIAL and key == "environment":
                # The one difference: they wait for no kubeconfig (they get no credential).
                assert value["AIRFLOW_K3S_KUBECONFIG_SRC"] == ""
                value = {
                    **value,
                    "AIRFLOW_K3S_KUBECONFIG_SRC": common[key]["AIRFLOW_K3S_KUBECONFIG_SRC"],
                }
            if name not in NO_CLUSTER_CREDENTIAL and key == "volumes":
                # The other: each mounts its own credential's volume, and no other's.
                assert value[-1] == f"kube-{name.removeprefix('airflow-')}:/kube:ro", name
                value = value[:-1]
            assert value == common[key], f"{name}.{key} differs from x-airflow-common"


#: The Airflow services that hold no cluster credential at all.
NO_CLUSTER_CREDENTIAL = {"airflow-init", "airflow-dag-processor"}


def test_only_kube_credentials_and_k3s_see_the_admin_kubeconfig() -> None:
    readers = {
        name
        for name, svc in SERVICES.items()
        for volume in svc.get("volumes", [])
        if str(volume).startswith("k3s-output:")
    }
    assert readers == {"k3s", "kube-credentials"}
    assert SERVICES["k3s"]["environment"]["K3S_KUBECONFIG_MODE"] == "600"
    mounts = {
        name: sorted(
            str(v).split(":")[0] for v in svc.get("volumes", []) if str(v).startswith("kube-")
        )
        for name, svc in SERVICES.items()
    }
    assert {n: m for n, m in mounts.items() if m} == {
        "kube-credentials": ["kube-apiserver", "kube-scheduler", "kube-triggerer"],
        "airflow-apiserver": ["kube-apiserver"],
        "airflow-scheduler": ["kube-scheduler"],
        "airflow-triggerer": ["kube-triggerer"],
    }


def test_airflow_services_get_the_config_file_and_secrets_by_interpolation() -> None:
    common = COMPOSE["x-airflow-common"]
    assert common["env_file"] == [
        {"path": "${AIRFLOW_ENV_FILE:-./airflow/airflow.env}"},
        # What DAG_SOURCE adds (absent with `image`): after airflow.env, so it wins.
        {"path": "${AIRFLOW_K3S_GENERATED:-./.generated}/dag-source.env", "required": False},
    ]
    assert common["user"].startswith("50000:")
    for key, value in common["environment"].items():
        if re.search(r"PASSWORD|SECRET|FERNET|KEY_ID|SQL_ALCHEMY_CONN", key):
            assert "${" in value, f"{key} must come from the generated .env"
    mounts = {v.rsplit(":", 2)[-2]: v.rsplit(":", 2)[0] for v in common["volumes"]}
    assert (
        mounts["/opt/airflow/pod_template.yaml"] == "${POD_TEMPLATE:-./airflow/pod_template.yaml}"
    )
    assert mounts["/opt/airflow/dags"] == "${DAGS_DIR:-./dags}"


def test_k3s_mounts_the_registry_mirror_and_manifests() -> None:
    volumes = SERVICES["k3s"]["volumes"]
    manifests = "/var/lib/rancher/k3s/server/manifests"
    assert "./k3s/registries.yaml:/etc/rancher/k3s/registries.yaml:ro" in volumes
    # Subfolders of k3s's manifests folder, read-only: k3s's own manifests stay writable for it.
    assert f"./k3s/manifests:{manifests}/airflow-k3s:ro" in volumes
    assert f"${{AIRFLOW_K3S_GENERATED:-./.generated}}/k3s:{manifests}/airflow-k3s-generated:ro" in (
        volumes
    )
    assert not [v for v in volumes if str(v).split(":")[1] == manifests]
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
    out = shell.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=REPO
    ).stdout
    return [REPO / name for name in out.split("\0") if name and (REPO / name).is_file()]


SECRET_NAMES = (
    *generated.SECRET_KEYS,
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


def secret_problems(rel: Path, text: str) -> list[str]:
    """What the scan finds in one file's text (``rel``: its path in the repository)."""
    problems = [
        f"{rel}: {m.group(1)} has a literal value"
        for m in ASSIGNED.finditer(text)
        if not is_reference(m.group(2))
    ]
    for pattern, what in (
        (PEM_PRIVATE, "PEM private key"),
        (KUBE_CLIENT_KEY, "kubeconfig client key"),
        (AWS_KEY_ID, "AWS access key id"),
    ):
        if pattern.search(text):
            problems.append(f"{rel}: {what}")
    if rel.suffix in CONFIG_SUFFIXES or rel.name.endswith("Dockerfile"):
        problems += [
            f"{rel}: password value {m.group(0).strip()[:60]!r}"
            for m in PASSWORD_VALUE.finditer(text)
            if not is_reference(m.group(1))
        ]
        problems += [
            f"{rel}: credentials in a URL ({m.group(0)[:40]})"
            for m in URL_CREDENTIALS.finditer(text)
        ]
    return problems


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
        problems += secret_problems(path.relative_to(REPO), text)
    assert problems == []


def test_secret_scan_reports_each_kind_of_finding() -> None:
    key = "-----BEGIN RSA " + "PRIVATE KEY-----"
    assert secret_problems(Path("a.py"), f"KEY = {key!r}\n") == ["a.py: PEM private key"]
    assert secret_problems(Path("a.py"), "admin_password: hunter2\n") == [], "config files only"
    assert secret_problems(Path("c.yml"), "admin_password: hunter2\n") == [
        "c.yml: password value 'admin_password: hunter2'"
    ]
    assert secret_problems(Path("x.Dockerfile"), "ENV URL=http://u:hunter2@host/\n") == [
        "x.Dockerfile: credentials in a URL (://u:hunter2@)"
    ]
    assert secret_problems(Path(".env.example"), "S3_SECRET_KEY=abc\n") == [
        ".env.example: S3_SECRET_KEY has a literal value"
    ]


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
    ignored = shell.run(
        ["git", "check-ignore", ".env", ".generated/k3s/worker-secret.yaml"], cwd=REPO
    ).stdout.split()
    assert ignored == [".env", ".generated/k3s/worker-secret.yaml"]
