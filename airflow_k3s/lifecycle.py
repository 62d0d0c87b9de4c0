"""The stack's life cycle: secrets, up, down, clean, status, the kubeconfig copies, settings."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import yaml

from airflow_k3s import airflow_objects, bundles, identities, images, pools, shell, userfiles
from airflow_k3s.boundary import Stack
from airflow_k3s.cluster import K3S_KUBECONFIG, write_kubeconfigs
from airflow_k3s.docker import ONE_SHOTS, failed_services
from airflow_k3s.exits import ExitCode, UserError
from airflow_k3s.generated import (
    ADMIN_USER,
    NAMESPACE_FILE,
    SECRET_KEYS,
    WORKER_SECRET_NAME,
    generate_secrets,
    parse_env_file,
    render_env_file,
    render_executor_namespace,
    render_worker_secret,
    worker_env,
    write_private,
)
from airflow_k3s.settings import Settings, published_ports
from airflow_k3s.shell import say


def ensure_secrets(cfg: Settings) -> Settings:
    """Generate missing secrets into .env (mode 600) and render the cluster's manifests."""
    env_file = cfg.env_file
    current = parse_env_file(env_file.read_text()) if env_file.exists() else {}
    updated = generate_secrets(current)
    if updated != current or not env_file.exists():
        say(f"generating secrets into {env_file} (git-ignored, mode 600)")
        write_private(env_file, render_env_file(updated))
    os.chmod(env_file, 0o600)
    # What compose will use: a value exported in the shell beats .env.
    effective = {k: os.environ.get(k) or updated[k] for k in SECRET_KEYS}
    render_manifests(cfg, worker_env(airflow_config(cfg), effective))
    write_dag_source(cfg)
    return dataclasses.replace(cfg, secrets=effective)


def render_manifests(cfg: Settings, worker: dict[str, str]) -> None:
    """What k3s applies from .generated/k3s: the executor's namespace and shared volume, the
    identities and the worker Secret, all in the executor's namespace."""
    rendered, namespace = cfg.generated / "k3s", cfg.namespace
    write_private(rendered / NAMESPACE_FILE, render_executor_namespace(namespace))
    write_private(rendered / "airflow-identities.yaml", identities.render(namespace))
    kpo = identities.render(namespace, (identities.KPO,))
    write_private(rendered / "airflow-kpo-rbac.yaml", kpo)
    secret = render_worker_secret(worker, namespace)
    write_private(rendered / f"{WORKER_SECRET_NAME}.yaml", secret)


def airflow_config(cfg: Settings) -> dict[str, str]:
    """The Airflow configuration of every service and worker pod: airflow.env, and what
    DAG_SOURCE adds to it (.generated/dag-source.env, which compose reads after airflow.env)."""
    return {**cfg.airflow_env, **bundles.dag_source_env(cfg)}


def write_dag_source(cfg: Settings) -> None:
    """.generated/dag-source.env: the configuration DAG_SOURCE adds (no file for `image`)."""
    path = cfg.generated / "dag-source.env"
    extra = bundles.dag_source_env(cfg)
    if extra:
        write_private(path, render_env_file(extra))
    else:
        path.unlink(missing_ok=True)


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something already listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def port_conflicts(cfg: Settings, running: set[str], taken: Callable[[int], bool]) -> list[str]:
    """One message per published port that another program holds (our running services excluded)."""
    problems = []
    for port in published_ports(cfg.root):
        number = cfg.ports[port.variable]
        if port.service not in running and taken(number):
            problems.append(
                f"port {number} ({port.service}) is already in use: free it or set "
                f"{port.variable}=<free port> in the environment or .env"
            )
    return problems


def up(stack: Stack, build: bool, timeout: float) -> None:
    """Secrets, images, `compose up`, healthy, worker image pushed, kubeconfig, worker Secret."""
    docker = stack.docker
    docker.check()
    userfiles.check_all(stack.cfg)
    cfg = stack.use(ensure_secrets(stack.cfg)).cfg
    problems = port_conflicts(cfg, docker.running_services(), port_taken)
    if problems:
        raise UserError("; ".join(problems), ExitCode.PORT_TAKEN)
    if build:
        images.build_all(stack)
    if cfg.git_dags:
        bundles.prepare(cfg)
    wanted = render_agents(stack)
    say(
        f"starting the stack (project {cfg.project}, IMAGES={cfg.images}, "
        f"DAG_SOURCE={cfg.dag_source})"
    )
    try:
        docker.up()
    except UserError as exc:
        with contextlib.suppress(UserError):
            docker.wait_healthy(timeout=0)  # prints the services' states and logs
        raise exc from None  # compose's own reason (a port taken by Docker itself, ...)
    docker.wait_healthy(timeout)
    images.push_worker(stack)
    host, _ = refresh_kubeconfigs(stack)
    say(f"kubeconfig for the host: {host}")
    remove_gone_nodes(stack, wanted)
    apply_pod_security(stack)
    stack.kube.wait_worker_secret(worker_env(airflow_config(cfg), dict(cfg.secrets)))
    apply_settings(stack)
    print(
        f"Airflow UI: {cfg.airflow_url}  (user {ADMIN_USER}, password: "
        f"AIRFLOW_ADMIN_PASSWORD in .env)"
    )


