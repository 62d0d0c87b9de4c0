"""airflow_k3s.userfiles: the user's DAGs folder, requirements, pod template and worker base image,
checked before use (one line each), and the worker image's build context made from them."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from airflow_k3s import userfiles
from airflow_k3s.exits import ExitCode, UserError
from airflow_k3s.settings import Settings

VERSION = "1.36"


def template(repo: Path) -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((repo / "airflow" / "pod_template.yaml").read_text())
    return doc


def test_the_repos_pod_template_passes(repo: Path) -> None:
    assert userfiles.pod_template_problem(template(repo), VERSION) == ""


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (lambda d: d.update(kind="Deployment"), "not a Pod manifest (kind: Pod)"),
        (lambda d: d["spec"].update(containers=[]), "spec.containers is empty"),
        (
            lambda d: d["spec"]["containers"][0].update(name="worker"),
            "the first container must be named base (the task runs in it), not: worker",
        ),
        (lambda d: d["spec"].update(restartPolicy=["Never"]), "spec/restartPolicy: "),
        (lambda d: d["spec"]["containers"][0].update(imagePullPolcy="Always"), "imagePullPolcy"),
    ],
)
def test_a_bad_pod_template_is_named(repo: Path, change: Any, problem: str) -> None:
    doc = copy.deepcopy(template(repo))
    change(doc)
    assert problem in userfiles.pod_template_problem(doc, VERSION)


def test_check_pod_template_says_which_file(tmp_path: Path) -> None:
    path = tmp_path / "pod.yaml"
    path.write_text("kind: Pod\nspec: {containers: [{name: worker, image: x}]}\n")
    with pytest.raises(UserError) as exc:
        userfiles.check_pod_template(path, VERSION)
    assert exc.value.code is ExitCode.USAGE
    assert exc.value.message.startswith(f"POD_TEMPLATE={path}: the first container must be")
    with pytest.raises(UserError) as missing:
        userfiles.check_pod_template(tmp_path / "nope.yaml", VERSION)
    assert missing.value.message == f"POD_TEMPLATE={tmp_path / 'nope.yaml'}: no such file"


def test_missing_dags_dir_and_requirements_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(UserError) as dags:
        userfiles.check_dags_dir(tmp_path / "dags")
    assert dags.value.message == f"DAGS_DIR={tmp_path / 'dags'}: no such folder"
    with pytest.raises(UserError) as reqs:
        userfiles.check_requirements(tmp_path / "reqs.txt")
    assert reqs.value.message == f"WORKER_REQUIREMENTS={tmp_path / 'reqs.txt'}: no such file"
    userfiles.check_requirements(None)


def test_settings_read_the_users_paths(tmp_path: Path, repo: Path) -> None:
    (tmp_path / "mydags").mkdir()
    cfg = Settings.load(
        environ={
            "AIRFLOW_K3S_STATE_DIR": str(tmp_path),
            "DAGS_DIR": str(tmp_path / "mydags"),
            "WORKER_BASE_IMAGE": "example/airflow:3",
            "WORKER_REQUIREMENTS": str(tmp_path / "r.txt"),
            "POD_TEMPLATE": str(tmp_path / "pod.yaml"),
        },
        root=repo,
    )
    assert cfg.dags_dir == tmp_path / "mydags"
    assert cfg.worker_base_image == "example/airflow:3"
    assert cfg.worker_requirements == tmp_path / "r.txt"
    assert cfg.compose_env["DAGS_DIR"] == str(tmp_path / "mydags")
    assert cfg.compose_env["POD_TEMPLATE"] == str(tmp_path / "pod.yaml")
    defaults = Settings.load(environ={"AIRFLOW_K3S_STATE_DIR": str(tmp_path)}, root=repo)
    assert defaults.dags_dir == repo / "dags"
    assert defaults.worker_requirements is None
    assert defaults.pod_template == repo / "airflow" / "pod_template.yaml"


def test_worker_context_holds_the_dags_requirements_and_bundle(tmp_path: Path, repo: Path) -> None:
    dags = tmp_path / "dags"
    (dags / "pkg" / "__pycache__").mkdir(parents=True)
    (dags / "a.py").write_text("# a dag\n")
    (dags / "pkg" / "helper.py").write_text("X = 1\n")
    (dags / "pkg" / "__pycache__" / "helper.cpython-311.pyc").write_bytes(b"\0")
    reqs = tmp_path / "reqs.txt"
    reqs.write_text("six==1.16.0\n")
    bundle = tmp_path / "ca.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\n")
    cfg = Settings(
        root=repo,
        state_dir=tmp_path,
        dags_dir=dags,
        worker_requirements=reqs,
        extra_ca_bundle=str(bundle),
    )
    context = userfiles.worker_context(cfg)
    files = sorted(str(p.relative_to(context)) for p in context.rglob("*") if p.is_file())
    assert files == ["dags/a.py", "dags/pkg/helper.py", "extra-ca.crt", "requirements.txt"]
    assert (context / "requirements.txt").read_text() == "six==1.16.0\n"
    plain = userfiles.worker_context(Settings(root=repo, state_dir=tmp_path, dags_dir=dags))
    assert (plain / "requirements.txt").read_text() == ""
    assert (plain / "extra-ca.crt").read_text() == ""
