"""The e2e tier's module order: the others first (file order), then test_node_pools.py (it gives
the tier's stack the example's node pools for good), then test_git_bundles.py (it switches the
stack to DAG_SOURCE=git for good, and so runs on the pools too). The stack fixture is
tests/conftest.py's."""

from __future__ import annotations

import pytest

LAST = ("test_node_pools.py", "test_git_bundles.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Move the modules of LAST to the end, in that order (stable: the rest keep theirs)."""
    items.sort(key=lambda item: LAST.index(item.path.name) + 1 if item.path.name in LAST else 0)
