"""airflow_k3s.generated and airflow_k3s.container: what the entrypoint, airflow-init and `invoke`
rely on (pure renderers and parsers; the CLI that runs inside the Airflow containers)."""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import stat
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from cryptography.fernet import Fernet

from airflow_k3s import container, shell
from airflow_k3s import generated as k3s

CA = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nfake\n-----END CERTIFICATE-----\n").decode()
KUBECONFIG = f"""\
apiVersion: v1
kind: Config
clusters:
- cluster:
    certificate-authority-data: {CA}
    server: https://127.0.0.1:6443
  name: default
contexts:
- context:
    cluster: default
    user: default
  name: default
current-context: default
users:
- name: default
  user:
    client-certificate-data: Y2VydA==
    client-key-data: a2V5
"""


# --------------------------------------------------------------------------- kubeconfig


def test_rewrite_kubeconfig_replaces_server_and_keeps_ca_and_credentials() -> None:
    out = yaml.safe_load(k3s.rewrite_kubeconfig(KUBECONFIG, "https://k3s:6443"))
    cluster = out["clusters"][0]["cluster"]
    assert cluster["server"] == "https://k3s:6443"
    assert cluster["certificate-authority-data"] == CA
    assert "insecure-skip-tls-verify" not in cluster
    original = yaml.safe_load(KUBECONFIG)
    assert out["users"] == original["users"]
    assert out["current-context"] == "default"
    assert out["contexts"] == original["contexts"]


def test_rewrite_kubeconfig_rewrites_every_cluster() -> None:
    doc = yaml.safe_load(KUBECONFIG)
    doc["clusters"].append({"name": "two", "cluster": {**doc["clusters"][0]["cluster"]}})
    out = yaml.safe_load(k3s.rewrite_kubeconfig(yaml.safe_dump(doc), "https://k3s:6443"))
    assert [c["cluster"]["server"] for c in out["clusters"]] == ["https://k3s:6443"] * 2


def test_rewrite_kubeconfig_refuses_insecure_skip_tls_verify() -> None:
    doc = yaml.safe_load(KUBECONFIG)
    doc["clusters"][0]["cluster"]["insecure-skip-tls-verify"] = True
    with pytest.raises(k3s.SetupError, match="TLS"):
        k3s.rewrite_kubeconfig(yaml.safe_dump(doc), "https://k3s:6443")


def test_rewrite_kubeconfig_refuses_a_cluster_without_ca() -> None:
    doc = yaml.safe_load(KUBECONFIG)
    del doc["clusters"][0]["cluster"]["certificate-authority-data"]
    with pytest.raises(k3s.SetupError, match="certificate authority"):
        k3s.rewrite_kubeconfig(yaml.safe_dump(doc), "https://k3s:6443")


@pytest.mark.parametrize("text", ["", "\n", "apiVersion: v1\nkind: Config\nclusters: []\n", "[]"])
def test_rewrite_kubeconfig_empty_gives_a_clear_setup_error(text: str) -> None:
    with pytest.raises(k3s.SetupError, match="no clusters"):
        k3s.rewrite_kubeconfig(text, "https://k3s:6443")


# --------------------------------------------------------------------------- env files


def test_parse_env_file_formats() -> None:
    text = (
        "# comment\n\n"
        "PLAIN=value\n"
        "  SPACED = padded  \n"
        "SINGLE='it is $literal # not a comment'\n"
        'DOUBLE="x"\n'
        "EMPTY=\n"
        "EQUALS=a=b=c\n"
    )
    assert k3s.parse_env_file(text) == {
        "PLAIN": "value",
        "SPACED": "padded",
        "SINGLE": "it is $literal # not a comment",
        "DOUBLE": "x",
        "EMPTY": "",
        "EQUALS": "a=b=c",
    }


@pytest.mark.parametrize("line", ["no equals sign", "BAD-KEY=1", "=value", "A B=1"])
def test_parse_env_file_rejects_bad_lines_with_line_number(line: str) -> None:
    with pytest.raises(k3s.SetupError, match="line 2"):
        k3s.parse_env_file(f"OK=1\n{line}\n")


