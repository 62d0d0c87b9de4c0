"""The stack's services for real: every service healthy on loopback ports, the worker image's round
trip through the registry, the Kubernetes node itself, the configuration compose resolves, and the
answers to bad input. The DAG side is the e2e tier's.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
import yaml

from airflow_k3s import shell
from airflow_k3s.settings import published_ports
from tests.harness import SERVICES, Stack

pytestmark = pytest.mark.docker
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


def test_every_service_is_healthy_on_loopback_ports(stack: Stack) -> None:
    states = stack.invoke("status")
    assert states.returncode == 0
    seen: dict[str, str] = {}
    for line in states.stdout.splitlines():  # the services first, then nodes ("k3s Ready")
        if line.split() and line.split()[0] in SERVICES:
            seen.setdefault(line.split()[0], line.split()[1])
    assert set(seen) == SERVICES
    for service, state in seen.items():
        one_shots = {"airflow-init": "exited(0)", "kube-credentials": "exited(0)"}
        want = {**one_shots, "mockserver": "running"}.get(service, "healthy")
        assert state == want, service
    published = 0
    for service in SERVICES - {"airflow-init", "kube-credentials"}:
        ports = stack.container(service)["NetworkSettings"]["Ports"] or {}
        for bindings in ports.values():
            for binding in bindings or []:
                assert binding["HostIp"] == "127.0.0.1", (service, binding)
                published += 1
    assert published == len(published_ports()), "every published port was seen"


@pytest.mark.parametrize("images", ["upstream", "local"])
def test_both_image_sources_run_the_kubernetes_executor(stack: Stack, images: str) -> None:
    services = stack.compose_config(images)["services"]
    assert isinstance(services, dict)
    for name in ("airflow-scheduler", "airflow-apiserver", "airflow-dag-processor"):
        env = services[name]["environment"]
        # The default executor (the first) is the KubernetesExecutor; LocalExecutor is there for
        # tasks that ask for it (dags/example_two_executors.py).
        executors = env["AIRFLOW__CORE__EXECUTOR"].split(",")
        assert executors == ["KubernetesExecutor", "LocalExecutor"], (images, name)
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
    docker = stack.docker
    docker.docker("image", "rm", "--force", cfg.worker_image)
    assert not docker.image_exists(cfg.worker_image)
    docker.pull(cfg.worker_image)
    repo = cfg.worker_image.rsplit(":", 1)[0]
    assert f"{repo}@{pushed}" in docker.inspect("image", cfg.worker_image)["RepoDigests"]


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


def test_the_kubelet_does_not_throttle_image_pulls(stack: Stack) -> None:
    # Each worker pod pulls (imagePullPolicy Always); with the default 5 pulls a second a wide
    # mapped run failed tasks with "pull QPS exceeded". The kubelet's live config, not the flag.
    raw = stack.kubectl("get", "--raw", "/api/v1/nodes/k3s/proxy/configz")
    assert raw.returncode == 0, raw.stderr
    assert json.loads(raw.stdout)["kubeletconfig"].get("registryPullQPS") == 0


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
    status = other.invoke("status")
    assert status.returncode == 4, "a CI job can read `invoke status`'s exit code"
    assert status.stderr.strip() == (
        "project airflow-k3s-not-running: the stack is not running: `make up` starts it"
    )


def test_settings_file_is_applied_at_up_and_again_idempotently(stack: Stack) -> None:
    api = stack.api()
    assert api.get("/api/v2/variables/example_threshold")["value"] == "3"
    assert api.get("/api/v2/pools/kubernetes_pods")["slots"] == 8
    assert api.get("/api/v2/connections/example_http")["host"] == "mockserver"
    again = stack.invoke("settings")
    assert again.returncode == 0, again.stderr
    assert "connections: example_http" in again.stdout
    assert api.get("/api/v2/pools/kubernetes_pods")["slots"] == 8


def test_a_malformed_settings_file_is_one_line(stack: Stack, tmp_path: Path) -> None:
    bad = tmp_path / "settings.yaml"
    bad.write_text("pools:\n  heavy: {slots: lots}\n")
    result = Stack(
        stack.images, stack.project, stack.state_dir, {**stack.env, "AIRFLOW_SETTINGS": str(bad)}
    ).invoke("settings")
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"{bad}: pools.heavy: slots must be a whole number (-1: unlimited), not 'lots'"
    )


def test_parse_imports_every_dag_in_the_worker_image(stack: Stack) -> None:
    result = stack.invoke("parse")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("DAGs, 0 file(s) with import errors")
    count = int(result.stdout.strip().splitlines()[-1].split()[0])
    assert count >= 4, result.stdout


def test_pod_yaml_is_the_pod_the_executor_would_make(stack: Stack) -> None:
    result = stack.invoke("pod-yaml", "example_pod_override", "sized")
    assert result.returncode == 0, result.stderr
    pod = yaml.safe_load(result.stdout)
    base = pod["spec"]["containers"][0]
    assert base["name"] == "base"
    assert base["image"] == "registry:5000/airflow-worker:latest"
    assert base["resources"]["limits"]["memory"] == "700Mi"
    assert pod["metadata"]["labels"]["airflow-k3s/example"] == "sized"
    assert pod["metadata"]["labels"]["dag_id"] == "example_pod_override"
    assert {"name": "shared", "persistentVolumeClaim": {"claimName": "airflow-shared"}} in pod[
        "spec"
    ]["volumes"]
    missing = stack.invoke("pod-yaml", "demo_rest_to_s3", "no_such_task")
    assert missing.returncode == 2
    assert missing.stderr.strip() == (
        "DAG 'demo_rest_to_s3' has no task 'no_such_task' (tasks: fetch, upload, verify)"
    )


def test_the_airflow_cli_runs_in_the_stack_with_its_exit_code(stack: Stack) -> None:
    listed = stack.invoke("airflow", "--", "dags", "list", "-o", "json")
    assert listed.returncode == 0, listed.stderr
    # Airflow's CLI writes its warnings to stdout too: the JSON is the line that starts with [.
    output = next(ln for ln in listed.stdout.splitlines() if ln.startswith("["))
    assert "demo_rest_to_s3" in {d["dag_id"] for d in json.loads(output)}
    # (`dags pause` of an unknown DAG exits 0 in Airflow 3.3: "No unpaused DAGs were found".)
    failed = stack.invoke("airflow", "--", "tasks", "list", "no_such_dag")
    assert failed.returncode == 1
    assert "Dag 'no_such_dag' could not be found" in failed.stdout + failed.stderr


@pytest.mark.parametrize(
    ("service", "job_type", "threshold"),
    [
        (
            "airflow-dag-processor",
            "DagProcessorJob",
            "AIRFLOW__DAG_PROCESSOR__HEALTH_CHECK_THRESHOLD",
        ),
        (
            "airflow-triggerer",
            "TriggererJob",
            "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD",
        ),
    ],
)
def test_the_job_healthcheck_answers_as_airflow_jobs_check(
    stack: Stack, service: str, job_type: str, threshold: str
) -> None:
    """The services' healthcheck (job-alive: one query) against the real job table gives Airflow's
    own answer (`airflow jobs check`): alive for this host; dead for another host, and dead for a
    heartbeat older than a threshold of 0 s."""
    docker = stack.docker
    container = str(stack.container(service)["Name"]).lstrip("/")
    hostname = docker.docker("exec", container, "hostname").stdout.strip()

    def both(*extra: str, env: dict[str, str] | None = None) -> tuple[int, str, int]:
        run = ["exec", *(f"--env={k}={v}" for k, v in (env or {}).items()), container]
        ours = docker.docker(
            *run,
            "python",
            "-m",
            "airflow_k3s.container",
            "job-alive",
            job_type,
            *extra,
            check=False,
        )
        host = [extra[-1]] if extra else [hostname]
        theirs = docker.docker(
            *run,
            "airflow",
            "jobs",
            "check",
            "--job-type",
            job_type,
            "--hostname",
            *host,
            check=False,
        )
        return ours.returncode, ours.stdout + ours.stderr, theirs.returncode

    rc, said, airflow_rc = both()
    assert (rc, airflow_rc) == (0, 0), said
    assert f"{job_type} on {hostname} is alive" in said
    rc, said, airflow_rc = both("--hostname", "no-such-host")
    assert (rc, airflow_rc) == (1, 1)
    assert said.strip() == f"airflow-k3s: ERROR: no running {job_type} on no-such-host"
    rc, said, airflow_rc = both(env={threshold: "0"})
    assert (rc, airflow_rc) == (1, 1)
    assert said.startswith(f"airflow-k3s: ERROR: {job_type} on {hostname}: last heartbeat"), said


def test_the_node_healthcheck_checks_both_conditions(stack: Stack) -> None:
    """k3s's healthcheck, as Docker runs it (from the container's config): it passes on the
    healthy node, and fails when the node's Ready or CoreDNS's Available condition is not found
    True, or when CoreDNS is missing."""
    inspected = stack.container("k3s")
    container = str(inspected["Name"]).lstrip("/")
    test = inspected["Config"]["Healthcheck"]["Test"]
    kind, check = test
    assert kind == "CMD-SHELL", test

    def run(command: str) -> shell.Result:
        return stack.docker.docker("exec", container, "sh", "-c", command, check=False)

    healthy = run(check)
    assert healthy.returncode == 0, healthy.stderr
    for broken in (
        check.replace('@.type=="Ready"', '@.type=="NoSuchCondition"'),
        check.replace('@.type=="Available"', '@.type=="NoSuchCondition"'),
        check.replace("deployment/coredns", "deployment/no-such-deployment"),
    ):
        assert broken != check
        assert run(broken).returncode != 0, broken
