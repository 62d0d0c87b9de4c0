"""DAGs from the stack's git server (DAG_SOURCE=git): a versioned DAG bundle.

The DAGs folder ($DAGS_DIR) is committed, as it is, into a bare repository on the host
(.generated/dags.git); the git-server service serves it read-only at git://git-server/dags.git;
the dag-processor and every worker pod clone it with Airflow's GitDagBundle, each run at the
commit it was created with. Publishing is a commit on the host: nothing in the stack's network can
push. Pure functions for the configuration and for reading Airflow's answers; the git commands go
through the one runner (airflow_k3s.shell).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from airflow_k3s import shell
from airflow_k3s.boundary import Stack
from airflow_k3s.exits import ExitCode, UserError
from airflow_k3s.settings import Settings
from airflow_k3s.shell import say

#: The bundle's name in Airflow (a run's `bundle_version` is a commit of it).
BUNDLE = "dags"
REPO_URL = "git://git-server/dags.git"
BRANCH = "main"
GIT_DAG_BUNDLE = "airflow.providers.git.bundles.git.GitDagBundle"
#: Seconds between the dag-processor's fetches of the repository (Airflow's default is 300: a
#: published version would wait up to five minutes). A fetch of an unchanged local repository is
#: one small request.
REFRESH_SECONDS = 5
#: How long publish waits for a changed file that held no DAG before to show one: a new DAG file
#: is parsed within the dag-processor's refresh (10 s here); a helper module never shows one.
NEW_FILE_GRACE = 30.0
#: What a commit leaves out (Python's caches, editors' droppings).
EXCLUDED = ("__pycache__/", "*.pyc", ".DS_Store", "*.swp")
AUTHOR = ("-c", "user.name=airflow-k3s publish-dags", "-c", "user.email=publish-dags@airflow-k3s")


#: The git connection of the bundle: the repository's URL (with a production git host, its
#: credentials too). Without one, GitDagBundle logs a missing `git_default` as a traceback.
GIT_CONN_ID = "dags_git"


def bundle_config() -> list[dict[str, Any]]:
    """Airflow's `[dag_processor] dag_bundle_config_list` for the stack's repository."""
    kwargs = {
        "git_conn_id": GIT_CONN_ID,
        "tracking_ref": BRANCH,
        "refresh_interval": REFRESH_SECONDS,
    }
    return [{"name": BUNDLE, "classpath": GIT_DAG_BUNDLE, "kwargs": kwargs}]


def dag_source_env(cfg: Settings) -> dict[str, str]:
    """The Airflow configuration DAG_SOURCE adds for every service and worker pod: none for
    `image` (Airflow's DAGs folder, baked into the worker image); for `git`, the bundle (each pod
    builds it itself from this setting, so the pods get it too)."""
    if not cfg.git_dags:
        return {}
    return {
        "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(bundle_config()),
        f"AIRFLOW_CONN_{GIT_CONN_ID.upper()}": json.dumps({"conn_type": "git", "host": REPO_URL}),
        # A DAG whose file changed is written to the database again at once, not after 30 s
        # (Airflow's default): a version published a few seconds after the last one is the
        # DAG the UI and the scheduler see, as the runs that use it are.
        "AIRFLOW__CORE__MIN_SERIALIZED_DAG_UPDATE_INTERVAL": "0",
    }


# --------------------------------------------------------------------------- the repository


def git(cfg: Settings, *args: str, check: bool = True) -> shell.Result:
    """git on the stack's repository, the DAGs folder as its work tree (the index is the
    repository's own: the DAGs folder is only read)."""
    argv = ["git", f"--git-dir={cfg.dags_repo}", f"--work-tree={cfg.dags_dir}", *args]
    return shell.run(argv, check=check, what="git")


def ensure_repo(cfg: Settings) -> None:
    """The bare repository, made once: branch main, files readable by the git-server's user."""
    if (cfg.dags_repo / "HEAD").exists():
        return
    say(f"making the DAG repository {cfg.dags_repo} (served as {REPO_URL})")
    shell.run(["git", "init", "--quiet", "--bare", "--shared=0644", str(cfg.dags_repo)], what="git")
    git(cfg, "symbolic-ref", "HEAD", f"refs/heads/{BRANCH}")
    (cfg.dags_repo / "info").mkdir(exist_ok=True)
    (cfg.dags_repo / "info" / "exclude").write_text("\n".join(EXCLUDED) + "\n")


