"""The task library's logic and its answers to bad input, without Docker.

Where a test replaces a boundary it says so: the HTTP boundary with httpx.MockTransport, the
process boundary (`docker`, `kubectl`) with a fake `subprocess.run`/`shutil.which`.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import Task
from python_on_whales.exceptions import DockerException

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import airflow_k3s as ak  # noqa: E402

import tasks  # noqa: E402

kubectl_body: Callable[[Context], None] = tasks.kubectl.body  # type: ignore[attr-defined]


def load(tmp_path: Path, **env: str) -> tasks.Settings:
    return tasks.Settings.load(environ={"AIRFLOW_K3S_STATE_DIR": str(tmp_path), **env}, root=REPO)


# --------------------------------------------------------------------------- settings


def test_settings_defaults_bind_the_documented_ports(tmp_path: Path) -> None:
    cfg = load(tmp_path)
    assert cfg.images == "upstream"
    assert cfg.k3s
    assert dict(cfg.ports) == {
        "AIRFLOW_PORT": 8080,
        "REGISTRY_PORT": 5001,
        "S3_PORT": 8333,
        "MOCKSERVER_PORT": 1080,
        "K3S_API_PORT": 6443,
    }
    assert cfg.worker_image == "127.0.0.1:5001/airflow-worker:latest"
    assert cfg.compose_files == [REPO / "docker-compose.yml"]
    assert cfg.env_file == tmp_path / ".env"


def test_settings_read_env_file_and_environment_wins(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("REGISTRY_PORT=5999\nAIRFLOW_PORT=9000\nS3_SECRET_KEY='x'\n")
    cfg = load(tmp_path, AIRFLOW_PORT="9100", IMAGES="local")
    assert cfg.ports["REGISTRY_PORT"] == 5999
    assert cfg.ports["AIRFLOW_PORT"] == 9100
    assert cfg.secrets == {"S3_SECRET_KEY": "x"}
    assert cfg.compose_files[-1] == REPO / "tests" / "images" / "compose.local.yml"
    assert cfg.compose_env["PYTHON_BASE_IMAGE"] == tasks.LOCAL_PYTHON_IMAGE
    assert cfg.compose_env["AIRFLOW_K3S_GENERATED"] == str(tmp_path / ".generated")
    assert not cfg.k3s


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"IMAGES": "docker-hub"}, "IMAGES must be 'upstream' or 'local', not 'docker-hub'"),
        ({"S3_PORT": "eighty"}, "S3_PORT must be a port number, not 'eighty'"),
        ({"AIRFLOW_PORT": "70000"}, "AIRFLOW_PORT must be a port number, not '70000'"),
    ],
)
def test_bad_settings_get_one_clear_line(tmp_path: Path, env: dict[str, str], message: str) -> None:
    with pytest.raises(Exit) as exc:
        load(tmp_path, **env)
    assert exc.value.message == message
    assert exc.value.code == 2


# --------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    ("conf", "expected"), [("", {}), ('{"rows": 3, "dry": true}', {"rows": 3, "dry": True})]
)
def test_parse_conf_accepts_json_objects(conf: str, expected: dict[str, Any]) -> None:
    assert tasks.parse_conf(conf) == expected


@pytest.mark.parametrize(
    ("conf", "message"),
    [
        ("{oops", "--conf is not valid JSON (Expecting property name enclosed in double quotes"),
        ("[1, 2]", "--conf must be a JSON object"),
        ('"text"', "--conf must be a JSON object"),
    ],
)
def test_parse_conf_refuses_bad_json(conf: str, message: str) -> None:
    with pytest.raises(Exit) as exc:
        tasks.parse_conf(conf)
    assert str(exc.value.message).startswith(message)
    assert exc.value.code == 2


@pytest.mark.parametrize(
    ("text", "expected"),
    [("v2.40.3\n", (2, 40, 3)), ("2.24.0-desktop.1", (2, 24, 0)), ("2.29.7+ds1", (2, 29, 7))],
)
def test_parse_version(text: str, expected: tuple[int, ...]) -> None:
    assert tasks.parse_version(text) == expected


def test_port_conflicts_name_port_service_and_variable(tmp_path: Path) -> None:
    cfg = load(tmp_path, IMAGES="local", S3_PORT="18333")
    taken = {18333, 8080}
    problems = tasks.port_conflicts(cfg, running={"airflow-apiserver"}, taken=taken.__contains__)
    assert problems == [
        "port 18333 (s3) is already in use: free it or set S3_PORT=<free port> in the "
        "environment or .env"
    ], "our own running api-server on 8080 is not a conflict; k3s is not checked in local mode"


def test_build_specs_builds_each_image_once_and_only_active_services() -> None:
    build = {"context": "/r/airflow", "args": {"BASE_IMAGE": "b"}}
    config = {
        "services": {
            "airflow-init": {"image": "airflow-k3s/airflow:3.3.2", "build": build},
            "airflow-scheduler": {"image": "airflow-k3s/airflow:3.3.2", "build": build},
            "postgres": {"image": "airflow-k3s/postgres:15-local", "build": {"context": "/r/t"}},
            "registry": {"image": "registry:2.8.3"},
        }
    }
    specs = tasks.build_specs(config, active={"airflow-init", "airflow-scheduler", "registry"})
    assert specs == {"airflow-k3s/airflow:3.3.2": build}


def test_not_ready_wants_init_exited_zero_and_the_rest_healthy() -> None:
    states = {
        "airflow-init": "exited(0)",
        "postgres": "healthy",
        "mockserver": "running",
        "airflow-scheduler": "starting",
        "s3": "exited(1)",
    }
    expected = set(states) | {"registry"}
    assert tasks.not_ready(states, expected) == {
        "airflow-scheduler": "starting",
        "registry": "missing",
        "s3": "exited(1)",
    }
    assert tasks.not_ready({"airflow-init": "exited(1)"}, {"airflow-init"}) == {
        "airflow-init": "exited(1)"
    }


def test_state_changes_reports_only_changes() -> None:
    before = {"fetch": "running", "upload": ""}
    after = {"fetch": "success", "upload": "", "verify": "queued"}
    assert tasks.state_changes(before, after) == [
        "fetch: running -> success",
        "verify: none -> queued",
    ]


def test_render_log_turns_structured_messages_into_lines() -> None:
    content = [
        "::group::Log message source details",
        {"timestamp": "2026-11-25T20:20:02Z", "level": "info", "event": "Wrote 3 orders"},
        {"event": "no level"},
    ]
    assert tasks.render_log(content).splitlines() == [
        "::group::Log message source details",
        "2026-11-25T20:20:02Z [info] Wrote 3 orders",
        "no level",
    ]


def test_doctor_resource_and_cgroup_checks() -> None:
    low = tasks.check_resources(mem_gib=1.5, disk_gib=50)
    assert [c.ok for c in low] == [False, True]
    assert "the stack needs 4 GiB" in low[0].line()
    assert low[0].line().startswith("FAIL  memory:")
    assert tasks.check_cgroup("2").ok
    assert not tasks.check_cgroup("").ok


# --------------------------------------------------------------------------- generated files


def test_ensure_secrets_generates_once_with_mode_600(tmp_path: Path) -> None:
    cfg = load(tmp_path)
    first = tasks.ensure_secrets(cfg)
    env_file = tmp_path / ".env"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert set(ak.SECRET_KEYS) <= set(ak.parse_env_file(env_file.read_text()))
    secret = tmp_path / ".generated" / "k3s" / f"{ak.WORKER_SECRET_NAME}.yaml"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600
    worker = ak.secret_manifest_env(secret.read_text())
    assert worker["AWS_SECRET_ACCESS_KEY"] == first.secrets["S3_SECRET_KEY"]
    assert "AIRFLOW_FERNET_KEY" not in worker, "workers get only what they need"
    before = env_file.read_text()
    second = tasks.ensure_secrets(first)
    assert env_file.read_text() == before, "secrets are never regenerated"
    assert second.secrets == first.secrets


def test_sync_extra_ca_copies_only_when_set(tmp_path: Path, monkeypatch: Any) -> None:
    root = tmp_path / "repo"
    for folder in ("airflow/extra-ca", "tests/images/extra-ca"):
        (root / folder).mkdir(parents=True)
    bundle = tmp_path / "corp.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----\n")
    cfg = tasks.Settings(root=root, state_dir=tmp_path, extra_ca_bundle=str(bundle))
    tasks.sync_extra_ca(cfg)
    assert (root / "airflow/extra-ca/ca-bundle.crt").read_text() == bundle.read_text()
    tasks.sync_extra_ca(tasks.Settings(root=root, state_dir=tmp_path))
    assert not (root / "airflow/extra-ca/ca-bundle.crt").exists()
    with pytest.raises(Exit) as exc:
        tasks.sync_extra_ca(tasks.Settings(root=root, extra_ca_bundle=str(tmp_path / "nope")))
    assert exc.value.code == 2
    assert "is not a file" in str(exc.value.message)


KUBECONFIG = """
apiVersion: v1
kind: Config
clusters:
- name: default
  cluster:
    certificate-authority-data: Q0EK
    server: https://127.0.0.1:6443
