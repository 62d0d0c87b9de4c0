"""Task library of airflow-k3s (`invoke --list`). Docker is driven through python-on-whales.

Configuration lives in one place, `Settings`: the environment, then the git-ignored .env (ports,
IMAGES=upstream|local, generated secrets). Logic is in pure functions, tested without Docker.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import httpx
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task
from python_on_whales import DockerClient
from python_on_whales.exceptions import DockerException

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "airflow"))
sys.path.insert(1, str(ROOT / "dags"))
import airflow_k3s as ak  # noqa: E402  (shared with the Airflow containers)

DEMO_DAG = "demo_rest_to_s3"
MIN_COMPOSE = (2, 24, 0)
DEBIAN_MIRROR = "http://deb.debian.org/debian"
LOCAL_DEBIAN_IMAGE = "airflow-k3s/debian:bookworm-local"
LOCAL_PYTHON_IMAGE = "airflow-k3s/python:3.11-local"
STANDIN_LABEL = "airflow-k3s.standin=pod"
K3S_KUBECONFIG = "/output/kubeconfig.yaml"  # K3S_KUBECONFIG_OUTPUT in docker-compose.yml
#: Published ports: variable, default, service. Every one binds to 127.0.0.1.
PORTS = {
    "AIRFLOW_PORT": (8080, "airflow-apiserver"),
    "REGISTRY_PORT": (5001, "registry"),
    "S3_PORT": (8333, "s3"),
    "MOCKSERVER_PORT": (1080, "mockserver"),
    "K3S_API_PORT": (6443, "k3s"),
}


def say(message: str) -> None:
    """Progress line on stderr (stdout stays for results)."""
    print(f"==> {message}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Settings:
    """Everything configurable, read once from the environment and the generated .env."""

    images: str = "upstream"
    project: str = "airflow-k3s"
    ports: Mapping[str, int] = field(default_factory=lambda: {k: v[0] for k, v in PORTS.items()})
    extra_ca_bundle: str = ""
    secrets: Mapping[str, str] = field(default_factory=dict)
    root: Path = ROOT
    #: Where .env and .generated/ live: the checkout, or $AIRFLOW_K3S_STATE_DIR (tests: a temp dir).
    state_dir: Path = ROOT

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, root: Path = ROOT) -> Settings:
        """Settings from ``environ`` (default os.environ) over the state dir's .env."""
        environ = os.environ if environ is None else environ
        state_dir = Path(environ.get("AIRFLOW_K3S_STATE_DIR") or root)
        env_file = state_dir / ".env"
        dotenv = ak.parse_env_file(env_file.read_text()) if env_file.exists() else {}
        merged = {**dotenv, **environ}
        images = merged.get("IMAGES", "upstream")
        if images not in ("upstream", "local"):
            raise Exit(f"IMAGES must be 'upstream' or 'local', not {images!r}", code=2)
        ports: dict[str, int] = {}
        for name, (default, _service) in PORTS.items():
            raw = merged.get(name, str(default))
            if not raw.isdigit() or not 0 < int(raw) < 65536:
                raise Exit(f"{name} must be a port number, not {raw!r}", code=2)
            ports[name] = int(raw)
        return cls(
            images=images,
            project=merged.get("COMPOSE_PROJECT_NAME", "airflow-k3s"),
            ports=ports,
            extra_ca_bundle=merged.get("EXTRA_CA_BUNDLE", ""),
            secrets={k: dotenv[k] for k in ak.SECRET_KEYS if k in dotenv},
            root=root,
            state_dir=state_dir,
        )

    @property
    def k3s(self) -> bool:
        """Whether the stack has a real k3s (upstream images) or the local stand-in."""
        return self.images == "upstream"

    @property
    def compose_files(self) -> list[Path]:
        files = [self.root / "docker-compose.yml"]
        if self.images == "local":
            files.append(self.root / "tests" / "images" / "compose.local.yml")
        return files

    @property
    def env_file(self) -> Path:
        return self.state_dir / ".env"

    @property
    def generated(self) -> Path:
        return self.state_dir / ".generated"

    @property
    def compose_env(self) -> dict[str, str]:
        """Variables the compose file interpolates that tasks decide (image source, state dir)."""
        env = {"AIRFLOW_K3S_GENERATED": str(self.generated)}
        if self.images == "local":
            env["PYTHON_BASE_IMAGE"] = LOCAL_PYTHON_IMAGE
        return env

    @property
    def airflow_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['AIRFLOW_PORT']}"

    @property
    def s3_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['S3_PORT']}"

    @property
    def worker_image(self) -> str:
        """The worker image as the host pushes it (in the stack: registry:5000/airflow-worker)."""
        return f"127.0.0.1:{self.ports['REGISTRY_PORT']}/airflow-worker:latest"

    @property
    def airflow_image(self) -> str:
        return "airflow-k3s/airflow:3.3.2"


def settings() -> Settings:
    """The settings of this invocation (re-read each time: tasks may have written .env)."""
    return Settings.load()


# --------------------------------------------------------------------------- docker boundary

P = ParamSpec("P")
R = TypeVar("R")


