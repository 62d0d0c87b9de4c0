"""Unit-test setup: no Docker, no running Airflow, no database server.

Airflow reads its configuration when first imported, so the environment is set here, before any
test module imports it: a throw-away AIRFLOW_HOME, this repository's DAGs folder, no examples.
The task library (airflow_k3s/), tasks.py and dags/ are importable through pytest's pythonpath
(pyproject.toml).
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from airflow_k3s import generated

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"

_HOME = tempfile.mkdtemp(prefix="airflow-k3s-unit-")
atexit.register(shutil.rmtree, _HOME, ignore_errors=True)
os.environ["AIRFLOW_HOME"] = _HOME
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(DAGS)
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
os.environ["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{_HOME}/airflow.db"
# Connections and variables of the developer's shell must not leak into the tests.
for _name in list(os.environ):
    if _name.startswith(("AIRFLOW_CONN_", "AIRFLOW_VAR_", "AIRFLOW__KUBERNETES")):
        del os.environ[_name]


@pytest.fixture
def repo() -> Path:
    """The repository root."""
    return REPO


@pytest.fixture
def airflow_config() -> dict[str, str]:
    """airflow/airflow.env, the one source of Airflow configuration, parsed."""
    return generated.parse_env_file((REPO / "airflow" / "airflow.env").read_text())


@pytest.fixture
def fake_secrets() -> dict[str, str]:
    """A generated .env with recognisable FAKE values (the Fernet key is a real, random one)."""
    counter = iter(range(100))
    return generated.generate_secrets({}, token=lambda: f"FAKEsecret{next(counter):02d}xyzxyzxyz")


@pytest.fixture
def worker_secret_manifest(airflow_config: dict[str, str], fake_secrets: dict[str, str]) -> str:
    """The worker Secret exactly as `invoke up` renders it, from airflow.env and fake secrets."""
    return generated.render_worker_secret(generated.worker_env(airflow_config, fake_secrets))


WORKLOAD_ARGS = [
    "python",
    "-m",
    "airflow.sdk.execution_time.execute_workload",
    "--json-string",
    '{"token": "not-a-real-jwt", "ti": {"dag_id": "demo_rest_to_s3", "task_id": "fetch"}}',
]


@pytest.fixture
def workload_args() -> list[str]:
    """The args the executor gives a worker pod's container (Task SDK workload, fake JSON)."""
    return list(WORKLOAD_ARGS)


@pytest.fixture
def worker_pod(airflow_config: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The worker pod the KubernetesExecutor would create for a task, as a plain dict.

    Built the way the executor builds it (cncf provider 10.25, ``_build_pod_request``): the
    [kubernetes_executor] settings of airflow.env go through Airflow's own config (KubeConfig),
    the pod template through ``PodGenerator.deserialize_model_file``, and the final pod through
    ``PodGenerator.construct_pod``. No cluster, no database.
    """
    for key, value in airflow_config.items():
        if key.startswith("AIRFLOW__KUBERNETES_EXECUTOR__"):
            monkeypatch.setenv(key, value)
    from airflow.providers.cncf.kubernetes.kube_config import KubeConfig
    from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator
    from kubernetes.client import ApiClient

    kube_config = KubeConfig()
    assert kube_config.pod_template_file == "/opt/airflow/pod_template.yaml"
    namespace = kube_config.kube_namespace
    assert isinstance(namespace, str)
    base = PodGenerator.deserialize_model_file(str(REPO / "airflow" / "pod_template.yaml"))
    pod = PodGenerator.construct_pod(
        dag_id="demo_rest_to_s3",
        task_id="fetch",
        pod_id="demo-rest-to-s3-fetch-abcd1234",
        try_number=1,
        kube_image=kube_config.kube_image,
        date=None,
        args=list(WORKLOAD_ARGS),
        pod_override_object=None,
        base_worker_pod=base,
        namespace=namespace,
        scheduler_job_id="1",
        run_id="manual__2024-05-01T10:00:00+00:00",
        with_mutation_hook=True,
    )
    result: dict[str, Any] = ApiClient().sanitize_for_serialization(pod)
    return result


@dataclass
class FakeCommands:
    """Every external command of the package, faked where the package runs them (the runner,
    airflow_k3s.shell): each answer is chosen by words the command contains, in order; what ran
    is recorded. A command no answer names succeeds with no output."""

    ran: list[list[str]] = field(default_factory=list)
    answers: list[tuple[list[str], int, str, str]] = field(default_factory=list)

    def on(self, *words: str, code: int = 0, stdout: str = "", stderr: str = "") -> None:
        """Answer commands with these words (later rules first)."""
        self.answers.insert(0, (list(words), code, stdout, stderr))

    def answer(self, argv: Sequence[str]) -> tuple[int, str, str]:
        for words, code, stdout, stderr in self.answers:
            rest = iter(argv)
            if all(any(arg in (word, f"/usr/bin/{word}") for arg in rest) for word in words):
                return code, stdout, stderr
        return 0, "", ""

    def run(self, argv: Sequence[str], **_kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.ran.append(list(argv))
        code, stdout, stderr = self.answer(argv)
        return subprocess.CompletedProcess(list(argv), code, stdout, stderr)


@pytest.fixture
def commands(monkeypatch: pytest.MonkeyPatch) -> FakeCommands:
    """No command runs: the runner's subprocess.run answers from the test's rules (and every
    program is installed, in /usr/bin)."""
    fake = FakeCommands()
    monkeypatch.setattr("airflow_k3s.shell.subprocess.run", fake.run)
    monkeypatch.setattr("shutil.which", lambda name, **_kwargs: f"/usr/bin/{name}")
    return fake
