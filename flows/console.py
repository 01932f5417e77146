"""What every command shares: the one-line failure."""

from __future__ import annotations

import typer


def fail(message: str) -> None:
    """Stop the command with one line that says what went wrong and what to do."""
    typer.echo(f"cloud-screen: error: {message}", err=True)
    raise typer.Exit(1)