def docker_errors(func: Callable[P, R]) -> Callable[P, R]:
    """Turn python-on-whales' DockerException into one clear line and a non-zero exit."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except DockerException as exc:
            detail = (exc.stderr or exc.stdout or str(exc)).strip().splitlines()
            last = detail[-1] if detail else str(exc)
            command = " ".join(exc.docker_command[:4])
            raise Exit(f"docker failed: {command} ...: {last}", code=1) from None
        except httpx.HTTPError as exc:
            raise Exit(f"the Airflow API did not answer as expected: {exc}", code=1) from None

    return wrapper


def compose(cfg: Settings) -> DockerClient:
    """The one place the compose client is configured."""
    os.environ.update(cfg.compose_env)
    if not cfg.env_file.exists():
        # Before the first `up` there are no secrets; commands that only look (status, down,
        # doctor) still need the file to interpolate. `up` writes .env before it gets here.
        for key in ak.SECRET_KEYS:
            os.environ.setdefault(key, "not-generated-yet")
    return DockerClient(
        compose_files=list(cfg.compose_files),
        compose_project_name=cfg.project,
        compose_project_directory=cfg.root,
        compose_env_files=[cfg.env_file] if cfg.env_file.exists() else [],
    )


def parse_version(text: str) -> tuple[int, ...]:
    """'v2.40.3-desktop.1' -> (2, 40, 3)."""
    core = text.strip().lstrip("v").split("-")[0].split("+")[0]
    return tuple(int(p) for p in core.split(".")[:3] if p.isdigit())


def check_docker() -> None:
    """Fail with one clear line when Docker or compose is missing or too old."""
    if shutil.which("docker") is None:
        raise Exit(
            "Docker is not installed: install Docker (or on Debian run "
            "tests/images/ensure-docker.sh)",
            code=3,
        )
    info = subprocess.run(
        ["docker", "info", "--format", "{{.ServerVersion}}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if info.returncode != 0:
        raise Exit(
            "the Docker engine is not running or not reachable: start it "
            "(on Debian: tests/images/ensure-docker.sh)",
            code=3,
        )
    ver = subprocess.run(
        ["docker", "compose", "version", "--short"], capture_output=True, text=True, check=False
    )
    if ver.returncode != 0:
        raise Exit(
            "docker compose v2 is missing: install the compose plugin "
            "(tests/images/ensure-docker.sh does it on Debian)",
            code=3,
        )
    if parse_version(ver.stdout) < MIN_COMPOSE:
        want = ".".join(map(str, MIN_COMPOSE))
        raise Exit(
            f"docker compose {ver.stdout.strip()} is too old: {want} or newer needed", code=3
        )


def port_taken(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something already listens on host:port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def port_conflicts(cfg: Settings, running: set[str], taken: Callable[[int], bool]) -> list[str]:
    """One message per published port that another program holds (our running services excluded)."""
    problems = []
    for name, (_default, service) in PORTS.items():
        if service == "k3s" and not cfg.k3s:
            continue
        port = cfg.ports[name]
        if service not in running and taken(port):
            problems.append(
                f"port {port} ({service}) is already in use: free it or set {name}="
                f"<free port> in the environment or .env"
            )
    return problems


# --------------------------------------------------------------------------- generated files


def ensure_secrets(cfg: Settings) -> Settings:
    """Generate missing secrets into .env (mode 600) and render the worker Secret."""
    env_file = cfg.env_file
    current = ak.parse_env_file(env_file.read_text()) if env_file.exists() else {}
    updated = ak.generate_secrets(current)
    if updated != current or not env_file.exists():
        say(f"generating secrets into {env_file} (git-ignored, mode 600)")
        ak.write_private(env_file, ak.render_env_file(updated))
    os.chmod(env_file, 0o600)
    config = ak.parse_env_file((cfg.root / "airflow" / "airflow.env").read_text())
    secret = ak.render_worker_secret(ak.worker_env(config, updated))
    ak.write_private(cfg.generated / "k3s" / f"{ak.WORKER_SECRET_NAME}.yaml", secret)
    return dataclasses.replace(cfg, secrets={k: updated[k] for k in ak.SECRET_KEYS})


def sync_extra_ca(cfg: Settings) -> None:
    """Copy $EXTRA_CA_BUNDLE into the build contexts that pip runs in (only when it changed)."""
    targets = [cfg.root / "airflow" / "extra-ca", cfg.root / "tests" / "images" / "extra-ca"]
    source = Path(cfg.extra_ca_bundle) if cfg.extra_ca_bundle else None
    if source is not None and not source.is_file():
        raise Exit(f"EXTRA_CA_BUNDLE={source} is not a file", code=2)
    for folder in targets:
        dest = folder / "ca-bundle.crt"
        if source is None:
            dest.unlink(missing_ok=True)
        elif not dest.exists() or dest.read_bytes() != source.read_bytes():
            shutil.copyfile(source, dest)


# --------------------------------------------------------------------------- images


def build_specs(config: Mapping[str, Any], active: set[str]) -> dict[str, dict[str, Any]]:
    """Unique images to build (tag -> build spec) from a resolved compose config."""
    specs: dict[str, dict[str, Any]] = {}
    for name, service in config.get("services", {}).items():
        if name in active and service.get("build") and service.get("image"):
            specs.setdefault(service["image"], service["build"])
    return specs


@functools.cache
def has_buildx() -> bool:
    return (
        subprocess.run(["docker", "buildx", "version"], capture_output=True, check=False).returncode
        == 0
    )


def build_image(
    docker: DockerClient,
    context: Path,
    tag: str,
    dockerfile: Path | None = None,
    args: Mapping[str, str] | None = None,
) -> None:
    """Build one image with BuildKit where buildx exists, else the classic builder."""
    started = time.monotonic()
    say(f"building {tag}")
    kwargs: dict[str, Any] = {"tags": [tag], "build_args": dict(args or {})}
    if dockerfile is not None:
        kwargs["file"] = dockerfile
    if has_buildx():
        docker.build(context, load=True, **kwargs)
    else:
        docker.legacy_build(context, **kwargs)
    say(f"built {tag} in {time.monotonic() - started:.1f} s")


def ensure_local_bases(docker: DockerClient, cfg: Settings) -> None:
    """IMAGES=local: a Debian base made with debootstrap and a python3 base, built once, cached."""
    if not docker.image.exists(LOCAL_DEBIAN_IMAGE):
        if shutil.which("debootstrap") is None:
            raise Exit(
                "IMAGES=local needs debootstrap to make the Debian base image: "
                "apt-get install debootstrap",
                code=3,
            )
        if os.geteuid() != 0:
            raise Exit(
                f"IMAGES=local makes {LOCAL_DEBIAN_IMAGE} once with debootstrap, which needs "
                "root: run this command once as root (sudo -E)",
                code=3,
            )
        say(f"making {LOCAL_DEBIAN_IMAGE} with debootstrap (once, about a minute)")
        with tempfile.TemporaryDirectory(prefix="airflow-k3s-rootfs-") as rootfs:
            subprocess.run(
                ["debootstrap", "--variant=minbase", "bookworm", rootfs, DEBIAN_MIRROR],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
            subprocess.run(
                ["docker", "import", "-", LOCAL_DEBIAN_IMAGE],
                stdin=tar.stdout,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            if tar.wait() != 0:
                raise Exit("tar of the debootstrap tree failed", code=1)
    if not docker.image.exists(LOCAL_PYTHON_IMAGE):
        images = cfg.root / "tests" / "images"
        build_image(
            docker,
            images,
            LOCAL_PYTHON_IMAGE,
            images / "python.Dockerfile",
            {"DEBIAN_IMAGE": LOCAL_DEBIAN_IMAGE},
        )


def build_all(cfg: Settings, worker_only: bool = False) -> None:
    """Build the service images the compose file builds (once each), then the worker image."""
    docker = compose(cfg)
    sync_extra_ca(cfg)
    if not worker_only:
        if cfg.images == "local":
            ensure_local_bases(docker, cfg)
        config = docker.compose.config(return_json=True)
        active = set(config.get("services", {}))
        for tag, spec in build_specs(config, active).items():
            context = Path(spec["context"])
            dockerfile = context / spec.get("dockerfile", "Dockerfile")
            build_image(docker, context, tag, dockerfile, spec.get("args") or {})
    build_image(
        docker,
        cfg.root,
        cfg.worker_image,
        cfg.root / "worker" / "Dockerfile",
        {"AIRFLOW_IMAGE": cfg.airflow_image},
    )


def push_worker(cfg: Settings) -> str:
    """Push the worker image to the stack's registry; return its repo digest."""
    docker = compose(cfg)
    say(f"pushing {cfg.worker_image}")
    started = time.monotonic()
    docker.image.push(cfg.worker_image, quiet=True)
    digests = docker.image.inspect(cfg.worker_image).repo_digests
    repo = cfg.worker_image.rsplit(":", 1)[0]
    digest = next((d.split("@", 1)[1] for d in digests if d.startswith(repo + "@")), "")
    say(f"pushed {cfg.worker_image} ({digest}) in {time.monotonic() - started:.1f} s")
    return digest


