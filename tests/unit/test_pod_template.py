"""The worker pod as the KubernetesExecutor builds it, and the Secret it takes its env from.

Worker pods inherit nothing from the scheduler: whatever a task needs must come from the pod
template (airflow/pod_template.yaml) and the Secret "airflow-worker-env" that `invoke up` renders
from airflow/airflow.env plus the generated credentials.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from airflow_k3s import generated

REPO = Path(__file__).resolve().parents[2]
SECRETISH = re.compile(r"PASSWORD|SECRET|TOKEN|FERNET|JWT|PRIVATE|CREDENTIAL", re.IGNORECASE)


def _base(pod: dict[str, Any]) -> dict[str, Any]:
    containers = pod["spec"]["containers"]
    assert containers[0]["name"] == "base"  # the executor only fills in the first container
    return dict(containers[0])


def test_worker_pod_image_and_pull_policy(worker_pod: dict[str, Any]) -> None:
    container = _base(worker_pod)
    assert container["image"] == "registry:5000/airflow-worker:latest"
    # A moving tag needs Always, or nodes run stale DAG code from a cached image.
    assert container["imagePullPolicy"] == "Always"


def test_worker_pod_runs_the_task_sdk_workload_through_the_image_entrypoint(
    worker_pod: dict[str, Any], workload_args: list[str]
) -> None:
    container = _base(worker_pod)
    assert container["args"] == workload_args
    # No "command": the image's entrypoint (tini + entrypoint.sh) stays in front of the args.
    assert "command" not in container
    assert worker_pod["metadata"]["namespace"] == "default"
    assert worker_pod["spec"]["restartPolicy"] == "Never"
    labels = worker_pod["metadata"]["labels"]
    assert labels["dag_id"] == "demo_rest_to_s3"
    assert labels["task_id"] == "fetch"
    assert labels["app.kubernetes.io/part-of"] == "airflow-k3s"


def test_worker_pod_gets_its_env_from_the_worker_secret_only(worker_pod: dict[str, Any]) -> None:
    container = _base(worker_pod)
    assert container["envFrom"] == [{"secretRef": {"name": "airflow-worker-env"}}]
    # Only the executor's own marker is inlined; no secret (nor secret-looking name) in plain env.
    inline = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert inline == {"AIRFLOW_IS_K8S_EXECUTOR_POD": "True"}


def test_worker_pod_mounts_the_shared_volume(
    worker_pod: dict[str, Any], airflow_config: dict[str, str]
) -> None:
    container = _base(worker_pod)
    volumes = {v["name"]: v for v in worker_pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert "/shared" in mounts
    volume = volumes[mounts["/shared"]["name"]]
    assert volume["persistentVolumeClaim"]["claimName"] == "airflow-shared"
    assert not mounts["/shared"].get("readOnly")
    # The DAG's SHARED_DIR variable is where the volume is mounted.
    assert airflow_config["AIRFLOW_VAR_SHARED_DIR"] == "/shared"


def test_worker_pod_runs_as_the_airflow_user(worker_pod: dict[str, Any]) -> None:
    security = worker_pod["spec"]["securityContext"]
    assert security["runAsUser"] == 50000
    assert not _base(worker_pod).get("securityContext", {}).get("privileged")


def test_worker_pod_inlines_no_secret_values(
    worker_pod: dict[str, Any], fake_secrets: dict[str, str]
) -> None:
    dumped = json.dumps(worker_pod)
    for value in fake_secrets.values():
        assert value not in dumped
    template = (Path(__file__).resolve().parents[2] / "airflow" / "pod_template.yaml").read_text()
    doc = yaml.safe_load(template)
    for container in doc["spec"]["containers"]:
        assert not [e for e in container.get("env", []) if SECRETISH.search(e["name"])]


@pytest.mark.parametrize("namespace", ["default", "airflow-tasks"])
def test_the_claim_of_the_template_is_rendered_in_the_executors_namespace(
    repo: Path, namespace: str
) -> None:
    template = yaml.safe_load((repo / "airflow" / "pod_template.yaml").read_text())
    wanted = template["spec"]["volumes"][0]["persistentVolumeClaim"]["claimName"]
    docs = generated.executor_namespace(namespace)
    claims = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    volumes = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolume"}
    claim = claims[wanted]
    assert claim["metadata"]["namespace"] == namespace  # the executor's namespace
    pv = volumes[claim["spec"]["volumeName"]]
    assert pv["spec"]["storageClassName"] == claim["spec"]["storageClassName"]
    assert set(claim["spec"]["accessModes"]) <= set(pv["spec"]["accessModes"])
    # Several task pods at once: the volume must be ReadWriteMany.
    assert "ReadWriteMany" in claim["spec"]["accessModes"]
    assert pv["spec"]["hostPath"]["path"] == "/var/lib/airflow-shared", "compose's shared-data"


# --------------------------------------------------------------------------- the worker Secret


def test_worker_secret_has_everything_a_worker_needs(
    worker_secret_manifest: str, fake_secrets: dict[str, str], airflow_config: dict[str, str]
) -> None:
    doc = yaml.safe_load(worker_secret_manifest)
    assert doc["metadata"]["name"] == "airflow-worker-env"
    assert doc["metadata"]["namespace"] == "default"
    env = generated.secret_manifest_env(worker_secret_manifest)

    # The Execution API, reachable from pods by the compose service name.
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == (
        "http://airflow-apiserver:8080/execution/"
    )
    # Remote logging to S3 through the aws_default connection.
    assert env["AIRFLOW__LOGGING__REMOTE_LOGGING"] == "True"
    assert env["AIRFLOW__LOGGING__REMOTE_BASE_LOG_FOLDER"].startswith("s3://")
    assert env["AIRFLOW__LOGGING__REMOTE_LOG_CONN_ID"] == "aws_default"
    # Connections: aws_default with the endpoint in extra (not host), mockserver.
    aws = json.loads(env["AIRFLOW_CONN_AWS_DEFAULT"])
    assert aws["conn_type"] == "aws"
    assert aws["extra"]["endpoint_url"] == "http://s3:8333"
    assert "host" not in aws
    mockserver = json.loads(env["AIRFLOW_CONN_MOCKSERVER"])
    assert (mockserver["conn_type"], mockserver["host"], mockserver["port"]) == (
        "http",
        "mockserver",
        1080,
    )
    # The DAG's variables.
    assert env["AIRFLOW_VAR_DATA_BUCKET"]
    assert env["AIRFLOW_VAR_SHARED_DIR"] == "/shared"
    # S3 credentials (boto3 reads them from the environment).
    assert env["AWS_ACCESS_KEY_ID"] == fake_secrets["S3_ACCESS_KEY"]
    assert env["AWS_SECRET_ACCESS_KEY"] == fake_secrets["S3_SECRET_KEY"]
    # The DAGs folder is where worker/Dockerfile copies the DAGs.
    assert env["AIRFLOW__CORE__DAGS_FOLDER"] == "/opt/airflow/dags"
    # Everything else of airflow.env is passed on unchanged.
    assert {k: env[k] for k in airflow_config} == airflow_config


def test_worker_secret_holds_no_credential_a_worker_does_not_need(
    worker_secret_manifest: str, fake_secrets: dict[str, str]
) -> None:
    env = generated.secret_manifest_env(worker_secret_manifest)
    needed = {fake_secrets["S3_ACCESS_KEY"], fake_secrets["S3_SECRET_KEY"]}
    for key, value in fake_secrets.items():
        if value not in needed:
            assert value not in env.values(), f"{key} leaks into the worker pods"
    assert not any("sql_alchemy_conn" in k.lower() for k in env)
    # Secret values are base64 in "data", never readable in the manifest text.
    assert fake_secrets["S3_SECRET_KEY"] not in worker_secret_manifest


def test_pod_yaml_gives_the_pod_the_name_and_args_asked_for(
    airflow_config: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`invoke task-test` asks `pod-yaml` for its own pod name and `airflow tasks test` args."""
    for key, value in airflow_config.items():
        if key.startswith("AIRFLOW__KUBERNETES_EXECUTOR__"):
            monkeypatch.setenv(key, value)
    template = str(REPO / "airflow" / "pod_template.yaml")
    monkeypatch.setenv("AIRFLOW__KUBERNETES_EXECUTOR__POD_TEMPLATE_FILE", template)
    from airflow_k3s import container

    command = ["airflow", "tasks", "test", "demo_rest_to_s3", "fetch"]
    asked = argparse.Namespace(
        folder=str(REPO / "dags"),
        dag_id="demo_rest_to_s3",
        task_id="fetch",
        name="task-test-demo-rest-to-s3-fetch-abc123",
        args=json.dumps(command),
    )
    pod = yaml.safe_load(container._pod_yaml(asked))
    assert pod["metadata"]["name"] == "task-test-demo-rest-to-s3-fetch-abc123"
    assert _base(pod)["args"] == command
    default = yaml.safe_load(
        container._pod_yaml(argparse.Namespace(**{**vars(asked), "name": "", "args": ""}))
    )
    assert default["metadata"]["name"] == "demo-rest-to-s3-fetch-preview"
    assert _base(default)["args"] == container.WORKLOAD_ARGS
