"""Least privilege on the cluster, on a running stack: each Airflow service's identity may do what
it needs and nothing more (`kubectl auth can-i`, both ways), no Airflow container holds an admin
credential, the dag-processor holds none at all, and the Pod Security level of the executor's
namespace decides which pods the API server admits.
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import pytest
import yaml

from airflow_k3s import identities
from airflow_k3s.identities import Identity
from tests.faults.faultlib import (
    in_container,
    one_line_error,
    service_kubeconfig,
    variant,
    wait_for,
    whoami,
)
from tests.harness import Stack

pytestmark = pytest.mark.docker
NAMESPACE = "default"

#: What no identity may do: (verb, resource, namespace; "" for cluster-scoped).
FORBIDDEN = [
    ("get", "secrets", NAMESPACE),
    ("list", "secrets", NAMESPACE),
    ("list", "nodes", ""),
    ("create", "namespaces", ""),
    ("create", "clusterrolebindings", ""),
    ("create", "pods", "kube-system"),
    ("list", "pods", "kube-system"),
    ("create", "deployments", NAMESPACE),
    ("create", "rolebindings", NAMESPACE),
    ("update", "configmaps", NAMESPACE),
]
VERBS = ("create", "get", "list", "watch", "patch", "delete")


def can_i(stack: Stack, identity: Identity, verb: str, resource: str, namespace: str) -> str:
    kind, _, sub = resource.partition("/")
    args = ["auth", "can-i", verb, kind, f"--as={identities.account(identity, NAMESPACE)}"]
    args += [f"--subresource={sub}"] if sub else []
    args += ["-n", namespace] if namespace else []
    return str(stack.kubectl(*args).stdout.strip())


@pytest.mark.parametrize("identity", identities.IDENTITIES, ids=lambda i: i.name)
def test_each_identity_may_do_what_it_needs_and_nothing_more(
    stack: Stack, identity: Identity
) -> None:
    """Every verb on every resource the identity's Role names is allowed in its namespace, every
    other of the six verbs on those resources is not, nor anything of FORBIDDEN."""
    seen: dict[str, str] = {}
    for resource, _verbs in identity.rules:
        for verb in VERBS:
            want = "yes" if identities.allowed(identity, verb, resource) else "no"
            seen[f"{verb} {resource}"] = can_i(stack, identity, verb, resource, NAMESPACE)
            assert seen[f"{verb} {resource}"] == want, (identity.name, verb, resource)
    for verb, resource, namespace in FORBIDDEN:
        got = can_i(stack, identity, verb, resource, namespace)
        assert got == "no", (identity.name, verb, resource, namespace)
    print(identity.name, seen)


AIRFLOW_WITH_IDENTITY = ("airflow-scheduler", "airflow-apiserver", "airflow-triggerer")


def test_no_airflow_container_holds_an_admin_credential(stack: Stack, tmp_path: Path) -> None:
    """Each service that talks to the cluster holds its own ServiceAccount's token (the API
    server says whose it is); the dag-processor holds nothing; k3s's admin key is in none."""
    admin = yaml.safe_load(stack.settings.host_kubeconfig.read_text())
    admin_key = str(admin["users"][0]["user"]["client-key-data"])[:40]
    for service in AIRFLOW_WITH_IDENTITY:
        copy = service_kubeconfig(stack, service, tmp_path)
        user = yaml.safe_load(copy.read_text())["users"][0]["user"]
        assert set(user) == {"token"}, f"{service}: {sorted(user)}: a token and nothing else"
        assert whoami(copy) == identities.account(IDENTITY_OF[service], NAMESPACE)
    none = in_container(stack, "airflow-dag-processor", "test -e /opt/airflow/kube/config")
    assert none.returncode == 1, "the dag-processor holds no kubeconfig"
    for service in (*AIRFLOW_WITH_IDENTITY, "airflow-dag-processor"):
        assert in_container(stack, service, "test -e /k3s-output").returncode == 1, service
        found = in_container(
            stack,
            service,
            f"env | grep -c '{admin_key}'; "
            f"grep -rls '{admin_key}' /opt/airflow/kube /kube /tmp /home 2>/dev/null; true",
        )
        assert found.stdout.strip() == "0", f"{service} holds k3s's admin key: {found.stdout}"


IDENTITY_OF = {i.service: i for i in identities.SERVICE_IDENTITIES}