# --------------------------------------------------------------------------- stack health


def service_states(docker: DockerClient) -> dict[str, str]:
    """service -> 'healthy' | 'starting' | 'unhealthy' | 'running' | 'exited(N)' | ..."""
    states: dict[str, str] = {}
    for container in docker.compose.ps(all=True):
        labels = container.config.labels or {}
        service = labels.get("com.docker.compose.service", container.name)
        state = container.state
        if state.status == "exited":
            states[service] = f"exited({state.exit_code})"
        elif state.health is not None and state.health.status:
            states[service] = state.health.status
        else:
            states[service] = str(state.status)
    return states


def not_ready(states: Mapping[str, str], expected: set[str]) -> dict[str, str]:
    """Services not ready yet: one-shots must have exited 0, the rest be healthy or running."""
    pending = {}
    for service in sorted(expected):
        state = states.get(service, "missing")
        ok = state == "exited(0)" if service == "airflow-init" else state in ("healthy", "running")
        if not ok:
            pending[service] = state
    return pending


def wait_healthy(cfg: Settings, timeout: float) -> None:
    """Wait until every service is healthy, printing changes; diagnose and exit on failure."""
    docker = compose(cfg)
    expected = set(docker.compose.config(return_json=True).get("services", {}))
    deadline = time.monotonic() + timeout
    last: dict[str, str] = {}
    while True:
        pending = not_ready(service_states(docker), expected)
        if pending != last:
            say(
                "waiting for: " + ", ".join(f"{s} ({st})" for s, st in pending.items())
                if pending
                else "all services are healthy"
            )
            last = pending
        failed = {
            s: st
            for s, st in pending.items()
            if st == "unhealthy" or (st.startswith("exited") and st != "exited(0)")
        }
        if not pending:
            return
        if failed or time.monotonic() > deadline:
            dump_service_diagnostics(cfg, list(failed or pending))
            what = ", ".join(f"{s} is {st}" for s, st in (failed or pending).items())
            raise Exit(
                f"the stack did not become healthy: {what} (logs above; `invoke logs "
                f"<service>` for more)",
                code=1,
            )
        time.sleep(2)


def dump_service_diagnostics(cfg: Settings, services: list[str], tail: int = 40) -> None:
    """Print the state and the last log lines of the given services."""
    docker = compose(cfg)
    for service in services:
        print(f"----- {service}: last {tail} log lines", file=sys.stderr)
        try:
            print(docker.compose.logs(service, tail=str(tail)), file=sys.stderr)
        except DockerException as exc:
            print(f"(no logs: {exc})", file=sys.stderr)


def running_services(docker: DockerClient) -> set[str]:
    return {s for s, st in service_states(docker).items() if not st.startswith("exited")}


def require_running(cfg: Settings, service: str = "airflow-apiserver") -> None:
    """Fail with one clear line when the stack (or one service of it) is not running."""
    if service not in running_services(compose(cfg)):
        raise Exit(
            f"the stack is not running ({service} is not up): start it with `make up`", code=4
        )


# --------------------------------------------------------------------------- Airflow REST API


def parse_conf(conf: str) -> dict[str, Any]:
    """The --conf of a DAG run: a JSON object, or a clear Exit."""
    if not conf:
        return {}
    try:
        value = json.loads(conf)
    except json.JSONDecodeError as exc:
        raise Exit(
            f"--conf is not valid JSON ({exc.msg} at character {exc.pos}): {conf}", code=2
        ) from None
    if not isinstance(value, dict):
        raise Exit(f"--conf must be a JSON object like '{{\"key\": 1}}', not {conf}", code=2)
    return value


