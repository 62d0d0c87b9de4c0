"""airflow_k3s.lifecycle: the generated files and the checks before `up` starts anything."""

from __future__ import annotations

import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from airflow_k3s import generated, images
from airflow_k3s import lifecycle as stack
from airflow_k3s.boundary import Stack
from airflow_k3s.docker import Docker
from airflow_k3s.exits import ExitCode, UserError
from airflow_k3s.settings import Settings
from tests.harness import airflow_env_in
from tests.unit.conftest import FakeCommands

REPO = Path(__file__).resolve().parents[2]


def load(tmp_path: Path, **env: str) -> Settings:
    return Settings.load(environ={"AIRFLOW_K3S_STATE_DIR": str(tmp_path), **env}, root=REPO)


# --------------------------------------------------------------------------- generated files


def test_ensure_secrets_generates_once_with_mode_600(tmp_path: Path) -> None:
    cfg = load(tmp_path)
    first = stack.ensure_secrets(cfg)
    env_file = tmp_path / ".env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    written = generated.parse_env_file(env_file.read_text())
    assert set(generated.SECRET_KEYS) <= set(written)
    assert dict(first.secrets) == {k: written[k] for k in generated.SECRET_KEYS}
    secret = tmp_path / ".generated" / "k3s" / f"{generated.WORKER_SECRET_NAME}.yaml"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    worker = generated.secret_manifest_env(secret.read_text())
    assert worker["AWS_SECRET_ACCESS_KEY"] == first.secrets["S3_SECRET_KEY"]
    assert "AIRFLOW_FERNET_KEY" not in worker, "workers get only what they need"
    before = env_file.read_text()
    second = stack.ensure_secrets(first)
    assert env_file.read_text() == before, "secrets are never regenerated"
    assert second.secrets == first.secrets


def test_ensure_secrets_keeps_the_users_settings_and_fills_only_what_is_missing(
    tmp_path: Path,
) -> None:
    (tmp_path / ".env").write_text("AIRFLOW_PORT='9000'\nPOSTGRES_PASSWORD='mine'\n")
    (tmp_path / ".env").chmod(0o644)
    cfg = stack.ensure_secrets(load(tmp_path))
    written = generated.parse_env_file((tmp_path / ".env").read_text())
    assert written["AIRFLOW_PORT"] == "9000"
    assert written["POSTGRES_PASSWORD"] == "mine" == cfg.secrets["POSTGRES_PASSWORD"]
    assert stat.S_IMODE((tmp_path / ".env").stat().st_mode) == 0o600


def test_the_worker_secret_follows_airflow_env(tmp_path: Path) -> None:
    cfg = stack.ensure_secrets(load(tmp_path))
    config = generated.parse_env_file((REPO / "airflow" / "airflow.env").read_text())
    env = generated.worker_env(cfg.airflow_env, dict(cfg.secrets))
    assert cfg.airflow_env == config, "Settings read airflow.env as it is"
    assert {k: env[k] for k in config} == config
    assert set(env) - set(config) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}


NAMESPACED = {"PersistentVolumeClaim", "ServiceAccount", "Role", "RoleBinding", "Secret"}


def rendered(cfg: Settings) -> dict[str, list[dict[str, Any]]]:
    """file name -> its objects, of what k3s applies from .generated/k3s, in the order it does."""
    folder = cfg.generated / "k3s"
    return {p.name: list(yaml.safe_load_all(p.read_text())) for p in sorted(folder.iterdir())}


def test_everything_rendered_is_in_the_executors_namespace_which_comes_first(
    tmp_path: Path,
) -> None:
    cfg = stack.ensure_secrets(
        load(tmp_path, AIRFLOW_ENV_FILE=str(airflow_env_in(tmp_path, "airflow-tasks")))
    )
    files = rendered(cfg)
    # k3s and the node apply the files in name order and each file's objects in order.
    first = next(iter(files))
    assert first == generated.NAMESPACE_FILE
    namespace = files[first][0]
    assert namespace["kind"] == "Namespace"
    assert namespace["metadata"] == {"name": "airflow-tasks", "labels": generated.PART_OF}
    namespaced = [d for docs in files.values() for d in docs if d["kind"] in NAMESPACED]
    assert {d["metadata"]["namespace"] for d in namespaced} == {"airflow-tasks"}
    kinds = {d["kind"] for docs in files.values() for d in docs}
    assert kinds == {"Namespace", "PersistentVolume", *NAMESPACED}
    secret = cfg.generated / "k3s" / f"{generated.WORKER_SECRET_NAME}.yaml"
    worker = generated.secret_manifest_env(secret.read_text())
    assert worker["AIRFLOW__KUBERNETES_EXECUTOR__NAMESPACE"] == "airflow-tasks", "the pods know"


def test_the_default_namespace_is_never_rendered(tmp_path: Path) -> None:
    """Every cluster has `default`: owning it would let k3s delete it with the file's objects."""
    files = rendered(stack.ensure_secrets(load(tmp_path)))
    kinds = [d["kind"] for docs in files.values() for d in docs]
    assert "Namespace" not in kinds
    claim = files[generated.NAMESPACE_FILE][-1]
    assert claim["metadata"]["namespace"] == "default"
    assert claim["spec"]["volumeName"] == "airflow-shared", "the PV a stack has bound already"


def test_rendering_again_writes_the_same_bytes(tmp_path: Path) -> None:
    """k3s re-applies a file whose content changed: an unchanged configuration changes none."""
    cfg = load(tmp_path, AIRFLOW_ENV_FILE=str(airflow_env_in(tmp_path, "airflow-tasks")))
    folder = cfg.generated / "k3s"
    stack.ensure_secrets(cfg)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    stack.ensure_secrets(cfg)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


