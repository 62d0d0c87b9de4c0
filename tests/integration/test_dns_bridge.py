"""Pod DNS bridging of k3s/entrypoint.sh, exercised without k3s.

The e2e tier proves pods resolve compose names on the real cluster; this module tries the variants
one engine cannot show at once: an engine whose firewall backend leaves no DOCKER_OUTPUT chain
(nftables), a container without Docker's embedded DNS, and a restart of the entrypoint. A
container of tests/fixtures/dnstest.Dockerfile plays the k3s container, a network namespace inside
it plays a pod (a veth pair, like the one the node's CNI makes), and `dig` in that namespace must
resolve a compose-style network alias (`postgres`) through the nameserver the entrypoint wrote
into the resolv.conf it hands to k3s.

Needs a Docker engine. Without one the tests FAIL, unless AIRFLOW_K3S_SKIP_DOCKER_TESTS=1.
"""

from __future__ import annotations

import os
import re
import secrets
import shlex
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from airflow_k3s import images
from airflow_k3s.docker import Docker
from airflow_k3s.settings import LOCAL_DEBIAN_IMAGE, Settings
from tests.harness import require_docker

REPO_ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = REPO_ROOT / "k3s" / "entrypoint.sh"
MANIFESTS = REPO_ROOT / "k3s" / "manifests"
FIXTURES_DIR = REPO_ROOT / "tests" / "fixtures"
DNSTEST_DOCKERFILE = FIXTURES_DIR / "dnstest.Dockerfile"
DNSTEST_IMAGE = "airflow-k3s/dnstest:test"

# Where the entrypoint lives in the k3s service (docker-compose.yml) and in these containers.
ENTRYPOINT_IN_CONTAINER = "/airflow-k3s/entrypoint.sh"
RESOLV_CONF = "/etc/rancher/k3s/resolv.conf"
DNS_CHAIN = "AIRFLOW_K3S_DNS"
TARGET_ALIAS = "postgres"

# The "pod": a network namespace on a veth pair, addresses from k3s's default pod CIDR.
POD_NETNS = "fakepod"
POD_IP = "10.42.0.10"
POD_GATEWAY = "10.42.0.1"

SUFFIX = secrets.token_hex(4)
NAME_PREFIX = f"airflow-k3s-dnstest-{SUFFIX}"

IPV4 = re.compile(r"^\d{1,3}(\.\d{1,3}){3}$")

pytestmark = pytest.mark.docker
#: Docker as the task library runs it (this module's containers belong to no compose project).
docker = Docker(Settings())
#: A container of this module: its name.
Container = str


@dataclass
class Resources:
    """Everything this module creates, removed at the end whatever happened."""

    containers: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)

    def cleanup(self) -> list[str]:
        removals = [["rm", "--force", "--volumes", name] for name in reversed(self.containers)]
        removals += [["network", "rm", name] for name in reversed(self.networks)]
        errors: list[str] = []
        for args in removals:
            result = docker.docker(*args, check=False)
            gone = any(word in result.stderr for word in ("No such", "not found"))
            if result.returncode and not gone:
                errors.append(f"{' '.join(args)}: {result.stderr.strip()}")
        return errors


@dataclass(frozen=True)
class ExecResult:
    return_code: int
    stdout: str
    stderr: str


def run_in(container: Container, script: str, envs: dict[str, str] | None = None) -> ExecResult:
    """Run a shell script in the container; never raises on a non-zero exit."""
    env_args = [f"--env={k}={v}" for k, v in (envs or {}).items()]
    result = docker.docker("exec", *env_args, container, "sh", "-c", script, check=False)
    return ExecResult(result.returncode, result.stdout, result.stderr)


def check(container: Container, script: str, envs: dict[str, str] | None = None) -> str:
    """Run a shell script in the container; fail the test with its output on a non-zero exit."""
    result = run_in(container, script, envs)
    assert result.return_code == 0, (
        f"`{script}` exited {result.return_code}\n"
        f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    )
    return result.stdout


@pytest.fixture(scope="module")
def resources() -> Iterator[Resources]:
    created = Resources()
    try:
        yield created
    finally:
        errors = created.cleanup()
        if errors:
            warnings.warn("cleanup left things behind: " + "; ".join(errors), stacklevel=1)


