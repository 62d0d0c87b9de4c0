"""airflow_k3s.cluster: kubeconfig copies, pod selectors and pod diagnostics, without a cluster.

The selector is checked against the KubernetesExecutor's own label code (the cncf provider of
the Airflow lock) and against a worker pod built the way the executor builds it (conftest).
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml

from airflow_k3s import cluster, lifecycle, runs
from airflow_k3s.boundary import Stack
from airflow_k3s.cluster import Kubectl
from airflow_k3s.exits import ExitCode, UserError
from airflow_k3s.generated import worker_secret_data
from airflow_k3s.settings import Settings
from tests.harness import airflow_env_in
from tests.unit.conftest import FakeCommands

REPO = Path(__file__).resolve().parents[2]
RUN_ID = "manual__2024-05-01T10:00:00+00:00"  # the worker_pod fixture's run
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


def load(tmp_path: Path, **env: str) -> Settings:
    return Settings.load(environ={"AIRFLOW_K3S_STATE_DIR": str(tmp_path), **env}, root=REPO)


# --------------------------------------------------------------------------- kubeconfig


def test_write_kubeconfigs_host_and_container_copies(tmp_path: Path) -> None:
    cfg = load(tmp_path, K3S_API_PORT="16443")
    host, containers = cluster.write_kubeconfigs(cfg, KUBECONFIG)
    assert host == cfg.host_kubeconfig
    for path, server in ((host, "https://127.0.0.1:16443"), (containers, "https://k3s:6443")):
        doc = yaml.safe_load(path.read_text())
        assert doc["clusters"][0]["cluster"]["server"] == server
        assert doc["clusters"][0]["cluster"]["certificate-authority-data"] == "Q0EK"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_kubeconfig_not_written_in_time_is_one_clear_line(
    tmp_path: Path, commands: FakeCommands
) -> None:
    commands.on("exec", "k3s", "cat", code=1, stderr="cat: /output/kubeconfig.yaml: No such file")
    with pytest.raises(UserError) as exc:
        lifecycle.read_k3s_kubeconfig(Stack(load(tmp_path)), timeout=0)
    assert exc.value.code is ExitCode.NO_KUBECONFIG
    assert exc.value.message == (
        "k3s did not write its kubeconfig (/output/kubeconfig.yaml) within 0 s: "
        "see `invoke logs --service k3s`"
    )


def test_kubectl_failure_is_its_last_line(tmp_path: Path, commands: FakeCommands) -> None:
    commands.on("kubectl", "get", code=1, stderr="W0101 warning\nerror: no such pod\n")
    kube = Kubectl(load(tmp_path))
    with pytest.raises(UserError) as exc:
        kube.run("get", "pods", "nope", "-o", "json")
    assert exc.value.message == "kubectl get pods nope failed: error: no such pod"
    assert kube.run("get", "pods", check=False).returncode == 1


def test_kubectl_uses_the_projects_kubectl_and_the_host_kubeconfig(tmp_path: Path) -> None:
    cfg = load(tmp_path)
    cmd = Kubectl(cfg).argv(["get", "nodes"])
    assert Path(cmd[0]).name == "kubectl"
    assert cmd[1:] == ["--kubeconfig", str(cfg.host_kubeconfig), "get", "nodes"]


def test_apply_sends_the_manifest_on_stdin_and_names_a_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def run(argv: list[str], **kwargs: Any) -> Any:
        import subprocess

        seen.update(argv=argv, input=kwargs.get("input"))
        return subprocess.CompletedProcess(argv, 1, "", 'Error from server: "privileged" refused\n')

    monkeypatch.setattr("airflow_k3s.shell.subprocess.run", run)
    pod = {"kind": "Pod", "metadata": {"name": "p1"}}
    with pytest.raises(UserError) as exc:
        Kubectl(load(tmp_path)).apply(pod)
    assert exc.value.message == (
        'the API server refused Pod p1: Error from server: "privileged" refused'
    )
    assert seen["argv"][-5:] == ["apply", "--server-side", "--field-manager=airflow-k3s", "-f", "-"]
    assert seen["input"] == '{"kind": "Pod", "metadata": {"name": "p1"}}'


# --------------------------------------------------------------------------- the namespace


def test_the_pod_look_ups_are_in_the_executors_namespace(
    tmp_path: Path, commands: FakeCommands, capsys: pytest.CaptureFixture[str]
) -> None:
    """Worker pods, their events, logs and Secret, and `status`: all in the namespace airflow.env
    names (not `default`)."""
    cfg = load(tmp_path, AIRFLOW_ENV_FILE=str(airflow_env_in(tmp_path, "team-a")))
    cfg.host_kubeconfig.parent.mkdir(parents=True)
    cfg.host_kubeconfig.write_text(KUBECONFIG)
    stack = Stack(cfg)
    pod = {
        "metadata": {"name": "p1", "labels": {"run_id": "r1"}, "creationTimestamp": "2026"},
        "status": {"phase": "Failed"},
    }
    commands.on("kubectl", "get", "pods", stdout=json.dumps({"items": [pod]}))
    env = {"AIRFLOW__CORE__PARALLELISM": "8"}
    secret = json.dumps({"data": worker_secret_data(env)})
    commands.on("kubectl", "get", "secret", stdout=secret)
    commands.on("compose", "version", stdout="2.40.3\n")
    commands.on("ps", "--all", stdout=json.dumps({"Service": "k3s", "State": "running"}))

    stack.kube.print_pod_diagnostics("dag_id=d")
    stack.kube.show_pods("dag_id=d")
    assert runs.pod_logs(stack, "d", "t", "", 0, 10) == 0
    stack.kube.wait_worker_secret(env, timeout=0)
    lifecycle.status(stack)
    capsys.readouterr()

    kubectl = [argv[3:] for argv in commands.ran if argv[0].endswith("kubectl")]
    looked_up = {" ".join(args[:2]) for args in kubectl}
    assert looked_up == {"get pods", "get events", "logs -n", "get secret", "get nodes"}
    for args in kubectl:
        if args[:2] == ["get", "nodes"]:  # cluster-scoped: `status` lists them with their pools
            assert args[-2:] == ["-L", "airflow-k3s/pool"], args
            continue
        assert args[args.index("-n") + 1] == "team-a", args


# --------------------------------------------------------------------------- selectors


@pytest.mark.parametrize(
    "value",
    [
        "demo_rest_to_s3",
        RUN_ID,
        "scheduled__2024-05-01T00:00:00+00:00",
        "manual__2024-05-01T10:00:00.123456+00:00",
        "-leading-and-trailing-",
        "x" * 63,
        "y" * 64,
        "dots.and-dashes_ok",
        "",
    ],
)
def test_pod_label_value_is_the_executors(value: str) -> None:
    from airflow.providers.cncf.kubernetes.pod_generator import make_safe_label_value

    assert cluster.pod_label_value(value) == make_safe_label_value(value)
    assert len(cluster.pod_label_value(value)) <= 63


def test_pod_label_value_keeps_safe_values_and_hashes_the_rest() -> None:
    assert cluster.pod_label_value("demo_rest_to_s3") == "demo_rest_to_s3"
    label = cluster.pod_label_value(RUN_ID)
    assert ":" not in label
    assert "+" not in label
    assert label.startswith("manual__2024-05-01T1000000000-")
    assert label != cluster.pod_label_value(RUN_ID.replace("10:00", "11:00"))


def test_pod_selector_of_a_dag_a_task_a_run_and_a_try() -> None:
    assert cluster.pod_selector("demo") == "dag_id=demo"
    assert cluster.pod_selector("demo", "fetch") == "dag_id=demo,task_id=fetch"
    assert cluster.pod_selector("demo", "fetch", RUN_ID, 2) == (
        f"dag_id=demo,task_id=fetch,run_id={cluster.pod_label_value(RUN_ID)},try_number=2"
    )
    assert cluster.pod_selector("demo", run_id=RUN_ID) == (
        f"dag_id=demo,run_id={cluster.pod_label_value(RUN_ID)}"
    )


def test_pod_selector_matches_the_worker_pod_the_executor_builds(
    worker_pod: dict[str, Any],
) -> None:
    labels = worker_pod["metadata"]["labels"]

    def matches(selector: str) -> bool:
        wanted = dict(item.split("=", 1) for item in selector.split(","))
        return {k: labels.get(k) for k in wanted} == wanted

    assert matches(cluster.pod_selector("demo_rest_to_s3", "fetch", RUN_ID, 1))
    assert matches(cluster.pod_selector("demo_rest_to_s3", run_id=RUN_ID))
    assert not matches(cluster.pod_selector("demo_rest_to_s3", "fetch", RUN_ID, 2))
    assert not matches(cluster.pod_selector("demo_rest_to_s3", "upload", RUN_ID))
    assert not matches(cluster.pod_selector("demo_rest_to_s3", run_id=RUN_ID + "0"))


def test_pod_selector_makes_long_dag_and_task_ids_label_safe() -> None:
    from airflow.providers.cncf.kubernetes.pod_generator import make_safe_label_value

    dag_id, task_id = "a_dag_id_longer_than_sixty_three_characters_" + "x" * 30, "group.task"
    selector = cluster.pod_selector(dag_id, task_id)
    assert selector == (
        f"dag_id={make_safe_label_value(dag_id)},task_id={make_safe_label_value(task_id)}"
    )


# --------------------------------------------------------------------------- pod problems


def container_status(name: str, **state: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "state": state}


def test_pod_problem_of_an_image_that_cannot_be_pulled() -> None:
    message = (
        'failed to pull and unpack image "registry:5000/airflow-worker:latest": not found\n'
        "second line"
    )
    pod = {
        "status": {
            "phase": "Pending",
            "containerStatuses": [
                container_status("base", waiting={"reason": "ErrImagePull", "message": message})
            ],
        }
    }
    assert cluster.pod_problem(pod) == (
        'base: ErrImagePull: failed to pull and unpack image "registry:5000/airflow-worker:latest"'
        ": not found"
    )


def test_pod_problem_of_a_task_killed_for_its_memory() -> None:
    pod = {
        "status": {
            "phase": "Failed",
            "containerStatuses": [
                container_status("base", terminated={"reason": "OOMKilled", "exitCode": 137})
            ],
        }
    }
    assert cluster.pod_problem(pod) == "base: OOMKilled (exit code 137)"


def test_pod_problem_joins_containers_and_ignores_completed_ones() -> None:
    pod = {
        "status": {
            "containerStatuses": [
                container_status("base", terminated={"reason": "Error", "exitCode": 1}),
                container_status("sidecar", terminated={"reason": "Completed", "exitCode": 0}),
                container_status("init", waiting={"reason": "CreateContainerConfigError"}),
                container_status("running", running={"startedAt": "2026-01-01T00:00:00Z"}),
            ]
        }
    }
    assert cluster.pod_problem(pod) == (
        "base: Error (exit code 1); init: CreateContainerConfigError"
    )


def test_pod_problem_falls_back_to_the_pods_own_reason() -> None:
    evicted = {
        "status": {
            "phase": "Failed",
            "reason": "Evicted",
            "message": "The node was low on resource: memory.",
        }
    }
    assert cluster.pod_problem(evicted) == "Evicted: The node was low on resource: memory."
    assert cluster.pod_problem({"status": {"reason": "Evicted"}}) == "Evicted"


def test_pod_problem_of_a_healthy_or_finished_pod_is_empty() -> None:
    done = container_status("base", terminated={"reason": "Completed", "exitCode": 0})
    finished = {"status": {"phase": "Succeeded", "containerStatuses": [done]}}
    assert cluster.pod_problem(finished) == ""
    assert cluster.pod_problem({"status": {"containerStatuses": None}}) == ""
    assert cluster.pod_problem({}) == ""
