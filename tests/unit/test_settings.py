"""airflow_k3s.settings: the environment over .env, defaults read from the compose files."""

from __future__ import annotations

from pathlib import Path

import pytest

from airflow_k3s import settings
from airflow_k3s.exits import ExitCode, UserError
from airflow_k3s.settings import Settings
from tests.harness import airflow_env_in

REPO = Path(__file__).resolve().parents[2]


def load(tmp_path: Path, **env: str) -> Settings:
    return Settings.load(environ={"AIRFLOW_K3S_STATE_DIR": str(tmp_path), **env}, root=REPO)


def test_defaults_bind_the_documented_ports(tmp_path: Path) -> None:
    cfg = load(tmp_path)
    assert cfg.images == "upstream"
    assert not cfg.local
    assert dict(cfg.ports) == {
        "AIRFLOW_PORT": 8080,
        "REGISTRY_PORT": 5001,
        "S3_PORT": 8333,
        "MOCKSERVER_PORT": 1080,
        "K3S_API_PORT": 6443,
    }
    assert cfg.worker_image == "127.0.0.1:5001/airflow-worker:latest"
    assert cfg.airflow_url == "http://127.0.0.1:8080"
    assert cfg.s3_url == "http://127.0.0.1:8333"
    assert cfg.compose_files == [REPO / "docker-compose.yml"]
    assert cfg.env_file == tmp_path / ".env"
    assert cfg.host_kubeconfig == tmp_path / ".generated" / "kubeconfig.yaml"
    assert cfg.project == "airflow-k3s"
    assert cfg.secrets == {}


def test_env_file_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("REGISTRY_PORT=5999\nAIRFLOW_PORT=9000\nS3_SECRET_KEY='x'\n")
    cfg = load(tmp_path, AIRFLOW_PORT="9100", IMAGES="local")
    assert cfg.ports["REGISTRY_PORT"] == 5999
    assert cfg.ports["AIRFLOW_PORT"] == 9100
    assert cfg.secrets == {"S3_SECRET_KEY": "x"}
    assert cfg.worker_image == "127.0.0.1:5999/airflow-worker:latest"


def test_images_local_puts_the_override_last(tmp_path: Path) -> None:
    cfg = load(tmp_path, IMAGES="local")
    assert cfg.local
    assert cfg.compose_files == [REPO / "docker-compose.yml", REPO / "local" / "compose.local.yml"]
    assert cfg.compose_env == {
        "AIRFLOW_K3S_GENERATED": str(tmp_path / ".generated"),
        "AIRFLOW_IMAGE": "airflow-k3s/airflow:3.3.2",
        "DAGS_DIR": str(REPO / "dags"),
        "POD_TEMPLATE": str(REPO / "airflow" / "pod_template.yaml"),
        "AIRFLOW_ENV_FILE": str(REPO / "airflow" / "airflow.env"),
        "AIRFLOW_K3S_NAMESPACE": "default",
        "COMPOSE_PROFILES": "",
        "PYTHON_BASE_IMAGE": settings.LOCAL_PYTHON_IMAGE,
    }


def test_dag_source_git_turns_on_the_git_server_and_names_the_repository(tmp_path: Path) -> None:
    assert not load(tmp_path).git_dags
    cfg = load(tmp_path, DAG_SOURCE="git")
    assert cfg.git_dags
    assert cfg.compose_env["COMPOSE_PROFILES"] == "git"
    assert cfg.dags_repo == tmp_path / ".generated" / "dags.git"
    with pytest.raises(UserError) as exc:
        load(tmp_path, DAG_SOURCE="s3")
    assert exc.value.code is ExitCode.USAGE
    assert exc.value.message == "DAG_SOURCE must be one of image, git, not 's3'"


def test_the_airflow_configuration_can_be_another_file(tmp_path: Path) -> None:
    mine = tmp_path / "my-airflow.env"
    mine.write_text("AIRFLOW__CORE__PARALLELISM=4\n")
    cfg = load(tmp_path, AIRFLOW_ENV_FILE=str(mine))
    assert cfg.airflow_env == {"AIRFLOW__CORE__PARALLELISM": "4"}
    assert cfg.compose_env["AIRFLOW_ENV_FILE"] == str(mine)
    missing = load(tmp_path, AIRFLOW_ENV_FILE=str(tmp_path / "nope.env"))
    with pytest.raises(UserError) as exc:
        _ = missing.airflow_env
    assert exc.value.code is ExitCode.USAGE
    assert exc.value.message == f"AIRFLOW_ENV_FILE={tmp_path / 'nope.env'}: no such file"


def test_image_builds_trust_the_hosts_ca_bundle_unless_told_otherwise(tmp_path: Path) -> None:
    host = tmp_path / "host-ca.crt"
    host.write_text("-----BEGIN CERTIFICATE-----\n")
    empty = tmp_path / "empty.crt"
    empty.touch()
    candidates = (tmp_path / "missing.crt", empty, host)
    assert settings.ca_bundle(None, candidates) == str(host), "the first non-empty bundle"
    assert settings.ca_bundle("", candidates) == str(host), "empty is unset"
    assert settings.ca_bundle("none", candidates) == ""
    assert settings.ca_bundle("NONE", candidates) == ""
    assert settings.ca_bundle(str(empty), candidates) == str(empty), "the user's choice"
    assert settings.ca_bundle(None, (tmp_path / "missing.crt",)) == ""
    assert load(tmp_path, EXTRA_CA_BUNDLE="none").extra_ca_bundle == ""
    assert load(tmp_path, EXTRA_CA_BUNDLE=str(host)).extra_ca_bundle == str(host)
    default = load(tmp_path).extra_ca_bundle
    expected = next((str(p) for p in settings.HOST_CA_BUNDLES if p.is_file()), "")
    assert default == expected


