"""Exit codes of the task library, and the error that carries one.

docs/reliability.md publishes this table; tests/unit/test_exits.py checks that it matches.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    """What a non-zero exit of an `invoke` task means."""

    FAILED = 1  #: a step failed: a run did not succeed, docker or the stack said no (see output)
    USAGE = 2  #: bad input: an option, --conf, a setting, a file the user points to
    NO_DOCKER = 3  #: Docker, compose or a tool the step needs is missing or too old
    NOT_RUNNING = 4  #: the stack, or the service the task needs, is not running
    LOGIN_REFUSED = 5  #: the Airflow API refused the password in .env
    UNKNOWN_DAG = 6  #: no such DAG (import errors are named)
    TIMEOUT = 7  #: a run or a wait took longer than its timeout
    NO_PULL = 8  #: the pinned upstream images cannot be pulled here: use IMAGES=local
    PORT_TAKEN = 9  #: a published port is taken by another program
    NO_KUBECONFIG = 10  #: k3s did not write its kubeconfig in time
    IMPORT_ERRORS = 11  #: a DAG file does not import (file, line and error are named)


class UserError(Exception):
    """A problem the user can act on: one line saying what is wrong and what to do."""

    def __init__(self, message: str, code: ExitCode = ExitCode.FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
