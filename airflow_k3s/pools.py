"""Node pools: agent nodes beside the k3s server, from a file the user points to ($NODE_POOLS).

The file lists pools (name, number of nodes, labels, taints); each node is an agent container,
a compose service rendered into .generated/compose.agents.yml from the k3s service itself (same
image, privileges, entrypoint and registry mirrors: one owner of those, docker-compose.yml and
local/compose.local.yml), joining the server with K3S_URL and K3S_TOKEN. Without the file the
cluster is the single server node. Pure functions: the file's parsing and the rendering; `up`
writes the file and compose does the rest.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from airflow_k3s.exits import ExitCode, UserError

#: The label every agent node carries with its pool's name (what a task's nodeSelector names).
POOL_LABEL = "airflow-k3s/pool"
SERVER_URL = "https://k3s:6443"
#: The k3s service's named volumes that hold a node's own state: an agent gets its own of each.
NODE_VOLUMES = {
    "/var/lib/rancher/k3s": "data",
    "/var/lib/kubelet": "kubelet",
    "/var/lib/cni": "cni",
    "/var/log": "log",
    "/etc/rancher/node": "node",
}
#: What an agent shares with the server: the DNS-bridge entrypoint, the registry mirrors, the
#: local node's config drop-in, and the shared volume of the tasks (same path on every node).
SHARED_TARGETS = (
    "/airflow-k3s/entrypoint.sh",
    "/etc/rancher/k3s/registries.yaml",
    "/etc/rancher/k3s/config.yaml.d/",
    "/var/lib/airflow-shared",
)
TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
_NAME = re.compile(r"[a-z0-9]([a-z0-9-]{0,18}[a-z0-9])?")
_LABEL_KEY = re.compile(
    r"([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
)
_LABEL_VALUE = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")
MAX_NODES = 5


@dataclass(frozen=True)
class Pool:
    """One pool: ``nodes`` agents carrying ``labels`` (and POOL_LABEL) and ``taints``."""

    name: str
    nodes: int
    labels: dict[str, str] = field(default_factory=dict)
    #: "key=value:Effect" or "key:Effect", as k3s's --node-taint takes them
    taints: tuple[str, ...] = ()

    def node_names(self) -> list[str]:
        return [f"agent-{self.name}-{i}" for i in range(1, self.nodes + 1)]

    def node_labels(self) -> dict[str, str]:
        return {POOL_LABEL: self.name, **self.labels}


def load(path: Path) -> list[Pool]:
    """The pools of a file, or one line saying what is wrong in it."""
    try:
        doc = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise UserError(f"NODE_POOLS={path}: no such file", ExitCode.USAGE) from None
    except yaml.YAMLError as exc:
        raise UserError(
            f"NODE_POOLS={path}: not valid YAML: {str(exc).splitlines()[0]}", ExitCode.USAGE
        ) from None
    try:
        return parse(doc)
    except ValueError as exc:
        raise UserError(f"NODE_POOLS={path}: {exc}", ExitCode.USAGE) from None


def parse(doc: Any) -> list[Pool]:
    """Pools from the file's document: {"pools": [{name, nodes, labels, taints}, ...]}."""
    if not isinstance(doc, dict) or not isinstance(doc.get("pools"), list):
        raise ValueError(
            "expected a mapping with a list `pools:` (see k3s/node-pools.example.yaml)"
        )
    pools = [_pool(i, entry) for i, entry in enumerate(doc["pools"], start=1)]
    names = [p.name for p in pools]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise ValueError(f"pool names must be unique: {', '.join(twice)}")
    return pools


def _pool(index: int, entry: Any) -> Pool:
    if not isinstance(entry, dict):
        raise ValueError(f"pool {index} is not a mapping")
    unknown = sorted(set(entry) - {"name", "nodes", "labels", "taints"})
    name = str(entry.get("name", ""))
    where = f"pool {name or index}"
    if unknown:
        raise ValueError(
            f"{where}: unknown keys {', '.join(unknown)} (known: name, nodes, labels, taints)"
        )
    if not _NAME.fullmatch(name):
        raise ValueError(f"{where}: name must be 1-20 lowercase letters, digits or '-'")
    nodes = entry.get("nodes", 1)
    if not isinstance(nodes, int) or isinstance(nodes, bool) or not 1 <= nodes <= MAX_NODES:
        raise ValueError(f"{where}: nodes must be a number from 1 to {MAX_NODES}, not {nodes!r}")
    labels = entry.get("labels") or {}
    if not isinstance(labels, dict):
        raise ValueError(f"{where}: labels must be a mapping of key: value")
    labels = {str(k): str(v) for k, v in labels.items()}
    for key, value in labels.items():
        _check_label(where, key, value)
    taints = entry.get("taints") or []
    if not isinstance(taints, list):
        raise ValueError(f"{where}: taints must be a list like ['dedicated=gpu:NoSchedule']")
    for taint in taints:
        _check_taint(where, str(taint))
    return Pool(name, nodes, labels, tuple(str(t) for t in taints))


