"""What airflow-k3s can do: `invoke --list`, `invoke --help TASK`. The logic is in airflow_k3s/.

Tasks, in the order a user meets them: secrets, doctor, up, settings, status, demo, trigger-dag,
parse, pod-yaml, task-test, airflow, logs, pod-logs, kubectl, kubeconfig, build, push, down,
clean, lock.
Each parses its arguments, calls the package, and turns its errors into one line and an exit code
(airflow_k3s/exits.py).
"""

from __future__ import annotations

import functools
import shlex
import sys
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import httpx
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from airflow_k3s import cluster, compose, dags, images, runs, stack
from airflow_k3s import doctor as checks
from airflow_k3s.exits import ExitCode, UserError
from airflow_k3s.settings import DEMO_DAG, settings

P = ParamSpec("P")
R = TypeVar("R")


def cli(func: Callable[P, R]) -> Callable[P, R]:
    """A user's mistake or a refusal (UserError, docker, the API) ends as one line and its code."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        # invoke reads a help flag after a task name as the value of a positional argument
        # still missing (`invoke pod-logs --help` asks for the logs of a task named "--help").
        if any(value in ("-h", "--help") for value in [*args[1:], *kwargs.values()]):
            name = func.__name__.replace("_", "-")
            raise Exit(
                f"--help was read as an argument's value; for help: invoke --help {name}",
                code=int(ExitCode.USAGE),
            )
        try:
            with compose.docker_errors():
                return func(*args, **kwargs)
        except UserError as exc:
            raise Exit(exc.message, code=int(exc.code)) from None
        except httpx.HTTPError as exc:
            raise Exit(f"the Airflow API did not answer as expected: {exc}", code=1) from None

    return wrapper


@task
@cli
def secrets(c: Context) -> None:
    """Generate missing secrets into .env and render the worker Secret (never replaces one)."""
    stack.ensure_secrets(settings())


@task(help={"pull": "also try to pull a pinned upstream image (network)"})
@cli
def doctor(c: Context, pull: bool = True) -> None:
    """Check the machine first: Docker, compose, memory, disk, ports, privileges, pulls."""
    cfg = settings()
    found = checks.run_checks(cfg, pull)
    print("\n".join(check.line() for check in found))
    failed = [check.name for check in found if not check.ok]
    if failed:
        raise Exit(f"doctor: {len(failed)} check(s) failed: {', '.join(failed)}", code=1)
    print(f"doctor: ready for IMAGES={cfg.images}")


@task(
    help={
        "no_build": "start with the images already built",
        "timeout": "seconds to wait for every service to be healthy",
    }
)
@cli
def up(c: Context, no_build: bool = False, timeout: int = 900) -> None:
    """Generate secrets, build, start and wait until healthy, push the worker image."""
    stack.up(settings(), build=not no_build, timeout=timeout)


@task(name="settings")
@cli
def airflow_settings(c: Context) -> None:
    """Apply the connections, variables and pools of airflow/settings.yaml ($AIRFLOW_SETTINGS)."""
    done = stack.apply_settings(settings())
    for kind, names in done.items():
        print(f"{kind}: {', '.join(names)}")


@task
@cli
def status(c: Context) -> None:
    """Show each service and its health, and the cluster's nodes and pods."""
    stack.status(settings())


@task(help={"timeout": "seconds to wait for the demo run"})
@cli
def demo(c: Context, timeout: int = 600) -> None:
    """Start the stack, run the demo DAG to success and show its pods and its S3 object."""
    cfg = stack.up(settings(), build=True, timeout=900)
    run_id = runs.run_dag(cfg, DEMO_DAG, {}, parse_timeout=120, timeout=timeout)
    runs.show_demo_result(cfg, run_id)


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
@cli
def trigger_dag(
    c: Context,
    dag_id: str,
    conf: str = "",
    wait: bool = False,
    timeout: int = 600,
    parse_timeout: int = 90,
) -> None:
    """Unpause and trigger a DAG through the REST API; --wait follows it to the end."""
    run_conf = runs.parse_conf(conf)
    compose.check_docker()
    print(runs.run_dag(settings(), dag_id, run_conf, parse_timeout, timeout if wait else None))


@task
@cli
def parse(c: Context) -> None:
    """Import every DAG file in the worker image (as its pods do); list import errors, file:line."""
    compose.check_docker()
    dag_ids, errors = dags.parse_dags(settings())
    for error in errors:
        print(error)
    print(f"{len(dag_ids)} DAGs, {len(errors)} file(s) with import errors")
    if errors:
        raise Exit(code=int(ExitCode.IMPORT_ERRORS))


