"""The one stack fixture of the Docker tiers (integration, e2e, faults).

Each tier is its own pytest run (`nox -s integration|e2e|faults`) and gets one stack for the whole
run, brought up by the task library with IMAGES from the environment (local unless told upstream)
and torn down at the end (tests/harness.py says how, and what a failure prints).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.harness import Stack, running_stack

_UP_FAILED: list[str] = []


@pytest.fixture(scope="session")
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    """The tier's stack. If it cannot come up, every test that needs it fails with that reason
    (without trying `invoke up` again for each of them)."""
    if _UP_FAILED:
        pytest.fail(
            f"the stack did not come up (see the first error): {_UP_FAILED[0]}", pytrace=False
        )
    try:
        with running_stack(request, images=os.environ.get("IMAGES", "local")) as running:
            yield running
    except pytest.fail.Exception as exc:
        _UP_FAILED.append(str(exc)[:300])
        raise