def test_env_file_round_trip_including_json_with_quotes() -> None:
    env = {
        "AIRFLOW_CONN_AWS_DEFAULT": '{"conn_type": "aws", "extra": {"endpoint_url": "http://s3:8333"}}',
        "QUOTED_EDGES": '"starts and ends with double quotes"',
        "SPACES": "  padded value  ",
        "HASH": "a#b # c",
        "DOLLAR": "p$ss${NOT_EXPANDED}",
        "TOKEN": "Ab-_9xYz",
    }
    text = k3s.render_env_file(env)
    assert text.startswith("#")
    assert k3s.parse_env_file(text) == env


def test_the_config_file_parses_and_is_airflow3_only(repo: Path) -> None:
    config = k3s.parse_env_file((repo / "airflow" / "airflow.env").read_text())
    assert config["AIRFLOW__CORE__EXECUTOR"].split(",")[0] == "KubernetesExecutor", "the default"
    assert k3s.s3_endpoint(config["AIRFLOW_CONN_AWS_DEFAULT"]) == "http://s3:8333"
    assert not [k for k in config if k.startswith("AIRFLOW__KUBERNETES__")]
    assert not set(config) & set(k3s.SECRET_KEYS)


# --------------------------------------------------------------------------- secrets


def test_generate_secrets_fills_every_key_with_distinct_values() -> None:
    out = k3s.generate_secrets({})
    assert set(out) == set(k3s.SECRET_KEYS)
    assert all(len(v) >= 16 for v in out.values())
    assert len(set(out.values())) == len(out)
    Fernet(out["AIRFLOW_FERNET_KEY"].encode())  # raises ValueError unless a valid Fernet key
    token = Fernet(out["AIRFLOW_FERNET_KEY"].encode()).encrypt(b"x")
    assert Fernet(out["AIRFLOW_FERNET_KEY"].encode()).decrypt(token) == b"x"
    # S3 access keys must be plain alphanumerics (SeaweedFS/AWS signature rules).
    assert out["S3_ACCESS_KEY"].isalnum()
    assert k3s.generate_secrets({}) != out  # random, not a fixed default


def test_generate_secrets_never_replaces_existing_values() -> None:
    existing = {"POSTGRES_PASSWORD": "keep-me", "AIRFLOW_FERNET_KEY": "keep-fernet", "OTHER": "x"}
    out = k3s.generate_secrets(existing, token=lambda: "generated-token-value")
    assert out["POSTGRES_PASSWORD"] == "keep-me"
    assert out["AIRFLOW_FERNET_KEY"] == "keep-fernet"
    assert out["OTHER"] == "x"
    assert set(k3s.SECRET_KEYS) <= set(out)
    assert out["AIRFLOW_JWT_SECRET"] == "generated-token-value"
    assert existing == {
        "POSTGRES_PASSWORD": "keep-me",
        "AIRFLOW_FERNET_KEY": "keep-fernet",
        "OTHER": "x",
    }
    # Running it again (e.g. on every `invoke up`) is a no-op.
    assert k3s.generate_secrets(out) == out


def test_generate_secrets_fills_empty_values() -> None:
    out = k3s.generate_secrets({"AIRFLOW_JWT_SECRET": ""})
    assert out["AIRFLOW_JWT_SECRET"]


def test_secrets_survive_the_env_file_round_trip() -> None:
    out = k3s.generate_secrets({})
    assert k3s.parse_env_file(k3s.render_env_file(out)) == out


# --------------------------------------------------------------------------- worker Secret


