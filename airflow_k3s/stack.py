"""The stack's life cycle: secrets, up, down, clean, status."""

from __future__ import annotations

import dataclasses
import os
import shutil
import socket
import subprocess
from collections.abc import Callable

from airflow_k3s import cluster, compose, images, objects, userfiles
from airflow_k3s.airflow_api import AirflowAPI
from airflow_k3s.compose import say
from airflow_k3s.exits import ExitCode, UserError
from airflow_k3s.rendering import (
    ADMIN_USER,
    SECRET_KEYS,
    WORKER_SECRET_NAME,
    generate_secrets,
    parse_env_file,
    render_env_file,
    render_kpo_rbac,
    render_worker_secret,
    worker_env,
    write_private,
)
from airflow_k3s.settings import Settings, published_ports


def worker_environment(cfg: Settings, secret_values: dict[str, str]) -> dict[str, str]:
    """What every worker pod gets through the Secret: airflow/airflow.env plus S3 credentials."""
    config = parse_env_file((cfg.root / "airflow" / "airflow.env").read_text())
    return worker_env(config, secret_values)


def ensure_secrets(cfg: Settings) -> Settings:
    """Generate missing secrets into .env (mode 600) and render the worker Secret."""
    env_file = cfg.env_file
    current = parse_env_file(env_file.read_text()) if env_file.exists() else {}
    updated = generate_secrets(current)
    if updated != current or not env_file.exists():
        say(f"generating secrets into {env_file} (git-ignored, mode 600)")
        write_private(env_file, render_env_file(updated))
    os.chmod(env_file, 0o600)
    # What compose will use: a value exported in the shell beats .env.
    effective = {k: os.environ.get(k) or updated[k] for k in SECRET_KEYS}
    worker = worker_environment(cfg, effective)
    namespace = worker.get("AIRFLOW__KUBERNETES_EXECUTOR__NAMESPACE", "default")
    secret = render_worker_secret(worker, namespace)
    write_private(cfg.generated / "k3s" / f"{WORKER_SECRET_NAME}.yaml", secret)
    write_private(cfg.generated / "k3s" / "airflow-kpo-rbac.yaml", render_kpo_rbac(namespace))
    return dataclasses.replace(cfg, secrets=effective)


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


def up(cfg: Settings, build: bool, timeout: float) -> Settings:
    """Secrets, images, `compose up`, healthy, worker image pushed, kubeconfig, worker Secret."""
    compose.check_docker()
    userfiles.check_all(cfg)
    cfg = ensure_secrets(cfg)
    docker = compose.client(cfg)
    problems = port_conflicts(cfg, compose.running_services(docker), port_taken)
    if problems:
        raise UserError("; ".join(problems), ExitCode.PORT_TAKEN)
    if build:
        images.build_all(cfg)
    say(f"starting the stack (project {cfg.project}, IMAGES={cfg.images})")
    try:
        with compose.docker_errors():
            docker.compose.up(detach=True, no_build=True, quiet=True)
    except UserError:
        compose.wait_healthy(cfg, timeout=0)  # prints what failed and its logs, then fails
        raise
    compose.wait_healthy(cfg, timeout)
    images.push_worker(cfg)
    host, _ = cluster.refresh_kubeconfigs(cfg)
    say(f"kubeconfig for the host: {host}")
    cluster.wait_worker_secret(cfg, worker_environment(cfg, dict(cfg.secrets)))
    apply_settings(cfg)
    print(
        f"Airflow UI: {cfg.airflow_url}  (user {ADMIN_USER}, password: "
        f"AIRFLOW_ADMIN_PASSWORD in .env)"
    )
    return cfg


def apply_settings(cfg: Settings) -> dict[str, list[str]]:
    """Connections, variables and pools of the settings file, into Airflow (idempotent)."""
    airflow_env = parse_env_file((cfg.root / "airflow" / "airflow.env").read_text())
    found = objects.load(cfg.settings_file, airflow_env)
    compose.require_running(cfg)
    client = AirflowAPI(cfg.airflow_url, cfg.secrets.get("AIRFLOW_ADMIN_PASSWORD", ""))
    done = objects.apply(client, found)
    say(f"settings from {cfg.settings_file}: {found.count()}")
    return done


def down(cfg: Settings, timeout: int) -> None:
    """Stop the stack and keep its data."""
    compose.check_docker()
    with compose.docker_errors():
        compose.client(cfg).compose.down(timeout=timeout, quiet=True)
    say("stopped; data kept (`invoke clean` deletes it)")


def clean(cfg: Settings) -> None:
    """Delete the stack's containers, network, volumes and generated files (saying which)."""
    compose.check_docker()
    docker = compose.client(cfg)
    with compose.docker_errors():
        label = f"com.docker.compose.project={cfg.project}"
        volumes = [v.name for v in docker.volume.list(filters=[("label", label)])]
        say(
            f"deleting project {cfg.project}: containers, network, volumes "
            f"({', '.join(volumes) or 'none'}), .env and .generated/"
        )
        docker.compose.down(volumes=True, remove_orphans=True, timeout=10, quiet=True)
        if docker.image.exists(cfg.worker_image):  # this registry port's tag (layers are shared)
            docker.image.remove(cfg.worker_image)
    shutil.rmtree(cfg.generated, ignore_errors=True)
    cfg.env_file.unlink(missing_ok=True)


def status(cfg: Settings) -> bool:
    """Print each service and its health, then the cluster's nodes and pods (False: not up)."""
    compose.check_docker()
    with compose.docker_errors():
        states = compose.service_states(compose.client(cfg))
    if not states:
        print(f"the stack (project {cfg.project}) is not running: `make up` starts it")
        return False
    for service, state in sorted(states.items()):
        print(f"{service:24} {state}")
    if (
        states.get("k3s") in ("healthy", "starting", "running", "unhealthy")
        and cfg.host_kubeconfig.exists()
    ):
        subprocess.run(cluster.kubectl_cmd(cfg, ["get", "nodes,pods", "-o", "wide"]), check=False)
    return True
