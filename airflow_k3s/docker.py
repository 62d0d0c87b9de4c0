"""Docker and this stack's compose project, through the docker CLI and the one runner (shell).

:class:`Docker` is the only code that runs `docker` or `docker compose`: the engine's checks, the
project's services and their health, logs and exec, and images (build, pull, push, inspect).
"""

from __future__ import annotations

import functools
import json
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from airflow_k3s import shell
from airflow_k3s.exits import ExitCode, UserError
from airflow_k3s.generated import SECRET_KEYS, render_env_file, write_private
from airflow_k3s.settings import Settings
from airflow_k3s.shell import CommandFailed, say

MIN_COMPOSE = (2, 24, 0)
INSTALLER = "local/ensure-docker.sh"
#: One-shot services: ready once they have exited 0.
ONE_SHOTS = frozenset({"airflow-init", "kube-credentials"})


def parse_version(text: str) -> tuple[int, ...]:
    """'v2.40.3-desktop.1' -> (2, 40, 3)."""
    core = text.strip().lstrip("v").split("-")[0].split("+")[0]
    return tuple(int(p) for p in core.split(".")[:3] if p.isdigit())


def parse_ps(text: str) -> list[dict[str, Any]]:
    """`docker compose ps --format json`: one JSON object a line (compose 2.21+) or one array."""
    text = text.strip()
    if not text:
        return []
    if text.startswith("["):
        return list(json.loads(text))
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def service_state(container: Mapping[str, Any]) -> str:
    """'healthy' | 'starting' | 'unhealthy' | 'running' | 'exited(N)' | ... of one container."""
    state = str(container.get("State") or "")
    if state == "exited":
        return f"exited({container.get('ExitCode', '?')})"
    return str(container.get("Health") or "") or state


def not_ready(states: Mapping[str, str], expected: set[str]) -> dict[str, str]:
    """Services not ready yet: one-shots must have exited 0, the rest be healthy or running."""
    pending = {}
    for service in sorted(expected):
        state = states.get(service, "missing")
        ok = state == "exited(0)" if service in ONE_SHOTS else state in ("healthy", "running")
        if not ok:
            pending[service] = state
    return pending


def failed_services(pending: Mapping[str, str]) -> dict[str, str]:
    """The services of ``pending`` that waiting will not mend: unhealthy, or exited non-zero."""
    return {
        s: st
        for s, st in pending.items()
        if st == "unhealthy" or (st.startswith("exited") and st != "exited(0)")
    }


@functools.cache
def has_buildx() -> bool:
    return shell.run(["docker", "buildx", "version"], check=False).returncode == 0


def build_hint(output: list[str]) -> str:
    """What to try when a build that downloads packages fails."""
    text = "\n".join(output[-40:])
    if any(word in text for word in ("pip install", "curl ", "go mod download", "CERTIFICATE")):
        return (
            " (a download failed: behind a TLS-inspecting proxy, point EXTRA_CA_BUNDLE at its CA "
            "bundle; the end of the build's output is above)"
        )
    return ""