@task(
    positional=["dag_id", "task_id"],
    help={"dag_id": "the task's DAG", "task_id": "the task"},
)
@cli
def pod_yaml(c: Context, dag_id: str, task_id: str) -> None:
    """The pod the executor would create for a task (template, config, pod_override), as YAML."""
    compose.check_docker()
    print(dags.pod_yaml(settings(), dag_id, task_id), end="")


@task(
    positional=["dag_id", "task_id"],
    help={
        "dag_id": "the task's DAG",
        "task_id": "the task",
        "timeout": "seconds to wait for the pod to start and to end",
    },
)
@cli
def task_test(c: Context, dag_id: str, task_id: str, timeout: int = 600) -> None:
    """Run one task once as a pod on the cluster, outside any DAG run, and show its output."""
    compose.check_docker()
    code = dags.task_test(settings(), dag_id, task_id, timeout)
    if code:
        raise Exit(code=code)


@task
@cli
def airflow(c: Context) -> None:
    """The Airflow CLI in the stack: `invoke airflow -- dags list` (its exit code is ours)."""
    compose.check_docker()
    cfg = settings()
    compose.require_running(cfg, "airflow-scheduler")
    code = compose.passthrough(cfg, "airflow-scheduler", ["airflow", *shlex.split(c.remainder)])
    if code:
        raise Exit(code=code)


@task(
    help={
        "service": "one service (default: all)",
        "follow": "keep printing new lines",
        "tail": "lines from the end to start with",
    }
)
@cli
def logs(c: Context, service: str = "", follow: bool = False, tail: str = "200") -> None:
    """Print the logs of one service or of all."""
    compose.check_docker()
    docker = compose.client(settings())
    if follow:
        for _source, line in docker.compose.logs(
            service or [], follow=True, stream=True, tail=tail
        ):
            sys.stdout.write(line.decode(errors="replace"))
    else:
        print(docker.compose.logs(service or [], tail=tail))


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
@cli
def pod_logs(
    c: Context,
    task_id: str,
    dag_id: str = DEMO_DAG,
    run_id: str = "",
    try_number: int = 0,
    tail: int = 200,
) -> None:
    """Print a task's worker pod output (kubectl logs), and why a pod did not start."""
    cfg = settings()
    cluster.require_kubeconfig(cfg)
    code = runs.pod_logs(cfg, dag_id, task_id, run_id, try_number, tail)
    if code:
        raise Exit(code=code)


@task
@cli
def kubectl(c: Context) -> None:
    """kubectl against the cluster: `invoke kubectl -- get pods -A` (its exit code is ours)."""
    code = cluster.passthrough(settings(), shlex.split(c.remainder))
    if code:
        raise Exit(code=code)


@task(help={"timeout": "seconds to wait for k3s to write its kubeconfig"})
@cli
def kubeconfig(c: Context, timeout: int = 120) -> None:
    """Rewrite k3s's kubeconfig: a copy for the host and one for containers (.generated/)."""
    compose.check_docker()
    host, containers = cluster.refresh_kubeconfigs(settings(), timeout)
    compose.say(
        f"kubeconfig for the host: {host} (export KUBECONFIG={host}); containers: {containers}"
    )


@task(help={"worker_only": "build only the worker image (the DAG-edit loop)"})
@cli
def build(c: Context, worker_only: bool = False) -> None:
    """Build (or pull) the service images and build the worker image (DAGs baked in)."""
    compose.check_docker()
    images.build_all(settings(), worker_only=worker_only)


@task
@cli
def push(c: Context) -> None:
    """Push the worker image to the stack's registry (idempotent); print its digest."""
    compose.check_docker()
    cfg = settings()
    compose.require_running(cfg, "registry")
    print(images.push_worker(cfg))


@task(help={"timeout": "seconds to give each container to stop"})
@cli
def down(c: Context, timeout: int = 30) -> None:
    """Stop the stack and keep its data (volumes, .env, images)."""
    stack.down(settings(), timeout)


@task
@cli
def clean(c: Context) -> None:
    """Delete the stack: containers, volumes, network, .env secrets and .generated/ (says what)."""
    stack.clean(settings())


@task
def lock(c: Context) -> None:
    """Re-lock the Airflow image's dependencies (airflow/requirements.in -> requirements.txt)."""
    c.run(
        "uv pip compile --universal --python-version 3.11 --no-header -q "
        "airflow/requirements.in -o airflow/requirements.txt"
    )