contexts: [{name: default, context: {cluster: default, user: default}}]
current-context: default
users: [{name: default, user: {client-certificate-data: Q0VSVAo=, client-key-data: S0VZCg==}}]
"""


def test_write_kubeconfigs_host_and_container_copies(tmp_path: Path) -> None:
    cfg = load(tmp_path, K3S_API_PORT="16443")
    host, containers = tasks.write_kubeconfigs(cfg, KUBECONFIG)
    for path, server in ((host, "https://127.0.0.1:16443"), (containers, "https://k3s:6443")):
        doc = yaml.safe_load(path.read_text())
        assert doc["clusters"][0]["cluster"]["server"] == server
        assert doc["clusters"][0]["cluster"]["certificate-authority-data"] == "Q0EK"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_k3s_only_tasks_refuse_local_mode(tmp_path: Path) -> None:
    with pytest.raises(Exit) as exc:
        tasks.require_k3s(load(tmp_path, IMAGES="local"), "kubectl")
    assert exc.value.code == 8
    assert "kubectl needs k3s, which IMAGES=local does not run" in str(exc.value.message)


# --------------------------------------------------------------------------- process boundary


def fake_run(codes: dict[str, int], stdout: str = "") -> Callable[..., Any]:
    """A stand-in for subprocess.run at the `docker` boundary: exit codes per subcommand."""

    def run(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        key = " ".join(cmd[1:3])
        return subprocess.CompletedProcess(cmd, codes.get(key, 0), stdout, "")

    return run


@pytest.mark.parametrize(
    ("which", "codes", "stdout", "message"),
    [
        (None, {}, "", "Docker is not installed"),
        ("/usr/bin/docker", {"info --format": 1}, "", "the Docker engine is not running"),
        ("/usr/bin/docker", {"compose version": 1}, "", "docker compose v2 is missing"),
        ("/usr/bin/docker", {}, "2.20.3", "docker compose 2.20.3 is too old: 2.24.0 or newer"),
    ],
)
def test_check_docker_says_what_is_missing(
    monkeypatch: Any, which: str | None, codes: dict[str, int], stdout: str, message: str
) -> None:
    monkeypatch.setattr("tasks.shutil.which", lambda _name: which)
    monkeypatch.setattr("tasks.subprocess.run", fake_run(codes, stdout))
    with pytest.raises(Exit) as exc:
        tasks.check_docker()
    assert str(exc.value.message).startswith(message)
    assert exc.value.code == 3


def test_kubectl_without_kubeconfig_says_to_start_the_stack(
    tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("AIRFLOW_K3S_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("IMAGES", "upstream")
    with pytest.raises(Exit) as exc:
        kubectl_body(Context())
    assert exc.value.code == 4
    assert "no kubeconfig yet" in str(exc.value.message)


def test_kubectl_passes_arguments_and_exit_code_through(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("AIRFLOW_K3S_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("IMAGES", "upstream")
    (tmp_path / ".generated").mkdir()
    (tmp_path / ".generated" / "kubeconfig.yaml").write_text(KUBECONFIG)
    seen: list[list[str]] = []

    def run(cmd: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        seen.append(cmd)
        return subprocess.CompletedProcess(cmd, 3)

    monkeypatch.setattr("tasks.subprocess.run", run)
    context = Context()
    context.remainder = "get pods -l 'dag_id=demo rest'"
    with pytest.raises(Exit) as exc:
        kubectl_body(context)
    assert exc.value.code == 3
    assert seen[0][1:] == [
        "--kubeconfig",
        str(tmp_path / ".generated" / "kubeconfig.yaml"),
        "get",
        "pods",
        "-l",
        "dag_id=demo rest",
    ]


# --------------------------------------------------------------------------- HTTP boundary


def airflow_api(routes: dict[tuple[str, str], httpx.Response]) -> tasks.AirflowAPI:
    """An AirflowAPI whose HTTP boundary is an httpx.MockTransport answering ``routes``."""

    def handler(request: httpx.Request) -> httpx.Response:
        key = (request.method, request.url.path)
        if key == ("POST", "/auth/token"):
            body = json.loads(request.content)
            ok = body == {"username": "admin", "password": "right"}
            return httpx.Response(201 if ok else 401, json={"access_token": "t"})
        assert request.headers["Authorization"] == "Bearer t"
        return routes.get(key, httpx.Response(404, json={"detail": "not found"}))

    return tasks.AirflowAPI("http://airflow", "right", transport=httpx.MockTransport(handler))


def test_wrong_login_is_one_clear_line() -> None:
    transport = httpx.MockTransport(lambda _r: httpx.Response(401, json={"detail": "no"}))
    with pytest.raises(Exit) as exc:
        tasks.AirflowAPI("http://airflow", "wrong", transport=transport)
    assert exc.value.code == 5
    assert "login as 'admin' was refused" in str(exc.value.message)


def test_unknown_dag_lists_known_dags_and_import_errors() -> None:
    api = airflow_api(
        {
            ("GET", "/api/v2/dags"): httpx.Response(200, json={"dags": [{"dag_id": "demo"}]}),
            ("GET", "/api/v2/importErrors"): httpx.Response(
                200,
                json={
                    "import_errors": [
                        {
                            "filename": "/opt/airflow/dags/broken.py",
                            "stack_trace": "Traceback ...\nNameError: name 'x' is not defined\n",
                        }
                    ]
                },
            ),
        }
    )
    with pytest.raises(Exit) as exc:
        api.find_dag("nope", timeout=0)
    assert exc.value.code == 6
    assert str(exc.value.message) == (
        "unknown DAG id 'nope'; known DAGs: demo; DAG files that fail to import: "
        "/opt/airflow/dags/broken.py: NameError: name 'x' is not defined"
    )


def test_trigger_unpauses_then_posts_a_run_with_conf() -> None:
    calls: list[tuple[str, str, Any]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append((request.method, request.url.path, json.loads(request.content or b"null")))
        if request.url.path == "/auth/token":
            return httpx.Response(201, json={"access_token": "t"})
        if request.method == "POST":
            return httpx.Response(200, json={"dag_run_id": "manual__1"})
        return httpx.Response(200, json={})

    api = tasks.AirflowAPI("http://a", "pw", transport=httpx.MockTransport(handler))
    assert api.trigger("demo", {"n": 1}) == "manual__1"
    assert calls[1:] == [
        ("PATCH", "/api/v2/dags/demo", {"is_paused": False}),
        ("POST", "/api/v2/dags/demo/dagRuns", {"logical_date": None, "conf": {"n": 1}}),
    ]


# --------------------------------------------------------------------------- the task list


def test_every_task_has_a_one_line_docstring_and_help_for_every_parameter() -> None:
    collection = tasks.__dict__
    found = {name: obj for name, obj in collection.items() if isinstance(obj, Task)}
    assert {
        "up",
        "down",
        "clean",
        "status",
        "logs",
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
    result = subprocess.run(
        [sys.executable, "-m", "invoke", "--list"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "IMAGES": "upstream"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for name in ("up", "down", "clean", "trigger-dag", "kubectl", "doctor", "demo"):
        assert f"\n  {name} " in result.stdout


class _NoKubeconfigYet:
    """Stands in for python-on-whales' DockerClient: `compose exec k3s cat` fails every time."""

    class compose:  # mirrors DockerClient.compose
        @staticmethod
        def execute(*_args: Any, **_kwargs: Any) -> str:
            raise DockerException(["docker", "compose", "exec"], 1, b"", b"No such file")


