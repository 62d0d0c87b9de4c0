"""The STAND-IN executor (tests/standin/docker_pod_executor.py): pod building and translation.

No Docker here. The worker pod is built by the executor with the cncf provider's own
PodGenerator from airflow/pod_template.yaml and airflow.env's [kubernetes_executor] settings, and
the pure translation into a Docker container is checked against what k3s would run.
"""

from __future__ import annotations

import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
for _folder in (REPO / "airflow", REPO / "tests" / "standin"):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

import airflow_k3s  # noqa: E402
import docker_pod_executor as standin  # noqa: E402

MIRRORS = {"registry:5000": "127.0.0.1:5001"}
CLAIMS = {"airflow-shared": "shared-data"}
PROJECT = "airflow-k3s"
NETWORK = "airflow-k3s_default"


@pytest.fixture
def executor(
    airflow_config: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> standin.DockerPodExecutor:
    """The executor as the scheduler constructs it (not started: no Docker), airflow.env config."""
    for key, value in airflow_config.items():
        if key.startswith("AIRFLOW__KUBERNETES_EXECUTOR__"):
            monkeypatch.setenv(key, value)
    template = str(REPO / "airflow" / "pod_template.yaml")
    monkeypatch.setenv("AIRFLOW__KUBERNETES_EXECUTOR__POD_TEMPLATE_FILE", template)
    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "unit-test-jwt-secret")
    monkeypatch.setenv("STANDIN_REGISTRY_MIRROR", "registry:5000=127.0.0.1:5001")
    monkeypatch.setenv("STANDIN_VOLUME_FOR_CLAIM", "airflow-shared=shared-data")
    ex = standin.DockerPodExecutor()
    ex.scheduler_job_id = "7"
    ex.project, ex.network = PROJECT, NETWORK
    return ex


def make_workload(executor_config: dict[str, Any] | None = None) -> Any:
    from airflow.executors.workloads import BundleInfo, ExecuteTask
    from airflow.executors.workloads.task import TaskInstanceDTO

    ti = TaskInstanceDTO(
        id=uuid.uuid4(),
        dag_id="demo_rest_to_s3",
        task_id="fetch",
        run_id="manual__2024-05-01T10:00:00+00:00",
        try_number=1,
        dag_version_id=uuid.uuid4(),
        pool_slots=1,
        priority_weight=1,
        executor_config=executor_config,
    )
    return ExecuteTask(
        ti=ti,
        dag_rel_path=Path("demo_rest_to_s3.py"),
        token="not-a-real-jwt",
        bundle_info=BundleInfo(name="dags-folder"),
        log_path="dag_id=demo_rest_to_s3/fetch.log",
    )


@pytest.fixture
def secrets_dir(tmp_path: Path, worker_secret_manifest: str) -> Path:
    """$STANDIN_SECRETS_DIR with the worker Secret as `invoke up` renders it."""
    (tmp_path / f"{airflow_k3s.WORKER_SECRET_NAME}.yaml").write_text(worker_secret_manifest)
    return tmp_path


def translate(pod: Any, secrets_dir: Path) -> standin.ContainerSpec:
    return standin.container_spec(
        pod,
        secrets=standin.read_secrets(standin.secret_names(pod), secrets_dir),
        registry_mirrors=MIRRORS,
        volume_for_claim=CLAIMS,
        project=PROJECT,
        network=NETWORK,
    )


def test_pod_is_built_by_the_provider_from_the_template(
    executor: standin.DockerPodExecutor,
) -> None:
    from airflow.providers.cncf.kubernetes.pod_generator import workload_to_command_args

    workload = make_workload()
    pod = executor.build_pod(workload)
    assert pod.metadata.name.startswith("demo-rest-to-s3-fetch-")
    assert pod.metadata.namespace == "default"
    base = pod.spec.containers[0]
    assert base.name == "base"
    assert base.image == "registry:5000/airflow-worker:latest"
    assert base.image_pull_policy == "Always"
    assert base.command is None
    assert base.args == workload_to_command_args(workload)
    assert base.args[:3] == ["python", "-m", "airflow.sdk.execution_time.execute_workload"]
    labels = pod.metadata.labels
    assert labels["app.kubernetes.io/component"] == "worker"
    assert labels["dag_id"] == "demo_rest_to_s3"
    assert labels["airflow-worker"] == "7"
    assert labels["kubernetes_executor"] == "True"


