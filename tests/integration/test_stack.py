"""The stack's services for real: every service healthy on loopback ports, the worker image's round
trip through the registry, the Kubernetes node itself, the configuration compose resolves, and the
answers to bad input. The DAG side is the e2e tier's.
"""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest

from airflow_k3s.settings import Settings
from tests.harness import SERVICES, Stack

pytestmark = pytest.mark.docker
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def compose_config(stack: Stack, images: str) -> dict[str, object]:
    """`docker compose config` as the task library runs compose for ``images``."""
    cfg = Settings.load(environ={**stack.env, "IMAGES": images})
    cmd = ["docker", "compose", "--project-directory", str(cfg.root), "-p", cfg.project]
    for file in cfg.compose_files:
        cmd += ["-f", str(file)]
    cmd += ["--env-file", str(cfg.env_file), "config", "--format", "json"]
    env = {**stack.env, **cfg.compose_env}
    if images == "upstream":
        env.pop("PYTHON_BASE_IMAGE", None)
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    config: dict[str, object] = json.loads(result.stdout)
    return config


def test_every_service_is_healthy_on_loopback_ports(stack: Stack) -> None:
    states = stack.invoke("status")
    assert states.returncode == 0
    seen = {
        line.split()[0]: line.split()[1]
        for line in states.stdout.splitlines()
        if line.split() and line.split()[0] in SERVICES
    }
    assert set(seen) == SERVICES
    for service, state in seen.items():
        want = {"airflow-init": "exited(0)", "mockserver": "running"}.get(service, "healthy")
        assert state == want, service
    for container in stack.docker().compose.ps():
        for bindings in (container.network_settings.ports or {}).values():
            for binding in bindings or []:
                assert binding["HostIp"] == "127.0.0.1", (container.name, binding)


@pytest.mark.parametrize("images", ["upstream", "local"])
def test_both_image_sources_run_the_kubernetes_executor(stack: Stack, images: str) -> None:
    services = compose_config(stack, images)["services"]
    assert isinstance(services, dict)
    for name in ("airflow-scheduler", "airflow-apiserver", "airflow-dag-processor"):
        env = services[name]["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "KubernetesExecutor", (images, name)
    assert "k3s" in services, "both image sources run the cluster"
    k3s = services["k3s"]
    assert bool(k3s.get("privileged")) == (images == "upstream")
    if images == "local":
        assert "SYS_RESOURCE" not in k3s["cap_add"]
        assert k3s["image"].endswith("-local")


def test_worker_image_round_trips_through_the_registry(stack: Stack) -> None:
    pushed = stack.push()
    cfg = stack.settings
    registry = f"http://127.0.0.1:{cfg.ports['REGISTRY_PORT']}"
    head = httpx.head(
        f"{registry}/v2/airflow-worker/manifests/latest", headers={"Accept": MANIFEST_V2}
    )
    assert head.headers["Docker-Content-Digest"] == pushed
    docker = stack.docker()
    docker.image.remove(cfg.worker_image, force=True)
    docker.image.pull(cfg.worker_image, quiet=True)
    repo = cfg.worker_image.rsplit(":", 1)[0]
    assert f"{repo}@{pushed}" in docker.image.inspect(cfg.worker_image).repo_digests


def test_the_node_is_one_ready_node_named_k3s_with_coredns(stack: Stack) -> None:
    nodes = stack.kubectl_json("get", "nodes")["items"]
    assert [n["metadata"]["name"] for n in nodes] == ["k3s"]
    conditions = {c["type"]: c["status"] for c in nodes[0]["status"]["conditions"]}
    assert conditions["Ready"] == "True"
    info = nodes[0]["status"]["nodeInfo"]
    assert info["kubeletVersion"].startswith("v1.36.")
    assert info["containerRuntimeVersion"].startswith("containerd://")
    coredns = stack.kubectl_json("-n", "kube-system", "get", "deployment", "coredns")
    assert coredns["status"].get("availableReplicas") == 1
    claim = stack.kubectl_json("get", "pvc", "airflow-shared")
    assert claim["status"]["phase"] == "Bound"


def test_kubectl_passthrough_keeps_kubectls_exit_code(stack: Stack) -> None:
    listed = stack.invoke("kubectl", "--", "get", "nodes")
    assert listed.returncode == 0
    assert "k3s" in listed.stdout
    missing = stack.invoke("kubectl", "--", "get", "pod", "no-such-pod")
    assert missing.returncode == 1
    assert 'pods "no-such-pod" not found' in missing.stderr


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (
            ["trigger-dag", "no_such_dag"],
            6,
            "unknown DAG id 'no_such_dag'; known DAGs: ",
        ),
        (["trigger-dag", "demo_rest_to_s3", "--conf", "{not json"], 2, "--conf is not valid JSON"),
        (["trigger-dag", "demo_rest_to_s3", "--conf", "[1, 2]"], 2, "--conf must be a JSON object"),
    ],
)
def test_bad_input_gets_one_clear_line(
    stack: Stack, args: list[str], code: int, message: str
) -> None:
    result = stack.invoke(*args)
    assert result.returncode == code
    assert message in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_stack_not_running_is_said_plainly(stack: Stack) -> None:
    other = Stack(
        images=stack.images,
        project="airflow-k3s-not-running",
        state_dir=stack.state_dir,
        env={**stack.env, "COMPOSE_PROJECT_NAME": "airflow-k3s-not-running"},
    )
    result = other.invoke("trigger-dag", "demo_rest_to_s3")
    assert result.returncode == 4
    assert "the stack is not running" in result.stderr
    assert "Traceback" not in result.stderr