def render_agents(stack: Stack) -> list[str]:
    """.generated/compose.agents.yml from NODE_POOLS (no file without it): each agent node a
    compose service made from the k3s service as compose resolves it. The agents' node names."""
    cfg = stack.cfg
    cfg.agents_file.unlink(missing_ok=True)
    if not cfg.node_pools:
        return []
    found = pools.load(cfg.node_pools)
    server = stack.docker.config()["services"]["k3s"]
    header = f"# Generated by `invoke up` from {cfg.node_pools} (NODE_POOLS). Do not edit.\n"
    write_private(cfg.agents_file, header + yaml.safe_dump(pools.render(found, server)))
    names = pools.node_names(found)
    say(
        f"node pools from {cfg.node_pools}: {', '.join(p.name for p in found)} "
        f"({len(names)} agent nodes)"
    )
    return names


def remove_gone_nodes(stack: Stack, wanted: list[str]) -> None:
    """Delete the Node objects of agents no longer in NODE_POOLS (compose removed their
    containers; their volumes stay until `clean`)."""
    nodes = stack.kube.json("get", "nodes", "-l", pools.POOL_LABEL)["items"]
    for name in sorted({n["metadata"]["name"] for n in nodes} - set(wanted)):
        stack.kube.run("delete", "node", name)
        say(f"node {name} left the cluster (its pool is no longer in NODE_POOLS)")


def apply_pod_security(stack: Stack) -> None:
    """The executor's namespace enforces the Pod Security level of the settings (a namespace
    label that the API server's own admission reads: a pod that breaks it is refused)."""
    cfg = stack.cfg
    labels = identities.pod_security_labels(cfg.pod_security)
    stack.kube.run("label", "namespace", cfg.namespace, "--overwrite", *labels)
    say(f"namespace {cfg.namespace} enforces Pod Security level {cfg.pod_security} (POD_SECURITY)")


def read_k3s_kubeconfig(stack: Stack, timeout: float) -> str:
    """The kubeconfig k3s writes at start, waiting up to ``timeout`` seconds for it."""

    def written() -> str:
        try:
            return stack.docker.exec("k3s", ["cat", K3S_KUBECONFIG]).strip()
        except UserError:
            return ""  # not written yet, or k3s is restarting

    def missing() -> UserError:
        return UserError(
            f"k3s did not write its kubeconfig ({K3S_KUBECONFIG}) within {timeout:.0f} s: see "
            "`invoke logs --service k3s`",
            ExitCode.NO_KUBECONFIG,
        )

    return shell.poll("k3s's kubeconfig", written, timeout, 2, missing) + "\n"


def refresh_kubeconfigs(stack: Stack, timeout: float = 120) -> tuple[Path, Path]:
    """Rewrite k3s's kubeconfig: a copy for the host and one for containers (.generated/)."""
    stack.require("k3s")
    return write_kubeconfigs(stack.cfg, read_k3s_kubeconfig(stack, timeout))


def apply_settings(stack: Stack) -> dict[str, list[str]]:
    """Connections, variables and pools of the settings file, into Airflow (idempotent)."""
    cfg = stack.cfg
    found = airflow_objects.load(cfg.settings_file, cfg.airflow_env)
    done = airflow_objects.apply(stack.api(), found)
    say(f"settings from {cfg.settings_file}: {found.count()}")
    return done


def down(stack: Stack, timeout: int) -> None:
    """Stop the stack and keep its data."""
    stack.docker.check()
    stack.docker.down(timeout)
    say("stopped; data kept (`invoke clean` deletes it)")


def clean(stack: Stack) -> None:
    """Delete the stack's containers, network, volumes and generated files (saying which)."""
    cfg, docker = stack.cfg, stack.docker
    docker.check()
    volumes = docker.project_objects("volume")
    say(
        f"deleting project {cfg.project}: containers, network, volumes "
        f"({', '.join(volumes) or 'none'}), .env and .generated/"
    )
    docker.down(timeout=10, volumes=True)
    # Volumes of services the compose files no longer name (the agents of pools taken out of
    # NODE_POOLS) are the project's too.
    docker.remove_volumes(docker.project_objects("volume"))
    if docker.image_exists(cfg.worker_image):  # this registry port's tag (layers are shared)
        docker.remove_image(cfg.worker_image)
    shutil.rmtree(cfg.generated, ignore_errors=True)
    cfg.env_file.unlink(missing_ok=True)


def status_problem(states: dict[str, str]) -> tuple[str, ExitCode] | None:
    """What is wrong with the stack, from its services' states, and the exit code that says it:
    not running (no service up), or services unhealthy or exited with an error."""
    if not any(not st.startswith("exited") for s, st in states.items() if s not in ONE_SHOTS):
        return "the stack is not running: `make up` starts it", ExitCode.NOT_RUNNING
    bad = failed_services(states)
    if bad:
        what = ", ".join(f"{s} is {st}" for s, st in sorted(bad.items()))
        return f"{what}: `invoke logs --service <service>` says why", ExitCode.FAILED
    return None


def status(stack: Stack) -> None:
    """Print each service and its health, then the cluster's nodes and pods; fail when the stack
    is not running or a service is unhealthy."""
    cfg = stack.cfg
    stack.docker.check()
    states = stack.docker.service_states()
    for service, state in sorted(states.items()):
        print(f"{service:24} {state}")
    up_states = ("healthy", "starting", "running", "unhealthy")
    if states.get("k3s") in up_states and cfg.host_kubeconfig.exists():
        shell.attach(stack.kube.argv(["get", "nodes", "-o", "wide", "-L", pools.POOL_LABEL]))
        shell.attach(stack.kube.argv(["get", "pods", "-n", stack.kube.namespace, "-o", "wide"]))
    problem = status_problem(states)
    if problem:
        message, code = problem
        raise UserError(f"project {cfg.project}: {message}", code)
