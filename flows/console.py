"""What every command shares: the one-line failure, the progress bar, and the exit without teardown."""

from __future__ import annotations

import logging
import os
import sys

import typer


def fail(message: str) -> None:
    """Stop the command with one line that says what went wrong and what to do."""
    typer.echo(f"cloud-screen: error: {message}", err=True)
    raise typer.Exit(1)


_nothing_to_tear_down = False


def nothing_left_to_tear_down() -> None:
    """Called by a command that has finished its work, closed its outputs and left no child process or server
    behind (`encode`, `predict`): the console entry point (`run`) then ends the process with `os._exit`
    instead of the interpreter's teardown, which costs ~0.5 s once torch is loaded (its C++ destructors, every
    module's objects) and ~0.15 s for `encode`, for nothing. Commands that hold a Prefect server, a catalog or
    workers never call it: their teardown runs as usual."""
    global _nothing_to_tear_down
    _nothing_to_tear_down = True


def exit_without_teardown_if_allowed(code: int | str | None) -> None:
    """After a successful command that called `nothing_left_to_tear_down`: flush and end the process now."""
    if _nothing_to_tear_down and code in (0, None):
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


class progress_bar:
    """A rich progress bar on stderr when asked for and stderr is a terminal; a no-op otherwise (tests, CI, logs).

    `with progress_bar(enabled, "encoding") as bar:`, then `bar.advance(n)` or `bar.update(done, total)` (total
    None while unknown).
    """

    def __init__(self, enabled: bool, label: str) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.label = label
        self._bar = None
        self._task = None

    def __enter__(self) -> progress_bar:
        if self.enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=None)
        return self

    def advance(self, n: int) -> None:
        if self._bar is not None:
            self._bar.advance(self._task, n)

    def update(self, done: int, total: int | None = None, label: str | None = None) -> None:
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=total, description=label or self.label)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
