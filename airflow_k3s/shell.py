"""The one runner of external commands (docker, docker compose, kubectl, tar, debootstrap, git).

Every command of the task library goes through :func:`run` (output captured), :func:`attach` (on
the user's terminal), :func:`lines` (streamed line by line) or :func:`start` (in the background).
With ``AIRFLOW_K3S_VERBOSE=1`` each is echoed as ``$ command`` on stderr before it runs, so a user
sees what the tool does. A failed command becomes one line, the line that says why
(:func:`failure_line`). Every wait of the package is :func:`poll`. Standard library only: the
Airflow containers use this module too (airflow_k3s.container).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TypeVar

from airflow_k3s.exits import ExitCode, UserError

VERBOSE_ENV = "AIRFLOW_K3S_VERBOSE"
#: How much of a failing command's output is kept on its exception (for diagnostics).
KEEP_OUTPUT = 20_000

T = TypeVar("T")
Command = Sequence[str | Path]
#: What :func:`run` returns: the command, its exit code, its stdout and stderr as text.
Result = subprocess.CompletedProcess[str]


def say(message: str) -> None:
    """A progress line on stderr (stdout stays for results)."""
    print(f"==> {message}", file=sys.stderr, flush=True)


def verbose() -> bool:
    """Whether every command is echoed before it runs ($AIRFLOW_K3S_VERBOSE)."""
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def show(args: Command) -> str:
    """A command as a shell would read it."""
    return shlex.join(str(a) for a in args)


def short(args: Command, words: int = 4) -> str:
    """The first words of a command, for a one-line error."""
    text = show(list(args)[:words])
    return text + " ..." if len(args) > words else text


def echo(args: Command) -> None:
    if verbose():
        print(f"$ {show(args)}", file=sys.stderr, flush=True)


def failure_line(output: str) -> str:
    """The line of a failed command's output that says why: Docker's "Error response from
    daemon" line (not its "Run 'docker run --help'" hint), an `airflow-k3s: ERROR:` line of the
    container CLI, or the last line (a traceback's last line is its exception)."""
    lines = [ln.strip() for ln in output.strip().splitlines() if ln.strip()]
    if not lines:
        return ""
    for marker in ("Error response from daemon:", "airflow-k3s: ERROR:"):
        found = [ln for ln in lines if marker in ln]
        if found:
            return found[-1].split(marker, 1)[1].strip()[:300]
    hints = ("Run 'docker", "See 'docker")
    useful = [ln for ln in lines if not ln.startswith(hints)] or lines
    return useful[-1][-300:]


class CommandFailed(UserError):
    """An external command that exited non-zero: one line naming it and why."""

    def __init__(self, args: Command, returncode: int, output: str, what: str = "") -> None:
        why = failure_line(output) or f"exit code {returncode}"
        super().__init__(f"{what or '`' + short(args) + '`'} failed: {why}")
        self.args_run = [str(a) for a in args]
        self.returncode = returncode
        self.output = output[-KEEP_OUTPUT:]
        self.why = why


def _env(env: Mapping[str, str] | None) -> dict[str, str] | None:
    return None if env is None else {**os.environ, **env}


def _missing(args: Command) -> UserError:
    return UserError(
        f"{args[0]} is not installed or not on PATH: install it (`make doctor` checks the machine)",
        ExitCode.NO_DOCKER,
    )


def run(
    args: Command,
    *,
    check: bool = True,
    input: str | None = None,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
    what: str = "",
) -> Result:
    """Run a command to its end, its output captured. With ``check`` a non-zero exit raises
    CommandFailed (``what`` names it); without, a timeout is exit code 124 with a message."""
    echo(args)
    argv = [str(a) for a in args]
    try:
        result = subprocess.run(
            argv,
            input=input,
            capture_output=True,
            text=True,
            env=_env(env),
            cwd=cwd,
            timeout=timeout,
            check=False,
        )
    except FileNotFoundError:
        raise _missing(args) from None
    except subprocess.TimeoutExpired:
        message = f"timed out after {timeout:.0f} s"
        if check:
            raise UserError(
                f"{what or '`' + short(args) + '`'} {message}", ExitCode.TIMEOUT
            ) from None
        return subprocess.CompletedProcess(argv, 124, "", message)
    if check and result.returncode != 0:
        raise CommandFailed(args, result.returncode, result.stderr or result.stdout, what)
    return result


def attach(args: Command, *, env: Mapping[str, str] | None = None) -> int:
    """Run a command on this terminal (its input and output are the user's); its exit code."""
    echo(args)
    try:
        return subprocess.run([str(a) for a in args], env=_env(env), check=False).returncode
    except FileNotFoundError:
        raise _missing(args) from None


def lines(args: Command, *, check: bool = True, what: str = "") -> Iterator[str]:
    """A command's output (stderr merged in), line by line as it comes; with ``check`` a
    non-zero exit raises CommandFailed at the end (its output has been seen already)."""
    echo(args)
    try:
        proc = subprocess.Popen(
            [str(a) for a in args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
        )
    except FileNotFoundError:
        raise _missing(args) from None
    tail: list[str] = []
    assert proc.stdout is not None
    with proc:
        for line in proc.stdout:
            tail = [*tail[-40:], line]
            yield line.rstrip("\n")
    if check and proc.returncode != 0:
        raise CommandFailed(args, proc.returncode, "".join(tail), what)


def pipe(producer: Command, consumer: Command, what: str) -> None:
    """``producer | consumer``, both checked (e.g. tar of a folder into `docker import`)."""
    echo([*producer, "|", *consumer])
    first = subprocess.Popen([str(a) for a in producer], stdout=subprocess.PIPE)
    try:
        second = subprocess.run(
            [str(a) for a in consumer],
            stdin=first.stdout,
            capture_output=True,
            text=True,
            check=False,
        )
    finally:
        if first.stdout is not None:
            first.stdout.close()
    if first.wait() != 0:
        raise UserError(f"{what} failed: `{short(producer)}` exited {first.returncode}")
    if second.returncode != 0:
        raise CommandFailed(consumer, second.returncode, second.stderr, what)


def start(
    args: Command, *, env: Mapping[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[str]:
    """Start a command in the background, its output captured (read it with communicate())."""
    echo(args)
    return subprocess.Popen(
        [str(a) for a in args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(env),
        cwd=cwd,
    )


def poll(
    what: str,
    check: Callable[[], T],
    timeout: float,
    interval: float = 1.0,
    on_timeout: Callable[[], UserError] | None = None,
) -> T:
    """Call ``check()`` every ``interval`` seconds until it returns something truthy, and return
    that. After ``timeout`` seconds: the error ``on_timeout()`` makes, or a TIMEOUT naming
    ``what``. ``check`` may raise to end the wait early (a failure that waiting cannot mend)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            if on_timeout is not None:
                raise on_timeout()
            raise UserError(f"timed out after {timeout:.0f} s waiting for {what}", ExitCode.TIMEOUT)
        time.sleep(interval)