class AirflowAPI:
    """A small client of Airflow's REST API v2 (simple auth manager login)."""

    #: Seconds a new DAG file may take to appear (the dag-processor refreshes every 10 s).
    GRACE = 15.0

    def __init__(
        self,
        base_url: str,
        password: str,
        user: str = ak.ADMIN_USER,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=30, transport=transport)
        response = self.http.post("/auth/token", json={"username": user, "password": password})
        if response.status_code in (401, 403):
            raise Exit(
                f"login as {user!r} was refused by {base_url}: the password in .env "
                f"(AIRFLOW_ADMIN_PASSWORD) does not match the running stack",
                code=5,
            )
        response.raise_for_status()
        self.http.headers["Authorization"] = f"Bearer {response.json()['access_token']}"

    def get(self, path: str, **params: Any) -> Any:
        response = self.http.get(path, params=params)
        response.raise_for_status()
        return response.json()

    def dag_ids(self) -> list[str]:
        return sorted(d["dag_id"] for d in self.get("/api/v2/dags", limit=1000)["dags"])

    def import_errors(self) -> list[dict[str, Any]]:
        return list(self.get("/api/v2/importErrors", limit=100)["import_errors"])

    def find_dag(self, dag_id: str, timeout: float) -> None:
        """Wait for ``dag_id`` to be parsed; fail clearly with import errors or the known DAGs.

        With no DAG parsed yet it waits up to ``timeout``; once others are known, one refresh of
        the dag-processor (GRACE seconds) is enough for a new file to show up or fail to import.
        """
        started = time.monotonic()
        while True:
            response = self.http.get(f"/api/v2/dags/{dag_id}")
            if response.status_code == 200:
                return
            errors = self.import_errors()
            known = self.dag_ids()
            waited = time.monotonic() - started
            if errors or waited > timeout or (known and waited > min(timeout, self.GRACE)):
                break
            time.sleep(2)
        lines = [f"{e['filename']}: {e['stack_trace'].strip().splitlines()[-1]}" for e in errors]
        message = f"unknown DAG id {dag_id!r}; known DAGs: {', '.join(known) or 'none yet'}"
        if lines:
            message += "; DAG files that fail to import: " + "; ".join(lines)
        raise Exit(message, code=6)

    def trigger(self, dag_id: str, conf: Mapping[str, Any]) -> str:
        self.http.patch(f"/api/v2/dags/{dag_id}", json={"is_paused": False}).raise_for_status()
        response = self.http.post(
            f"/api/v2/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": dict(conf)}
        )
        response.raise_for_status()
        return str(response.json()["dag_run_id"])

    def run_state(self, dag_id: str, run_id: str) -> tuple[str, dict[str, dict[str, Any]]]:
        run = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
        tis = self.get(f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
        return str(run["state"]), {ti["task_id"]: ti for ti in tis}

    def task_log(self, dag_id: str, run_id: str, task_id: str, try_number: int) -> str:
        response = self.http.get(
            f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}/logs/{try_number}",
            params={"full_content": True},
            headers={"Accept": "application/json"},
        )
        response.raise_for_status()
        return render_log(response.json().get("content") or [])


def render_log(content: list[Any]) -> str:
    """Airflow 3's structured log messages as plain lines: 'timestamp [level] event'."""
    lines = []
    for item in content:
        if not isinstance(item, dict):
            lines.append(str(item))
            continue
        level = f"[{item['level']}]" if item.get("level") else ""
        event = str(item.get("event", ""))
        details = item.get("error_detail")
        if isinstance(details, list) and details and isinstance(details[0], dict):
            event += f": {details[0].get('exc_type', '')}: {details[0].get('exc_value', '')}"
        parts = (str(item.get("timestamp") or ""), level, event)
        lines.append(" ".join(p for p in parts if p))
    return "\n".join(lines)


