"""Pure helpers of the demo_rest_to_s3 DAG: names, checksums, payload checks. No Airflow imports.

Baked into the worker image next to the DAG (the DAGs folder is on ``sys.path`` in every Airflow
component and in the worker pods), and unit-tested without Airflow, Docker or a database.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

#: Characters kept as they are in a file name / object key component; anything else is replaced.
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_NAME = 120
ORDERS_FILE = "orders.json"
ORDERS_PREFIX = "orders"


class PayloadError(ValueError):
    """The REST API answered with something that is not the expected orders document."""


class IntegrityError(RuntimeError):
    """The object read back from S3 differs from the file that was fetched."""


@dataclass(frozen=True)
class FileInfo:
    """Checksum and size of a payload, as the tasks pass them on through XCom."""

    sha256: str
    bytes: int


def sanitise_run_id(run_id: str) -> str:
    """A file-name- and S3-key-safe, readable and collision-free form of an Airflow run id.

    Run ids such as ``manual__2024-05-01T10:00:00+00:00`` contain ':' and '+'. Runs of other
    characters than ``[A-Za-z0-9._-]`` become '_', leading dots are dropped (no hidden files, no
    ``..``), and whenever the id had to be changed a short hash of the original is appended, so two
    different run ids never share a folder or an object key.
    """
    if not run_id:
        raise ValueError("run_id must not be empty")
    safe = _UNSAFE.sub("_", run_id).lstrip(".")[:_MAX_NAME]
    if safe == run_id:
        return safe
    digest = hashlib.sha256(run_id.encode()).hexdigest()[:8]
    return f"{safe or 'run'}-{digest}"


def object_key(run_id: str, prefix: str = ORDERS_PREFIX) -> str:
    """The S3 key of a run's orders: ``orders/<sanitised run id>.json``."""
    return f"{prefix.strip('/')}/{sanitise_run_id(run_id)}.json"


def shared_file(shared_dir: str, run_id: str, filename: str = ORDERS_FILE) -> PurePosixPath:
    """Where a run's file lives on the shared volume: ``<shared_dir>/<sanitised run id>/<file>``."""
    if not shared_dir.startswith("/"):
        raise ValueError(f"SHARED_DIR must be an absolute path, got {shared_dir!r}")
    return PurePosixPath(shared_dir) / sanitise_run_id(run_id) / filename


def sha256_hex(data: bytes) -> str:
    """The hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def file_info(data: bytes) -> FileInfo:
    """Checksum and size of ``data``."""
    return FileInfo(sha256=sha256_hex(data), bytes=len(data))


def parse_orders(payload: bytes) -> dict[str, Any]:
    """Parse the API's answer; it must be a JSON object with a list of orders."""
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        preview = payload[:80].decode(errors="replace")
        raise PayloadError(f"the orders API did not answer with JSON ({exc}): {preview!r}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("orders"), list):
        raise PayloadError("the orders API answered JSON without an 'orders' list")
    return doc


def compare_payloads(expected: bytes, actual: bytes, where: str) -> dict[str, Any]:
    """Check that ``actual`` (read back from ``where``) is ``expected``; return the parsed orders.

    Both the checksum and the parsed JSON must match. The error names both checksums and says
    whether the JSON content differs too or only its bytes (re-encoded, reformatted).
    """
    expected_doc = parse_orders(expected)
    want, got = sha256_hex(expected), sha256_hex(actual)
    try:
        actual_doc: dict[str, Any] | None = parse_orders(actual)
    except PayloadError:
        actual_doc = None
    if want == got and actual_doc == expected_doc:
        return expected_doc
    if actual_doc is None:
        content = "it is not a valid orders document"
    elif actual_doc == expected_doc:
        content = "same JSON content, different bytes"
    else:
        content = "the JSON content differs"
    raise IntegrityError(
        f"{where} does not match the fetched file ({content}): sha256 {got} "
        f"({len(actual)} bytes), expected {want} ({len(expected)} bytes)"
    )