def test_upstream_builds_airflow_on_the_pinned_python(tmp_path: Path) -> None:
    env = load(tmp_path).compose_env
    assert "PYTHON_BASE_IMAGE" not in env, "compose's pinned default applies"
    assert env["AIRFLOW_IMAGE"] == "airflow-k3s/airflow:3.3.2"
    assert load(tmp_path, AIRFLOW_IMAGE="me/airflow:dev").compose_env["AIRFLOW_IMAGE"] == (
        "me/airflow:dev"
    )


def test_service_images_follow_the_image_source(tmp_path: Path) -> None:
    upstream = load(tmp_path).service_images
    local = load(tmp_path, IMAGES="local").service_images
    assert upstream["k3s"] == "rancher/k3s:v1.36.4-k3s1"
    assert local["k3s"] == "airflow-k3s/k3s:v1.36.3-local"
    assert upstream["mockserver"] == "mockserver/mockserver:5.15.0"
    assert local["mockserver"] == "airflow-k3s/mockserver:5.15.0-local"
    # The Airflow image is built in both sources (on a different base).
    assert (
        upstream["airflow-scheduler"] == local["airflow-scheduler"] == "airflow-k3s/airflow:3.3.2"
    )
    assert set(upstream) == set(local)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"IMAGES": "docker-hub"}, "IMAGES must be 'upstream' or 'local', not 'docker-hub'"),
        ({"IMAGES": ""}, "IMAGES must be 'upstream' or 'local', not ''"),
        ({"S3_PORT": "eighty"}, "S3_PORT must be a port number, not 'eighty'"),
        ({"AIRFLOW_PORT": "70000"}, "AIRFLOW_PORT must be a port number, not '70000'"),
        ({"K3S_API_PORT": "0"}, "K3S_API_PORT must be a port number, not '0'"),
        ({"REGISTRY_PORT": "-1"}, "REGISTRY_PORT must be a port number, not '-1'"),
        ({"MOCKSERVER_PORT": ""}, "MOCKSERVER_PORT must be a port number, not ''"),
    ],
)
def test_bad_settings_are_one_clear_line(tmp_path: Path, env: dict[str, str], message: str) -> None:
    with pytest.raises(UserError) as exc:
        load(tmp_path, **env)
    assert exc.value.message == message
    assert exc.value.code is ExitCode.USAGE


def test_a_bad_port_in_env_file_is_refused_too(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("S3_PORT='8333x'\n")
    with pytest.raises(UserError) as exc:
        load(tmp_path)
    assert exc.value.message == "S3_PORT must be a port number, not '8333x'"
    assert exc.value.code is ExitCode.USAGE


def test_published_ports_name_their_service() -> None:
    ports = {p.variable: (p.default, p.service) for p in settings.published_ports(REPO)}
    assert ports == {
        "S3_PORT": (8333, "s3"),
        "MOCKSERVER_PORT": (1080, "mockserver"),
        "REGISTRY_PORT": (5001, "registry"),
        "K3S_API_PORT": (6443, "k3s"),
        "AIRFLOW_PORT": (8080, "airflow-apiserver"),
    }


@pytest.mark.parametrize(
    ("value", "default"),
    [
        ("${AIRFLOW_IMAGE:-airflow-k3s/airflow:3.3.2}", "airflow-k3s/airflow:3.3.2"),
        ("  ${X:-}  ", ""),
        ("registry:2.8.3", "registry:2.8.3"),
        ("${NO_DEFAULT}", "${NO_DEFAULT}"),
    ],
)
def test_compose_default(value: str, default: str) -> None:
    assert settings.compose_default(value) == default


def test_node_versions_are_pinned_releases() -> None:
    versions = settings.node_versions(REPO)
    for key in ("KUBERNETES_VERSION", "CONTAINERD_VERSION", "COREDNS_VERSION", "ETCD_VERSION"):
        assert versions[key].startswith("v"), key
        assert versions[key].count(".") == 2, key
    assert versions["GO_VERSION"][0].isdigit()


def test_pod_security_is_one_of_the_levels(tmp_path: Path) -> None:
    assert load(tmp_path).pod_security == "privileged", "enforces nothing by default"
    assert load(tmp_path, POD_SECURITY="restricted").pod_security == "restricted"
    with pytest.raises(UserError) as exc:
        load(tmp_path, POD_SECURITY="strict")
    assert exc.value.code is ExitCode.USAGE
    assert exc.value.message == (
        "POD_SECURITY must be one of privileged, baseline, restricted, not 'strict'"
    )


def test_the_executors_namespace_is_read_from_airflow_env(tmp_path: Path) -> None:
    assert load(tmp_path).namespace == "default"
    mine = load(tmp_path, AIRFLOW_ENV_FILE=str(airflow_env_in(tmp_path, "airflow-tasks")))
    assert mine.namespace == "airflow-tasks"
    assert mine.compose_env["AIRFLOW_K3S_NAMESPACE"] == "airflow-tasks", "kube-credentials too"


@pytest.mark.parametrize("name", ["Airflow", "airflow_tasks", "-tasks", "tasks-", "x" * 64, ""])
def test_a_namespace_kubernetes_would_refuse_is_one_line(tmp_path: Path, name: str) -> None:
    cfg = load(tmp_path, AIRFLOW_ENV_FILE=str(airflow_env_in(tmp_path, name)))
    with pytest.raises(UserError) as exc:
        _ = cfg.namespace
    assert exc.value.code is ExitCode.USAGE
    assert exc.value.message == (
        f"AIRFLOW__KUBERNETES_EXECUTOR__NAMESPACE in {tmp_path / 'airflow.env'} must be a "
        f"namespace name (lowercase letters, digits and '-', at most 63), not {name!r}"
    )
