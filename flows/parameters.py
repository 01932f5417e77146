"""Flow parameters shown as forms in the Prefect UI: their descriptions, kept in one place."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any, TypeVar, get_args, get_origin

F = TypeVar("F", bound=Callable[..., Any])


def document_parameters(fn: F) -> F:
    """Append an `Args:` section built from the parameters' `Field(description=...)` to the docstring.

    Prefect's UI form takes top-level parameter descriptions from the docstring's Args section (Google style),
    not from `Annotated[..., Field(description=...)]`; this keeps the descriptions in one place. Put it under
    `@flow` (so it is applied first).
    """
    lines = []
    for name, annotation in inspect.get_annotations(fn, eval_str=True).items():
        if get_origin(annotation) is not Annotated:
            continue
        description = next((getattr(m, "description", None) for m in get_args(annotation)[1:]), None)
        if description:
            lines.append(f"    {name}: {description}")
    if lines:
        fn.__doc__ = (inspect.cleandoc(fn.__doc__ or "") + "\n\nArgs:\n" + "\n".join(lines)).strip()
    return fn
