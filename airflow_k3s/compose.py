"""The Docker and compose boundary: the one place that runs docker.

Every other module gets its DockerClient from :func:`client`, and every DockerException that
reaches a task becomes one line (:func:`docker_errors`). Service health and its waiting live here
too: they read what compose says.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from python_on_whales import DockerClient
from python_on_whales.exceptions import DockerException

from airflow_k3s.exits import ExitCode, UserError
from airflow_k3s.rendering import SECRET_KEYS, render_env_file, write_private
from airflow_k3s.settings import Settings

MIN_COMPOSE = (2, 24, 0)
INSTALLER = "local/ensure-docker.sh"


def say(message: str) -> None:
    """Progress line on stderr (stdout stays for results)."""
    print(f"==> {message}", file=sys.stderr, flush=True)


@contextmanager
def docker_errors() -> Iterator[None]:
    """Turn python-on-whales' DockerException into one clear line (UserError)."""
    try:
        yield
    except DockerException as exc:
        detail = (exc.stderr or exc.stdout or str(exc)).strip().splitlines()
        last = detail[-1] if detail else str(exc)
        command = " ".join(exc.docker_command[:4])
        raise UserError(f"docker failed: {command} ...: {last}") from None


def client(cfg: Settings) -> DockerClient:
    """The compose client of this stack: its files, project, directory and env files.

    The values the task library decides (image source, state dir) go into a generated env file
    after .env, never into this process's environment: a shell variable still wins, as compose
    does it, and nothing leaks into the next command of the same process."""
    return DockerClient(
        compose_files=list(cfg.compose_files),
        compose_project_name=cfg.project,
        compose_project_directory=cfg.root,
        compose_env_files=[p for p in (cfg.env_file, write_compose_env(cfg)) if p.exists()],
    )


def cli(cfg: Settings, *extra_files: Path) -> list[str]:
    """The `docker compose` command line of this stack (for commands that need the terminal)."""
    cmd = ["docker", "compose", "--project-directory", str(cfg.root), "-p", cfg.project]
    for file in [*cfg.compose_files, *extra_files]:
        cmd += ["-f", str(file)]
    for env_file in (cfg.env_file, write_compose_env(cfg)):
        if env_file.exists():
            cmd += ["--env-file", str(env_file)]
    return cmd


def passthrough(cfg: Settings, service: str, command: list[str]) -> int:
    """Run a command in a service's container on this terminal; its exit code."""
    flags = [] if sys.stdin.isatty() and sys.stdout.isatty() else ["-T"]
    return subprocess.run([*cli(cfg), "exec", *flags, service, *command], check=False).returncode


def write_compose_env(cfg: Settings) -> Path:
    """.generated/compose.env: the task library's compose variables. Before the first `up` there
    are no secrets yet; commands that only look (status, down, doctor) still need compose to
    interpolate, so placeholders stand in (`up` writes .env before it gets here)."""
    values = dict(cfg.compose_env)
    if not cfg.env_file.exists():
        values.update(dict.fromkeys(SECRET_KEYS, "not-generated-yet"))
    path = cfg.generated / "compose.env"
    write_private(path, render_env_file(values))
    return path


def plain() -> DockerClient:
    """A Docker client outside any compose project (images, volumes, one-off containers)."""
    return DockerClient()


def parse_version(text: str) -> tuple[int, ...]:
    """'v2.40.3-desktop.1' -> (2, 40, 3)."""
    core = text.strip().lstrip("v").split("-")[0].split("+")[0]
    return tuple(int(p) for p in core.split(".")[:3] if p.isdigit())


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, check=False)


def check_docker() -> None:
    """Fail with one clear line when Docker or compose is missing or too old."""
    if shutil.which("docker") is None:
        raise UserError(
            f"Docker is not installed: install Docker (or on Debian run {INSTALLER})",
            ExitCode.NO_DOCKER,
        )
    if _run("docker", "info", "--format", "{{.ServerVersion}}").returncode != 0:
        raise UserError(
            f"the Docker engine is not running or not reachable: start it (on Debian: {INSTALLER})",
            ExitCode.NO_DOCKER,
        )
    ver = _run("docker", "compose", "version", "--short")
    if ver.returncode != 0:
        raise UserError(
            f"docker compose v2 is missing: install the compose plugin ({INSTALLER} does it on "
            "Debian)",
            ExitCode.NO_DOCKER,
        )
    if parse_version(ver.stdout) < MIN_COMPOSE:
        want = ".".join(map(str, MIN_COMPOSE))
        raise UserError(
            f"docker compose {ver.stdout.strip()} is too old: {want} or newer needed",
            ExitCode.NO_DOCKER,
        )


