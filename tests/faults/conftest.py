"""The faults tier runs its modules in this order, destructive tests last (the stack fixture is
tests/conftest.py's): doctor, security, identities, the executor in another namespace and bad input
leave the stack as they found it, then the faults of test_faults.py in file order (restarts,
outages, `up` twice, down/up, `clean` last).
"""

from __future__ import annotations

import pytest

ORDER = (
    "test_doctor.py",
    "test_security.py",
    "test_identities.py",
    "test_namespace.py",
    "test_bad_input.py",
    "test_node_loss.py",
    "test_faults.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Run the modules in ORDER (stable: tests keep their file order inside a module)."""

    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return ORDER.index(name) if name in ORDER else len(ORDER)

    items.sort(key=rank)
