"""Demo DAG: REST API -> shared volume -> S3, each task in its own KubernetesExecutor pod.

Module level stays import-cheap (the dag-processor parses it every few seconds): the hooks are
imported inside the tasks, and the pure logic lives in ``demo_lib`` next to this file.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta
from pathlib import Path
from typing import Any

import demo_lib
from airflow.sdk import Variable, dag, task

log = logging.getLogger(__name__)

HTTP_CONN_ID = "mockserver"
AWS_CONN_ID = "aws_default"
ORDERS_ENDPOINT = "/api/v1/orders"

DOC_MD = """
### REST API → shared volume → S3

Every task runs in its own worker pod (KubernetesExecutor, pod template
`airflow/pod_template.yaml`); the pods share the volume `airflow-shared`, mounted at the
Variable `SHARED_DIR` (`/shared`).

1. **fetch**: `GET /api/v1/orders` through the connection `mockserver` (MockServer answers from
   `mockserver/expectations.json`), checks the answer is a JSON object with an `orders` list, and
   writes the raw bytes to `<SHARED_DIR>/<run id>/orders.json` on the shared volume. Returns path,
   sha256 and size.
2. **upload**: checks the file on the shared volume still has fetch's checksum, then uploads it
   with the connection `aws_default` (SeaweedFS S3) to `s3://<DATA_BUCKET>/orders/<run id>.json`
   (replacing an earlier try's object).
3. **verify**: reads the object back from S3 and the file from the shared volume again, and fails
   unless checksums and parsed JSON match. Returns the number of orders.

Run ids contain `:` and `+`; file and key names use a sanitised form (`demo_lib.sanitise_run_id`).
Variables: `DATA_BUCKET`, `SHARED_DIR`. Each task is retried once after a short delay.
"""


def _orders_path(run_id: str) -> Path:
    return Path(demo_lib.shared_file(Variable.get("SHARED_DIR"), run_id))


@task
def fetch(run_id: str | None = None) -> dict[str, Any]:
    """GET the orders and write them to the shared volume; return path, sha256 and size."""
    from airflow.providers.http.hooks.http import HttpHook

    if not run_id:
        raise ValueError("fetch needs the run_id from the task context")
    response = HttpHook(method="GET", http_conn_id=HTTP_CONN_ID).run(
        ORDERS_ENDPOINT, extra_options={"timeout": 30}
    )
    payload: bytes = response.content
    orders = demo_lib.parse_orders(payload)
    path = _orders_path(run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename: a retried or concurrent try never sees half a file.
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    partial.write_bytes(payload)
    partial.replace(path)
    info = demo_lib.file_info(payload)
    log.info(
        "Wrote %d orders (%d bytes, sha256 %s) to %s",
        len(orders["orders"]),
        info.bytes,
        info.sha256,
        path,
    )
    return {"path": str(path), "sha256": info.sha256, "bytes": info.bytes}


@task
def upload(fetched: dict[str, Any], run_id: str | None = None) -> dict[str, Any]:
    """Upload fetch's file from the shared volume to s3://<DATA_BUCKET>/orders/<run id>.json."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    if not run_id:
        raise ValueError("upload needs the run_id from the task context")
    path = Path(fetched["path"])
    payload = path.read_bytes()
    sha256 = demo_lib.sha256_hex(payload)
    if sha256 != fetched["sha256"]:
        raise demo_lib.IntegrityError(
            f"{path} changed since fetch: sha256 {sha256}, fetch wrote {fetched['sha256']}"
        )
    bucket = Variable.get("DATA_BUCKET")
    key = demo_lib.object_key(run_id)
    S3Hook(aws_conn_id=AWS_CONN_ID).load_file(
        filename=str(path), key=key, bucket_name=bucket, replace=True
    )
    log.info("Uploaded %s to s3://%s/%s", path, bucket, key)
    return {"bucket": bucket, "key": key, "sha256": sha256}


@task
def verify(uploaded: dict[str, Any], run_id: str | None = None) -> dict[str, Any]:
    """Read the object back and compare it with the file on the shared volume."""
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    if not run_id:
        raise ValueError("verify needs the run_id from the task context")
    bucket, key = uploaded["bucket"], uploaded["key"]
    path = _orders_path(run_id)
    fetched = path.read_bytes()
    if demo_lib.sha256_hex(fetched) != uploaded["sha256"]:
        raise demo_lib.IntegrityError(f"{path} changed after the upload")
    obj = S3Hook(aws_conn_id=AWS_CONN_ID).get_key(key, bucket_name=bucket)
    stored: bytes = obj.get()["Body"].read()
    orders = demo_lib.compare_payloads(fetched, stored, f"s3://{bucket}/{key}")
    summary = {
        "bucket": bucket,
        "key": key,
        "sha256": uploaded["sha256"],
        "orders": len(orders["orders"]),
    }
    log.info("Verified s3://%s/%s: %d orders", bucket, key, summary["orders"])
    return summary


@dag(
    dag_id="demo_rest_to_s3",
    schedule=None,
    catchup=False,
    doc_md=DOC_MD,
    tags=["demo", "kubernetes"],
    default_args={"retries": 1, "retry_delay": timedelta(seconds=10)},
)
def demo_rest_to_s3() -> None:
    # TaskFlow wires XComArgs; Airflow resolves them to the returned dicts inside the pods.
    fetched: Any = fetch()
    uploaded: Any = upload(fetched)
    verify(uploaded)


demo_rest_to_s3()