@pytest.fixture(scope="module")
def dnstest_image() -> str:
    require_docker()  # fails without an engine, unless AIRFLOW_K3S_SKIP_DOCKER_TESTS=1
    debian_image = os.environ.get("AIRFLOW_K3S_DEBIAN_IMAGE", LOCAL_DEBIAN_IMAGE)
    if debian_image == LOCAL_DEBIAN_IMAGE and not docker.image_exists(debian_image):
        # A cold machine: make the local Debian base the way `invoke up` does (IMAGES=local).
        images.ensure_local_bases(docker, Settings.load())
    # BuildKit where the CLI has it, the classic builder otherwise: the Dockerfile needs neither
    # cache mounts nor secrets, so both work.
    docker.build(FIXTURES_DIR, DNSTEST_IMAGE, DNSTEST_DOCKERFILE, {"DEBIAN_IMAGE": debian_image})
    return DNSTEST_IMAGE


def start_node(
    resources: Resources,
    image: str,
    name: str,
    network: str,
    extra_volumes: list[tuple[Path, str]] | None = None,
) -> Container:
    """A stand-in for the k3s container: the entrypoint mounted where compose mounts it.

    compose runs k3s privileged. Where `--privileged` cannot start a container (an engine that
    itself runs without CAP_SYS_RESOURCE refuses the full capability set), the same powers this
    test needs come from NET_ADMIN (iptables, veth), SYS_ADMIN (ip netns) and a writable /proc/sys
    (route_localnet), which is what privileged gives.
    """
    mounts = [f"--volume={ENTRYPOINT}:{ENTRYPOINT_IN_CONTAINER}:ro"]
    mounts += [f"--volume={src}:{dst}:ro" for src, dst in (extra_volumes or [])]
    run = ["run", "--detach", f"--name={name}", f"--network={network}", *mounts]
    resources.containers.append(name)
    privileged = docker.docker(*run, "--privileged", image, check=False)
    if privileged.returncode == 0:
        return name
    docker.docker("rm", "--force", name, check=False)
    warnings.warn(
        f"--privileged did not start here ({privileged.stderr.strip()}); "
        "using NET_ADMIN + SYS_ADMIN and a writable /proc/sys instead",
        stacklevel=1,
    )
    docker.docker(*run, "--cap-add=NET_ADMIN", "--cap-add=SYS_ADMIN", image)
    check(name, "mount -o remount,rw /proc/sys")
    return name


def addresses(container: Container) -> dict[str, str]:
    """network -> the container's IPv4 address on it."""
    networks = docker.inspect("container", container)["NetworkSettings"]["Networks"] or {}
    return {net: str(info["IPAddress"]) for net, info in networks.items()}


@pytest.fixture(scope="module")
def user_network(resources: Resources, dnstest_image: str) -> str:
    name = f"{NAME_PREFIX}-net"
    resources.networks.append(name)
    docker.docker("network", "create", name)
    return name


@pytest.fixture(scope="module")
def target_ip(resources: Resources, dnstest_image: str, user_network: str) -> str:
    """A container reachable as `postgres` on the network, like the compose service."""
    name = f"{NAME_PREFIX}-target"
    resources.containers.append(name)
    docker.docker(
        "run",
        "--detach",
        f"--name={name}",
        f"--network={user_network}",
        f"--network-alias={TARGET_ALIAS}",
        dnstest_image,
        "sleep",
        "infinity",
    )
    ip = addresses(name)[user_network]
    assert ip, f"target container has no IPv4 address on {user_network}"
    assert IPV4.match(ip), f"not an IPv4 address: {ip!r}"
    return ip


@pytest.fixture(scope="module")
def node(resources: Resources, dnstest_image: str, user_network: str) -> Container:
    return start_node(resources, dnstest_image, f"{NAME_PREFIX}-node", user_network)


@pytest.fixture(scope="module")
def pod_netns(node: Container) -> str:
    """A network namespace standing in for a pod, wired like k3s's CNI wires one (veth pair,
    default route via the node side). DNS to the node's own IP is delivered locally, so neither
    ip_forward nor MASQUERADE is needed for it (k3s sets both up anyway for other traffic)."""
    return add_pod_netns(node)


def add_pod_netns(node: Container) -> str:
    """A network namespace in the node container, wired to it by a veth pair; its name."""
    check(
        node,
        f"""
        set -eu
        ip netns add {POD_NETNS}
        ip link add vpod-node type veth peer name vpod-pod
        ip link set vpod-pod netns {POD_NETNS}
        ip addr add {POD_GATEWAY}/24 dev vpod-node
        ip link set vpod-node up
        ip -n {POD_NETNS} link set lo up
        ip -n {POD_NETNS} addr add {POD_IP}/24 dev vpod-pod
        ip -n {POD_NETNS} link set vpod-pod up
        ip -n {POD_NETNS} route add default via {POD_GATEWAY}
        """,
    )
    return POD_NETNS


