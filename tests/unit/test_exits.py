"""airflow_k3s.exits: the exit codes are a published interface (scripts and CI branch on them)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from airflow_k3s.exits import ExitCode, UserError

#: ``NAME = 3  #: what it means`` in the class body.
MEMBER_LINE = re.compile(r"^\s+(?P<name>[A-Z_]+) = (?P<value>\d+)\s+#: (?P<doc>\S.*)$", re.M)


def test_exit_codes_are_unique() -> None:
    # An IntEnum with a repeated value makes an alias: two meanings, one number.
    assert len(ExitCode.__members__) == len(set(ExitCode)), "an exit code has two names"
    values = [int(member) for member in ExitCode]
    assert len(values) == len(set(values))


def test_exit_codes_avoid_success_and_the_shells_reserved_range() -> None:
    # 0 is success; 126 and up mean "not executable", "not found" and "killed by a signal".
    for member in ExitCode:
        assert 1 <= member <= 125, member
    assert int(ExitCode.FAILED) == 1, "a plain failure is 1, what invoke and most tools use"
    assert int(ExitCode.USAGE) == 2, "bad input is 2, as for argparse and the shells"


def test_every_exit_code_says_what_it_means() -> None:
    source = inspect.getsource(ExitCode)
    documented = {m["name"]: (int(m["value"]), m["doc"]) for m in MEMBER_LINE.finditer(source)}
    assert set(documented) == set(ExitCode.__members__), "each member needs a `#:` comment"
    for name, (value, doc) in documented.items():
        assert ExitCode[name] == value
        assert len(doc.split()) >= 3, f"{name}: {doc!r} says too little"


def test_user_error_carries_its_message_and_code() -> None:
    error = UserError("IMAGES must be 'upstream' or 'local'", ExitCode.USAGE)
    assert error.message == "IMAGES must be 'upstream' or 'local'"
    assert str(error) == error.message
    assert error.code is ExitCode.USAGE
    assert UserError("docker failed").code is ExitCode.FAILED


def test_docs_reliability_publishes_exactly_these_exit_codes(repo: Path) -> None:
    """docs/reliability.md's table of exit codes is checked against the enum, row by row."""
    text = (repo / "docs" / "reliability.md").read_text()
    section = text.split("## Exit codes", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (\d+) \| `([A-Z_]+)` \| (.+?) \|$", section, flags=re.M)
    assert rows, "docs/reliability.md has no exit code table under '## Exit codes'"
    assert [(int(v), name) for v, name, _ in rows] == [(int(m), m.name) for m in ExitCode]
    source = inspect.getsource(ExitCode)
    documented = {m["name"]: m["doc"] for m in MEMBER_LINE.finditer(source)}
    for _value, name, meaning in rows:
        assert meaning == documented[name], f"{name}: the doc says {meaning!r}"
