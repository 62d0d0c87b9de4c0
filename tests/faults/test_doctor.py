"""`invoke doctor` on this machine: one line per check, and its exit code means what it says."""

from __future__ import annotations

import re

import pytest

from tests.faults.faultlib import variant
from tests.harness import Stack

pytestmark = pytest.mark.docker
CHECK_LINE = re.compile(r"^(ok  |FAIL)  ([a-z ]+): \S.*$")
CHECKS = {"docker", "versions", "memory", "disk", "ports", "cgroups", "privileged", "image pulls"}


def checks(stdout: str) -> dict[str, tuple[str, str]]:
    """name -> (ok|FAIL, line), asserting every line but the verdict is one check."""
    lines = stdout.strip().splitlines()
    found: dict[str, tuple[str, str]] = {}
    for line in lines[:-1] if lines[-1].startswith("doctor:") else lines:
        match = CHECK_LINE.match(line)
        assert match, f"not a check line: {line!r}"
        assert match[2] not in found, f"check {match[2]} printed twice"
        found[match[2]] = (match[1].strip(), line)
    return found


def test_doctor_says_ready_with_local_images(stack: Stack) -> None:
    result = stack.invoke("doctor", timeout=180)
    found = checks(result.stdout)
    assert set(found) == CHECKS
    assert result.returncode == 0, result.stderr
    assert all(state == "ok" for state, _ in found.values()), found
    assert result.stdout.strip().splitlines()[-1] == "doctor: ready for IMAGES=local"
    # The running stack's own ports count as ours, not as a conflict.
    assert "free or ours" in found["ports"][1]
    assert "not needed with IMAGES=local" in found["image pulls"][1]
    assert "capability set" in found["privileged"][1]


def test_doctor_fails_for_upstream_images_and_says_what_to_do(stack: Stack) -> None:
    # Same project and ports: the running services' ports are ours; k3s's port is free.
    result = variant(stack, IMAGES="upstream").invoke("doctor", timeout=180)
    found = checks(result.stdout)
    assert set(found) == CHECKS
    assert result.returncode == 1
    failed = {name for name, (state, _) in found.items() if state == "FAIL"}
    assert "image pulls" in failed, found
    assert failed <= {"image pulls", "privileged"}, found
    assert "use IMAGES=local" in found["image pulls"][1]
    if "privileged" in failed:
        assert "IMAGES=local runs a node with an explicit capability set" in found["privileged"][1]
    verdict = result.stderr.strip().splitlines()[-1]
    in_order = ", ".join(name for name in found if name in failed)
    assert verdict == f"doctor: {len(failed)} check(s) failed: {in_order}"
    assert "Traceback" not in result.stderr