def test_pod_translates_to_the_container_k3s_would_run(
    executor: standin.DockerPodExecutor, secrets_dir: Path, fake_secrets: dict[str, str]
) -> None:
    pod = executor.build_pod(make_workload())
    spec = translate(pod, secrets_dir)
    config = spec.config

    assert spec.name == pod.metadata.name
    assert spec.image == "127.0.0.1:5001/airflow-worker:latest"
    assert spec.pull_policy == "Always"
    # args only: the image's entrypoint (tini + entrypoint.sh) stays, args become the cmd
    assert "Entrypoint" not in config
    assert config["Cmd"] == pod.spec.containers[0].args
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["AWS_ACCESS_KEY_ID"] == fake_secrets["S3_ACCESS_KEY"]
    assert env["AWS_SECRET_ACCESS_KEY"] == fake_secrets["S3_SECRET_KEY"]
    assert (
        env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == "http://airflow-apiserver:8080/execution/"
    )
    assert env["AIRFLOW_CONN_AWS_DEFAULT"].startswith('{"conn_type": "aws"')
    assert env["AIRFLOW_IS_K8S_EXECUTOR_POD"] == "True"
    host = config["HostConfig"]
    assert host["Mounts"] == [
        {
            "Type": "volume",
            "Source": "airflow-k3s_shared-data",
            "Target": "/shared",
            "ReadOnly": False,
        }
    ]
    assert spec.volumes == ("airflow-k3s_shared-data",)
    assert host["NetworkMode"] == NETWORK
    assert config["NetworkingConfig"] == {"EndpointsConfig": {NETWORK: {}}}
    assert host["Memory"] == host["MemorySwap"] == 1024**3
    assert config["User"] == "50000:0"
    assert config["Hostname"] == pod.metadata.name
    labels = config["Labels"]
    assert labels["airflow-k3s.standin"] == "pod"
    assert labels["airflow-k3s.pod-name"] == pod.metadata.name
    assert labels["airflow-k3s.project"] == PROJECT
    assert labels["pod.label/dag_id"] == "demo_rest_to_s3"
    assert labels["pod.label/app.kubernetes.io/part-of"] == "airflow-k3s"
    assert spec.warnings == ()

    pinned = "127.0.0.1:5001/airflow-worker@sha256:" + "a" * 64
    body = spec.create_body(pinned)
    assert body["Image"] == pinned
    assert body["Labels"]["airflow-k3s.image-digest"] == pinned
    assert "airflow-k3s.image-digest" not in labels  # the spec itself is unchanged


def test_pod_override_command_replaces_the_entrypoint_and_image(
    executor: standin.DockerPodExecutor, secrets_dir: Path
) -> None:
    from kubernetes.client import models as k8s

    override = k8s.V1Pod(
        spec=k8s.V1PodSpec(
            containers=[
                k8s.V1Container(
                    name="base",
                    image="registry:5000/other:1.2",
                    command=["bash", "-c"],
                    env=[k8s.V1EnvVar(name="AIRFLOW__CORE__DAGS_FOLDER", value="/elsewhere")],
                    security_context=k8s.V1SecurityContext(run_as_user=1234),
                )
            ]
        )
    )
    pod = executor.build_pod(make_workload({"pod_override": override}))
    spec = translate(pod, secrets_dir)
    assert spec.image == "127.0.0.1:5001/other:1.2"
    assert spec.config["Entrypoint"] == ["bash", "-c"]
    assert spec.config["Cmd"] == pod.spec.containers[0].args
    env = dict(item.split("=", 1) for item in spec.config["Env"])
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == "/elsewhere"  # env wins over envFrom
    assert spec.config["User"] == "1234:0"  # the container's securityContext wins


def test_missing_secret_is_a_clear_error(
    executor: standin.DockerPodExecutor, tmp_path: Path
) -> None:
    pod = executor.build_pod(make_workload())
    with pytest.raises(standin.StandinError, match=r"'airflow-worker-env' not found.*\.yaml"):
        standin.read_secrets(standin.secret_names(pod), tmp_path)
    with pytest.raises(standin.StandinError, match="'airflow-worker-env' not found"):
        standin.container_spec(
            pod,
            secrets={},
            registry_mirrors=MIRRORS,
            volume_for_claim=CLAIMS,
            project=PROJECT,
            network=NETWORK,
        )