def _check_label(where: str, key: str, value: str) -> None:
    if key == POOL_LABEL:
        raise ValueError(f"{where}: {POOL_LABEL} is set from the pool's name")
    if not _LABEL_KEY.fullmatch(key) or not _LABEL_VALUE.fullmatch(value) or len(value) > 63:
        raise ValueError(f"{where}: {key}={value} is not a valid Kubernetes label")
    prefix = key.partition("/")[0] if "/" in key else ""
    allowed = prefix in ("node.kubernetes.io", "kubelet.kubernetes.io")
    if prefix.endswith(("kubernetes.io", "k8s.io")) and not allowed:
        # NodeRestriction: a kubelet may not give itself labels under these prefixes (but a few).
        raise ValueError(
            f"{where}: label {key}: a node may not set labels under {prefix} on itself; use "
            "a prefix of your own"
        )


def _check_taint(where: str, taint: str) -> None:
    key_value, _, effect = taint.rpartition(":")
    key, _, value = key_value.partition("=")
    if (
        effect not in TAINT_EFFECTS
        or not _LABEL_KEY.fullmatch(key)
        or not _LABEL_VALUE.fullmatch(value)
    ):
        raise ValueError(
            f"{where}: taint {taint!r} must be key=value:Effect or key:Effect, Effect one of "
            f"{', '.join(TAINT_EFFECTS)}"
        )


def node_names(pools: Iterable[Pool]) -> list[str]:
    """Every agent's node name (and compose service name), in the file's order."""
    return [name for pool in pools for name in pool.node_names()]


def agent_command(pool: Pool, node: str) -> list[str]:
    """`k3s agent` with k3s's own flags: the node's name, its pool's labels and taints."""
    command = ["agent", f"--node-name={node}"]
    command += [f"--node-label={k}={v}" for k, v in pool.node_labels().items()]
    command += [f"--node-taint={t}" for t in pool.taints]
    # As the server (docker-compose.yml): every worker pod pulls its image, from the registry's
    # mirror only.
    return [*command, "--kubelet-arg=registry-qps=0", "--disable-default-registry-endpoint"]


def render(pools: list[Pool], server: Mapping[str, Any]) -> dict[str, Any]:
    """The compose file of the agents: each the k3s service (``server``, as `docker compose
    config` resolved it) with its own name, command, node volumes and health check."""
    services: dict[str, Any] = {}
    volumes: dict[str, Any] = {}
    for pool in pools:
        for node in pool.node_names():
            services[node] = _agent(server, pool, node)
            volumes.update({f"{node}-{suffix}": {} for suffix in NODE_VOLUMES.values()})
    return {"services": services, "volumes": volumes}


def _agent(server: Mapping[str, Any], pool: Pool, node: str) -> dict[str, Any]:
    keep = (
        "image",
        "privileged",
        "cap_add",
        "security_opt",
        "devices",
        "cgroup",
        "tmpfs",
        "entrypoint",
        "restart",
        "networks",
    )
    service = {key: server[key] for key in keep if key in server}
    mounts = [
        m for m in server.get("volumes", []) if str(m.get("target", "")).startswith(SHARED_TARGETS)
    ]
    mounts += [
        {"type": "volume", "source": f"{node}-{suffix}", "target": target}
        for target, suffix in NODE_VOLUMES.items()
    ]
    ready = '{.status.conditions[?(@.type=="Ready")].status}'
    service.update(
        hostname=node,
        command=agent_command(pool, node),
        environment={
            "K3S_URL": SERVER_URL,
            # Interpolated by compose from .env: the token is not written into this file.
            "K3S_TOKEN": "${K3S_TOKEN:?not set - run make up}",
        },
        volumes=mounts,
        labels={"airflow-k3s/pool": pool.name},
        healthcheck={
            "test": [
                "CMD-SHELL",
                'test "$$(kubectl --kubeconfig /var/lib/rancher/k3s/agent/kubelet.kubeconfig '
                f"get node {node} -o jsonpath='{ready}')\" = True",
            ],
            "interval": "5s",
            "timeout": "10s",
            "retries": 60,
            "start_period": "10s",
        },
        depends_on={"k3s": {"condition": "service_healthy"}},
    )
    return service
