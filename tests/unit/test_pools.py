"""Node pools without Docker: the file's checks, the agents' compose services rendered from the
k3s service, and what the follower says about a pod no node can take."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from airflow_k3s import pools
from airflow_k3s.cluster import placement, unschedulable
from airflow_k3s.exits import ExitCode, UserError
from airflow_k3s.runs import unschedulable_lines
from airflow_k3s.settings import ROOT, Settings

EXAMPLE = ROOT / "k3s" / "node-pools.example.yaml"


def test_the_example_file_has_an_untainted_pool_of_two_and_a_tainted_one() -> None:
    highmem, gpu = pools.load(EXAMPLE)
    assert (highmem.name, highmem.nodes, highmem.taints) == ("highmem", 2, ())
    assert gpu.taints == ("airflow-k3s/pool=gpu:NoSchedule",)
    assert pools.node_names([highmem, gpu]) == ["agent-highmem-1", "agent-highmem-2", "agent-gpu-1"]
    assert gpu.node_labels() == {"airflow-k3s/pool": "gpu", "example.com/accelerator": "fake-gpu"}


@pytest.mark.parametrize(
    ("doc", "says"),
    [
        ([], "expected a mapping with a list `pools:`"),
        ({"pools": [{"name": "GPU"}]}, "pool GPU: name must be 1-20 lowercase"),
        ({"pools": [{"name": "a", "nodes": 0}]}, "pool a: nodes must be a number from 1 to 5"),
        ({"pools": [{"name": "a", "nodes": "2"}]}, "nodes must be a number from 1 to 5, not '2'"),
        ({"pools": [{"name": "a"}, {"name": "a"}]}, "pool names must be unique: a"),
        ({"pools": [{"name": "a", "size": 2}]}, "pool a: unknown keys size"),
        ({"pools": [{"name": "a", "labels": {"bad key": "x"}}]}, "is not a valid Kubernetes label"),
        (
            {"pools": [{"name": "a", "labels": {"node-role.kubernetes.io/gpu": ""}}]},
            "a node may not set labels under node-role.kubernetes.io on itself",
        ),
        ({"pools": [{"name": "a", "labels": {"airflow-k3s/pool": "b"}}]}, "set from the pool's"),
        (
            {"pools": [{"name": "a", "labels": {"k8s.io/x": "y"}}]},
            "may not set labels under k8s.io",
        ),
        ({"pools": [{"name": "a", "taints": ["gpu=yes"]}]}, "must be key=value:Effect"),
        ({"pools": [{"name": "a", "taints": ["gpu=yes:Sometimes"]}]}, "must be key=value:Effect"),
    ],
)
def test_a_bad_pools_file_is_one_line_naming_the_pool(doc: Any, says: str) -> None:
    with pytest.raises(ValueError, match=re.escape(says)):
        pools.parse(doc)


def test_the_labels_a_kubelet_may_set_on_itself_pass() -> None:
    (pool,) = pools.parse({"pools": [{"name": "a", "labels": {"node.kubernetes.io/x": "y"}}]})
    assert pool.labels == {"node.kubernetes.io/x": "y"}


def test_the_file_is_checked_before_anything_starts(tmp_path: Path) -> None:
    bad = tmp_path / "pools.yaml"
    bad.write_text("pools:\n  - name: a\n    nodes: 9\n")
    with pytest.raises(UserError) as exc:
        pools.load(bad)
    assert exc.value.code is ExitCode.USAGE
    assert exc.value.message.startswith(f"NODE_POOLS={bad}: pool a: nodes must be")
    with pytest.raises(UserError) as missing:
        pools.load(tmp_path / "nope.yaml")
    assert missing.value.message == f"NODE_POOLS={tmp_path / 'nope.yaml'}: no such file"


#: The k3s service as `docker compose config` resolves it with IMAGES=local (trimmed).
SERVER: dict[str, Any] = {
    "image": "airflow-k3s/k3s:v1.36.3-local",
    "privileged": False,
    "cap_add": ["NET_ADMIN", "SYS_ADMIN"],
    "security_opt": ["seccomp=unconfined"],
    "devices": [{"source": "/dev/kmsg", "target": "/dev/kmsg", "permissions": "rwm"}],
    "cgroup": "private",
    "tmpfs": ["/run", "/var/run"],
    "entrypoint": ["/usr/local/bin/airflow-k3s-node-init", "/bin/sh", "/airflow-k3s/entrypoint.sh"],
    "command": ["server", "--node-name=k3s", "--tls-san=k3s"],
    "environment": {"K3S_KUBECONFIG_OUTPUT": "/output/kubeconfig.yaml", "K3S_TOKEN": "secret"},
    "ports": [{"target": 6443, "published": "6443", "host_ip": "127.0.0.1"}],
    "restart": "unless-stopped",
    "networks": {"default": None},
    "healthcheck": {"test": ["CMD-SHELL", "kubectl get node/k3s"]},
    "volumes": [
        {"type": "volume", "source": "k3s-data", "target": "/var/lib/rancher/k3s"},
        {"type": "volume", "source": "k3s-kubelet", "target": "/var/lib/kubelet"},
        {"type": "volume", "source": "k3s-output", "target": "/output"},
        {"type": "volume", "source": "shared-data", "target": "/var/lib/airflow-shared"},
        {
            "type": "bind",
            "source": "/repo/k3s/entrypoint.sh",
            "target": "/airflow-k3s/entrypoint.sh",
        },
        {
            "type": "bind",
            "source": "/repo/k3s/manifests",
            "target": "/var/lib/rancher/k3s/server/manifests/airflow-k3s",
        },
        {
            "type": "bind",
            "source": "/repo/k3s/registries.yaml",
            "target": "/etc/rancher/k3s/registries.yaml",
        },
        {
            "type": "bind",
            "source": "/repo/local/node/config.yaml",
            "target": "/etc/rancher/k3s/config.yaml.d/50-airflow-k3s-local.yaml",
        },
    ],
}


def test_each_agent_is_the_k3s_service_with_its_own_state_and_no_server_powers() -> None:
    doc = pools.render(pools.load(EXAMPLE), SERVER)
    assert list(doc["services"]) == ["agent-highmem-1", "agent-highmem-2", "agent-gpu-1"]
    gpu = doc["services"]["agent-gpu-1"]
    for key in (
        "image",
        "privileged",
        "cap_add",
        "security_opt",
        "devices",
        "cgroup",
        "tmpfs",
        "entrypoint",
        "restart",
    ):
        assert gpu[key] == SERVER[key], key
    assert gpu["command"] == [
        "agent",
        "--node-name=agent-gpu-1",
        "--node-label=airflow-k3s/pool=gpu",
        "--node-label=example.com/accelerator=fake-gpu",
        "--node-taint=airflow-k3s/pool=gpu:NoSchedule",
        "--kubelet-arg=registry-qps=0",
        "--disable-default-registry-endpoint",
    ]
    # Joins with the token from .env (not written into the file); no admin kubeconfig, no port.
    assert gpu["environment"] == {
        "K3S_URL": "https://k3s:6443",
        "K3S_TOKEN": "${K3S_TOKEN:?not set - run make up}",
    }
    assert "ports" not in gpu
    targets = {m["target"]: m["source"] for m in gpu["volumes"]}
    assert "/output" not in targets
    assert not any("manifests" in t for t in targets)
    assert targets["/var/lib/rancher/k3s"] == "agent-gpu-1-data"
    assert targets["/var/lib/kubelet"] == "agent-gpu-1-kubelet"
    assert targets["/var/lib/airflow-shared"] == "shared-data"  # the tasks' volume, every node
    assert targets["/etc/rancher/k3s/registries.yaml"] == "/repo/k3s/registries.yaml"
    assert targets["/etc/rancher/k3s/config.yaml.d/50-airflow-k3s-local.yaml"]
    assert "agent-gpu-1-data" in doc["volumes"]
    assert gpu["depends_on"] == {"k3s": {"condition": "service_healthy"}}
    assert "get node agent-gpu-1" in gpu["healthcheck"]["test"][1]
    # compose reads it back: YAML, with the $ of the health check's command escaped.
    assert "$$(kubectl" in yaml.safe_dump(doc)


def test_without_node_pools_there_is_no_agents_file(tmp_path: Path) -> None:
    cfg = Settings.load(environ={"AIRFLOW_K3S_STATE_DIR": str(tmp_path)}, root=ROOT)
    assert cfg.node_pools is None
    cfg.agents_file.parent.mkdir(parents=True)
    cfg.agents_file.write_text("services: {}\n")
    assert cfg.agents_file not in cfg.compose_files  # a stale file is not used
    with_pools = Settings.load(
        environ={"AIRFLOW_K3S_STATE_DIR": str(tmp_path), "NODE_POOLS": str(EXAMPLE)}, root=ROOT
    )
    assert with_pools.compose_files[-1] == with_pools.agents_file


PENDING: dict[str, Any] = {
    "metadata": {"name": "p-gpu-1", "labels": {"task_id": "on_gpu"}},
    "spec": {
        "nodeSelector": {"airflow-k3s/pool": "gpu"},
        "tolerations": [
            {
                "key": "airflow-k3s/pool",
                "operator": "Equal",
                "value": "gpu",
                "effect": "NoSchedule",
            },
            {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"},
        ],
    },
    "status": {
        "phase": "Pending",
        "conditions": [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": "0/1 nodes are available: 1 node(s) didn't match Pod's node "
                "affinity/selector.",
            }
        ],
    },
}


def test_a_pod_no_node_takes_is_named_with_the_schedulers_reason_and_what_it_asked_for() -> None:
    assert unschedulable(PENDING).startswith("0/1 nodes are available")
    assert placement(PENDING) == (
        "nodeSelector airflow-k3s/pool=gpu; tolerates airflow-k3s/pool=gpu:NoSchedule"
    )
    (line,) = unschedulable_lines(PENDING)
    assert line == (
        "on_gpu: no node can take pod p-gpu-1: 0/1 nodes are available: 1 node(s) didn't match "
        "Pod's node affinity/selector. (it asks for: nodeSelector airflow-k3s/pool=gpu; "
        "tolerates airflow-k3s/pool=gpu:NoSchedule)"
    )
    scheduled = {**PENDING, "status": {"phase": "Running", "conditions": []}}
    assert unschedulable_lines(scheduled) == []
    affinity = {
        "requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [
                {
                    "matchExpressions": [
                        {"key": "airflow-k3s/pool", "operator": "In", "values": ["highmem"]}
                    ]
                }
            ]
        }
    }
    assert placement({"spec": {"affinity": {"nodeAffinity": affinity}}}) == (
        "affinity airflow-k3s/pool In [highmem]"
    )
    assert placement({"spec": {}}) == ""