def state_changes(before: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
    """Lines 'task: old -> new' for every task whose state changed."""
    return [
        f"{task_id}: {before.get(task_id) or 'none'} -> {state or 'none'}"
        for task_id, state in sorted(after.items())
        if before.get(task_id, "") != state
    ]


def api(cfg: Settings) -> AirflowAPI:
    require_running(cfg)
    return AirflowAPI(cfg.airflow_url, cfg.secrets.get("AIRFLOW_ADMIN_PASSWORD", ""))


def follow_run(cfg: Settings, client: AirflowAPI, dag_id: str, run_id: str, timeout: float) -> str:
    """Print task state changes until the run ends; on failure print logs and pod diagnostics."""
    deadline = time.monotonic() + timeout
    seen: dict[str, str] = {}
    while True:
        state, tis = client.run_state(dag_id, run_id)
        now = {task_id: str(ti.get("state") or "") for task_id, ti in tis.items()}
        for line in state_changes(seen, now):
            say(line)
        seen = now
        if state in ("success", "failed"):
            break
        if time.monotonic() > deadline:
            raise Exit(
                f"timed out after {timeout:.0f} s waiting for {dag_id} run {run_id} "
                f"(still {state}); see `invoke status` and the UI at {cfg.airflow_url}",
                code=7,
            )
        time.sleep(2)
    say(f"run {run_id} of {dag_id} ended: {state}")
    if state != "success":
        for task_id, ti in tis.items():
            if ti.get("state") == "failed" and ti.get("try_number"):
                try_number = int(ti["try_number"])
                print(f"----- log of {task_id} (try {try_number})", file=sys.stderr)
                try:
                    log = client.task_log(dag_id, run_id, task_id, try_number)
                except httpx.HTTPError as exc:
                    log = (
                        f"(task log not readable through the API: {exc}; the pod's output: "
                        f"invoke pod-logs {task_id} --dag-id {dag_id} --run-id {run_id})"
                    )
                print(log, file=sys.stderr)
                print_pod_diagnostics(cfg, dag_id, task_id, run_id)
    return state


def print_pod_diagnostics(cfg: Settings, dag_id: str, task_id: str, run_id: str = "") -> None:
    """The worker pod's status and events (k3s: `kubectl describe`, ErrImagePull included), or
    (IMAGES=local) the stand-in's: pods that could not start (pull errors, from the scheduler's
    log) and the newest container of the task with the error lines of its output."""
    selector = {"dag_id": dag_id, "task_id": task_id}
    if run_id:
        selector["run_id"] = pod_label_value(run_id)
    if cfg.k3s:
        wanted = ",".join(f"{k}={v}" for k, v in selector.items())
        subprocess.run(kubectl_cmd(cfg, ["describe", "pods", "-l", wanted]), check=False)
        return
    docker = compose(cfg)
    for line in standin_launch_errors(docker, dag_id, task_id, run_id)[-2:]:
        print(f"----- {line}", file=sys.stderr)
    pods = standin_pods(docker, cfg, *(f"pod.label/{k}={v}" for k, v in selector.items()))
    for container in pods[:1]:
        labels = container.config.labels or {}
        print(
            f"----- stand-in pod {container.name} (try {labels.get('pod.label/try_number', '?')}, "
            f"created {str(container.created)[:19]}): {container.state.status} "
            f"(exit {container.state.exit_code}, {container.state.error or 'no error'}); "
            f"its output: `invoke pod-logs {task_id} --dag-id {dag_id}`",
            file=sys.stderr,
        )
        output = str(docker.container.logs(container, tail=300)).splitlines()
        for line in [ln for ln in map(render_pod_line, output) if "[error]" in ln][-8:]:
            print(f"      {line}", file=sys.stderr)


def standin_pods(docker: DockerClient, cfg: Settings, *labels: str) -> list[Any]:
    """Containers the stand-in executor ran for this project (IMAGES=local), newest first."""
    wanted = [STANDIN_LABEL, f"airflow-k3s.project={cfg.project}", *labels]
    found = docker.container.list(all=True, filters=[("label", w) for w in wanted])
    return sorted(found, key=lambda c: str(c.created), reverse=True)


# --------------------------------------------------------------------------- kubectl


def kubectl_cmd(cfg: Settings, args: list[str]) -> list[str]:
    kubectl = shutil.which("kubectl", path=str(Path(sys.executable).parent)) or "kubectl"
    return [kubectl, "--kubeconfig", str(cfg.generated / "kubeconfig.yaml"), *args]


def write_kubeconfigs(cfg: Settings, raw: str) -> tuple[Path, Path]:
    """Write the host's and the containers' copies of k3s's kubeconfig (mode 600)."""
    host = cfg.generated / "kubeconfig.yaml"
    containers = cfg.generated / "kubeconfig-containers.yaml"
    port = cfg.ports["K3S_API_PORT"]
    ak.write_private(host, ak.rewrite_kubeconfig(raw, f"https://127.0.0.1:{port}"))
    ak.write_private(containers, ak.rewrite_kubeconfig(raw, "https://k3s:6443"))
    return host, containers


def require_k3s(cfg: Settings, what: str) -> None:
    if not cfg.k3s:
        raise Exit(
            f"{what} needs k3s, which IMAGES=local does not run (tasks run in stand-in "
            f"containers: `invoke status` lists them)",
            code=8,
        )


# --------------------------------------------------------------------------- tasks


@task(
    help={
        "no_build": "start with the images already built",
        "timeout": "seconds to wait for every service to be healthy",
    }
)
@docker_errors
def up(c: Context, no_build: bool = False, timeout: int = 600) -> None:
    """Generate secrets, build, start and wait until healthy, push the worker image."""
    check_docker()
    cfg = ensure_secrets(settings())
    docker = compose(cfg)
    problems = port_conflicts(cfg, running_services(docker), port_taken)
    if problems:
        raise Exit("; ".join(problems), code=9)
    if not no_build:
        build_all(cfg)
    if cfg.images == "local":
        say(
            "IMAGES=local: no k3s here; tasks run as stand-in containers built from the pod "
            "template (see README, 'Image sources')"
        )
    say(f"starting the stack (project {cfg.project})")
    try:
        docker.compose.up(detach=True, no_build=True, quiet=True)
    except DockerException:
        wait_healthy(cfg, timeout=0)  # prints what failed and its logs, then exits
        raise
    wait_healthy(cfg, timeout)
    push_worker(cfg)
    if cfg.k3s:
        kubeconfig(c)
    print(
        f"Airflow UI: {cfg.airflow_url}  (user {ak.ADMIN_USER}, password: "
        f"AIRFLOW_ADMIN_PASSWORD in .env)"
    )


@task(help={"timeout": "seconds to give each container to stop"})
@docker_errors
def down(c: Context, timeout: int = 30) -> None:
    """Stop the stack and keep its data (volumes, .env, images)."""
    check_docker()
    cfg = settings()
    docker = compose(cfg)
    remove_standin_pods(docker, cfg)
    docker.compose.down(timeout=timeout, quiet=True)
    say("stopped; data kept (`invoke clean` deletes it)")


def remove_standin_pods(docker: DockerClient, cfg: Settings) -> None:
    pods = standin_pods(docker, cfg)
    if pods:
        say(f"removing {len(pods)} stand-in worker container(s)")
        docker.container.remove(pods, force=True, volumes=True)


@task
@docker_errors
def clean(c: Context) -> None:
    """Delete the stack: containers, volumes, network, .env secrets and .generated/ (says what)."""
    check_docker()
    cfg = settings()
    docker = compose(cfg)
    volumes = [
        v.name
        for v in docker.volume.list(
            filters=[("label", f"com.docker.compose.project={cfg.project}")]
        )
    ]
    say(
        f"deleting project {cfg.project}: containers, network, volumes "
        f"({', '.join(volumes) or 'none'}), .env and .generated/"
    )
    remove_standin_pods(docker, cfg)
    docker.compose.down(volumes=True, remove_orphans=True, timeout=10, quiet=True)
    if docker.image.exists(cfg.worker_image):  # the tag for this registry port (layers are shared)
        docker.image.remove(cfg.worker_image)
    shutil.rmtree(cfg.generated, ignore_errors=True)
    cfg.env_file.unlink(missing_ok=True)


@task
@docker_errors
def status(c: Context) -> None:
    """Show each service and its health, and the worker pods."""
    check_docker()
    cfg = settings()
    docker = compose(cfg)
    states = service_states(docker)
    if not states:
        print(f"the stack (project {cfg.project}) is not running: `make up` starts it")
        return
    for service, state in sorted(states.items()):
        print(f"{service:24} {state}")
    if cfg.k3s and "k3s" in states:
        subprocess.run(kubectl_cmd(cfg, ["get", "pods", "-o", "wide"]), check=False)
    else:
        for pod in standin_pods(docker, cfg):
            print(f"stand-in pod {pod.name:50} {pod.state.status} exit={pod.state.exit_code}")


@task(
    help={
        "service": "one service (default: all)",
        "follow": "keep printing new lines",
        "tail": "lines from the end to start with",
    }
)
@docker_errors
def logs(c: Context, service: str = "", follow: bool = False, tail: str = "200") -> None:
    """Print the logs of one service or of all."""
    check_docker()
    docker = compose(settings())
    if follow:
        for _source, line in docker.compose.logs(
            service or [], follow=True, stream=True, tail=tail
        ):
            sys.stdout.write(line.decode(errors="replace"))
    else:
        print(docker.compose.logs(service or [], tail=tail))


@task(help={"worker_only": "build only the worker image (the DAG-edit loop)"})
@docker_errors
def build(c: Context, worker_only: bool = False) -> None:
    """Build the Airflow and service images and the worker image (DAGs baked in)."""
    check_docker()
    build_all(settings(), worker_only=worker_only)


@task
@docker_errors
def push(c: Context) -> None:
    """Push the worker image to the stack's registry (idempotent)."""
    check_docker()
    cfg = settings()
    require_running(cfg, "registry")
    print(push_worker(cfg))


def read_k3s_kubeconfig(docker: DockerClient, timeout: float) -> str:
    """The kubeconfig k3s writes at start, waiting up to ``timeout`` seconds for it."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            raw = str(docker.compose.execute("k3s", ["cat", K3S_KUBECONFIG], tty=False))
            if raw.strip():
                return raw
        except DockerException:
            pass
        if time.monotonic() > deadline:
            raise Exit(
                f"k3s did not write its kubeconfig ({K3S_KUBECONFIG}) within {timeout:.0f} "
                "s: see `invoke logs --service k3s`",
                code=10,
            )
        time.sleep(2)


@task(help={"timeout": "seconds to wait for k3s to write its kubeconfig"})
@docker_errors
def kubeconfig(c: Context, timeout: int = 120) -> None:
    """Rewrite k3s's kubeconfig: a copy for the host and one for containers (.generated/)."""
    check_docker()
    cfg = settings()
    require_k3s(cfg, "kubeconfig")
    require_running(cfg, "k3s")
    host, containers = write_kubeconfigs(cfg, read_k3s_kubeconfig(compose(cfg), timeout))
    say(f"kubeconfig for the host: {host} (export KUBECONFIG={host}); containers: {containers}")


@task
def kubectl(c: Context) -> None:
    """kubectl against the k3s cluster: `invoke kubectl -- get pods -A` (its exit code is ours)."""
    cfg = settings()
    require_k3s(cfg, "kubectl")
    if not (cfg.generated / "kubeconfig.yaml").exists():
        raise Exit(
            "no kubeconfig yet: start the stack with `make up` (or run `invoke kubeconfig`)", code=4
        )
    code = subprocess.run(kubectl_cmd(cfg, shlex.split(c.remainder)), check=False).returncode
    if code:
        raise Exit(code=code)


@task(
    positional=["dag_id"],
    help={
        "dag_id": "the DAG to trigger, e.g. demo_rest_to_s3",
        "conf": "the run's conf, a JSON object",
        "wait": "follow the run until it ends; exit 0 only on success",
        "timeout": "seconds to wait for the run with --wait",
        "parse_timeout": "seconds to wait for a new DAG file to be parsed",
    },
)
@docker_errors
def trigger_dag(
    c: Context,
    dag_id: str,
    conf: str = "",
    wait: bool = False,
    timeout: int = 600,
    parse_timeout: int = 90,
) -> None:
    """Unpause and trigger a DAG through the REST API; --wait follows it to the end."""
    run_conf = parse_conf(conf)
    check_docker()
    cfg = settings()
    run_id = run_dag(cfg, dag_id, run_conf, parse_timeout, timeout if wait else None)
    print(run_id)


def run_dag(
    cfg: Settings, dag_id: str, conf: Mapping[str, Any], parse_timeout: float, timeout: float | None
) -> str:
    """Trigger ``dag_id``; with a ``timeout``, follow the run: exit non-zero unless it succeeds."""
    client = api(cfg)
    client.find_dag(dag_id, parse_timeout)
    run_id = client.trigger(dag_id, conf)
    say(f"triggered {dag_id}: run {run_id}")
    if timeout is not None:
        state = follow_run(cfg, client, dag_id, run_id, timeout)
        if state != "success":
            raise Exit(f"{dag_id} run {run_id} ended {state} (log above)", code=1)
    return run_id


@task(help={"timeout": "seconds to wait for the demo run"})
@docker_errors
def demo(c: Context, timeout: int = 600) -> None:
    """Start the stack, run the demo DAG to success and show the pods and the S3 object."""
    up(c)
    cfg = settings()
    run_id = run_dag(cfg, DEMO_DAG, {}, parse_timeout=120, timeout=timeout)
    print(f"\nPods of {DEMO_DAG} (one per task):")
    show_pods(cfg, DEMO_DAG)
    show_demo_object(cfg, run_id)


def show_pods(cfg: Settings, dag_id: str) -> None:
    """The worker pods of a DAG: kubectl in k3s, the stand-in's containers with IMAGES=local."""
    if cfg.k3s:
        args = ["get", "pods", "-l", f"dag_id={dag_id}", "-L", "task_id,try_number", "-o", "wide"]
        subprocess.run(kubectl_cmd(cfg, args), check=False)
        return
    for pod in standin_pods(compose(cfg), cfg, f"pod.label/dag_id={dag_id}"):
        labels = pod.config.labels or {}
        digest = labels.get("airflow-k3s.image-digest", "?").rsplit("@", 1)[-1]
        print(
            f"  {pod.name:42} task={labels.get('pod.label/task_id', '?'):8} "
            f"{pod.state.status} exit={pod.state.exit_code} image=…@{digest[:19]}"
        )


def show_demo_object(cfg: Settings, run_id: str) -> None:
    """Print the object this demo run wrote to S3 (read from the host, published port)."""
    import boto3
    from demo_lib import object_key

    s3 = boto3.client(
        "s3",
        endpoint_url=cfg.s3_url,
        region_name="us-east-1",
        aws_access_key_id=cfg.secrets["S3_ACCESS_KEY"],
        aws_secret_access_key=cfg.secrets["S3_SECRET_KEY"],
    )
    key = object_key(run_id)
    body = s3.get_object(Bucket="airflow-data", Key=key)["Body"].read()
    orders = json.loads(body).get("orders", [])
    print(
        f"\nS3 object: s3://airflow-data/{key}  {len(body)} bytes, {len(orders)} orders, "
        f"sha256 {hashlib.sha256(body).hexdigest()[:16]}…"
    )
    print(f"UI: {cfg.airflow_url}/dags/{DEMO_DAG}")


@task
def secrets(c: Context) -> None:
    """Generate missing secrets into .env and render the worker Secret (never replaces one)."""
    ensure_secrets(settings())


@task
def lock(c: Context) -> None:
    """Re-lock the Airflow image's dependencies (airflow/requirements.in -> requirements.txt)."""
    c.run(
        "uv pip compile --universal --python-version 3.11 --no-header -q "
        "airflow/requirements.in -o airflow/requirements.txt"
    )


# --------------------------------------------------------------------------- doctor

MIN_MEMORY_GIB = 4.0
MIN_DISK_GIB = 10.0


@dataclass(frozen=True)
class Check:
    """One line of `invoke doctor`: what was checked, whether it passed, what to do if not."""

    name: str
    ok: bool
    detail: str

    def line(self) -> str:
        return f"{'ok  ' if self.ok else 'FAIL'}  {self.name}: {self.detail}"


def check_resources(mem_gib: float, disk_gib: float) -> list[Check]:
    """Memory and disk against what the stack needs."""
    return [
        Check(
            "memory",
            mem_gib >= MIN_MEMORY_GIB,
            f"{mem_gib:.1f} GiB available"
            + (
                ""
                if mem_gib >= MIN_MEMORY_GIB
                else f"; the stack needs {MIN_MEMORY_GIB:.0f} "
                "GiB: stop other containers or give Docker more memory"
            ),
        ),
        Check(
            "disk",
            disk_gib >= MIN_DISK_GIB,
            f"{disk_gib:.1f} GiB free for Docker"
            + (
                ""
                if disk_gib >= MIN_DISK_GIB
                else f"; {MIN_DISK_GIB:.0f} GiB needed: `docker system prune` frees space"
            ),
        ),
    ]


def check_cgroup(version: str) -> Check:
    ok = version in ("1", "2")
    return Check(
        "cgroups",
        ok,
        f"cgroup v{version}"
        if ok
        else "unknown cgroup version: k3s "
        "needs cgroup v1 or v2 with the cpu and memory controllers",
    )


def memory_available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 1024**2
    return 0.0


def probe_privileged(image: str) -> Check:
    """Whether the engine runs privileged containers (k3s needs them)."""
    result = subprocess.run(
        ["docker", "run", "--rm", "--privileged", "--entrypoint", "true", image],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    if result.returncode == 0:
        return Check("privileged", True, "the engine runs privileged containers (k3s needs them)")
    lines = result.stderr.strip().splitlines() or ["refused"]
    reason = next((ln for ln in lines if "rror" in ln), lines[0])
    reason = reason.split("Error response from daemon:")[-1].strip()[:200]
    return Check(
        "privileged",
        False,
        f"the engine refuses privileged containers ({reason}): k3s "
        "cannot run here; IMAGES=local runs the rest without it",
    )


def probe_pull(image: str) -> Check:
    """Whether pinned upstream images can be pulled (else IMAGES=local)."""
    try:
        result = subprocess.run(
            ["docker", "pull", "--quiet", image],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        ok, why = result.returncode == 0, (result.stderr.strip().splitlines() or [""])[-1][-160:]
    except subprocess.TimeoutExpired:
        ok, why = False, "timed out after 60 s"
    if ok:
        return Check("image pulls", True, f"{image} pulled: IMAGES=upstream works")
    return Check(
        "image pulls",
        False,
        f"cannot pull {image} ({why}): use IMAGES=local "
        "(images built from Debian/PyPI packages, tasks run without k3s)",
    )


@task(help={"pull": "also try to pull a pinned upstream image (network)"})
@docker_errors
def doctor(c: Context, pull: bool = True) -> None:
    """Check the machine before anything starts: Docker, compose, memory, disk, ports, k3s needs."""
    cfg = settings()
    checks: list[Check] = []
    try:
        check_docker()
        checks.append(Check("docker", True, "engine and compose v2 answer"))
    except Exit as exc:
        checks.append(Check("docker", False, str(exc.message)))
        print("\n".join(c.line() for c in checks))
        raise Exit("doctor: 1 check failed", code=1) from None
    info = json.loads(
        subprocess.run(
            ["docker", "info", "--format", "{{json .}}"], capture_output=True, text=True, check=True
        ).stdout
    )
    compose_version = subprocess.run(
        ["docker", "compose", "version", "--short"], capture_output=True, text=True, check=False
    ).stdout.strip()
    checks.append(
        Check(
            "versions",
            True,
            f"engine {info.get('ServerVersion')}, compose "
            f"{compose_version}, {info.get('OperatingSystem')}",
        )
    )
    disk = shutil.disk_usage(info.get("DockerRootDir") or "/").free / 1024**3
    checks += check_resources(memory_available_gib(), disk)
    docker = compose(cfg)
    conflicts = port_conflicts(cfg, running_services(docker), port_taken)
    checks.append(
        Check(
            "ports",
            not conflicts,
            "; ".join(conflicts)
            or ", ".join(
                f"{cfg.ports[name]} ({service})"
                for name, (_d, service) in PORTS.items()
                if service != "k3s" or cfg.k3s
            )
            + " free or ours",
        )
    )
    checks.append(check_cgroup(str(info.get("CgroupVersion", ""))))
    probe_image = next(
        (i for i in (LOCAL_DEBIAN_IMAGE, cfg.airflow_image) if DockerClient().image.exists(i)), ""
    )
    if probe_image:
        checks.append(probe_privileged(probe_image))
    else:
        checks.append(
            Check(
                "privileged",
                cfg.images == "local",
                "not probed yet (no image built): run `invoke build` first"
                if cfg.images != "local"
                else "not needed with IMAGES=local",
            )
        )
    if pull:
        checks.append(probe_pull("registry:2.8.3"))
    if cfg.images == "local":  # k3s and upstream images are not used in this mode
        checks = [
            Check(c.name, True, f"not needed with IMAGES=local ({c.detail})")
            if not c.ok and c.name in ("image pulls", "privileged")
            else c
            for c in checks
        ]
    print("\n".join(check.line() for check in checks))
    failed = [check.name for check in checks if not check.ok]
    if failed:
        raise Exit(f"doctor: {len(failed)} check(s) failed: {', '.join(failed)}", code=1)
    print(f"doctor: ready for IMAGES={cfg.images}")


# --------------------------------------------------------------------------- worker pod output


def pod_label_value(value: str) -> str:
    """A value as the KubernetesExecutor puts it in a pod label (the provider's
    ``make_safe_label_value``): run ids lose ':' and '+' and get a short hash."""
    import re

    safe = re.sub(r"^[^a-z0-9A-Z]*|[^a-zA-Z0-9_\-\.]|[^a-z0-9A-Z]*$", "", value)
    if len(safe) > 63 or safe != value:
        digest = hashlib.md5(value.encode()).hexdigest()[:9]  # a label, not security
        safe = safe[: 63 - len(digest) - 1] + "-" + digest
    return safe


def render_pod_line(line: str) -> str:
    """A line of a worker pod's output (Airflow logs JSON) as 'time [level] event: error'."""
    try:
        item = json.loads(line)
    except ValueError:
        return line
    if not isinstance(item, dict) or "event" not in item:
        return line
    text = f"{item.get('timestamp', '')} [{item.get('level', '')}] {item['event']}"
    for key in ("error_detail", "exception"):
        details = item.get(key)
        if isinstance(details, list) and details and isinstance(details[0], dict):
            text += f": {details[0].get('exc_type', '')}: {details[0].get('exc_value', '')}"
    if item.get("final_state"):
        text += f" (final_state={item['final_state']}, exit_code={item.get('exit_code')})"
    return text


def standin_launch_errors(
    docker: DockerClient, dag_id: str, task_id: str, run_id: str = ""
) -> list[str]:
    """Pods the stand-in executor could not start (e.g. the image pull failed), as the scheduler
    logged them: there is no container to look at then (IMAGES=local)."""
    import re

    pattern = re.compile(
        r"Pod (\S+) for TaskInstanceKey\(dag_id='([^']*)', task_id='([^']*)', "
        r"run_id='([^']*)', try_number=(\d+)[^)]*\) failed to start: (.*?)"
        r"(?:\s+\[docker_pod_executor[^\]]*\].*)?$"
    )
    try:
        text = str(docker.compose.logs("airflow-scheduler", tail="3000", no_log_prefix=True))
    except DockerException:
        return []
    found = []
    for line in text.splitlines():
        match = pattern.search(line)
        if match is None:
            continue
        pod, dag, tsk, run, try_number, error = match.groups()
        if (dag, tsk) == (dag_id, task_id) and run_id in ("", run):
            found.append(
                f"stand-in pod {pod} (run {run}, try {try_number}) failed to start: {error}"
            )
    return found


@task(
    positional=["task_id"],
    help={
        "task_id": "the task whose pod output to show, e.g. upload",
        "dag_id": "its DAG",
        "run_id": "the run (default: the newest run that has a pod of this task)",
        "try_number": "one try only (default: every try of the run)",
        "tail": "lines from the end of each pod's output",
    },
)
@docker_errors
def pod_logs(
    c: Context,
    task_id: str,
    dag_id: str = DEMO_DAG,
    run_id: str = "",
    try_number: int = 0,
    tail: int = 200,
) -> None:
    """Print a task's worker pod output (kubectl logs; IMAGES=local: the stand-in container's)."""
    check_docker()
    cfg = settings()
    selector = {"dag_id": dag_id, "task_id": task_id}
    if run_id:
        selector["run_id"] = pod_label_value(run_id)
    if try_number:
        selector["try_number"] = str(try_number)
    if cfg.k3s:
        wanted = ",".join(f"{k}={v}" for k, v in selector.items())
        args = ["logs", "-l", wanted, "--prefix", f"--tail={tail}", "--max-log-requests=20"]
        code = subprocess.run(kubectl_cmd(cfg, args), check=False).returncode
        if code:
            raise Exit(code=code)
        return
    docker = compose(cfg)
    pods = standin_pods(docker, cfg, *(f"pod.label/{k}={v}" for k, v in selector.items()))
    if pods and not run_id:  # the newest run only
        newest = (pods[0].config.labels or {}).get("pod.label/run_id")
        pods = [p for p in pods if (p.config.labels or {}).get("pod.label/run_id") == newest]
    if not pods:
        errors = standin_launch_errors(docker, dag_id, task_id, run_id)
        raise Exit(
            f"no worker pod of {dag_id}.{task_id} was found"
            + (f" ({errors[-1]})" if errors else "; `invoke status` lists the pods"),
            code=4,
        )
    for pod in reversed(pods):  # oldest try first
        labels = pod.config.labels or {}
        print(
            f"----- pod {pod.name} (run label {labels.get('pod.label/run_id')}, try "
            f"{labels.get('pod.label/try_number')}, {pod.state.status}, exit {pod.state.exit_code})"
        )
        for line in str(docker.container.logs(pod, tail=tail)).splitlines():
            print(render_pod_line(line))