class Docker:
    """The Docker engine and the stack's compose project (its files, name, directory, env files)."""

    def __init__(self, cfg: Settings, env: Mapping[str, str] | None = None) -> None:
        self.cfg = cfg
        #: Variables over this process's environment for every command (a test stack's ports).
        self.env = dict(env or {})
        self._checked = False

    # ----------------------------------------------------------------------- the engine

    def check(self) -> None:
        """Fail with one clear line when Docker or compose is missing or too old (once)."""
        if self._checked:
            return
        if shutil.which("docker") is None:
            raise UserError(
                f"Docker is not installed: install Docker (or on Debian run {INSTALLER})",
                ExitCode.NO_DOCKER,
            )
        if shell.run(["docker", "info", "--format", "{{.ServerVersion}}"], check=False).returncode:
            raise UserError(
                f"the Docker engine is not running or not reachable: start it (on Debian: "
                f"{INSTALLER})",
                ExitCode.NO_DOCKER,
            )
        version = shell.run(["docker", "compose", "version", "--short"], check=False)
        if version.returncode != 0:
            raise UserError(
                f"docker compose v2 is missing: install the compose plugin ({INSTALLER} does it "
                "on Debian)",
                ExitCode.NO_DOCKER,
            )
        if parse_version(version.stdout) < MIN_COMPOSE:
            want = ".".join(map(str, MIN_COMPOSE))
            raise UserError(
                f"docker compose {version.stdout.strip()} is too old: {want} or newer needed",
                ExitCode.NO_DOCKER,
            )
        self._checked = True

    def engine_info(self) -> dict[str, str]:
        """A few facts of the engine: version, OS, cgroup version, root dir, memory, compose."""
        keys = ("version", "os", "cgroup", "root_dir", "mem_total")
        names = ("ServerVersion", "OperatingSystem", "CgroupVersion", "DockerRootDir", "MemTotal")
        fields = "|".join("{{." + name + "}}" for name in names)
        out = self.docker("info", "--format", fields, check=False).stdout.strip().split("|")
        info = dict(zip(keys, out, strict=False))
        info["compose"] = self.docker("compose", "version", "--short", check=False).stdout.strip()
        return info

    def docker(self, *args: str | Path, **kwargs: Any) -> shell.Result:
        """`docker ARGS` through the runner (shell.run's keywords)."""
        kwargs["env"] = {**self.env, **kwargs.get("env", {})}
        return shell.run(["docker", *args], **kwargs)

    # ----------------------------------------------------------------------- the project

    def compose_env(self) -> Path:
        """.generated/compose.env: the task library's compose variables (image source, state
        dir, the user's paths). Before the first `up` there are no secrets yet; commands that
        only look (status, down, doctor) still need compose to interpolate, so placeholders stand
        in (`up` writes .env before it gets here)."""
        values = dict(self.cfg.compose_env)
        if not self.cfg.env_file.exists():
            values.update(dict.fromkeys(SECRET_KEYS, "not-generated-yet"))
        path = self.cfg.generated / "compose.env"
        text = render_env_file(values)
        if not path.exists() or path.read_text() != text:
            write_private(path, text)
        return path

    def compose_cli(self, *extra_files: Path) -> list[str]:
        """The `docker compose` command line of this stack."""
        cfg = self.cfg
        cmd = ["docker", "compose", "--project-directory", str(cfg.root), "-p", cfg.project]
        for file in [*cfg.compose_files, *extra_files]:
            cmd += ["-f", str(file)]
        for env_file in (cfg.env_file, self.compose_env()):
            if env_file.exists():
                cmd += ["--env-file", str(env_file)]
        return cmd

    def compose(self, *args: str, **kwargs: Any) -> shell.Result:
        """`docker compose ARGS` of this stack through the runner (shell.run's keywords)."""
        return shell.run([*self.compose_cli(), *args], env=self.env, **kwargs)

    def config(self) -> dict[str, Any]:
        """The resolved compose configuration (`docker compose config`)."""
        doc: dict[str, Any] = json.loads(self.compose("config", "--format", "json").stdout)
        return doc

    def containers(self, *services: str) -> list[dict[str, Any]]:
        """The project's containers (`docker compose ps --all`), of some services or all."""
        out = self.compose("ps", "--all", "--format", "json", *services).stdout
        return parse_ps(out)

    def service_states(self) -> dict[str, str]:
        """service -> 'healthy' | 'starting' | 'unhealthy' | 'running' | 'exited(N)' | ..."""
        return {str(c["Service"]): service_state(c) for c in self.containers()}

    def running_services(self) -> set[str]:
        return {s for s, st in self.service_states().items() if not st.startswith("exited")}

    def require_running(self, service: str = "airflow-apiserver") -> None:
        """Fail with one clear line when the stack (or one service of it) is not running."""
        self.check()
        if service not in self.running_services():
            raise UserError(
                f"the stack is not running ({service} is not up): start it with `make up`",
                ExitCode.NOT_RUNNING,
            )

    def wait_healthy(self, timeout: float) -> None:
        """Wait until every service is healthy, printing changes; diagnose and fail on failure."""
        expected = set(self.config().get("services", {}))
        last: dict[str, str] = {}

        def healthy() -> bool:
            nonlocal last
            pending = not_ready(self.service_states(), expected)
            if pending != last:
                names = ", ".join(f"{s} ({st})" for s, st in pending.items())
                say(f"waiting for: {names}" if pending else "all services are healthy")
                last = pending
            failed = failed_services(pending)
            if failed:
                raise self.unhealthy(failed)
            return not pending

        shell.poll("every service to be healthy", healthy, timeout, 2, lambda: self.unhealthy(last))

    def unhealthy(self, services: Mapping[str, str]) -> UserError:
        """The error of services that did not become healthy, their logs printed first."""
        self.dump_logs(list(services))
        what = ", ".join(f"{s} is {st}" for s, st in services.items())
        return UserError(
            f"the stack did not become healthy: {what} (logs above; `invoke logs --service "
            "<service>` for more)"
        )

    def dump_logs(self, services: list[str], tail: int = 40) -> None:
        """Print the last log lines of the given services (diagnostics of a failed step)."""
        for service in services:
            print(f"----- {service}: last {tail} log lines", file=sys.stderr)
            result = self.compose("logs", "--tail", str(tail), service, check=False)
            print(
                result.stdout or f"(no logs: {shell.failure_line(result.stderr)})", file=sys.stderr
            )

    def service_log(self, service: str, tail: int = 3000) -> str:
        """The last lines of a service's log, without compose's prefix ('' if it has none)."""
        args = ("logs", "--no-log-prefix", "--tail", str(tail), service)
        return str(self.compose(*args, check=False).stdout)

    def logs(self, services: list[str], tail: str, follow: bool) -> int:
        """The services' logs on this terminal; compose's exit code."""
        args = ["logs", "--tail", tail, *(["--follow"] if follow else []), *services]
        return shell.attach([*self.compose_cli(), *args], env=self.env)

    def exec(self, service: str, command: list[str], what: str = "") -> str:
        """Run a command in a running service's container; its stdout (one line if it fails)."""
        return str(self.compose("exec", "-T", service, *command, what=what).stdout)

    def exec_attached(self, service: str, command: list[str]) -> int:
        """Run a command in a service's container on this terminal; its exit code."""
        flags = [] if sys.stdin.isatty() and sys.stdout.isatty() else ["-T"]
        return shell.attach([*self.compose_cli(), "exec", *flags, service, *command], env=self.env)

    def up(self) -> None:
        """Start what the compose files name, and remove what they no longer name (the agent
        nodes of pools taken out of NODE_POOLS)."""
        self.compose("up", "--detach", "--no-build", "--remove-orphans", what="docker compose up")

    def down(self, timeout: int, volumes: bool = False) -> None:
        """Stop and remove the containers of every service, those of a profile that is off now
        included (the git-server of an earlier DAG_SOURCE=git); with ``volumes`` the data too."""
        extra = ["--volumes", "--remove-orphans"] if volumes else []
        args = ("--profile", "*", "down", "--timeout", str(timeout), *extra)
        self.compose(*args, what="docker compose down")

    def restart(self, *services: str) -> None:
        self.compose("restart", *services)

    def stop(self, *services: str) -> None:
        self.compose("stop", *services)

    def start(self, *services: str) -> None:
        self.compose("start", *services)

    def project_objects(self, kind: str) -> list[str]:
        """Names of the project's ``kind`` (container, network, volume) that exist."""
        label = f"label=com.docker.compose.project={self.cfg.project}"
        fmt = "{{.Names}}" if kind == "container" else "{{.Name}}"
        extra = ["--all"] if kind == "container" else []
        out = self.docker(kind, "ls", *extra, "--filter", label, "--format", fmt).stdout
        return [line for line in out.splitlines() if line.strip()]

    def remove_volumes(self, names: list[str]) -> None:
        """Delete volumes by name (those compose no longer names: a removed agent node's)."""
        if names:
            self.docker("volume", "rm", *names, what="docker volume rm")

    def inspect(self, kind: str, name: str) -> dict[str, Any]:
        """`docker KIND inspect NAME` (container, image, volume) as a dict."""
        doc = json.loads(self.docker(kind, "inspect", name).stdout)
        return dict(doc[0])

    # ----------------------------------------------------------------------- images

    def image_exists(self, tag: str) -> bool:
        return self.docker("image", "inspect", tag, check=False).returncode == 0

    def image_labels(self, tag: str) -> dict[str, str]:
        return dict((self.inspect("image", tag).get("Config") or {}).get("Labels") or {})

    def remove_image(self, tag: str) -> None:
        self.docker("image", "rm", tag)

    def push(self, tag: str) -> str:
        """Push an image; its digest in the registry it was pushed to."""
        self.docker("image", "push", "--quiet", tag, what=f"pushing {tag}")
        repo = tag.rsplit(":", 1)[0]
        digests = self.inspect("image", tag).get("RepoDigests") or []
        return next((d.split("@", 1)[1] for d in digests if d.startswith(repo + "@")), "")

    def pull(self, image: str) -> None:
        self.docker("image", "pull", "--quiet", image, what=f"pulling {image}")

    def build(
        self,
        context: Path,
        tag: str,
        dockerfile: Path | None = None,
        args: Mapping[str, str] | None = None,
        labels: Mapping[str, str] | None = None,
    ) -> None:
        """Build an image (buildx where it exists, else the legacy builder), saying so and how long
        it took; on failure the end of the build's output and one line."""
        started = time.monotonic()
        say(f"building {tag}")
        cmd = ["buildx", "build", "--builder", "default", "--load"] if has_buildx() else ["build"]
        cmd += ["--tag", tag]
        if dockerfile is not None:
            cmd += ["--file", str(dockerfile)]
        for key, value in (args or {}).items():
            cmd += ["--build-arg", f"{key}={value}"]
        for key, value in (labels or {}).items():
            cmd += ["--label", f"{key}={value}"]
        env = {} if has_buildx() else {"DOCKER_BUILDKIT": "0"}
        try:
            self.docker(*cmd, str(context), env=env)
        except CommandFailed as exc:
            detail = exc.output.strip().splitlines()
            print("\n".join(f"    {line}" for line in detail[-30:]), file=sys.stderr)
            raise UserError(f"building {tag} failed: {exc.why}{build_hint(detail)}") from None
        say(f"built {tag} in {time.monotonic() - started:.1f} s")

    def run_streaming(
        self, image: str, command: list[str], volumes: list[tuple[str | Path, str, str]]
    ) -> None:
        """Run a one-off container to completion, its output streamed to stderr."""
        mounts = [arg for src, dst, mode in volumes for arg in ("-v", f"{src}:{dst}:{mode}")]
        args = ["docker", "run", "--rm", *mounts, image, *command]
        what = f"{image} {' '.join(command)} (its output is above)"
        for line in shell.lines(args, what=what):
            print(f"    {line}", file=sys.stderr, flush=True)

    def import_rootfs(self, rootfs: Path, tag: str) -> None:
        """`docker import` a root filesystem folder as an image."""
        shell.pipe(
            ["tar", "-C", rootfs, "-c", "."], ["docker", "import", "-", tag], f"import {tag}"
        )

    # ----------------------------------------------------------------------- probes (doctor)

    def try_pull(self, image: str, timeout: float = 60) -> tuple[bool, str]:
        """Whether ``image`` can be pulled here, and the line docker said."""
        result = self.docker("pull", "--quiet", image, check=False, timeout=timeout)
        return result.returncode == 0, shell.failure_line(result.stderr)[-160:]

    def try_python(self, image: str, code: str) -> tuple[bool, str]:
        """Whether ``python -c code`` succeeds in ``image``, and the line that says why not."""
        args = ("run", "--rm", "--entrypoint", "python", image, "-c", code)
        result = self.docker(*args, check=False, timeout=300)
        return result.returncode == 0, shell.failure_line(result.stderr or result.stdout)

    def try_run(self, image: str, *options: str) -> tuple[bool, str]:
        """Whether a container with these `docker run` options starts here (`true` its command)."""
        args = ("run", "--rm", *options, "--entrypoint", "true", image)
        result = self.docker(*args, check=False, timeout=60)
        return result.returncode == 0, shell.failure_line(result.stderr) or "refused"
