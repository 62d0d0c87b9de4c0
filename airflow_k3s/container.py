"""What runs inside the Airflow containers: ``python -m airflow_k3s.container COMMAND``.

The Airflow image installs this package (airflow/Dockerfile). Its entrypoint (airflow/entrypoint.sh)
waits for k3s's kubeconfig and rewrites it for the container, and writes the simple auth manager's
passwords file; the one-shot ``airflow-init`` service migrates the database, creates the buckets
and waits for MockServer. Standard library, PyYAML and (init only) boto3: of the host's task
library only the runner (shell) and the renderers (generated).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

from airflow_k3s import shell
from airflow_k3s.generated import (
    ADMIN_USER,
    SetupError,
    job_health_threshold,
    kubeconfig_namespace,
    libpq_url,
    passwords_json,
    rewrite_kubeconfig,
    s3_endpoint,
    write_private,
)

#: A worker pod's container args, as the KubernetesExecutor gives them (the workload left out).
WORKLOAD_ARGS = [
    "python",
    "-m",
    "airflow.sdk.execution_time.execute_workload",
    "--json-string",
    "<workload>",
]


def wait_for_file(
    path: Path,
    timeout: float,
    what: str,
    poll: float = 1.0,
    wanted: Callable[[str], bool] = lambda _text: True,
) -> str:
    """Return the non-empty content of ``path`` once ``wanted`` takes it, waiting up to
    ``timeout`` seconds."""

    def content() -> str:
        try:
            text = path.read_text()
        except FileNotFoundError:
            return ""
        return text if text.strip() and wanted(text) else ""

    def missing() -> SetupError:
        return SetupError(f"{what} ({path}) was not written within {timeout:.0f} s")

    return shell.poll(what, content, timeout, poll, missing)


def wait_http(url: str, method: str, timeout: float) -> None:
    """Wait until ``url`` answers ``method`` with any HTTP status below 400."""
    last = ""

    def answers() -> bool:
        nonlocal last
        try:
            urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5).close()
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
            return False
        return True

    def silent() -> SetupError:
        return SetupError(f"{url} did not answer within {timeout:.0f} s: {last}")

    shell.poll(url, answers, timeout, 1, silent)


def _cmd_kubeconfig(args: argparse.Namespace) -> None:
    """Copy this service's kubeconfig once it is the executor's namespace's: after the namespace
    changed, the one in the volume holds the old namespace's token until kube-credentials has
    written the new one."""
    namespace = args.namespace

    def wanted(text: str) -> bool:
        return not namespace or kubeconfig_namespace(text) == namespace

    what = "this service's kubeconfig (kube-credentials)"
    what += f" for namespace {namespace}" if namespace else ""
    text = wait_for_file(Path(args.src), args.timeout, what, wanted=wanted)
    write_private(Path(args.dst), rewrite_kubeconfig(text, args.server))
    print(f"airflow-k3s: kubeconfig for {args.server} written to {args.dst}", file=sys.stderr)


def _cmd_passwords_file(args: argparse.Namespace) -> None:
    write_private(
        Path(args.path), passwords_json(ADMIN_USER, os.environ["AIRFLOW_K3S_ADMIN_PASSWORD"])
    )


def _cmd_init(args: argparse.Namespace) -> None:
    import boto3  # the Airflow image has it (amazon provider)

    print("airflow-init: migrating the metadata database", file=sys.stderr)
    if shell.attach(["airflow", "db", "migrate"]) != 0:
        raise SetupError("`airflow db migrate` failed (its output is above)")
    endpoint = s3_endpoint(os.environ["AIRFLOW_CONN_AWS_DEFAULT"])
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    for bucket in args.buckets:
        if bucket not in existing:
            s3.create_bucket(Bucket=bucket)
        print(f"airflow-init: bucket s3://{bucket} ready", file=sys.stderr)
    wait_http(args.mockserver + "/mockserver/status", "PUT", args.timeout)
    print(f"airflow-init: {args.mockserver} answers", file=sys.stderr)


#: The age of the newest heartbeat of a running job of one type on one host, by the database's
#: clock: the query of ``airflow jobs check --job-type T --hostname H`` (cli/commands/jobs_command).
JOB_HEARTBEAT_AGE_SQL = """
SELECT extract(epoch FROM now() - latest_heartbeat) FROM job
WHERE job_type = %s AND hostname = %s AND state = 'running'
ORDER BY latest_heartbeat DESC LIMIT 1
"""


def job_heartbeat_age(url: str, job_type: str, hostname: str) -> float | None:
    """Seconds since the newest heartbeat of a running ``job_type`` job on ``hostname`` (None: no
    such job), from the metadata database at the SQLAlchemy ``url``."""
    import psycopg2  # the Airflow image has it (psycopg2-binary)

    try:
        conn = psycopg2.connect(libpq_url(url), connect_timeout=5)
        with closing(conn), conn.cursor() as cur:
            cur.execute(JOB_HEARTBEAT_AGE_SQL, (job_type, hostname))
            row = cur.fetchone()
    except psycopg2.Error as exc:
        raise SetupError(f"the metadata database did not answer: {str(exc).strip()}") from exc
    return None if row is None else float(row[0])


def _cmd_job_alive(args: argparse.Namespace) -> None:
    """The Docker healthcheck of the dag-processor and the triggerer: what ``airflow jobs check``
    answers, in one query and without importing Airflow (which costs 2.7 CPU seconds a check)."""
    threshold = job_health_threshold(args.job_type, os.environ)
    hostname = args.hostname or os.environ.get("HOSTNAME") or socket.gethostname()
    url = os.environ.get("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", "")
    age = job_heartbeat_age(url, args.job_type, hostname)
    if age is None:
        raise SetupError(f"no running {args.job_type} on {hostname}")
    if age >= threshold:
        raise SetupError(
            f"{args.job_type} on {hostname}: last heartbeat {age:.0f} s ago (limit {threshold:g} s)"
        )
    print(f"{args.job_type} on {hostname} is alive (last heartbeat {age:.1f} s ago)")


def import_error_lines(folder: Path, errors: dict[str, str]) -> list[dict[str, object]]:
    """DagBag's import errors as {file, line, error}: the file relative to the DAGs folder, the
    last line of the traceback that is in that file, and the exception's last line."""
    found = []
    for path, trace in sorted(errors.items()):
        full = Path(path) if Path(path).is_absolute() else folder / path
        lines = trace.strip().splitlines()
        line_no = 0
        marker = f'File "{full}", line '
        for text in lines:
            if marker in text:
                line_no = int(text.split(marker, 1)[1].split(",", 1)[0])
        try:
            rel = str(full.relative_to(folder))
        except ValueError:
            rel = path
        found.append({"file": rel, "line": line_no, "error": lines[-1] if lines else "?"})
    return found