def run_dns_setup(node: Container) -> str:
    """Run the entrypoint in DNS-only mode; return the resolver IP it printed."""
    stdout = check(node, f"sh {ENTRYPOINT_IN_CONTAINER}", envs={"AIRFLOW_K3S_DNS_ONLY": "1"})
    lines = stdout.strip().splitlines()
    assert lines, "the entrypoint printed no resolver IP"
    resolver_ip = lines[-1].strip()
    assert IPV4.match(resolver_ip), f"not an IPv4 address: {resolver_ip!r}"
    return resolver_ip


def nameserver_of(node: Container) -> str:
    resolv_conf = check(node, f"cat {RESOLV_CONF}")
    nameservers = re.findall(r"^\s*nameserver\s+(\S+)", resolv_conf, flags=re.MULTILINE)
    assert len(nameservers) == 1, f"want exactly one nameserver in {RESOLV_CONF}:\n{resolv_conf}"
    return str(nameservers[0])


def resolve_from_pod(node: Container, netns: str, nameserver: str, name: str, tcp: bool) -> str:
    mode = "+tcp" if tcp else "+notcp"
    result = run_in(
        node,
        f"ip netns exec {netns} dig {mode} +short +time=3 +tries=2 "
        f"@{shlex.quote(nameserver)} {shlex.quote(name)}",
    )
    assert result.return_code == 0, (
        f"dig ({'tcp' if tcp else 'udp'}) from the pod netns failed ({result.return_code}):\n"
        f"{result.stdout}\n{result.stderr}"
    )
    return result.stdout.strip()


def test_pod_resolves_compose_name_through_docker_dns(
    node: Container, pod_netns: str, target_ip: str
) -> None:
    resolver_ip = run_dns_setup(node)

    node_ips = set(addresses(node).values())
    assert resolver_ip in node_ips, f"resolver {resolver_ip} is not the node's address ({node_ips})"
    nameserver = nameserver_of(node)
    assert nameserver == resolver_ip
    assert not nameserver.startswith("127."), "k3s rejects a loopback nameserver"

    for tcp in (False, True):
        answer = resolve_from_pod(node, pod_netns, nameserver, TARGET_ALIAS, tcp=tcp)
        proto = "tcp" if tcp else "udp"
        assert answer == target_ip, f"{proto}: {TARGET_ALIAS} -> {answer!r}, want {target_ip}"


def test_dns_setup_is_idempotent(node: Container, pod_netns: str, target_ip: str) -> None:
    first = run_dns_setup(node)
    second = run_dns_setup(node)
    assert first == second

    nat = check(node, "iptables-nft-save -t nat; iptables-legacy-save -t nat")
    hooks = re.findall(rf"^-A (\S+) -j {DNS_CHAIN}$", nat, flags=re.MULTILINE)
    assert sorted(hooks) == ["OUTPUT", "PREROUTING"], f"jumps to {DNS_CHAIN} wrong:\n{nat}"
    rules = re.findall(rf"^-A {DNS_CHAIN} .*-j DNAT .*$", nat, flags=re.MULTILINE)
    assert len(rules) == 2, f"expected one udp and one tcp DNAT rule in {DNS_CHAIN}:\n{nat}"

    nameserver = nameserver_of(node)
    for tcp in (False, True):
        assert resolve_from_pod(node, pod_netns, nameserver, TARGET_ALIAS, tcp=tcp) == target_ip


def test_engines_without_docker_output_chain_work_too(
    resources: Resources, dnstest_image: str, user_network: str, target_ip: str
) -> None:
    """An engine with the nftables firewall backend keeps its DNS rules out of iptables: no
    DOCKER_OUTPUT chain. Removing Docker's chains here leaves the same view; the resolver's ports
    come from its sockets, so pods still resolve compose names."""
    nft_node = start_node(resources, dnstest_image, f"{NAME_PREFIX}-nft", user_network)
    check(
        nft_node,
        """
        set -eu
        for save in iptables-nft-save iptables-legacy-save; do
            tool="${save%-save}"
            $save -t nat | grep -q '^:DOCKER_OUTPUT ' || continue
            $tool -t nat -D OUTPUT -d 127.0.0.11/32 -j DOCKER_OUTPUT
            $tool -t nat -D POSTROUTING -d 127.0.0.11/32 -j DOCKER_POSTROUTING
            $tool -t nat -F DOCKER_OUTPUT; $tool -t nat -X DOCKER_OUTPUT
            $tool -t nat -F DOCKER_POSTROUTING; $tool -t nat -X DOCKER_POSTROUTING
        done
        ! iptables-nft-save -t nat | grep -q DOCKER_OUTPUT
        ! iptables-legacy-save -t nat | grep -q DOCKER_OUTPUT
        """,
    )
    result = run_in(nft_node, f"sh {ENTRYPOINT_IN_CONTAINER}", envs={"AIRFLOW_K3S_DNS_ONLY": "1"})
    assert result.return_code == 0, f"{result.stdout}\n{result.stderr}"
    assert "no DOCKER_OUTPUT chain in any iptables backend" in result.stderr
    netns = add_pod_netns(nft_node)
    nameserver = nameserver_of(nft_node)
    for tcp in (False, True):
        assert resolve_from_pod(nft_node, netns, nameserver, TARGET_ALIAS, tcp) == target_ip