def test_worker_secret_round_trip() -> None:
    config = {
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": "http://airflow-apiserver:8080/execution/",
        "AIRFLOW_CONN_X": '{"conn_type": "http", "extra": {"a": "ü \' \\" \\n"}}',
    }
    secrets = {"S3_ACCESS_KEY": "AKIA1", "S3_SECRET_KEY": "s3cr3t/+=", "POSTGRES_PASSWORD": "pg"}
    env = k3s.worker_env(config, secrets)
    assert env["AWS_ACCESS_KEY_ID"] == "AKIA1"
    assert env["AWS_SECRET_ACCESS_KEY"] == "s3cr3t/+="
    assert "POSTGRES_PASSWORD" not in env
    assert "pg" not in env.values()
    manifest = k3s.render_worker_secret(env, namespace="airflow")
    assert k3s.secret_manifest_env(manifest) == env
    doc = yaml.safe_load(manifest)
    assert doc["kind"] == "Secret"
    assert doc["type"] == "Opaque"
    assert doc["metadata"] == {
        "name": "airflow-worker-env",
        "namespace": "airflow",
        "labels": {"app.kubernetes.io/part-of": "airflow-k3s"},
    }
    assert "s3cr3t" not in manifest  # base64 in data, never in stringData
    assert "stringData" not in doc


def test_worker_env_requires_the_s3_credentials() -> None:
    with pytest.raises(KeyError):
        k3s.worker_env({}, {"S3_ACCESS_KEY": "a"})


def test_s3_endpoint_accepts_extra_as_string_and_refuses_missing() -> None:
    assert k3s.s3_endpoint('{"extra": "{\\"endpoint_url\\": \\"http://s3:8333\\"}"}') == (
        "http://s3:8333"
    )
    with pytest.raises(k3s.SetupError, match="endpoint_url"):
        k3s.s3_endpoint('{"conn_type": "aws"}')


def test_init_creates_the_buckets_the_config_uses(
    monkeypatch: pytest.MonkeyPatch, airflow_config: dict[str, str]
) -> None:
    seen: list[argparse.Namespace] = []
    monkeypatch.setattr(container, "_cmd_init", seen.append)  # no DB, no S3: capture the arguments
    assert container.main(["init"]) == 0
    buckets = set(seen[0].buckets)
    assert airflow_config["AIRFLOW_VAR_DATA_BUCKET"] in buckets
    log_folder = airflow_config["AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER"]
    assert log_folder.removeprefix("s3://").split("/")[0] in buckets
    assert seen[0].mockserver == "http://mockserver:1080"


# --------------------------------------------------------------------------- files


