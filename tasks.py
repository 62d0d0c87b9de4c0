"""What airflow-k3s can do: `invoke --list`, `invoke --help TASK`. The logic is in airflow_k3s/.

Tasks, in the order a user meets them: secrets, doctor, up, settings, status, demo, trigger-dag,
publish-dags, parse, pod-yaml, task-test, airflow, logs, pod-logs, kubectl, kubeconfig, build, push,
down, clean, lock.
Each parses its arguments, makes the one Stack object of the invocation (airflow_k3s/boundary.py),
calls the package, and turns its errors into one line and an exit code (airflow_k3s/exits.py).
AIRFLOW_K3S_VERBOSE=1 prints every docker, compose and kubectl command a task runs.
"""

from __future__ import annotations

import functools
import shlex
from collections.abc import Callable
from typing import ParamSpec, TypeVar

import httpx
import yaml
from invoke.context import Context
from invoke.exceptions import Exit
from invoke.tasks import task

from airflow_k3s import bundles, dag_checks, images, lifecycle, runs, userfiles
from airflow_k3s import doctor as checks
from airflow_k3s.boundary import Stack
from airflow_k3s.exits import ExitCode, UserError
from airflow_k3s.settings import DEMO_DAG
from airflow_k3s.shell import say

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
    lifecycle.ensure_secrets(Stack.load().cfg)


@task(help={"pull": "also try to pull a pinned upstream image (network)"})
@cli
def doctor(c: Context, pull: bool = True) -> None:
    """Check the machine first: Docker, compose, memory, disk, ports, privileges, pulls."""
    stack = Stack.load()
    found = checks.run_checks(stack, pull)
    print("\n".join(check.line() for check in found))
    failed = [check.name for check in found if not check.ok]
    if failed:
        raise Exit(f"doctor: {len(failed)} check(s) failed: {', '.join(failed)}", code=1)
    print(f"doctor: ready for IMAGES={stack.cfg.images}")


@task(
    help={
        "no_build": "start with the images already built",
        "timeout": "seconds to wait for every service to be healthy",
    }
)
@cli
def up(c: Context, no_build: bool = False, timeout: int = 900) -> None:
    """Generate secrets, build, start and wait until healthy, push the worker image."""
    lifecycle.up(Stack.load(), build=not no_build, timeout=timeout)


@task(name="settings")
@cli
def airflow_settings(c: Context) -> None:
    """Apply the connections, variables and pools of airflow/settings.yaml ($AIRFLOW_SETTINGS)."""
    done = lifecycle.apply_settings(Stack.load())
    for kind, names in done.items():
        print(f"{kind}: {', '.join(names)}")


@task
@cli
def status(c: Context) -> None:
    """Show each service and its health, and the cluster's nodes and pods (exit 4: not up)."""
    lifecycle.status(Stack.load())


@task(help={"timeout": "seconds to wait for the demo run"})
@cli
def demo(c: Context, timeout: int = 600) -> None:
    """Start the stack, run the demo DAG to success and show its pods and its S3 object."""
    stack = Stack.load()
    lifecycle.up(stack, build=True, timeout=900)
    run_id = runs.run_dag(stack, DEMO_DAG, {}, parse_timeout=120, timeout=timeout)
    runs.show_demo_result(stack, run_id)


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
    print(runs.run_dag(Stack.load(), dag_id, run_conf, parse_timeout, timeout if wait else None))


@task(help={"timeout": "seconds to wait for the dag-processor to parse the new version"})
@cli
def publish_dags(c: Context, timeout: int = 120) -> None:
    """DAG_SOURCE=git: commit the DAGs folder as a new version and wait until it is parsed."""
    print(bundles.publish(Stack.load(), timeout))


@task
@cli
def parse(c: Context) -> None:
    """Import every DAG file in the worker image (as its pods do); list import errors, file:line."""
    stack = Stack.load()
    stack.docker.check()
    dag_ids, errors = dag_checks.parse_dags(stack)
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
    """The pod the executor would make for a task, as YAML, and the Pod Security levels it meets."""
    stack = Stack.load()
    text = dag_checks.pod_yaml(stack, dag_id, task_id)
    print(text, end="", flush=True)
    for level, broken in dag_checks.pod_security(stack, yaml.safe_load(text)).items():
        say(f"Pod Security {level}: " + (f"refused: {broken}" if broken else "admitted"))


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
    code = dag_checks.task_test(Stack.load(), dag_id, task_id, timeout)
    if code:
        raise Exit(code=code)


@task
@cli
def airflow(c: Context) -> None:
    """The Airflow CLI in the stack: `invoke airflow -- dags list` (its exit code is ours)."""
    stack = Stack.load()
    stack.require("airflow-scheduler")
    code = stack.docker.exec_attached("airflow-scheduler", ["airflow", *shlex.split(c.remainder)])
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
    stack = Stack.load()
    stack.docker.check()
    code = stack.docker.logs([service] if service else [], tail, follow)
    if code:
        raise Exit(code=code)


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
    code = runs.pod_logs(Stack.load(), dag_id, task_id, run_id, try_number, tail)
    if code:
        raise Exit(code=code)


@task
@cli
def kubectl(c: Context) -> None:
    """kubectl against the cluster: `invoke kubectl -- get pods -A` (its exit code is ours)."""
    code = Stack.load().kube.attach(shlex.split(c.remainder))
    if code:
        raise Exit(code=code)


@task(help={"timeout": "seconds to wait for k3s to write its kubeconfig"})
@cli
def kubeconfig(c: Context, timeout: int = 120) -> None:
    """Rewrite k3s's kubeconfig: a copy for the host and one for containers (.generated/)."""
    host, containers = lifecycle.refresh_kubeconfigs(Stack.load(), timeout)
    say(f"kubeconfig for the host: {host} (export KUBECONFIG={host}); containers: {containers}")


@task(help={"worker_only": "build only the worker image (the DAG-edit loop)"})
@cli
def build(c: Context, worker_only: bool = False) -> None:
    """Build (or pull) the service images and build the worker image (DAGs baked in)."""
    stack = Stack.load()
    stack.docker.check()
    userfiles.check_all(stack.cfg)
    images.build_all(stack, worker_only=worker_only)


@task
@cli
def push(c: Context) -> None:
    """Push the worker image to the stack's registry (idempotent); print its digest."""
    stack = Stack.load()
    stack.require("registry")
    print(images.push_worker(stack))


@task(help={"timeout": "seconds to give each container to stop"})
@cli
def down(c: Context, timeout: int = 30) -> None:
    """Stop the stack and keep its data (volumes, .env, images)."""
    lifecycle.down(Stack.load(), timeout)


@task
@cli
def clean(c: Context) -> None:
    """Delete the stack: containers, volumes, network, .env secrets and .generated/ (says what)."""
    lifecycle.clean(Stack.load())


@task
def lock(c: Context) -> None:
    """Re-lock the Airflow image's dependencies (airflow/requirements.in -> requirements.txt)."""
    c.run(
        "uv pip compile --universal --python-version 3.11 --no-header -q "
        "airflow/requirements.in -o airflow/requirements.txt"
    )
