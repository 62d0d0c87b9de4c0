"""The boundary to the outside world: the runner (airflow_k3s.shell) and Docker and compose
(airflow_k3s.docker), with every command faked where the runner would run it (`commands`)."""

from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest

from airflow_k3s import shell
from airflow_k3s.boundary import Stack
from airflow_k3s.docker import (
    INSTALLER,
    Docker,
    not_ready,
    parse_ps,
    parse_version,
    service_state,
)
from airflow_k3s.exits import ExitCode, UserError
from airflow_k3s.settings import Settings
from tests.unit.conftest import FakeCommands

REPO = Path(__file__).resolve().parents[2]


def load(tmp_path: Path, **env: str) -> Settings:
    return Settings.load({"AIRFLOW_K3S_STATE_DIR": str(tmp_path), **env}, root=REPO)


# --------------------------------------------------------------------------- one boundary


def started_processes(source: str) -> list[str]:
    """What a module uses to start processes: subprocess, a Docker library, os.system & co."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name in ("subprocess", "python_on_whales")]
        elif isinstance(node, ast.ImportFrom) and node.module in ("subprocess", "python_on_whales"):
            found.append(node.module)
        elif (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "os"
            and node.attr in ("system", "popen", "execv", "execvp", "spawnv", "fork")
        ):
            found.append(f"os.{node.attr}")
    return found


def test_only_the_runner_starts_processes() -> None:
    """No module but airflow_k3s/shell.py starts a process: every docker, compose, kubectl and
    other command goes through the one runner (and AIRFLOW_K3S_VERBOSE shows them all)."""
    files = [
        *sorted((REPO / "airflow_k3s").glob("*.py")),
        REPO / "tasks.py",
        REPO / "tests" / "harness.py",
    ]
    used = {p.name: started_processes(p.read_text()) for p in files if p.name != "shell.py"}
    assert {name: found for name, found in used.items() if found} == {}
    assert started_processes((REPO / "airflow_k3s" / "shell.py").read_text())


def test_verbose_echoes_every_command_before_it_runs(
    commands: FakeCommands, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shell.run(["docker", "compose", "ps", "--format", "json"])
    assert capsys.readouterr().err == ""
    monkeypatch.setenv(shell.VERBOSE_ENV, "1")
    shell.run(["kubectl", "get", "pods", "-l", "dag_id=demo rest"], check=False)
    assert capsys.readouterr().err == "$ kubectl get pods -l 'dag_id=demo rest'\n"
    assert commands.ran[-1] == ["kubectl", "get", "pods", "-l", "dag_id=demo rest"]


def test_verbose_shows_the_stacks_own_compose_and_kubectl_lines(
    commands: FakeCommands,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    monkeypatch.setenv(shell.VERBOSE_ENV, "true")
    stack = Stack(load(tmp_path))
    stack.docker.restart("airflow-scheduler")
    stack.kube.run("get", "nodes")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("$ docker compose --project-directory ")
    assert lines[0].endswith(" restart airflow-scheduler")
    assert "-p airflow-k3s -f " in lines[0]
    assert lines[1].endswith(f"--kubeconfig {tmp_path}/.generated/kubeconfig.yaml get nodes")


def test_a_failed_command_is_the_line_that_says_why(commands: FakeCommands, tmp_path: Path) -> None:
    commands.on(
        "compose",
        "up",
        code=1,
        stderr="some progress\nError response from daemon: port is already allocated\n",
    )
    with pytest.raises(shell.CommandFailed) as exc:
        Docker(load(tmp_path)).up()
    assert exc.value.message == "docker compose up failed: port is already allocated"
    assert exc.value.code is ExitCode.FAILED
    assert exc.value.returncode == 1


def test_a_missing_program_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError) as exc:
        shell.run(["no-such-program-here", "--version"])
    assert exc.value.code is ExitCode.NO_DOCKER
    assert exc.value.message.startswith("no-such-program-here is not installed or not on PATH")


def test_a_command_past_its_timeout() -> None:
    sleep = [sys.executable, "-c", "import time; time.sleep(5)"]
    with pytest.raises(UserError) as exc:
        shell.run(sleep, timeout=0.2, what="the probe")
    assert exc.value.code is ExitCode.TIMEOUT
    assert exc.value.message == "the probe timed out after 0 s"
    assert shell.run(sleep, timeout=0.2, check=False).returncode == 124


def test_lines_streams_and_fails_at_the_end() -> None:
    code = "print('one'); print('two', flush=True); raise SystemExit('it broke')"
    seen: list[str] = []
    with pytest.raises(shell.CommandFailed) as exc:
        seen.extend(shell.lines([sys.executable, "-c", code], what="the script"))
    assert seen[:2] == ["one", "two"]
    assert exc.value.message == "the script failed: it broke"


def test_poll_returns_the_first_truthy_answer() -> None:
    answers = iter(["", "", "ready"])
    assert shell.poll("it", lambda: next(answers), timeout=5, interval=0) == "ready"


def test_poll_times_out_naming_what_it_waited_for() -> None:
    with pytest.raises(UserError) as exc:
        shell.poll("the node", lambda: False, timeout=0, interval=0)
    assert exc.value.code is ExitCode.TIMEOUT
    assert exc.value.message == "timed out after 0 s waiting for the node"
    with pytest.raises(UserError, match=r"^custom$"):
        shell.poll("x", lambda: None, timeout=0, interval=0, on_timeout=lambda: UserError("custom"))


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
        (
            "INFO loading\nairflow-k3s: ERROR: no DAG 'nope' in /opt/airflow/dags\nbye\n",
            "no DAG 'nope' in /opt/airflow/dags",
        ),
        ("", ""),
    ],
)
def test_the_reason_a_command_failed_is_its_error_not_its_hint(output: str, expected: str) -> None:
    assert shell.failure_line(output) == expected


# --------------------------------------------------------------------------- docker and compose


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
    assert parse_version(text) == expected


def test_not_ready_wants_init_exited_zero_and_the_rest_healthy() -> None:
    states = {
        "airflow-init": "exited(0)",
        "postgres": "healthy",
        "mockserver": "running",
        "airflow-scheduler": "starting",
        "s3": "exited(1)",
    }
    expected = set(states) | {"registry"}
    assert not_ready(states, expected) == {
        "airflow-scheduler": "starting",
        "registry": "missing",
        "s3": "exited(1)",
    }
    assert not_ready({"airflow-init": "exited(1)"}, {"airflow-init"}) == {
        "airflow-init": "exited(1)"
    }
    assert not_ready({"k3s": "exited(0)"}, {"k3s"}) == {"k3s": "exited(0)"}


PS = [
    {"Service": "airflow-init", "State": "exited", "ExitCode": 0, "Health": ""},
    {"Service": "s3", "State": "exited", "ExitCode": 137, "Health": "unhealthy"},
    {"Service": "postgres", "State": "running", "ExitCode": 0, "Health": "healthy"},
    {"Service": "k3s", "State": "running", "ExitCode": 0, "Health": "starting"},
    {"Service": "mockserver", "State": "running", "ExitCode": 0, "Health": ""},
    {"Service": "registry", "State": "restarting", "ExitCode": 0, "Health": ""},
]
STATES = {
    "airflow-init": "exited(0)",
    "s3": "exited(137)",
    "postgres": "healthy",
    "k3s": "starting",
    "mockserver": "running",
    "registry": "restarting",
}


@pytest.mark.parametrize(
    "output",
    ["\n".join(json.dumps(c) for c in PS) + "\n", json.dumps(PS)],
    ids=["one object a line", "one array (compose before 2.21)"],
)
def test_service_states_of_compose_ps(commands: FakeCommands, tmp_path: Path, output: str) -> None:
    assert {c["Service"]: service_state(c) for c in parse_ps(output)} == STATES
    commands.on("compose", "ps", "--all", "--format", "json", stdout=output)
    assert Docker(load(tmp_path)).service_states() == STATES


def test_compose_cli_is_the_stacks_files_project_and_env_files(tmp_path: Path) -> None:
    cfg = load(tmp_path, IMAGES="local", COMPOSE_PROJECT_NAME="mine")
    cmd = Docker(cfg).compose_cli()
    assert cmd[:6] == ["docker", "compose", "--project-directory", str(REPO), "-p", "mine"]
    assert cmd[6:10] == [
        "-f",
        str(REPO / "docker-compose.yml"),
        "-f",
        str(REPO / "local/compose.local.yml"),
    ]
    env_file = tmp_path / ".generated" / "compose.env"
    assert cmd[10:] == ["--env-file", str(env_file)], "no .env yet: the generated file only"
    assert "PYTHON_BASE_IMAGE='airflow-k3s/python:3.11-local'" in env_file.read_text()
    assert "AIRFLOW_ADMIN_PASSWORD='not-generated-yet'" in env_file.read_text()


@pytest.mark.parametrize(
    ("installed", "rules", "message"),
    [
        (
            False,
            [],
            "Docker is not installed: install Docker (or on Debian run local/ensure-docker.sh)",
        ),
        (
            True,
            [("info", "--format", 1, "")],
            "the Docker engine is not running or not reachable: start it (on Debian: "
            "local/ensure-docker.sh)",
        ),
        (
            True,
            [("compose", "version", 1, "")],
            "docker compose v2 is missing: install the compose plugin (local/ensure-docker.sh "
            "does it on Debian)",
        ),
        (
            True,
            [("compose", "version", 0, "2.20.3\n")],
            "docker compose 2.20.3 is too old: 2.24.0 or newer needed",
        ),
    ],
)
def test_check_says_what_is_missing(
    commands: FakeCommands,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    installed: bool,
    rules: list[tuple[str, str, int, str]],
    message: str,
) -> None:
    if not installed:
        monkeypatch.setattr("shutil.which", lambda _name, **_kwargs: None)
    for first, second, code, stdout in rules:
        commands.on(first, second, code=code, stdout=stdout)
    with pytest.raises(UserError) as exc:
        Docker(load(tmp_path)).check()
    assert exc.value.message == message
    assert exc.value.code is ExitCode.NO_DOCKER


def test_check_accepts_a_new_enough_compose_once(commands: FakeCommands, tmp_path: Path) -> None:
    commands.on("compose", "version", stdout="2.24.0-desktop.1\n")
    docker = Docker(load(tmp_path))
    docker.check()
    docker.check()
    assert len(commands.ran) == 2, "docker info and compose version, once per task"


def test_the_installer_named_in_the_messages_exists() -> None:
    assert (REPO / INSTALLER).is_file()


def test_engine_info_reads_one_docker_info_line(commands: FakeCommands, tmp_path: Path) -> None:
    commands.on(
        "info", stdout="27.5.1|Debian GNU/Linux 12 (bookworm)|2|/var/lib/docker|16694706176\n"
    )
    commands.on("compose", "version", stdout="v2.32.4\n")
    assert Docker(load(tmp_path)).engine_info() == {
        "version": "27.5.1",
        "os": "Debian GNU/Linux 12 (bookworm)",
        "cgroup": "2",
        "root_dir": "/var/lib/docker",
        "mem_total": "16694706176",
        "compose": "v2.32.4",
    }


def test_try_run_names_the_daemons_reason(commands: FakeCommands, tmp_path: Path) -> None:
    err = (
        "docker: Error response from daemon: failed to create task: "
        "operation not permitted.\nSee 'docker run --help'.\n"
    )
    commands.on("run", code=126, stderr=err)
    ok, why = Docker(load(tmp_path)).try_run("probe:1", "--cap-add=SYS_ADMIN")
    assert not ok
    assert why == "failed to create task: operation not permitted."
    assert commands.ran == [
        ["docker", "run", "--rm", "--cap-add=SYS_ADMIN", "--entrypoint", "true", "probe:1"]
    ]


def test_require_running_names_the_service(commands: FakeCommands, tmp_path: Path) -> None:
    commands.on("compose", "version", stdout="2.40.3\n")
    commands.on("ps", "--all", stdout=json.dumps({"Service": "k3s", "State": "running"}))
    stack = Stack(load(tmp_path))
    stack.require("k3s")
    with pytest.raises(UserError) as exc:
        stack.require()
    assert exc.value.code is ExitCode.NOT_RUNNING
    assert exc.value.message == (
        "the stack is not running (airflow-apiserver is not up): start it with `make up`"
    )


def test_push_returns_the_registrys_digest(commands: FakeCommands, tmp_path: Path) -> None:
    tag = "127.0.0.1:5001/airflow-worker:latest"
    digests = ["other/airflow-worker@sha256:0ther", "127.0.0.1:5001/airflow-worker@sha256:ab12"]
    commands.on("image", "inspect", stdout=json.dumps([{"RepoDigests": digests}]))
    assert Docker(load(tmp_path)).push(tag) == "sha256:ab12"
    assert ["docker", "image", "push", "--quiet", tag] in commands.ran


def test_down_and_clean_remove_every_profiles_containers(
    tmp_path: Path, commands: FakeCommands
) -> None:
    """A git-server left from an earlier DAG_SOURCE=git goes too (its profile is off now)."""
    docker = Docker(load(tmp_path, DAG_SOURCE="image"))
    docker.down(timeout=7)
    docker.down(timeout=7, volumes=True)
    stop, clean = commands.ran[-2:]
    assert stop[stop.index("--profile") : stop.index("--profile") + 2] == ["--profile", "*"]
    assert stop[stop.index("down") :] == ["down", "--timeout", "7"]
    assert clean[clean.index("down") :] == [
        "down",
        "--timeout",
        "7",
        "--volumes",
        "--remove-orphans",
    ]
