"""airflow_k3s.compose: the Docker boundary, with a fake `subprocess.run`/`shutil.which` and fake
python-on-whales objects where the real ones would call docker."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from python_on_whales.exceptions import DockerException

from airflow_k3s import compose
from airflow_k3s.exits import ExitCode, UserError
from airflow_k3s.settings import Settings

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("v2.40.3\n", (2, 40, 3)),
        ("2.24.0-desktop.1", (2, 24, 0)),
        ("2.29.7+ds1", (2, 29, 7)),
        ("2.24", (2, 24)),
    ],
)
def test_parse_version(text: str, expected: tuple[int, ...]) -> None:
    assert compose.parse_version(text) == expected


def test_not_ready_wants_init_exited_zero_and_the_rest_healthy() -> None:
    states = {
        "airflow-init": "exited(0)",
        "postgres": "healthy",
        "mockserver": "running",
        "airflow-scheduler": "starting",
        "s3": "exited(1)",
    }
    expected = set(states) | {"registry"}
    assert compose.not_ready(states, expected) == {
        "airflow-scheduler": "starting",
        "registry": "missing",
        "s3": "exited(1)",
    }
    assert compose.not_ready({"airflow-init": "exited(1)"}, {"airflow-init"}) == {
        "airflow-init": "exited(1)"
    }
    assert compose.not_ready({"k3s": "exited(0)"}, {"k3s"}) == {"k3s": "exited(0)"}


def container(service: str, status: str, exit_code: int = 0, health: str | None = None) -> Any:
    """What python-on-whales' compose.ps() returns, the fields service_states reads."""
    return SimpleNamespace(
        name=f"airflow-k3s-{service}-1",
        config=SimpleNamespace(labels={"com.docker.compose.service": service}),
        state=SimpleNamespace(
            status=status,
            exit_code=exit_code,
            health=None if health is None else SimpleNamespace(status=health),
        ),
    )


def test_service_states_of_compose_ps() -> None:
    containers = [
        container("airflow-init", "exited", 0),
        container("s3", "exited", 137, health="unhealthy"),
        container("postgres", "running", health="healthy"),
        container("k3s", "running", health="starting"),
        container("mockserver", "running"),
        container("registry", "restarting", health=""),
    ]
    docker: Any = SimpleNamespace(compose=SimpleNamespace(ps=lambda **_kwargs: containers))
    assert compose.service_states(docker) == {
        "airflow-init": "exited(0)",
        "s3": "exited(137)",
        "postgres": "healthy",
        "k3s": "starting",
        "mockserver": "running",
        "registry": "restarting",
    }


def test_docker_errors_become_the_last_line_docker_said() -> None:
    with pytest.raises(UserError) as exc, compose.docker_errors():
        raise DockerException(
            ["docker", "compose", "up", "--detach", "--quiet"],
            1,
            b"",
            b"some progress\nError response from daemon: port is already allocated\n",
        )
    assert exc.value.message == (
        "docker failed: docker compose up --detach ...: "
        "Error response from daemon: port is already allocated"
    )
    assert exc.value.code is ExitCode.FAILED