def test_fails_loudly_without_dockers_embedded_dns(
    resources: Resources, dnstest_image: str
) -> None:
    # The default bridge network has no embedded DNS resolver.
    bridge_node = start_node(resources, dnstest_image, f"{NAME_PREFIX}-bridge", "bridge")
    result = run_in(
        bridge_node, f"sh {ENTRYPOINT_IN_CONTAINER}", envs={"AIRFLOW_K3S_DNS_ONLY": "1"}
    )
    assert result.return_code != 0, f"succeeded without embedded DNS:\n{result.stdout}"
    assert "ERROR: Docker's embedded DNS resolver does not listen on 127.0.0.11" in result.stderr
    assert "user-defined network" in result.stderr
    assert result.stdout.strip() == "", f"no resolver IP should be printed:\n{result.stdout}"


def test_full_start_prepares_and_execs_k3s(
    resources: Resources, dnstest_image: str, user_network: str
) -> None:
    """Steps b.-d. with a stub in place of /bin/k3s (the only part k3s itself would do)."""
    dest = "/tmp/k3s-manifests"
    full_node = start_node(
        resources,
        dnstest_image,
        f"{NAME_PREFIX}-full",
        user_network,
        extra_volumes=[(MANIFESTS, f"{dest}/airflow-k3s")],
    )
    check(
        full_node,
        f"""
        set -eu
        printf '%s\\n' '#!/bin/sh' 'echo "stub-pid=$$"' 'for a in "$@"; do echo "arg=$a"; done' \\
            >/tmp/fake-k3s
        chmod +x /tmp/fake-k3s
        echo 'stale: true' >{dest}/airflow-k3s-shared-volume.yaml
        echo 'other: true' >{dest}/someone-else.yaml
        """,
    )
    envs = {"AIRFLOW_K3S_BIN": "/tmp/fake-k3s", "AIRFLOW_K3S_MANIFESTS_DIR": dest}
    result = run_in(
        full_node,
        f'echo "shell-pid=$$"; '
        f"exec sh {ENTRYPOINT_IN_CONTAINER} server --tls-san=k3s --disable=traefik",
        envs=envs,
    )
    assert result.return_code == 0, f"{result.stdout}\n{result.stderr}"
    out = result.stdout.splitlines()
    shell_pid = next(line.split("=", 1)[1] for line in out if line.startswith("shell-pid="))
    stub_pid = next(line.split("=", 1)[1] for line in out if line.startswith("stub-pid="))
    assert stub_pid == shell_pid, "k3s must replace the entrypoint (exec), to stay PID 1"
    args = [line.split("=", 1)[1] for line in out if line.startswith("arg=")]
    assert args == ["server", "--tls-san=k3s", "--disable=traefik", f"--resolv-conf={RESOLV_CONF}"]

    assert "CreateContainerConfigError" in result.stderr, "no warning about the missing Secret"
    assert f"manifests: {dest}/airflow-k3s (the repo's k3s/manifests)" in result.stderr
    listing = check(full_node, f"ls {dest}").split()
    assert "airflow-k3s-shared-volume.yaml" not in listing, "an old copy must go"
    assert "someone-else.yaml" in listing, "files not ours must be left alone"
    assert check(full_node, "stat -c '%u:%g %a' /var/lib/airflow-shared").strip() == "50000:0 2775"

    # A second start (container restart) ends in the same state.
    again = run_in(full_node, f"sh {ENTRYPOINT_IN_CONTAINER} server", envs=envs)
    assert again.return_code == 0, f"{again.stdout}\n{again.stderr}"
    assert sorted(check(full_node, f"ls {dest}").split()) == sorted(listing)
