"""Helpers of the faults tier: polling, the demo run's state through the REST API."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from harness import Stack

DAG = "demo_rest_to_s3"


def wait_for(what: str, check: Any, timeout: float, poll: float = 0.5) -> Any:
    """Poll ``check()`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}", pytrace=False)
        time.sleep(poll)


def task_states(stack: Stack, run_id: str) -> tuple[str, dict[str, tuple[str, int]]]:
    """The run's state and each task's (state, try_number)."""
    state, tis = stack.api().run_state(DAG, run_id)
    return state, {
        t: (str(ti.get("state") or ""), int(ti.get("try_number") or 0)) for t, ti in tis.items()
    }


def trigger(stack: Stack) -> str:
    """Trigger the demo DAG through the task library (no --wait); return the run id."""
    result = stack.invoke("trigger-dag", DAG, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def wait_run(
    stack: Stack, run_id: str, timeout: float = 420
) -> tuple[str, dict[str, tuple[str, int]]]:
    """Wait for the run to end; return its final state and the tasks' (state, try).

    API errors while a fault lasts (e.g. 500 while postgres restarts) are printed and polled
    through: ``errors`` collects them for the test to look at."""
    errors: list[str] = []

    def ended() -> tuple[str, dict[str, tuple[str, int]]] | None:
        try:
            state = task_states(stack, run_id)
        except httpx.HTTPError as exc:
            errors.append(str(exc).splitlines()[0])
            print(f"API error while polling: {errors[-1]}")
            return None
        return state if state[0] in ("success", "failed") else None

    final: tuple[str, dict[str, tuple[str, int]]] = wait_for(
        f"run {run_id} to end", ended, timeout, 2
    )
    print(f"run {run_id}: {final}; API errors meanwhile: {len(errors)}")
    return final


def variant(stack: Stack, **env: str) -> Stack:
    """The same stack seen with other settings (another state dir, image source, port ...)."""
    return Stack(
        images=env.get("IMAGES", stack.images),
        project=env.get("COMPOSE_PROJECT_NAME", stack.project),
        state_dir=Path(env.get("AIRFLOW_K3S_STATE_DIR", str(stack.state_dir))),
        env={**stack.env, **env},
    )


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The task library's answer to a mistake: non-zero, exactly one line, no traceback."""
    assert result.returncode != 0, result.stdout
    # Progress lines ("==> ...") may come first; the mistake itself is one line.
    lines = [ln for ln in result.stderr.splitlines() if ln.strip() and not ln.startswith("==> ")]
    assert "Traceback" not in result.stderr + result.stdout
    assert len(lines) == 1, f"expected one line, got: {lines}"
    return lines[0]
