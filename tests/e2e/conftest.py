"""The e2e tier runs test_git_bundles.py last: it switches the tier's stack to DAG_SOURCE=git
for good (the stack fixture is tests/conftest.py's); the other modules keep their file order."""

from __future__ import annotations

import pytest

LAST = "test_git_bundles.py"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Move the git-mode module to the end (stable: the rest keep their order)."""
    items.sort(key=lambda item: item.path.name == LAST)