def test_wait_for_file_times_out_with_the_path_in_the_message(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "kubeconfig.yaml"
    started = time.monotonic()
    with pytest.raises(k3s.SetupError) as err:
        container.wait_for_file(path, timeout=0.3, what="k3s's kubeconfig", poll=0.05)
    assert 0.3 <= time.monotonic() - started < 5
    assert str(path) in str(err.value)
    assert "k3s's kubeconfig" in str(err.value)


def test_wait_for_file_ignores_an_empty_file_until_timeout(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig.yaml"
    path.write_text("  \n")
    with pytest.raises(k3s.SetupError, match=str(path)):
        container.wait_for_file(path, timeout=0.2, what="kubeconfig", poll=0.05)
    path.write_text("clusters: []\n")
    assert container.wait_for_file(path, timeout=0, what="kubeconfig") == "clusters: []\n"


def test_write_private_creates_mode_600(tmp_path: Path) -> None:
    path = tmp_path / "new" / "dir" / ".env"
    old_umask = os.umask(0)  # even a permissive umask must not widen it
    try:
        k3s.write_private(path, "A=1\n")
    finally:
        os.umask(old_umask)
    assert path.read_text() == "A=1\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_write_private_tightens_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "config"
    path.write_text("old and longer\n")
    path.chmod(0o644)
    k3s.write_private(path, "new\n")
    assert path.read_text() == "new\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_cli_kubeconfig_writes_private_rewritten_file(tmp_path: Path) -> None:
    src, dst = tmp_path / "k3s.yaml", tmp_path / "kube" / "config"
    src.write_text(KUBECONFIG)
    argv = ["kubeconfig", "--src", str(src), "--dst", str(dst), "--server", "https://k3s:6443"]
    assert container.main(argv) == 0
    assert yaml.safe_load(dst.read_text())["clusters"][0]["cluster"]["server"] == "https://k3s:6443"
    assert stat.S_IMODE(dst.stat().st_mode) == 0o600


def test_kubeconfig_namespace_is_the_current_contexts() -> None:
    doc = yaml.safe_load(KUBECONFIG)
    assert k3s.kubeconfig_namespace(KUBECONFIG) == ""
    doc["contexts"][0]["context"]["namespace"] = "airflow-tasks"
    doc["contexts"].insert(0, {"name": "other", "context": {"namespace": "default"}})
    assert k3s.kubeconfig_namespace(yaml.safe_dump(doc)) == "airflow-tasks"
    assert k3s.kubeconfig_namespace("") == ""


def test_cli_kubeconfig_waits_for_the_executors_namespace(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """After the namespace changed, the kubeconfig in the volume holds the old namespace's token
    until kube-credentials writes the new one: it is not copied."""
    src, dst = tmp_path / "k3s.yaml", tmp_path / "kube" / "config"
    doc = yaml.safe_load(KUBECONFIG)
    doc["contexts"][0]["context"]["namespace"] = "default"
    src.write_text(yaml.safe_dump(doc))
    argv = ["kubeconfig", "--src", str(src), "--dst", str(dst), "--server", "https://k3s:6443"]
    waiting = [*argv, "--namespace", "airflow-tasks", "--timeout", "0"]
    assert container.main(waiting) == 1
    assert not dst.exists()
    assert "kubeconfig (kube-credentials) for namespace airflow-tasks" in capsys.readouterr().err
    doc["contexts"][0]["context"]["namespace"] = "airflow-tasks"
    src.write_text(yaml.safe_dump(doc))
    assert container.main(waiting) == 0
    assert dst.exists()


def test_cli_reports_setup_errors_as_exit_code_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "kubeconfig",
        "--src",
        str(tmp_path / "none"),
        "--dst",
        str(tmp_path / "d"),
        "--server",
        "https://k3s:6443",
        "--timeout",
        "0",
    ]
    assert container.main(argv) == 1
    assert "ERROR" in capsys.readouterr().err


def test_job_health_threshold_reads_airflows_option_else_its_default() -> None:
    assert k3s.job_health_threshold("TriggererJob", {}) == 30
    env = {"AIRFLOW__DAG_PROCESSOR__HEALTH_CHECK_THRESHOLD": "45"}
    assert k3s.job_health_threshold("DagProcessorJob", env) == 45
    assert k3s.job_health_threshold("TriggererJob", env) == 30
    with pytest.raises(k3s.SetupError, match=r"\[triggerer\] triggerer_health_check_threshold"):
        k3s.job_health_threshold(
            "TriggererJob", {"AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": "soon"}
        )
    with pytest.raises(k3s.SetupError, match="unknown job type 'Worker'"):
        k3s.job_health_threshold("Worker", {})


def test_libpq_url_drops_the_sqlalchemy_driver_and_refuses_other_databases() -> None:
    url = "postgresql+psycopg2://airflow:p%40ss@postgres:5432/airflow?sslmode=disable"
    assert k3s.libpq_url(url) == "postgresql://airflow:p%40ss@postgres:5432/airflow?sslmode=disable"
    assert k3s.libpq_url("postgresql://a@b/c") == "postgresql://a@b/c"
    for bad in ("", "mysql+mysqldb://a@b/c", "sqlite:////tmp/airflow.db"):
        with pytest.raises(k3s.SetupError, match="not a postgresql:// URL"):
            k3s.libpq_url(bad)


@pytest.mark.parametrize(
    ("age", "rc", "said"),
    [
        (2.5, 0, "TriggererJob on box is alive (last heartbeat 2.5 s ago)"),
        (30.0, 1, "airflow-k3s: ERROR: TriggererJob on box: last heartbeat 30 s ago (limit 30 s)"),
        (None, 1, "airflow-k3s: ERROR: no running TriggererJob on box"),
    ],
)
def test_cli_job_alive_judges_the_heartbeat_by_airflows_threshold(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    age: float | None,
    rc: int,
    said: str,
) -> None:
    asked = []

    def heartbeat_age(url: str, job_type: str, hostname: str) -> float | None:
        asked.append((url, job_type, hostname))
        return age

    monkeypatch.setattr(container, "job_heartbeat_age", heartbeat_age)
    monkeypatch.setenv("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "postgresql+psycopg2://a@db/airflow")
    monkeypatch.setenv("HOSTNAME", "box")
    monkeypatch.delenv("AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD", raising=False)
    assert container.main(["job-alive", "TriggererJob"]) == rc
    out = capsys.readouterr()
    assert (out.out + out.err).strip() == said
    assert asked == [("postgresql+psycopg2://a@db/airflow", "TriggererJob", "box")]


def test_job_heartbeat_age_says_when_the_database_does_not_answer() -> None:
    # A port nothing listens on: psycopg2 (the Airflow image's lock, installed in this session)
    # is refused at once; the probe says so in one line instead of a traceback.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"postgresql+psycopg2://airflow:pw@127.0.0.1:{port}/airflow"
    with pytest.raises(k3s.SetupError, match=r"^the metadata database did not answer: .*refused"):
        container.job_heartbeat_age(url, "TriggererJob", "box")


def test_the_compose_healthchecks_of_the_jobs_are_the_cheap_probe(repo: Path) -> None:
    # `airflow jobs check` imports all of Airflow: 2.7 CPU seconds a check (docs/benchmarks.md).
    services = yaml.safe_load((repo / "docker-compose.yml").read_text())["services"]
    for service, job in (
        ("airflow-dag-processor", "DagProcessorJob"),
        ("airflow-triggerer", "TriggererJob"),
    ):
        test = services[service]["healthcheck"]["test"]
        assert test == ["CMD", "python", "-m", "airflow_k3s.container", "job-alive", job]


def test_write_private_replaces_the_file_atomically(tmp_path: Path) -> None:
    # k3s watches its manifests folder: a reader must see the old file or the new one, never a
    # truncated one. A rename leaves an open reader on the old file, a rewrite in place would not.
    path = tmp_path / "k3s" / "airflow-worker-env.yaml"
    k3s.write_private(path, "old: 1\n")
    with path.open() as reader:
        k3s.write_private(path, "new: 2\n")
        assert reader.read() == "old: 1\n"
    assert path.read_text() == "new: 2\n"
    assert [p.name for p in path.parent.iterdir()] == [path.name], "no temporary file is left"


def test_write_private_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / ".env"
    k3s.write_private(path, "A=1\n")
    k3s.write_private(path, "A=2\n")
    assert path.read_text() == "A=2\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [".env"]


def test_cli_passwords_file_holds_the_admin_password_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AIRFLOW_K3S_ADMIN_PASSWORD", "pa'ss\"word")
    path = tmp_path / "auth" / "passwords.json"
    assert container.main(["passwords-file", "--path", str(path)]) == 0
    assert json.loads(path.read_text()) == {"admin": "pa'ss\"word"}
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


class _StatusHandler(BaseHTTPRequestHandler):
    """MockServer's PUT /mockserver/status answers 200; every other path 404."""

    def do_PUT(self) -> None:
        self.send_response(200 if self.path == "/mockserver/status" else 404)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def status_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _StatusHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_wait_http_returns_once_the_url_answers(status_server: str) -> None:
    started = time.monotonic()
    container.wait_http(status_server + "/mockserver/status", "PUT", timeout=30)
    assert time.monotonic() - started < 5, "at once, not after the timeout"


def test_wait_http_treats_an_error_status_as_not_ready(status_server: str) -> None:
    url = status_server + "/elsewhere"
    with pytest.raises(k3s.SetupError) as err:
        container.wait_http(url, "PUT", timeout=0)
    assert str(err.value).startswith(f"{url} did not answer within 0 s: HTTP Error 404")


def test_the_container_cli_imports_nothing_of_the_host_library() -> None:
    # The Airflow image has none of the host's tools (invoke, httpx, kubectl).
    code = (
        "import sys, airflow_k3s.container; "
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('airflow_k3s', 'python_on_whales', 'invoke', 'httpx'))))"
    )
    out = shell.run([sys.executable, "-c", code]).stdout.split()
    assert out == [
        "airflow_k3s",
        "airflow_k3s.container",
        "airflow_k3s.exits",
        "airflow_k3s.generated",
        "airflow_k3s.shell",
    ]
