"""DAG_SOURCE=git without Docker: the bundle configuration, the repository on the host (real git
in a temporary folder), and how publish reads the dag-processor's progress from the API."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from airflow_k3s import bundles, lifecycle
from airflow_k3s.cluster import pod_bundle
from airflow_k3s.exits import ExitCode, UserError
from airflow_k3s.runs import run_version
from airflow_k3s.settings import ROOT, Settings
from airflow_k3s.userfiles import worker_context


def settings(tmp_path: Path, source: str = "git") -> Settings:
    dags = tmp_path / "dags"
    dags.mkdir(exist_ok=True)
    environ = {"AIRFLOW_K3S_STATE_DIR": str(tmp_path / "state"), "DAG_SOURCE": source}
    return Settings.load(environ={**environ, "DAGS_DIR": str(dags)}, root=ROOT)


def test_git_mode_configures_one_git_bundle_for_services_and_pods(tmp_path: Path) -> None:
    cfg = settings(tmp_path)
    env = bundles.dag_source_env(cfg)
    (bundle,) = json.loads(env["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"])
    assert bundle == {
        "name": "dags",
        "classpath": "airflow.providers.git.bundles.git.GitDagBundle",
        "kwargs": {"git_conn_id": "dags_git", "tracking_ref": "main", "refresh_interval": 5},
    }
    assert json.loads(env["AIRFLOW_CONN_DAGS_GIT"]) == {
        "conn_type": "git",
        "host": "git://git-server/dags.git",
    }
    # The worker pods get it through their Secret, next to airflow.env's settings.
    assert lifecycle.airflow_config(cfg)["AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST"]
    assert lifecycle.airflow_config(cfg)["AIRFLOW__CORE__LOAD_EXAMPLES"] == "False"


def test_image_mode_adds_nothing_and_removes_the_git_env_file(tmp_path: Path) -> None:
    git_cfg = settings(tmp_path)
    lifecycle.write_dag_source(git_cfg)
    path = git_cfg.generated / "dag-source.env"
    assert "GitDagBundle" in path.read_text()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    image_cfg = settings(tmp_path, "image")
    assert bundles.dag_source_env(image_cfg) == {}
    lifecycle.write_dag_source(image_cfg)
    assert not path.exists()


def test_the_worker_image_carries_no_dag_file_in_git_mode(tmp_path: Path) -> None:
    cfg = settings(tmp_path)
    (cfg.dags_dir / "mine.py").write_text("from airflow.sdk import dag\n")
    assert list((worker_context(cfg) / "dags").iterdir()) == []
    baked = worker_context(settings(tmp_path, "image")) / "dags"
    assert [p.name for p in baked.iterdir()] == ["mine.py"]


def test_publish_commits_the_dags_folder_and_reports_what_changed(tmp_path: Path) -> None:
    cfg = settings(tmp_path)
    (cfg.dags_dir / "a.py").write_text("# airflow dag\nVALUE = 1\n")
    (cfg.dags_dir / "__pycache__").mkdir()
    (cfg.dags_dir / "__pycache__" / "a.cpython-311.pyc").write_bytes(b"\0")
    first = bundles.prepare(cfg)
    assert len(first) == 40
    assert bundles.changed_files(cfg, "", first) == ["a.py"]  # caches left out
    # Readable by the git-server's user (another uid than the host's).
    assert stat.S_IMODE((cfg.dags_repo / "HEAD").stat().st_mode) & 0o004
    assert bundles.prepare(cfg) == first  # a second `up` publishes nothing
    assert bundles.commit(cfg) == (first, first)  # nothing changed: no new version

    (cfg.dags_dir / "a.py").write_text("# airflow dag\nVALUE = 2\n")
    (cfg.dags_dir / "b.py").write_text("import airflow  # a dag\n")
    (cfg.dags_dir / "helper.txt").write_text("not python\n")
    before, now = bundles.commit(cfg)
    assert (before, len(now)) == (first, 40)
    assert now != first
    changed = bundles.changed_files(cfg, before, now)
    assert changed == ["a.py", "b.py", "helper.txt"]
    assert bundles.dag_files(cfg, changed) == ["a.py", "b.py"]

    (cfg.dags_dir / "b.py").unlink()
    before, now = bundles.commit(cfg)
    assert bundles.changed_files(cfg, before, now) == []  # a deleted file is not waited for
    assert bundles.files_in(cfg, now) == {"a.py", "helper.txt"}
    assert bundles.head(cfg) == now
    # The DAGs folder itself is only read: no .git, no index in it.
    assert sorted(p.name for p in cfg.dags_dir.iterdir()) == ["__pycache__", "a.py", "helper.txt"]


def test_publish_in_image_mode_says_how_dags_ship_there(tmp_path: Path) -> None:
    with pytest.raises(UserError) as exc:
        bundles.require_git_source(settings(tmp_path, "image"))
    assert exc.value.code is ExitCode.USAGE
    assert "DAG_SOURCE is image" in exc.value.message
    assert "DAG_SOURCE=git" in exc.value.message


TRACE = """Traceback (most recent call last):
  File "/tmp/airflow/dag_bundles/dags/tracking_repo/sub/broken.py", line 7, in <module>
    value = missing_name
