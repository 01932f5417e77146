"""What every command shares: the one-line failure and the progress bar."""

from __future__ import annotations

import sys

import typer


def fail(message: str) -> None:
    """Stop the command with one line that says what went wrong and what to do."""
    typer.echo(f"cloud-screen: error: {message}", err=True)
    raise typer.Exit(1)


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
