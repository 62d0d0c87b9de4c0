"""The demo DAG: it parses the way Airflow parses it, its pure helpers, and its task logic.

The task tests replace the two hooks (HttpHook, S3Hook) with small in-memory FAKES at the hook
boundary: nothing talks to MockServer or S3 here. Everything above that boundary (context
injection of run_id, the Variables, the shared-volume file, the checks) is the real code.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from pathlib import Path, PurePosixPath
from typing import Any, ClassVar

import demo_lib
import pytest

from airflow_k3s import shell

RUN_ID = "manual__2024-05-01T10:00:00.123456+00:00"
ORDERS = json.dumps({"orders": [{"id": 1}, {"id": 2}, {"id": 3}]}, indent=2).encode()


# --------------------------------------------------------------------------- parsing


def test_dag_folder_imports_cleanly_as_airflow_parses_it(repo: Path) -> None:
    # BundleDagBag is what the dag-processor and the worker's task runner use for the DAGs folder.
    from airflow.dag_processing.dagbag import BundleDagBag

    bag = BundleDagBag(dag_folder=repo / "dags", bundle_path=repo / "dags")
    assert bag.import_errors == {}
    assert "demo_rest_to_s3" in bag.dag_ids
    dag = bag.dags["demo_rest_to_s3"]
    fetch, upload, verify = (dag.get_task(t) for t in ("fetch", "upload", "verify"))
    assert fetch.upstream_task_ids == set()
    assert upload.upstream_task_ids == {"fetch"}
    assert verify.upstream_task_ids == {"upload"}
    assert dag.catchup is False
    assert type(dag.timetable).__name__ == "NullTimetable"  # schedule=None
    assert dag.doc_md
    assert "shared volume" in dag.doc_md
    for t in dag.tasks:
        assert t.retries == 1
        assert 0 < t.retry_delay.total_seconds() <= 60
        # No per-task executor_config / pod_override: every task gets the shared pod template.
        assert not t.executor_config


def test_the_kpo_example_launches_its_pod_in_the_executors_namespace(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from airflow.dag_processing.dagbag import BundleDagBag

    monkeypatch.setenv("AIRFLOW__KUBERNETES_EXECUTOR__NAMESPACE", "airflow-tasks")
    bag = BundleDagBag(dag_folder=repo / "dags" / "example_kpo.py", bundle_path=repo / "dags")
    assert bag.dags["example_kpo"].get_task("launch").namespace == "airflow-tasks"


def test_dag_module_is_cheap_to_import(repo: Path) -> None:
    # The hooks (and boto3) are imported inside the tasks, never at parse time.
    probe = (
        "import sys, demo_rest_to_s3; "
        "print(sorted(m for m in sys.modules if m.startswith(('boto3', 'botocore', "
        "'airflow.providers.amazon.aws', 'airflow.providers.http.hooks'))))"
    )
    out = shell.run([sys.executable, "-c", probe], env={"PYTHONPATH": str(repo / "dags")})
    assert out.stdout.strip().splitlines()[-1] == "[]"


# --------------------------------------------------------------------------- pure helpers


@pytest.mark.parametrize(
    "run_id",
    [
        RUN_ID,
        "scheduled__2024-05-01T00:00:00+00:00",
        "../../etc/passwd",
        "..",
        "a/b c\\d",
        "x" * 500,
        "ünïcode:run",
    ],
)
def test_sanitise_run_id_is_a_safe_single_path_component(run_id: str) -> None:
    name = demo_lib.sanitise_run_id(run_id)
    assert name
    assert len(name) <= 130
    assert all(c.isascii() and (c.isalnum() or c in "._-") for c in name)
    assert not name.startswith(".")
    assert demo_lib.sanitise_run_id(run_id) == name  # deterministic across pods


def test_sanitise_run_id_keeps_safe_ids_and_tells_lossy_ones_apart() -> None:
    assert demo_lib.sanitise_run_id("my_run-1.2") == "my_run-1.2"
    assert demo_lib.sanitise_run_id(RUN_ID).startswith("manual__2024-05-01T10_00_00.123456_00_00-")
    # ':' and '+' both become '_': the hash suffix keeps different runs apart.
    assert demo_lib.sanitise_run_id("a:b") != demo_lib.sanitise_run_id("a+b")
    assert demo_lib.sanitise_run_id("a_b") != demo_lib.sanitise_run_id("a:b")
    with pytest.raises(ValueError, match="empty"):
        demo_lib.sanitise_run_id("")


def test_object_key_and_shared_file() -> None:
    name = demo_lib.sanitise_run_id(RUN_ID)
    assert demo_lib.object_key(RUN_ID) == f"orders/{name}.json"
    assert str(demo_lib.shared_file("/shared", RUN_ID)) == f"/shared/{name}/orders.json"
    traversal = demo_lib.shared_file("/shared", "../../etc")
    assert traversal.parent.parent == PurePosixPath("/shared")
    with pytest.raises(ValueError, match="absolute"):
        demo_lib.shared_file("shared", RUN_ID)


def test_checksums() -> None:
    assert demo_lib.sha256_hex(b"") == (
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    info = demo_lib.file_info(ORDERS)
    assert info == demo_lib.FileInfo(hashlib.sha256(ORDERS).hexdigest(), len(ORDERS))


@pytest.mark.parametrize(
    "payload", [b"<html>oops</html>", b"", b"\xff\xfe", b"[1, 2]", b'{"orders": 3}', b'{"x": []}']
)
def test_parse_orders_rejects_what_is_not_an_orders_document(payload: bytes) -> None:
    with pytest.raises(demo_lib.PayloadError):
        demo_lib.parse_orders(payload)


def test_compare_payloads() -> None:
    assert demo_lib.compare_payloads(ORDERS, ORDERS, "s3://b/k")["orders"][2] == {"id": 3}
    reformatted = json.dumps(json.loads(ORDERS)).encode()
    with pytest.raises(demo_lib.IntegrityError, match="same JSON content, different bytes"):
        demo_lib.compare_payloads(ORDERS, reformatted, "s3://b/k")
    tampered = ORDERS.replace(b'"id": 3', b'"id": 4')
    with pytest.raises(demo_lib.IntegrityError, match=r"s3://b/k .*JSON content differs") as err:
        demo_lib.compare_payloads(ORDERS, tampered, "s3://b/k")
    assert demo_lib.sha256_hex(ORDERS) in str(err.value)
    assert demo_lib.sha256_hex(tampered) in str(err.value)
    with pytest.raises(demo_lib.IntegrityError, match="not a valid orders document"):
        demo_lib.compare_payloads(ORDERS, ORDERS[:-5], "s3://b/k")


def test_the_mockserver_expectation_is_what_fetch_accepts(repo: Path) -> None:
    expectations = json.loads((repo / "mockserver" / "expectations.json").read_text())
    [orders] = [
        e for e in expectations if e["httpRequest"] == {"method": "GET", "path": "/api/v1/orders"}
    ]
    assert orders["httpResponse"]["statusCode"] == 200
    body = json.dumps(orders["httpResponse"]["body"]["json"]).encode()
    assert len(demo_lib.parse_orders(body)["orders"]) == 3


# --------------------------------------------------------------------------- tasks, fake hooks


class FakeResponse:
    """Fake of the requests.Response that HttpHook.run returns."""

    def __init__(self, content: bytes) -> None:
        self.content = content


class FakeHttpHook:
    """FAKE HttpHook (hook boundary): records calls, answers with a canned body."""

    body = ORDERS
    calls: ClassVar[list[tuple[str, str, str]]] = []

    def __init__(self, method: str = "POST", http_conn_id: str = "http_default") -> None:
        self.method, self.conn_id = method, http_conn_id

    def run(self, endpoint: str, **_: Any) -> FakeResponse:
        FakeHttpHook.calls.append((self.conn_id, self.method, endpoint))
        return FakeResponse(self.body)


class FakeS3Object:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def get(self) -> dict[str, Any]:
        return {"Body": io.BytesIO(self.data)}


class FakeS3Hook:
    """FAKE S3Hook (hook boundary): an in-memory bucket store shared by all instances."""

    store: ClassVar[dict[tuple[str, str], bytes]] = {}
    conn_ids: ClassVar[list[str]] = []

    def __init__(self, aws_conn_id: str = "aws_default") -> None:
        FakeS3Hook.conn_ids.append(aws_conn_id)

    def load_file(self, filename: str, key: str, bucket_name: str, replace: bool = False) -> None:
        if (bucket_name, key) in self.store and not replace:
            raise ValueError(f"The key {key} already exists.")
        self.store[(bucket_name, key)] = Path(filename).read_bytes()

    def get_key(self, key: str, bucket_name: str) -> FakeS3Object:
        return FakeS3Object(self.store[(bucket_name, key)])


@pytest.fixture
def fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Patch the hooks where the tasks import them; point the Variables at tmp/test values."""
    import airflow.providers.amazon.aws.hooks.s3 as s3_module
    import airflow.providers.http.hooks.http as http_module

    monkeypatch.setattr(http_module, "HttpHook", FakeHttpHook)
    monkeypatch.setattr(s3_module, "S3Hook", FakeS3Hook)
    monkeypatch.setattr(FakeHttpHook, "body", ORDERS)
    monkeypatch.setattr(FakeHttpHook, "calls", [])
    monkeypatch.setattr(FakeS3Hook, "store", {})
    monkeypatch.setattr(FakeS3Hook, "conn_ids", [])
    shared = tmp_path / "shared"
    shared.mkdir()
    monkeypatch.setenv("AIRFLOW_VAR_SHARED_DIR", str(shared))
    monkeypatch.setenv("AIRFLOW_VAR_DATA_BUCKET", "test-data")
    return shared