NameError: name 'missing_name' is not defined
"""


def test_an_import_error_names_the_dag_files_line_and_the_error() -> None:
    assert bundles.error_line(TRACE, "sub/broken.py") == (
        "line 7: NameError: name 'missing_name' is not defined"
    )
    # Another file's frames are not the DAG file's line.
    assert bundles.error_line(TRACE, "sub/other.py") == (
        "NameError: name 'missing_name' is not defined"
    )


def dag(dag_id: str, rel: str, version: str) -> dict[str, str]:
    return {
        "dag_id": dag_id,
        "relative_fileloc": rel,
        "bundle_name": "dags",
        "bundle_version": version,
    }


def error(rel: str, stamp: str) -> dict[str, str]:
    return {"filename": rel, "bundle_name": "dags", "timestamp": stamp, "stack_trace": TRACE}


def test_parse_state_waits_for_each_changed_file_at_the_new_version() -> None:
    since = 1_800_000_000.0  # 2027-01-15T08:00:00Z
    dags = [
        dag("a", "a.py", "v2"),
        dag("a2", "a.py", "v2"),
        dag("b", "b.py", "v1"),
        dag("broken", "sub/broken.py", "v1"),  # it held a DAG at v1 (stale now, still listed)
    ]
    present = {"a.py", "b.py", "sub/broken.py"}
    state = bundles.parse_state("v2", ["a.py", "b.py", "sub/broken.py"], dags, [], since, present)
    assert state.parsed == {"a.py": ["a", "a2"]}
    assert state.waiting == ["b.py", "sub/broken.py"]  # b.py still at v1

    old = error("sub/broken.py", "2027-01-15T07:59:00Z")
    state = bundles.parse_state("v2", ["sub/broken.py"], dags, [old], since, present)
    assert state.waiting == ["sub/broken.py"]  # an error from before the publish
    assert state.failed == {
        "sub/broken.py": "line 7: NameError: name 'missing_name' is not defined"
    }

    new = error("sub/broken.py", "2027-01-15T08:00:03.5+00:00")
    state = bundles.parse_state("v2", ["sub/broken.py"], dags, [new], since, present)
    assert state.waiting == []
    assert list(state.failed) == ["sub/broken.py"]
    # A file deleted in the version: its error, still listed for a while, is not reported.
    assert bundles.parse_state("v2", [], [], [new], since, {"a.py"}).failed == {}

    # A changed file that held no DAG before (a new DAG file, or a helper module) is "new":
    # publish waits for it a short while only.
    state = bundles.parse_state("v2", ["helper.py", "b.py"], dags, [], since, {"helper.py"})
    assert (state.waiting, state.new) == (["b.py"], ["helper.py"])

    other_bundle = {**dag("c", "c.py", "v2"), "bundle_name": "dags-folder"}
    state = bundles.parse_state("v2", ["c.py"], [other_bundle], [], since, {"c.py"})
    assert state.new == ["c.py"]  # no DAG of *this* bundle held it


def test_might_hold_dags_is_airflows_safe_mode_test() -> None:
    assert bundles.might_hold_dags("from airflow.sdk import DAG")
    assert not bundles.might_hold_dags("def helper(): return 'dag'")


def workload_pod(bundle_info: object) -> dict[str, object]:
    workload = json.dumps({"token": "t", "bundle_info": bundle_info, "ti": {}})
    args = [
        "python",
        "-m",
        "airflow.sdk.execution_time.execute_workload",
        "--json-string",
        workload,
    ]
    return {"spec": {"containers": [{"name": "base", "args": args}]}}


def test_a_pod_shows_the_bundle_version_it_runs() -> None:
    sha = "0123456789abcdef0123456789abcdef01234567"
    assert pod_bundle(workload_pod({"name": "dags", "version": sha})) == "dags@0123456789ab"
    assert pod_bundle(workload_pod({"name": "dags-folder", "version": None})) == ""
    assert pod_bundle({"spec": {"containers": [{"name": "base", "args": ["--json-string"]}]}}) == ""
    assert pod_bundle({"spec": {}}) == ""


def test_a_run_shows_its_dag_version_and_bundle_version() -> None:
    run = {"bundle_version": "0123456789abcdef", "dag_versions": [{"version_number": 2}]}
    assert run_version(run) == ", DAG version 2 (bundle dags@0123456789ab)"
    assert run_version({"bundle_version": None, "dag_versions": []}) == ""
