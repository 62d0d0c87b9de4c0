"""The faults tier: one IMAGES=local stack shared by every test here, destructive tests last.

Order: doctor, security and bad input first (they leave the stack as they found it), then the
faults in test_faults.py in file order (restarts, outages, `up` twice, down/up, and `clean` last).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import Stack, running_stack

ORDER = ("test_doctor.py", "test_security.py", "test_bad_input.py", "test_faults.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the modules in ORDER (stable: tests keep their file order inside a module)."""

    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return ORDER.index(name) if name in ORDER else len(ORDER)

    items.sort(key=rank)


@pytest.fixture(scope="session")
def stack(request: pytest.FixtureRequest) -> Iterator[Stack]:
    with running_stack(request, images="local") as running:
        yield running
