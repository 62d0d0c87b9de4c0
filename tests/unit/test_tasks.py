"""tasks.py: thin wrappers whose errors end as one line and an exit code (invoke's Exit).

The task bodies are called directly (``task.body``) with the process boundary (`kubectl`) faked
where a task would reach it.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import Task

import tasks
from airflow_k3s import shell
from airflow_k3s.exits import ExitCode, UserError
from airflow_k3s.shell import CommandFailed
from tests.unit.conftest import FakeCommands

REPO = Path(__file__).resolve().parents[2]
KUBECONFIG = """
apiVersion: v1
kind: Config
clusters:
- name: default
  cluster: {certificate-authority-data: Q0EK, server: https://127.0.0.1:6443}
contexts: [{name: default, context: {cluster: default, user: default}}]
current-context: default
users: [{name: default, user: {client-certificate-data: Q0VSVAo=, client-key-data: S0VZCg==}}]
"""


def body(task_obj: Any) -> Callable[..., Any]:
    """The function an invoke Task runs."""
    function: Callable[..., Any] = task_obj.body
    return function


def all_tasks() -> dict[str, Task[Any]]:
    return {name: obj for name, obj in vars(tasks).items() if isinstance(obj, Task)}


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh state dir (no .env, no kubeconfig) and the upstream image source."""
    monkeypatch.setenv("AIRFLOW_K3S_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("IMAGES", "upstream")
    return tmp_path


# --------------------------------------------------------------------------- tasks.cli


@pytest.mark.parametrize("code", list(ExitCode))
def test_cli_turns_a_user_error_into_exit_with_its_message_and_code(code: ExitCode) -> None:
    @tasks.cli
    def refuse() -> None:
        raise UserError(f"what is wrong ({code.name}) and what to do", code)

    with pytest.raises(Exit) as exc:
        refuse()
    assert exc.value.message == f"what is wrong ({code.name}) and what to do"
    assert exc.value.code == int(code)
    assert exc.value.__cause__ is None, "one line, no chained traceback"


def test_cli_turns_a_docker_failure_into_one_line() -> None:
    @tasks.cli
    def compose_up() -> None:
        raise CommandFailed(["docker", "compose", "up"], 1, "Error: no such image\n")

    with pytest.raises(Exit) as exc:
        compose_up()
    assert exc.value.message == "`docker compose up` failed: Error: no such image"
    assert exc.value.code == 1


def test_cli_turns_an_api_failure_into_one_line() -> None:
    @tasks.cli
    def call_api() -> None:
        raise httpx.ConnectError("connection refused")

    with pytest.raises(Exit) as exc:
        call_api()
    assert exc.value.message == "the Airflow API did not answer as expected: connection refused"
    assert exc.value.code == 1


def test_cli_passes_results_and_bugs_through() -> None:
    @tasks.cli
    def add(a: int, b: int = 0) -> int:
        """Adds."""
        return a + b

    @tasks.cli
    def buggy() -> None:
        raise KeyError("a bug is a traceback, not a user's mistake")

    assert add(1, b=2) == 3
    assert add.__name__ == "add"
    assert add.__doc__ == "Adds."
    with pytest.raises(KeyError):
        buggy()


def test_every_task_but_lock_goes_through_cli() -> None:
    # Without the decorator a UserError would end as a traceback with exit code 1.
    unwrapped = {name for name, t in all_tasks().items() if not hasattr(t.body, "__wrapped__")}
    assert unwrapped == {"lock"}


# --------------------------------------------------------------------------- tasks end to end


def test_trigger_dag_with_bad_conf_is_a_usage_error_before_docker(state_dir: Path) -> None:
    with pytest.raises(Exit) as exc:
        body(tasks.trigger_dag)(Context(), "demo_rest_to_s3", conf="[1]")
    assert exc.value.code == int(ExitCode.USAGE)
    assert exc.value.message == "--conf must be a JSON object like '{\"key\": 1}', not [1]"


def test_bad_images_setting_ends_as_exit_2(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IMAGES", "docker-hub")
    with pytest.raises(Exit) as exc:
        body(tasks.secrets)(Context())
    assert exc.value.code == 2
    assert exc.value.message == "IMAGES must be 'upstream' or 'local', not 'docker-hub'"


def test_a_malformed_env_file_ends_as_one_line(state_dir: Path) -> None:
    (state_dir / ".env").write_text("AIRFLOW_PORT='8080'\nnot a line\n")
    with pytest.raises(Exit) as exc:
        body(tasks.secrets)(Context())
    assert "line 2 is not KEY=VALUE" in str(exc.value.message)
    assert exc.value.code == 2


def test_kubectl_without_kubeconfig_says_to_start_the_stack(state_dir: Path) -> None:
    with pytest.raises(Exit) as exc:
        body(tasks.kubectl)(Context())
    assert exc.value.code == int(ExitCode.NOT_RUNNING)
    assert exc.value.message == (
        "no kubeconfig yet: start the stack with `make up` (or run `invoke kubeconfig`)"
    )


def test_pod_logs_without_kubeconfig_says_to_start_the_stack(state_dir: Path) -> None:
    with pytest.raises(Exit) as exc:
        body(tasks.pod_logs)(Context(), "fetch")
    assert exc.value.code == 4
    assert "no kubeconfig yet" in str(exc.value.message)


def test_kubectl_passes_arguments_and_exit_code_through(
    state_dir: Path, commands: FakeCommands
) -> None:
    (state_dir / ".generated").mkdir()
    (state_dir / ".generated" / "kubeconfig.yaml").write_text(KUBECONFIG)
    commands.on("kubectl", "get", code=3)
    context = Context()
    context.remainder = "get pods -l 'dag_id=demo rest'"
    with pytest.raises(Exit) as exc:
        body(tasks.kubectl)(context)
    assert exc.value.code == 3
    assert commands.ran[0][1:] == [
        "--kubeconfig",
        str(state_dir / ".generated" / "kubeconfig.yaml"),
        "get",
        "pods",
        "-l",
        "dag_id=demo rest",
    ]


def test_kubectl_that_succeeds_is_no_exit(state_dir: Path, commands: FakeCommands) -> None:
    (state_dir / ".generated").mkdir()
    (state_dir / ".generated" / "kubeconfig.yaml").write_text(KUBECONFIG)
    context = Context()
    context.remainder = "version --client"
    assert body(tasks.kubectl)(context) is None
    assert commands.ran[-1][-2:] == ["version", "--client"]


# --------------------------------------------------------------------------- the task list


def invoke_program(*args: str, env: dict[str, str]) -> Any:
    """`python -m invoke ARGS` as a user runs it, through the package's runner."""
    return shell.run(
        [sys.executable, "-m", "invoke", *args], check=False, cwd=REPO, env=env, timeout=60
    )


def test_every_task_has_a_one_line_docstring_and_help_for_every_parameter() -> None:
    found = all_tasks()
    assert {
        "up",
        "down",
        "clean",
        "status",
        "logs",
        "pod_logs",
        "build",
        "push",
        "kubeconfig",
        "kubectl",
        "trigger_dag",
        "demo",
        "secrets",
        "lock",
        "doctor",
    } <= set(found)
    for name, task_obj in found.items():
        doc = (task_obj.__doc__ or task_obj.body.__doc__ or "").strip()
        assert doc, f"{name}: docstring"
        assert "\n" not in doc, f"{name}: one-line docstring"
        missing = [a.name for a in task_obj.get_arguments() if not a.help]
        assert not missing, f"{name}: no help= for {missing}"


def test_invoke_list_shows_the_tasks() -> None:
    result = invoke_program("--list", env={"IMAGES": "upstream"})
    assert result.returncode == 0, result.stderr
    for name in ("up", "down", "clean", "trigger-dag", "pod-logs", "kubectl", "doctor", "demo"):
        assert f"\n  {name} " in result.stdout


def test_invoke_ends_a_user_error_with_its_code_and_one_line(tmp_path: Path) -> None:
    result = invoke_program(
        "secrets", env={"IMAGES": "nope", "AIRFLOW_K3S_STATE_DIR": str(tmp_path)}
    )
    assert result.returncode == 2
    assert result.stderr.strip() == "IMAGES must be 'upstream' or 'local', not 'nope'"
    assert not (tmp_path / ".env").exists()


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_a_help_flag_after_a_positional_task_says_how_to_get_help(flag: str) -> None:
    """invoke takes `pod-logs --help` as a task named "--help": one line points to the help."""
    result = invoke_program("pod-logs", flag, env={"IMAGES": "upstream"})
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert result.stderr.strip() == (
        "--help was read as an argument's value; for help: invoke --help pod-logs"
    )