def engine_info() -> dict[str, str]:
    """A few facts of the engine: version, OS, cgroup version, root dir, memory."""
    keys = ("version", "os", "cgroup", "root_dir", "mem_total")
    names = ("ServerVersion", "OperatingSystem", "CgroupVersion", "DockerRootDir", "MemTotal")
    fields = "|".join("{{." + name + "}}" for name in names)
    out = _run("docker", "info", "--format", fields).stdout.strip().split("|")
    info = dict(zip(keys, out, strict=False))
    info["compose"] = _run("docker", "compose", "version", "--short").stdout.strip()
    return info


# --------------------------------------------------------------------------- service health


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


def running_services(docker: DockerClient) -> set[str]:
    return {s for s, st in service_states(docker).items() if not st.startswith("exited")}


def require_running(cfg: Settings, service: str = "airflow-apiserver") -> None:
    """Fail with one clear line when the stack (or one service of it) is not running."""
    if service not in running_services(client(cfg)):
        raise UserError(
            f"the stack is not running ({service} is not up): start it with `make up`",
            ExitCode.NOT_RUNNING,
        )


def wait_healthy(cfg: Settings, timeout: float) -> None:
    """Wait until every service is healthy, printing changes; diagnose and fail on failure."""
    docker = client(cfg)
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
            dump_service_logs(cfg, list(failed or pending))
            what = ", ".join(f"{s} is {st}" for s, st in (failed or pending).items())
            raise UserError(
                f"the stack did not become healthy: {what} (logs above; `invoke logs "
                f"--service <service>` for more)"
            )
        time.sleep(2)


def dump_service_logs(cfg: Settings, services: list[str], tail: int = 40) -> None:
    """Print the last log lines of the given services (diagnostics of a failed step)."""
    docker = client(cfg)
    for service in services:
        print(f"----- {service}: last {tail} log lines", file=sys.stderr)
        try:
            print(docker.compose.logs(service, tail=str(tail)), file=sys.stderr)
        except DockerException as exc:
            print(f"(no logs: {exc})", file=sys.stderr)


def service_log(cfg: Settings, service: str, tail: int = 3000) -> str:
    """The last lines of a service's log, without compose's prefix ('' if it has none)."""
    try:
        return str(client(cfg).compose.logs(service, tail=str(tail), no_log_prefix=True))
    except DockerException:
        return ""


def exec_in(cfg: Settings, service: str, command: list[str]) -> str:
    """Run a command in a running service's container; its stdout (UserError if it fails)."""
    with docker_errors():
        return str(client(cfg).compose.execute(service, command, tty=False))


# --------------------------------------------------------------------------- one-off containers


def run_streaming(
    image: str, command: list[str], volumes: list[tuple[str | Path, str, str]]
) -> None:
    """Run a one-off container to completion, its output streamed to stderr; fail if it fails."""
    try:
        for _source, line in plain().run(image, command, remove=True, volumes=volumes, stream=True):
            sys.stderr.write("    " + line.decode(errors="replace"))
            sys.stderr.flush()
    except DockerException as exc:
        raise UserError(
            f"{image} {' '.join(command)} failed (exit {exc.return_code}): its output is above"
        ) from None


def import_rootfs(rootfs: object, tag: str) -> None:
    """`docker import` a root filesystem folder as an image."""
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    subprocess.run(
        ["docker", "import", "-", tag], stdin=tar.stdout, check=True, stdout=subprocess.DEVNULL
    )
    if tar.wait() != 0:
        raise UserError(f"tar of {rootfs} failed while importing {tag}")


def try_pull(image: str, timeout: float = 60) -> tuple[bool, str]:
    """Whether ``image`` can be pulled here, and the last line docker said."""
    try:
        result = subprocess.run(
            ["docker", "pull", "--quiet", image],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired:
        return False, f"timed out after {timeout:.0f} s"
    return result.returncode == 0, (result.stderr.strip().splitlines() or [""])[-1][-160:]


def try_python(image: str, code: str) -> tuple[bool, str]:
    """Whether ``python -c code`` succeeds in ``image``, and the last line it said."""
    result = subprocess.run(
        ["docker", "run", "--rm", "--entrypoint", "python", image, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    return result.returncode == 0, last_error_line(result.stderr or result.stdout)


def last_error_line(output: str) -> str:
    """The line of a failed `docker run` or Python that says why: a traceback's last line, or
    Docker's "Error response from daemon" line rather than its "Run 'docker run --help'" hint."""
    lines = [ln.strip() for ln in output.strip().splitlines() if ln.strip()] or [""]
    daemon = [ln for ln in lines if "Error response from daemon:" in ln]
    if daemon:
        return daemon[-1].split("Error response from daemon:")[-1].strip()[:200]
    return lines[-1][-200:]


def try_run(image: str, *options: str) -> tuple[bool, str]:
    """Whether a container with these `docker run` options starts here (`true` as its command)."""
    result = subprocess.run(
        ["docker", "run", "--rm", *options, "--entrypoint", "true", image],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    return result.returncode == 0, last_error_line(result.stderr) or "refused"
