"""Run one call in a forked child process, so that a crash or a hang in native code costs that call, not the
process that makes it.

spglib and moyopy are C and Rust; a segfault in either, the out-of-memory killer, or a search that never ends
would otherwise take down (or stall) an encoder worker and the batch waiting on it. The symmetry search of
large cells runs here under a time limit, and a chunk of structures whose pool worker died is encoded again
here, structure by structure if need be (cloud_core.encode).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import select
import signal
import time
from collections.abc import Callable
from functools import cache
from typing import Any, TypeVar

T = TypeVar("T")


class ChildDied(Exception):
    """The child ended without an answer; `how` says how ("signal SIGSEGV", "exit status 3")."""

    def __init__(self, how: str):
        super().__init__(how)
        self.how = how


class ChildTimedOut(Exception):
    """The child had no answer within the time limit; it has been killed."""


def call_forked(fn: Callable[..., T], *args: Any, time_limit: float | None = None) -> T:
    """fn(*args) in a forked child: its return value, or the exception it raised, raised here.

    The answer comes back pickled through a pipe. Raises ChildDied if the child ends without one (a signal, an
    exit), ChildTimedOut if none has come after `time_limit` seconds (the child is killed). os.fork, not
    multiprocessing: encoder pool workers are daemonic and may not start multiprocessing children, and the
    child must leave without running any of the parent's exit code. On Linux the child is killed when the
    thread that forked it ends (prctl), so a terminated pool worker takes its child along.
    """
    parent, die_with_parent = os.getpid(), _parent_death_signal()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: call, write the answer, and leave
        try:
            os.close(read_end)
            if die_with_parent is not None:
                die_with_parent(1, signal.SIGKILL)  # prctl(PR_SET_PDEATHSIG, SIGKILL)
                if os.getppid() != parent:  # the parent ended before that took effect
                    os._exit(0)
            payload = memoryview(_answer(fn, args))
            while payload:
                payload = payload[os.write(write_end, payload) :]
        finally:
            os._exit(0)
    os.close(write_end)
    chunks: list[bytes] = []
    finished = False
    deadline = None if time_limit is None else time.monotonic() + time_limit
    try:
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and (remaining <= 0 or not select.select([read_end], [], [], remaining)[0]):
                raise ChildTimedOut(f"no answer within {time_limit:g} s")
            chunk = os.read(read_end, 1 << 16)
            if not chunk:
                finished = True
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
        if not finished:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    if not chunks:
        code = os.waitstatus_to_exitcode(status)
        raise ChildDied(f"signal {signal.Signals(-code).name}" if code < 0 else f"exit status {code}")
    returned, value = pickle.loads(b"".join(chunks))
    if returned:
        return value
    raise value


def _answer(fn: Callable[..., Any], args: tuple) -> bytes:
    """(True, fn(*args)) or (False, the exception), pickled; an exception that would not survive the trip back
    (or one that is not an Exception: the caller must not exit because the child did) becomes a RuntimeError
    with its message."""
    try:
        return pickle.dumps((True, fn(*args)))
    except Exception as exc:
        error: BaseException = exc
    except BaseException as exc:
        error = RuntimeError(_describe(exc))
    try:
        payload = pickle.dumps((False, error))
        pickle.loads(payload)
        return payload
    except Exception:
        return pickle.dumps((False, RuntimeError(_describe(error))))


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"


@cache
def _parent_death_signal() -> Callable[..., int] | None:
    """Linux's prctl, to have a child killed when its parent ends; None elsewhere."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
