"""airflow_k3s.dags and the container side of `invoke parse`: import errors named by file and
line, from a real DagBag over a folder with a broken file (the unit tier has Airflow)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from airflow_k3s import container, dag_checks
from airflow_k3s.dag_checks import DagImportError, parse_result


def test_import_errors_name_the_file_the_line_and_the_error(tmp_path: Path) -> None:
    from airflow.dag_processing.dagbag import BundleDagBag

    (tmp_path / "good.py").write_text(
        "from airflow.sdk import dag\n\n"
        "@dag(dag_id='good', schedule=None)\ndef good():\n    pass\n\ngood()\n"
    )
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "broken.py").write_text(
        "from airflow.sdk import dag\n\nimport no_such_module_xyz  # line 3\n"
    )
    bag = BundleDagBag(dag_folder=tmp_path, bundle_path=tmp_path)
    found = container.import_error_lines(tmp_path, dict(bag.import_errors))
    assert found == [
        {
            "file": "sub/broken.py",
            "line": 3,
            "error": "ModuleNotFoundError: No module named 'no_such_module_xyz'",
        }
    ]
    assert bag.dag_ids == ["good"]


def test_parse_result_reads_the_containers_last_line() -> None:
    out = "some warning\n" + json.dumps(
        {"dags": ["a"], "errors": [{"file": "x.py", "line": 7, "error": "SyntaxError: bad"}]}
    )
    dag_ids, errors = parse_result(out)
    assert dag_ids == ["a"]
    assert errors == [DagImportError("x.py", 7, "SyntaxError: bad")]
    assert str(errors[0]) == "x.py:7: SyntaxError: bad"
    assert str(DagImportError("y.py", 0, "E")) == "y.py: E"


def test_task_test_gives_airflow_a_logical_date_of_its_own() -> None:
    """Without one, `airflow tasks test` deletes a run of the DAG that has no logical date."""
    now = datetime(2026, 12, 2, 6, 20, 1, 5, tzinfo=UTC)
    assert dag_checks.task_test_command("demo_rest_to_s3", "fetch", now) == [
        "airflow",
        "tasks",
        "test",
        "demo_rest_to_s3",
        "fetch",
        "2026-12-02T06:20:01.000005+00:00",
    ]