def test_unmapped_claim_and_unsupported_volumes_are_refused(
    executor: standin.DockerPodExecutor, secrets_dir: Path
) -> None:
    from kubernetes.client import models as k8s

    pod = executor.build_pod(make_workload())
    secrets = standin.read_secrets(standin.secret_names(pod), secrets_dir)
    kwargs: dict[str, Any] = {
        "secrets": secrets,
        "registry_mirrors": MIRRORS,
        "project": PROJECT,
        "network": NETWORK,
    }
    with pytest.raises(standin.StandinError, match="STANDIN_VOLUME_FOR_CLAIM"):
        standin.container_spec(pod, volume_for_claim={}, **kwargs)
    pod.spec.volumes[0] = k8s.V1Volume(
        name="shared", host_path=k8s.V1HostPathVolumeSource(path="/x")
    )
    with pytest.raises(standin.StandinError, match="only persistentVolumeClaim and emptyDir"):
        standin.container_spec(pod, volume_for_claim=CLAIMS, **kwargs)


def test_secret_manifest_decoding_matches_airflow_k3s(worker_secret_manifest: str) -> None:
    assert standin.decode_secret_manifest(worker_secret_manifest) == (
        airflow_k3s.secret_manifest_env(worker_secret_manifest)
    )


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("registry:5000/airflow-worker:latest", "127.0.0.1:5001/airflow-worker:latest"),
        ("registry:5000/team/worker@sha256:abc", "127.0.0.1:5001/team/worker@sha256:abc"),
        ("registry/airflow-worker:latest", "registry/airflow-worker:latest"),  # a Docker Hub name
        ("python:3.11", "python:3.11"),
    ],
)
def test_mirror_image(image: str, expected: str) -> None:
    assert standin.mirror_image(image, MIRRORS) == expected


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("127.0.0.1:5001/airflow-worker:latest", ("127.0.0.1:5001/airflow-worker", "latest")),
        ("127.0.0.1:5001/airflow-worker", ("127.0.0.1:5001/airflow-worker", "latest")),
        ("127.0.0.1:5001/w@sha256:abc", ("127.0.0.1:5001/w", "sha256:abc")),
        ("python:3.11", ("python", "3.11")),
    ],
)
def test_split_image_always_gives_a_tag(image: str, expected: tuple[str, str]) -> None:
    assert standin.split_image(image) == expected


def test_parse_pairs() -> None:
    assert standin.parse_pairs("registry:5000=127.0.0.1:5001, a=b") == {
        "registry:5000": "127.0.0.1:5001",
        "a": "b",
    }
    assert standin.parse_pairs(None) == {}
    with pytest.raises(standin.StandinError, match="KEY=VALUE"):
        standin.parse_pairs("registry:5000")


def test_demux_logs() -> None:
    frames = b"".join(
        bytes([stream, 0, 0, 0]) + len(text).to_bytes(4, "big") + text
        for stream, text in ((1, b"out line\n"), (2, b"err line\n"))
    )
    assert standin.demux_logs(frames) == "out line\nerr line\n"


def test_executor_loader_loads_it_from_the_core_executor_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from collections import defaultdict

    from airflow.executors import executor_loader

    monkeypatch.setenv("AIRFLOW__CORE__EXECUTOR", "docker_pod_executor.DockerPodExecutor")
    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "unit-test-jwt-secret")
    # the loader caches the parsed [core] executor setting in module globals: start afresh
    monkeypatch.setattr(executor_loader, "_executor_names", [])
    monkeypatch.setattr(executor_loader, "_team_name_to_executors", defaultdict(list))
    for cache in ("_alias", "_module", "_classname"):
        monkeypatch.setattr(executor_loader, f"{cache}_to_executors_per_team", defaultdict(dict))
    monkeypatch.setattr(executor_loader.ExecutorLoader, "executors", {})

    name = executor_loader.ExecutorLoader.get_default_executor_name()
    assert name.module_path == "docker_pod_executor.DockerPodExecutor"
    executor = executor_loader.ExecutorLoader.load_executor(name)
    assert isinstance(executor, standin.DockerPodExecutor)
    assert executor.supports_ad_hoc_ti_run