def fake_run(codes: dict[str, int], stdout: str = "") -> Callable[..., Any]:
    """A fake subprocess.run at the `docker` boundary: exit codes per subcommand."""

    def run(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        key = " ".join(cmd[1:3])
        return subprocess.CompletedProcess(cmd, codes.get(key, 0), stdout, "")

    return run


@pytest.mark.parametrize(
    ("which", "codes", "stdout", "message"),
    [
        (
            None,
            {},
            "",
            "Docker is not installed: install Docker (or on Debian run local/ensure-docker.sh)",
        ),
        (
            "/usr/bin/docker",
            {"info --format": 1},
            "",
            "the Docker engine is not running or not reachable: start it (on Debian: "
            "local/ensure-docker.sh)",
        ),
        (
            "/usr/bin/docker",
            {"compose version": 1},
            "",
            "docker compose v2 is missing: install the compose plugin (local/ensure-docker.sh "
            "does it on Debian)",
        ),
        (
            "/usr/bin/docker",
            {},
            "2.20.3\n",
            "docker compose 2.20.3 is too old: 2.24.0 or newer needed",
        ),
    ],
)
def test_check_docker_says_what_is_missing(
    monkeypatch: pytest.MonkeyPatch,
    which: str | None,
    codes: dict[str, int],
    stdout: str,
    message: str,
) -> None:
    monkeypatch.setattr("airflow_k3s.compose.shutil.which", lambda _name: which)
    monkeypatch.setattr("airflow_k3s.compose.subprocess.run", fake_run(codes, stdout))
    with pytest.raises(UserError) as exc:
        compose.check_docker()
    assert exc.value.message == message
    assert exc.value.code is ExitCode.NO_DOCKER


def test_check_docker_accepts_a_new_enough_compose(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("airflow_k3s.compose.shutil.which", lambda _name: "/usr/bin/docker")
    monkeypatch.setattr("airflow_k3s.compose.subprocess.run", fake_run({}, "2.24.0-desktop.1\n"))
    compose.check_docker()


def test_the_installer_named_in_the_messages_exists() -> None:
    assert (REPO / compose.INSTALLER).is_file()


def test_engine_info_reads_one_docker_info_line(monkeypatch: pytest.MonkeyPatch) -> None:
    def run(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        if cmd[1] == "info":
            out = "27.5.1|Debian GNU/Linux 12 (bookworm)|2|/var/lib/docker|16694706176\n"
        else:
            out = "v2.32.4\n"
        return subprocess.CompletedProcess(cmd, 0, out, "")

    monkeypatch.setattr("airflow_k3s.compose.subprocess.run", run)
    assert compose.engine_info() == {
        "version": "27.5.1",
        "os": "Debian GNU/Linux 12 (bookworm)",
        "cgroup": "2",
        "root_dir": "/var/lib/docker",
        "mem_total": "16694706176",
        "compose": "v2.32.4",
    }


def test_try_run_names_the_daemons_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[list[str]] = []

    def run(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        seen.append(cmd)
        err = (
            "docker: Error response from daemon: failed to create task: "
            "operation not permitted.\nSee 'docker run --help'.\n"
        )
        return subprocess.CompletedProcess(cmd, 126, "", err)

    monkeypatch.setattr("airflow_k3s.compose.subprocess.run", run)
    ok, why = compose.try_run("probe:1", "--cap-add=SYS_ADMIN")
    assert not ok
    assert why == "failed to create task: operation not permitted."
    assert seen == [
        ["docker", "run", "--rm", "--cap-add=SYS_ADMIN", "--entrypoint", "true", "probe:1"]
    ]


def test_require_running_names_the_service(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(compose, "client", lambda _cfg: None)
    monkeypatch.setattr(compose, "service_states", lambda _d: {"k3s": "healthy"})
    cfg = Settings.load({"AIRFLOW_K3S_STATE_DIR": str(tmp_path)}, root=REPO)
    compose.require_running(cfg, "k3s")
    with pytest.raises(UserError) as exc:
        compose.require_running(cfg)
    assert exc.value.code is ExitCode.NOT_RUNNING
    assert exc.value.message == (
        "the stack is not running (airflow-apiserver is not up): start it with `make up`"
    )


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        (
            'Traceback (most recent call last):\n  File "<string>", line 1\n'
            "ModuleNotFoundError: No module named 'airflow'\n",
            "ModuleNotFoundError: No module named 'airflow'",
        ),
        (
            'docker: Error response from daemon: failed to create task: exec: "python": '
            "executable file not found in $PATH: unknown.\n\n"
            "Run 'docker run --help' for more information\n",
            'failed to create task: exec: "python": executable file not found in $PATH: unknown.',
        ),
        ("", ""),
    ],
)
def test_the_reason_a_docker_run_failed_is_its_error_not_its_hint(
    output: str, expected: str
) -> None:
    assert compose.last_error_line(output) == expected