def head(cfg: Settings) -> str:
    """The newest published version (a commit), or '' before the first."""
    result = git(cfg, "rev-parse", "--verify", "--quiet", f"refs/heads/{BRANCH}", check=False)
    return result.stdout.strip() if result.returncode == 0 else ""


def commit(cfg: Settings) -> tuple[str, str]:
    """Commit the DAGs folder as it is now: (the version before, the version now); the same
    twice when nothing changed."""
    before = head(cfg)
    git(cfg, "add", "--all", ".")
    if before and git(cfg, "diff", "--cached", "--quiet", check=False).returncode == 0:
        return before, before
    message = f"DAGs from {cfg.dags_dir}"
    git(cfg, *AUTHOR, "commit", "--quiet", "--allow-empty", "-m", message)
    return before, head(cfg)


def files_in(cfg: Settings, version: str) -> set[str]:
    """Every file of a version."""
    return set(git(cfg, "ls-tree", "-r", "--name-only", version).stdout.splitlines())


def changed_files(cfg: Settings, before: str, now: str) -> list[str]:
    """The files a version changed or added (all of them for the first), deleted ones left out."""
    if before:
        args = ["diff", "--name-only", "--diff-filter=d", before, now]
    else:
        args = ["ls-tree", "-r", "--name-only", now]
    return [line for line in git(cfg, *args).stdout.splitlines() if line]


# --------------------------------------------------------------------------- Airflow's answers


@dataclass(frozen=True)
class ParseState:
    """What the dag-processor has made of a version so far."""

    #: changed file -> the DAG ids parsed from it at this version
    parsed: dict[str, list[str]]
    #: file -> 'line N: error', for every file of the bundle that fails to import now
    failed: dict[str, str]
    #: changed files that held DAGs before, not yet parsed at this version
    waiting: list[str]
    #: changed files that held no DAG before (new DAG files, or helper modules: they may never
    #: hold one), not yet seen parsed: waited for NEW_FILE_GRACE seconds at most
    new: list[str] = field(default_factory=list)


def error_line(stack_trace: str, rel_path: str) -> str:
    """'line N: <exception>' from an import error's traceback: the last frame in the DAG file
    itself (found by its path relative to the bundle), and the exception's line."""
    lines = stack_trace.strip().splitlines()
    frame = re.compile(r'File "(?:[^"]*/)?' + re.escape(rel_path) + r'", line (\d+)')
    numbers = [int(m.group(1)) for m in map(frame.search, lines) if m]
    error = lines[-1].strip() if lines else "?"
    return f"line {numbers[-1]}: {error}" if numbers else error


def might_hold_dags(text: str) -> bool:
    """Airflow's safe-mode test (the dag-processor skips a .py file without both words)."""
    lowered = text.lower()
    return "airflow" in lowered and "dag" in lowered


def parse_state(
    version: str,
    files: Iterable[str],
    dags: Iterable[Mapping[str, Any]],
    errors: Iterable[Mapping[str, Any]],
    since: float,
    present: Collection[str],
) -> ParseState:
    """Which changed DAG files the dag-processor has parsed at ``version``, from the DAGs the API
    lists (``relative_fileloc``, ``bundle_version``) and its import errors: a changed file is
    accounted for by a DAG at this version or by an import error newer than ``since`` (Unix
    time); every import error of a file in the version (``present``) is reported, the older ones
    included (a deleted file's error stays listed until the dag-processor notices)."""
    parsed: dict[str, list[str]] = {}
    for dag in dags:
        if dag.get("bundle_name") == BUNDLE and dag.get("bundle_version") == version:
            parsed.setdefault(str(dag.get("relative_fileloc") or ""), []).append(str(dag["dag_id"]))
    ours = [e for e in errors if e.get("bundle_name") == BUNDLE and e.get("filename") in present]
    failed = {
        str(e["filename"]): error_line(str(e["stack_trace"]), str(e["filename"])) for e in ours
    }
    fresh = {str(e["filename"]) for e in ours if _unix(str(e.get("timestamp") or "")) >= since}
    held = {str(d.get("relative_fileloc") or "") for d in dags if d.get("bundle_name") == BUNDLE}
    changed = list(files)
    pending = [f for f in changed if f not in parsed and f not in fresh]
    return ParseState(
        {f: ids for f, ids in parsed.items() if f in changed},
        failed,
        [f for f in pending if f in held],
        [f for f in pending if f not in held],
    )


