"""Security of a real install: per-install secrets, private files, loopback ports, privileges,
users, no default credentials, and what the cluster lets worker pods do. Reads `docker compose
config` of both image sources, the running stack and the worker pods of a demo run on the cluster.

Static rules of the compose files are in tests/unit/test_compose.py; these check what compose and
Docker actually resolve and run.
"""

from __future__ import annotations

import base64
import json
import os
import stat
from pathlib import Path
from typing import Any

import boto3
import httpx
import pytest
from botocore.exceptions import ClientError

from airflow_k3s.cluster import pod_label_value, write_kubeconfigs
from airflow_k3s.generated import ADMIN_USER, SECRET_KEYS, parse_env_file
from airflow_k3s.settings import Settings
from tests.faults.faultlib import DAG, variant
from tests.harness import Stack

pytestmark = pytest.mark.docker
AIRFLOW_SERVICES = {
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
}
#: uid:gid of PID 1 of each running service of the local stack, and why.
LOCAL_USERS = {
    "postgres": "999:999",  # the image's postgres user
    "s3": "1000:1000",  # the image's weed user
    "registry": "10002:10002",
    "mockserver": "10001:10001",
    "airflow-apiserver": "50000:0",  # the Airflow image's user, set in x-airflow-common
    "airflow-dag-processor": "50000:0",
    "airflow-triggerer": "50000:0",
    "airflow-scheduler": "50000:0",
    # The Kubernetes node runs containerd, mounts and iptables: root, as in rancher/k3s.
    "k3s": "0:0",
}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture(scope="module")
def demo_pods(stack: Stack) -> list[dict[str, Any]]:
    """The worker pods of one successful demo run, as the API server has them."""
    run_id = stack.run_dag(DAG, timeout=400)
    pods = stack.pods(f"run_id={pod_label_value(run_id)}")
    assert len(pods) == 3, [p["metadata"]["name"] for p in pods]
    return pods


def test_secrets_are_generated_per_install_and_private(stack: Stack, tmp_path: Path) -> None:
    installs = [stack.state_dir]
    for name in ("one", "two"):
        other = variant(stack, AIRFLOW_K3S_STATE_DIR=str(tmp_path / name))
        result = other.invoke("secrets", timeout=120)
        assert result.returncode == 0, result.stderr
        installs.append(tmp_path / name)
    values = [parse_env_file((d / ".env").read_text()) for d in installs]
    for key in SECRET_KEYS:
        seen = [v[key] for v in values]
        assert all(len(s) >= 16 for s in seen), key
        assert len(set(seen)) == len(seen), f"{key} is the same in two installs"
    for state_dir in installs:
        assert mode(state_dir / ".env") == 0o600, state_dir
        assert mode(state_dir / ".generated" / "k3s" / "airflow-worker-env.yaml") == 0o600


def test_kubeconfig_copies_are_private(stack: Stack, tmp_path: Path) -> None:
    ca = base64.b64encode(b"-----BEGIN CERTIFICATE-----\nfake\n-----END CERTIFICATE-----\n")
    raw = (
        "apiVersion: v1\nkind: Config\nclusters:\n- name: default\n  cluster:\n"
        f"    certificate-authority-data: {ca.decode()}\n    server: https://127.0.0.1:6443\n"
        "contexts:\n- name: default\n  context: {cluster: default, user: default}\n"
        "current-context: default\nusers:\n- name: default\n  user:\n"
        "    client-certificate-data: Y2VydA==\n    client-key-data: a2V5\n"
    )
    cfg = Settings.load(
        environ={**stack.env, "AIRFLOW_K3S_STATE_DIR": str(tmp_path), "K3S_API_PORT": "16443"}
    )
    host, containers = write_kubeconfigs(cfg, raw)
    assert mode(host) == 0o600
    assert mode(containers) == 0o600
    assert "server: https://127.0.0.1:16443" in host.read_text()
    assert "server: https://k3s:6443" in containers.read_text()
    # The running stack's own copies too (`invoke up` wrote them).
    for path in (
        stack.settings.host_kubeconfig,
        stack.state_dir / ".generated" / "kubeconfig-containers.yaml",
    ):
        assert mode(path) == 0o600, path


@pytest.mark.parametrize("images", ["upstream", "local"])
def test_resolved_compose_config_is_locked_down(stack: Stack, images: str) -> None:
    services = stack.compose_config(images)["services"]
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert port["host_ip"] == "127.0.0.1", f"{images}/{name} publishes {port}"
        privileged = images == "upstream" and name == "k3s"
        assert bool(svc.get("privileged")) == privileged, f"{images}/{name} privileged"
        # Only the local node gets capabilities, and never SYS_RESOURCE (refused by these hosts);
        # kube-credentials drops all but CHOWN (it hands each kubeconfig to the Airflow user).
        caps = set(svc.get("cap_add") or [])
        if name == "kube-credentials":
            assert caps == {"CHOWN"}, f"{images}/{name} cap_add"
            assert set(svc.get("cap_drop") or []) == {"ALL"}, f"{images}/{name} cap_drop"
        else:
            assert bool(caps) == (images == "local" and name == "k3s"), f"{images}/{name} cap_add"
        assert "SYS_RESOURCE" not in caps
        assert svc.get("network_mode") in (None, "default") or "host" not in svc["network_mode"]
        sockets = [v for v in svc.get("volumes", []) if v.get("source") == "/var/run/docker.sock"]
        assert not sockets, f"{images}/{name} mounts the Docker socket"
        if name in AIRFLOW_SERVICES:
            assert svc["user"] == "50000:0", f"{images}/{name}"
    published = {name for name, svc in services.items() if svc.get("ports")}
    assert "postgres" not in published, "the metadata DB is not published"