def _cmd_parse_dags(args: argparse.Namespace) -> None:
    """Import every DAG file the way the worker does (DagBag, this image's Python and providers);
    print {dags: [...], errors: [...]} as JSON on stdout."""

    from airflow.dag_processing.dagbag import BundleDagBag

    folder = Path(args.folder)
    bag = BundleDagBag(dag_folder=folder, bundle_path=folder)
    errors = import_error_lines(folder, dict(bag.import_errors))
    print(json.dumps({"dags": sorted(bag.dag_ids), "errors": errors}))


def _cmd_pod_yaml(args: argparse.Namespace) -> None:
    """The pod the KubernetesExecutor would create for one task: the pod template, the executor's
    config and the task's pod_override, merged by the provider's own PodGenerator. Airflow logs
    to stdout: while it works, stdout is stderr, and only the YAML goes to the real stdout."""
    result, sys.stdout = sys.stdout, sys.stderr
    try:
        text = _pod_yaml(args)
    finally:
        sys.stdout = result
    print(text, end="")


def _pod_yaml(args: argparse.Namespace) -> str:
    import yaml
    from airflow.dag_processing.dagbag import BundleDagBag
    from airflow.providers.cncf.kubernetes.kube_config import KubeConfig
    from airflow.providers.cncf.kubernetes.pod_generator import PodGenerator
    from kubernetes.client import ApiClient

    folder = Path(args.folder)
    bag = BundleDagBag(dag_folder=folder, bundle_path=folder)
    if args.dag_id not in bag.dags:
        raise SetupError(
            f"no DAG {args.dag_id!r} in {folder} (known: {', '.join(sorted(bag.dag_ids))})"
        )
    dag = bag.dags[args.dag_id]
    if args.task_id not in dag.task_ids:
        raise SetupError(
            f"DAG {args.dag_id!r} has no task {args.task_id!r} (tasks: {', '.join(dag.task_ids)})"
        )
    task = dag.get_task(args.task_id)
    kube = KubeConfig()
    override = (task.executor_config or {}).get("pod_override")
    pod = PodGenerator.construct_pod(
        dag_id=args.dag_id,
        task_id=args.task_id,
        pod_id=args.name
        or f"{args.dag_id}-{args.task_id}".replace("_", "-").lower()[:55] + "-preview",
        try_number=1,
        kube_image=kube.kube_image,
        date=None,
        args=json.loads(args.args) if args.args else WORKLOAD_ARGS,
        pod_override_object=override,
        base_worker_pod=PodGenerator.deserialize_model_file(kube.pod_template_file),
        namespace=kube.kube_namespace,
        scheduler_job_id="preview",
        run_id="preview",
        with_mutation_hook=True,
    )
    return str(yaml.safe_dump(ApiClient().sanitize_for_serialization(pod), sort_keys=False))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m airflow_k3s.container", description=__doc__.splitlines()[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    kc = sub.add_parser("kubeconfig", help="wait for k3s's kubeconfig and rewrite it")
    kc.add_argument("--src", required=True)
    kc.add_argument("--dst", required=True)
    kc.add_argument("--server", required=True)
    kc.add_argument("--timeout", type=float, default=180)
    kc.add_argument("--namespace", default="", help="wait for this namespace's (default: any)")
    kc.set_defaults(func=_cmd_kubeconfig)
    pw = sub.add_parser("passwords-file", help="write the simple auth manager's passwords file")
    pw.add_argument("--path", required=True)
    pw.set_defaults(func=_cmd_passwords_file)
    init = sub.add_parser("init", help="migrate the DB, create the buckets, wait for MockServer")
    init.add_argument("--buckets", nargs="+", default=["airflow-logs", "airflow-data"])
    init.add_argument("--mockserver", default="http://mockserver:1080")
    init.add_argument("--timeout", type=float, default=120)
    init.set_defaults(func=_cmd_init)
    alive = sub.add_parser("job-alive", help="is this host's job of one type heartbeating?")
    alive.add_argument("job_type", help="SchedulerJob, TriggererJob or DagProcessorJob")
    alive.add_argument("--hostname", default="", help="the job's host (default: this container)")
    alive.set_defaults(func=_cmd_job_alive)
    parse = sub.add_parser("parse-dags", help="import every DAG file, print the import errors")
    parse.add_argument("--folder", default="/opt/airflow/dags")
    parse.set_defaults(func=_cmd_parse_dags)
    pod = sub.add_parser("pod-yaml", help="the worker pod of one task, as YAML")
    pod.add_argument("dag_id")
    pod.add_argument("task_id")
    pod.add_argument("--folder", default="/opt/airflow/dags")
    pod.add_argument("--name", default="", help="the pod's name (default: <dag>-<task>-preview)")
    pod.add_argument("--args", default="", help="the container's args, a JSON list")
    pod.set_defaults(func=_cmd_pod_yaml)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except SetupError as exc:
        print(f"airflow-k3s: ERROR: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