def _unix(stamp: str) -> float:
    """An API timestamp (ISO 8601) as Unix time; 0 when unreadable."""
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return 0.0


def dag_files(cfg: Settings, files: Iterable[str]) -> list[str]:
    """The Python files among ``files`` that the dag-processor will parse (Airflow's test)."""
    found = []
    for rel in files:
        path = cfg.dags_dir / rel
        if (
            rel.endswith(".py")
            and path.is_file()
            and might_hold_dags(path.read_text(errors="replace"))
        ):
            found.append(rel)
    return found


# --------------------------------------------------------------------------- publish


def prepare(cfg: Settings) -> str:
    """At `up` with DAG_SOURCE=git: the repository exists and holds a first version (the DAGs
    folder) for the dag-processor to clone. The newest version."""
    ensure_repo(cfg)
    if not head(cfg):
        _, now = commit(cfg)
        say(f"DAG bundle {BUNDLE}: first version {now[:12]} from {cfg.dags_dir}")
    return head(cfg)


def require_git_source(cfg: Settings) -> None:
    if not cfg.git_dags:
        raise UserError(
            "DAG_SOURCE is image: the DAGs ship in the worker image (`invoke build --worker-only` "
            "and `invoke push`); set DAG_SOURCE=git and `invoke up` to publish them to the "
            "stack's git server instead",
            ExitCode.USAGE,
        )


def publish(stack: Stack, timeout: float) -> str:
    """Commit the DAGs folder as a new version, wait until the dag-processor has parsed its
    changed DAG files, and return the version; a file that fails to import is a UserError
    naming it with its line and error."""
    cfg = stack.cfg
    require_git_source(cfg)
    stack.require("git-server")
    ensure_repo(cfg)
    started = time.time()
    before, now = commit(cfg)
    if now == before:
        say(f"nothing changed in {cfg.dags_dir}: the version is still {now[:12]}")
    else:
        say(f"published {BUNDLE} version {now[:12]} ({REPO_URL})")
    files = dag_files(cfg, changed_files(cfg, before, now)) if now != before else []
    state = wait_parsed(stack, now, files, started, timeout)
    for rel, dag_ids in sorted(state.parsed.items()):
        say(f"{rel}: {', '.join(sorted(dag_ids))} at {now[:12]}")
    for rel in state.new:
        say(f"{rel}: no DAG in it after {NEW_FILE_GRACE:.0f} s (a helper module?)")
    if state.failed:
        lines = "; ".join(f"{rel}: {why}" for rel, why in sorted(state.failed.items()))
        raise UserError(
            f"version {now[:12]} is published, but these DAG files fail to import: {lines}",
            ExitCode.IMPORT_ERRORS,
        )
    return now


def wait_parsed(
    stack: Stack, version: str, files: list[str], since: float, timeout: float
) -> ParseState:
    """Poll the API until every changed DAG file is parsed at ``version`` or failed to import
    (a file that held no DAG before: for NEW_FILE_GRACE seconds at most)."""
    api = stack.api()
    present = files_in(stack.cfg, version)
    if files:
        say(f"waiting for the dag-processor to parse {len(files)} changed DAG file(s)")
    state = ParseState({}, {}, files)
    started = time.monotonic()

    def done() -> bool:
        nonlocal state
        dags = api.get_all("/api/v2/dags", "dags", exclude_stale=False)
        errors = api.import_errors()
        state = parse_state(version, files, dags, errors, since - 1, present)
        grace_over = time.monotonic() - started > NEW_FILE_GRACE
        return not state.waiting and (not state.new or grace_over)

    def late() -> UserError:
        return UserError(
            f"the dag-processor did not parse {', '.join(state.waiting)} at version "
            f"{version[:12]} within {timeout:.0f} s: `invoke logs --service airflow-dag-processor`",
            ExitCode.TIMEOUT,
        )

    shell.poll(f"version {version[:12]} parsed", done, timeout, 1, late)
    return state