# --------------------------------------------------------------------------- ports


def test_port_conflicts_name_port_service_and_variable(tmp_path: Path) -> None:
    cfg = load(tmp_path, IMAGES="local", S3_PORT="18333")
    taken = {18333, 8080, 6443}
    problems = stack.port_conflicts(cfg, running={"airflow-apiserver"}, taken=taken.__contains__)
    assert problems == [
        "port 18333 (s3) is already in use: free it or set S3_PORT=<free port> in the "
        "environment or .env",
        "port 6443 (k3s) is already in use: free it or set K3S_API_PORT=<free port> in the "
        "environment or .env",
    ], "our own running api-server on 8080 is not a conflict; every mode runs k3s"


@pytest.fixture
def listening() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_port_taken_sees_a_listener(listening: int) -> None:
    assert stack.port_taken(listening)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        free = int(sock.getsockname()[1])  # bound, not listening: nobody answers
        assert not stack.port_taken(free)


def test_up_refuses_taken_ports_before_building_anything(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def must_not_build(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("up built images although a port is taken")

    monkeypatch.setattr(Docker, "check", lambda _self: None)
    monkeypatch.setattr(Docker, "running_services", lambda _self: set())
    monkeypatch.setattr(stack, "port_taken", {8080, 1080}.__contains__)
    monkeypatch.setattr(images, "build_all", must_not_build)
    with pytest.raises(UserError) as exc:
        stack.up(Stack(load(tmp_path)), build=True, timeout=1)
    assert exc.value.code is ExitCode.PORT_TAKEN
    assert exc.value.message == (
        "port 1080 (mockserver) is already in use: free it or set MOCKSERVER_PORT=<free port> in "
        "the environment or .env; port 8080 (airflow-apiserver) is already in use: free it or set "
        "AIRFLOW_PORT=<free port> in the environment or .env"
    )


# --------------------------------------------------------------------------- status


@pytest.mark.parametrize(
    ("states", "problem"),
    [
        ({}, ("the stack is not running: `make up` starts it", ExitCode.NOT_RUNNING)),
        (
            {"airflow-init": "exited(0)", "postgres": "exited(0)"},
            ("the stack is not running: `make up` starts it", ExitCode.NOT_RUNNING),
        ),
        (
            {"airflow-init": "exited(0)", "postgres": "healthy", "s3": "unhealthy"},
            ("s3 is unhealthy: `invoke logs --service <service>` says why", ExitCode.FAILED),
        ),
        (
            {"airflow-init": "exited(1)", "postgres": "healthy", "k3s": "exited(137)"},
            (
                "airflow-init is exited(1), k3s is exited(137): `invoke logs --service "
                "<service>` says why",
                ExitCode.FAILED,
            ),
        ),
        ({"airflow-init": "exited(0)", "postgres": "healthy", "mockserver": "running"}, None),
        ({"postgres": "healthy", "k3s": "starting"}, None),
    ],
)
def test_status_fails_when_the_stack_is_down_or_a_service_is_unhealthy(
    states: dict[str, str], problem: tuple[str, ExitCode] | None
) -> None:
    assert stack.status_problem(states) == problem


def test_status_of_a_stack_that_is_not_running_exits_4(
    tmp_path: Path, commands: FakeCommands, capsys: pytest.CaptureFixture[str]
) -> None:
    commands.on("compose", "version", stdout="2.40.3\n")
    with pytest.raises(UserError) as exc:
        stack.status(Stack(load(tmp_path)))
    assert exc.value.code is ExitCode.NOT_RUNNING
    assert exc.value.message == (
        "project airflow-k3s: the stack is not running: `make up` starts it"
    )
    assert capsys.readouterr().out == ""


def test_up_says_why_compose_could_not_start_a_service(
    tmp_path: Path,
    commands: FakeCommands,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Docker refuses to start a container (a port it allocated itself): the states and logs are
    printed, and the error is Docker's reason, not "did not become healthy"."""
    monkeypatch.setattr(stack, "port_taken", lambda _port: False)
    commands.on("compose", "version", stdout="2.40.3\n")
    commands.on("config", "--format", "json", stdout='{"services": {"s3": {}}}')
    why = (
        "Error response from daemon: driver failed programming external connectivity on "
        "endpoint s3-1: Bind for 127.0.0.1:51123 failed: port is already allocated"
    )
    commands.on("compose", "up", code=1, stderr=why)
    with pytest.raises(UserError) as exc:
        stack.up(Stack(load(tmp_path)), build=False, timeout=1)
    assert exc.value.message == (
        "docker compose up failed: driver failed programming external connectivity on endpoint "
        "s3-1: Bind for 127.0.0.1:51123 failed: port is already allocated"
    )
    assert "waiting for: s3 (missing)" in capsys.readouterr().err


def test_clean_deletes_the_volumes_of_agents_no_longer_in_node_pools(
    tmp_path: Path, commands: FakeCommands
) -> None:
    """`compose down --volumes` deletes only the volumes the compose files name; an agent taken
    out of NODE_POOLS left its own behind, and `clean` deletes them too."""
    cfg = load(tmp_path)
    commands.on("compose", "version", stdout="2.40.3\n")
    commands.on("volume", "ls", stdout="p_agent-gpu-1-data\np_agent-gpu-1-kubelet\n")
    stack.clean(Stack(cfg))
    removed = [argv for argv in commands.ran if argv[1:3] == ["volume", "rm"]]
    assert removed == [["docker", "volume", "rm", "p_agent-gpu-1-data", "p_agent-gpu-1-kubelet"]]