def test_kubeconfig_not_written_in_time_is_one_clear_line() -> None:
    with pytest.raises(Exit) as exc:
        tasks.read_k3s_kubeconfig(_NoKubeconfigYet(), timeout=0)  # type: ignore[arg-type]
    assert exc.value.code == 10
    assert str(exc.value.message) == (
        "k3s did not write its kubeconfig (/output/kubeconfig.yaml) within 0 s: "
        "see `invoke logs --service k3s`"
    )


def test_render_log_keeps_the_exception_of_an_error_line() -> None:
    item = {
        "level": "error",
        "event": "Task failed with exception",
        "error_detail": [{"exc_type": "EndpointConnectionError", "exc_value": "no s3"}],
    }
    assert tasks.render_log([item]) == (
        "[error] Task failed with exception: EndpointConnectionError: no s3"
    )


def test_find_dag_waits_one_refresh_for_a_new_file(monkeypatch: Any) -> None:
    clock = iter(range(0, 1000, 5))
    monkeypatch.setattr("tasks.time.monotonic", lambda: float(next(clock)))
    monkeypatch.setattr("tasks.time.sleep", lambda _s: None)
    polls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/auth/token":
            return httpx.Response(201, json={"access_token": "t"})
        polls.append(request.url.path)
        if request.url.path == "/api/v2/dags":
            return httpx.Response(200, json={"dags": [{"dag_id": "demo"}]})
        if request.url.path == "/api/v2/importErrors":
            return httpx.Response(200, json={"import_errors": []})
        return httpx.Response(404, json={})

    api = tasks.AirflowAPI("http://a", "pw", transport=httpx.MockTransport(handler))
    with pytest.raises(Exit) as exc:
        api.find_dag("new_dag", timeout=90)
    assert polls.count("/api/v2/dags/new_dag") > 1, "it waited for the dag-processor"
    assert polls.count("/api/v2/dags/new_dag") < 10, "but not the whole parse timeout"
    assert exc.value.code == 6