def _dag_module() -> Any:
    import demo_rest_to_s3

    return demo_rest_to_s3


def test_fetch_writes_the_file_and_returns_its_checksum(fakes: Path) -> None:
    module = _dag_module()
    # Through the operator's execute(): run_id comes from the context, as in a worker pod.
    result = module.demo_rest_to_s3().get_task("fetch").execute({"run_id": RUN_ID})
    expected = fakes / demo_lib.sanitise_run_id(RUN_ID) / "orders.json"
    assert result == {
        "path": str(expected),
        "sha256": hashlib.sha256(ORDERS).hexdigest(),
        "bytes": len(ORDERS),
    }
    assert expected.read_bytes() == ORDERS
    assert [p.name for p in expected.parent.iterdir()] == ["orders.json"]  # no partial left
    assert FakeHttpHook.calls == [("mockserver", "GET", "/api/v1/orders")]


def test_fetch_refuses_a_non_json_answer(fakes: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(FakeHttpHook, "body", b"<html>502 Bad Gateway</html>")
    with pytest.raises(demo_lib.PayloadError, match="JSON"):
        _dag_module().fetch.function(run_id=RUN_ID)
    assert not any(fakes.rglob("*.json"))


def test_fetch_upload_verify_chain(fakes: Path) -> None:
    module = _dag_module()
    fetched = module.fetch.function(run_id=RUN_ID)
    uploaded = module.upload.function(fetched, run_id=RUN_ID)
    key = f"orders/{demo_lib.sanitise_run_id(RUN_ID)}.json"
    assert uploaded == {"bucket": "test-data", "key": key, "sha256": fetched["sha256"]}
    assert FakeS3Hook.store == {("test-data", key): ORDERS}
    # A retry of upload replaces the object instead of failing on an existing key.
    assert module.upload.function(fetched, run_id=RUN_ID) == uploaded
    summary = module.verify.function(uploaded, run_id=RUN_ID)
    assert summary["orders"] == 3
    assert summary["key"] == key
    assert summary["bucket"] == "test-data"
    assert set(FakeS3Hook.conn_ids) == {"aws_default"}


def test_upload_refuses_a_file_changed_since_fetch(fakes: Path) -> None:
    module = _dag_module()
    fetched = module.fetch.function(run_id=RUN_ID)
    Path(fetched["path"]).write_bytes(ORDERS + b"\n")
    with pytest.raises(demo_lib.IntegrityError, match="changed since fetch"):
        module.upload.function(fetched, run_id=RUN_ID)
    assert FakeS3Hook.store == {}


def test_verify_raises_on_a_tampered_object(fakes: Path) -> None:
    module = _dag_module()
    fetched = module.fetch.function(run_id=RUN_ID)
    uploaded = module.upload.function(fetched, run_id=RUN_ID)
    FakeS3Hook.store[("test-data", uploaded["key"])] = ORDERS.replace(b'"id": 2', b'"id": 20')
    with pytest.raises(demo_lib.IntegrityError, match="JSON content differs") as err:
        module.verify.function(uploaded, run_id=RUN_ID)
    assert f"s3://test-data/{uploaded['key']}" in str(err.value)


def test_the_node_pools_example_asks_each_task_for_its_pool(repo: Path) -> None:
    """What each task's pod asks of its node (the follower prints the same line when no node
    can take it), and the node's name handed to the task."""
    from airflow.dag_processing.dagbag import BundleDagBag
    from kubernetes.client import ApiClient

    from airflow_k3s.cluster import placement

    path = repo / "dags" / "example_node_pools.py"
    dag = BundleDagBag(dag_folder=path, bundle_path=repo / "dags").dags["example_node_pools"]
    asks = {}
    for task in dag.tasks:
        pod = ApiClient().sanitize_for_serialization(task.executor_config["pod_override"])
        (base,) = pod["spec"]["containers"]
        assert base["name"] == "base"
        assert base["env"] == [
            {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
        ]
        asks[task.task_id] = placement(pod)
    assert asks == {
        "on_gpu": "nodeSelector airflow-k3s/pool=gpu; tolerates airflow-k3s/pool=gpu:NoSchedule",
        "on_highmem": "affinity airflow-k3s/pool In [highmem]",
        "anywhere": "",
    }