def test_a_dag_whose_top_level_code_lists_pods_fails_to_import(stack: Stack) -> None:
    """The dag-processor runs every DAG file's top-level code: with no credential there, a file
    that reaches for the cluster fails to import, and says so (the API, `invoke parse`)."""
    name = f"faults_lists_pods_{uuid.uuid4().hex[:6]}"
    path = stack.dags_dir / f"{name}.py"
    path.write_text(
        '"""Written by tests/faults/test_identities.py and removed by it: lists pods at parse."""\n'
        "from airflow.configuration import conf\n"
        "from airflow.sdk import dag\n"
        "from kubernetes import client, config\n\n"
        'config.load_kube_config(config_file=conf.get("kubernetes_executor", "config_file"))\n'
        'client.CoreV1Api().list_namespaced_pod("default")\n\n\n'
        f'@dag(dag_id="{name}", schedule=None)\n'
        f"def {name}() -> None: ...\n\n\n"
        f"{name}()\n"
    )
    try:
        api = stack.api()
        errors = wait_for(
            f"the import error of {path.name}",
            lambda: [e for e in api.import_errors() if path.name in e["filename"]],
            timeout=120,
            poll=2,
        )
        last = errors[0]["stack_trace"].strip().splitlines()[-1]
        assert "ConfigException" in last, last
        assert stack.invoke("build", "--worker-only").returncode == 0
        parsed = stack.invoke("parse")
        assert parsed.returncode == 11
        assert re.search(rf"{path.name}:\d+: .*ConfigException", parsed.stdout), parsed.stdout
    finally:
        path.unlink(missing_ok=True)
        assert stack.invoke("build", "--worker-only").returncode == 0


def test_pod_yaml_names_the_pod_security_levels_a_task_meets(stack: Stack) -> None:
    ok = stack.invoke("pod-yaml", "demo_rest_to_s3", "fetch")
    assert ok.returncode == 0, ok.stderr
    assert yaml.safe_load(ok.stdout)["kind"] == "Pod", "stdout stays the pod's YAML"
    assert "==> Pod Security baseline: admitted" in ok.stderr
    assert "==> Pod Security restricted: admitted" in ok.stderr
    bad = stack.invoke("pod-yaml", "faults_privileged", "privileged")
    assert bad.returncode == 0, bad.stderr
    for level in ("baseline", "restricted"):
        assert re.search(
            rf'==> Pod Security {level}: refused: privileged \(container "base" must not set '
            r"securityContext\.privileged=true\)",
            bad.stderr,
        ), bad.stderr


def test_restricted_refuses_a_privileged_pod_override_within_seconds(stack: Stack) -> None:
    """POD_SECURITY=restricted: `invoke up` labels the executor's namespace; a task whose
    pod_override asks for a privileged container fails at once, with the API server's words."""
    strict = variant(stack, POD_SECURITY="restricted")
    up = strict.invoke("up", "--no-build", timeout=600)
    assert up.returncode == 0, up.stderr[-3000:]
    try:
        labels = stack.kubectl_json("get", "namespace", NAMESPACE)["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
        started = time.monotonic()
        result = stack.invoke("trigger-dag", "faults_privileged", "--wait", "--timeout", "300")
        took = time.monotonic() - started
        assert result.returncode == 1, result.stderr[-3000:]
        assert took < 90, f"took {took:.0f} s to fail"
        assert 'violates PodSecurity "restricted:latest"' in result.stderr, result.stderr[-3000:]
        assert "privileged" in result.stderr
        assert "Traceback" not in result.stderr
        demo = strict.invoke("trigger-dag", "demo_rest_to_s3", "--wait", "--timeout", "400")
        assert demo.returncode == 0, "the repo's pod template meets restricted"
    finally:
        back = stack.invoke("up", "--no-build", timeout=600)
    assert back.returncode == 0, back.stderr[-3000:]
    labels = stack.kubectl_json("get", "namespace", NAMESPACE)["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "privileged", "enforces nothing again"


def test_a_bad_pod_security_level_is_one_line(stack: Stack) -> None:
    result = variant(stack, POD_SECURITY="strict").invoke("status")
    assert result.returncode == 2
    assert one_line_error(result) == (
        "POD_SECURITY must be one of privileged, baseline, restricted, not 'strict'"
    )


def test_airflows_own_example_with_a_host_path_is_admitted_by_default_only(stack: Stack) -> None:
    """Airflow's example_kubernetes_executor mounts a hostPath: the default level (privileged)
    admits its pod, baseline and restricted refuse it, naming the hostPath. (Running the whole
    example needs the `ubuntu` image of its sidecar task, which these machines cannot pull.)"""
    found = stack.docker.exec(
        "airflow-scheduler",
        [
            "python",
            "-c",
            "import airflow.example_dags as e, os; print(os.path.dirname(e.__file__))",
        ],
    ).strip()
    source = stack.docker.exec(
        "airflow-scheduler", ["cat", f"{found}/example_kubernetes_executor.py"]
    )
    path = stack.dags_dir / "example_kubernetes_executor.py"
    path.write_text(source)
    try:
        shown = stack.invoke("pod-yaml", "example_kubernetes_executor", "test_volume_mount")
        assert shown.returncode == 0, shown.stderr
        pod = yaml.safe_load(shown.stdout)
        assert [v["hostPath"]["path"] for v in pod["spec"]["volumes"] if "hostPath" in v] == [
            "/tmp/"
        ]
        for level in ("baseline", "restricted"):
            assert re.search(rf"==> Pod Security {level}: refused: .*hostPath", shown.stderr), level
        labels = stack.kubectl_json("get", "namespace", NAMESPACE)["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "privileged"
        admitted = stack.kube.dry_run(pod)
        assert admitted.returncode == 0, f"the default level admits it: {admitted.stderr}"
    finally:
        path.unlink(missing_ok=True)