def test_running_containers_users(stack: Stack) -> None:
    users: dict[str, str] = {}
    for found in stack.docker.containers():
        if found["State"] != "running":
            continue
        service = str(found["Service"])
        container = stack.container(service)
        status = Path(f"/proc/{container['State']['Pid']}/status").read_text()
        uid = next(ln.split()[1] for ln in status.splitlines() if ln.startswith("Uid:"))
        gid = next(ln.split()[1] for ln in status.splitlines() if ln.startswith("Gid:"))
        users[service] = f"{uid}:{gid}"
        # Only rancher/k3s runs privileged (IMAGES=upstream); with IMAGES=local nothing does.
        privileged = stack.images == "upstream" and service == "k3s"
        assert container["HostConfig"]["Privileged"] is privileged, service
    print("PID 1 of each service runs as:", json.dumps(users, indent=1, sort_keys=True))
    airflow = {s: u for s, u in users.items() if s in AIRFLOW_SERVICES}
    assert airflow == {s: "50000:0" for s in AIRFLOW_SERVICES - {"airflow-init"}}
    if stack.images == "local":  # the upstream images' own users are theirs to choose
        assert users == LOCAL_USERS
        assert [s for s, u in users.items() if u.startswith("0:")] == ["k3s"]


def test_worker_pods_run_as_non_root_without_privilege_escalation(
    demo_pods: list[dict[str, Any]],
) -> None:
    for pod in demo_pods:
        spec = pod["spec"]
        assert spec["securityContext"]["runAsUser"] == 50000
        assert spec["securityContext"]["runAsNonRoot"] is True
        container = spec["containers"][0]
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context.get("privileged") is not True
        assert context["capabilities"]["drop"] == ["ALL"]
        assert not spec.get("hostNetwork")
        assert not spec.get("hostPID")
        assert not [v for v in spec["volumes"] if "hostPath" in v], "no hostPath in worker pods"
        env_from = [e["secretRef"]["name"] for e in container["envFrom"]]
        assert env_from == ["airflow-worker-env"]


def test_worker_secret_has_no_database_or_fernet_secrets(stack: Stack) -> None:
    data = stack.kubectl_json("get", "secret", "airflow-worker-env")["data"]
    assert "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN" not in data, "workers need no DB"
    assert "AIRFLOW__CORE__FERNET_KEY" not in data, "workers get no Fernet key"
    assert "AIRFLOW__API_AUTH__JWT_SECRET" not in data, "workers get a token, not the key"
    assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= set(data)


def test_worker_pods_service_account_cannot_touch_the_cluster(stack: Stack) -> None:
    """The default ServiceAccount worker pods run as may not read secrets or make pods."""
    account = "system:serviceaccount:default:default"
    for verb, resource in [("get", "secrets"), ("create", "pods"), ("list", "nodes")]:
        result = stack.kubectl("auth", "can-i", verb, resource, f"--as={account}")
        assert result.stdout.strip() == "no", (verb, resource, result.stdout, result.stderr)


@pytest.mark.parametrize(
    ("verb", "resource", "namespace", "allowed"),
    [
        ("create", "pods", "default", "yes"),
        ("delete", "pods", "default", "yes"),
        ("get", "pods/log", "default", "yes"),
        ("create", "pods", "kube-system", "no"),
        ("get", "secrets", "default", "no"),
        ("create", "deployments", "default", "no"),
        ("list", "nodes", "", "no"),
        ("create", "pods/exec", "default", "no"),
    ],
)
def test_the_kpo_service_account_may_launch_pods_and_nothing_else(
    stack: Stack, verb: str, resource: str, namespace: str, allowed: str
) -> None:
    account = "system:serviceaccount:default:airflow-kpo"
    # `kubectl auth can-i` takes a subresource as a flag: "pods/exec" as one word names no resource.
    kind, _, sub = resource.partition("/")
    args = ["auth", "can-i", verb, kind, f"--as={account}"]
    args += [f"--subresource={sub}"] if sub else []
    args += ["-n", namespace] if namespace else []
    result = stack.kubectl(*args)
    assert result.stdout.strip() == allowed, (verb, resource, namespace, result.stderr)


def test_no_default_credentials(stack: Stack) -> None:
    cfg = stack.settings
    for user, password in [("admin", "admin"), ("airflow", "airflow"), ("admin", "")]:
        response = httpx.post(
            f"{cfg.airflow_url}/auth/token", json={"username": user, "password": password}
        )
        assert response.status_code in (400, 401, 403), (user, password, response.status_code)
    ok = httpx.post(
        f"{cfg.airflow_url}/auth/token",
        json={"username": ADMIN_USER, "password": cfg.secrets["AIRFLOW_ADMIN_PASSWORD"]},
    )
    assert ok.status_code in (200, 201)
    assert httpx.get(f"{cfg.airflow_url}/api/v2/dags").status_code == 401, "the API needs a login"
    for key, secret in [("admin", "admin"), ("minioadmin", "minioadmin")]:
        s3 = boto3.client(
            "s3",
            endpoint_url=cfg.s3_url,
            region_name="us-east-1",
            aws_access_key_id=key,
            aws_secret_access_key=secret,
        )
        with pytest.raises(ClientError) as refused:
            s3.list_objects_v2(Bucket="airflow-data")
        assert refused.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert httpx.get(f"{cfg.s3_url}/airflow-data?list-type=2").status_code == 403, "anonymous S3"
    assert os.environ.get("AIRFLOW_ADMIN_PASSWORD") != "admin"
