"""Candidate sources: the embedded generator, local files, or the Materials Project, as batches of raw inputs.

Every source yields `RawInput`s (structure text + format, or an error), in batches, so candidates travel to the
encoder's worker processes as text and their structures can be stored in the catalog as given.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from cloud_core.structures import RawInput


class SourceSpec(BaseModel):
    """Where the candidates come from (a form in the Prefect UI; `--source` on the command line)."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["demo", "files", "mp"] = Field(
        "demo", description="demo: generated hypothetical candidates; files: local paths; mp: Materials Project."
    )
    count: int = Field(1200, ge=1, le=10_000_000, description="demo: how many candidates to generate.")
    seed: int = Field(0, description="demo: seed for the order of element substitutions.")
    prototypes: list[str] = Field(
        default_factory=list,
        description="demo: prototypes to use (empty: all but the opt-in double-double-perovskite; 'all': every "
        "one; see cloud_core.prototypes).",
    )
    elements: list[str] = Field(default_factory=list, description="demo: element pool (empty: the built-in pools).")
    paths: list[str] = Field(
        default_factory=list, description="files: structure files, tables with a 'cif' column, or directories."
    )
    mp_query: str = Field(
        "", description="mp: query in the `mp:` syntax, e.g. 'chemsys=Li-Fe-O:is_stable=true' (key from MP_API_KEY)."
    )

    @model_validator(mode="after")
    def _complete(self) -> SourceSpec:
        if self.kind == "files" and not self.paths:
            raise ValueError("kind 'files' needs at least one path")
        if self.kind == "mp" and not self.mp_query:
            raise ValueError("kind 'mp' needs an mp_query")
        if self.prototypes:
            from cloud_core.prototypes import select_prototypes

            select_prototypes(self.prototypes)  # an unknown name is a ValueError, so a validation error
        return self

    def label(self) -> str:
        if self.kind == "demo":
            return f"demo:{self.count}:seed={self.seed}"
        if self.kind == "files":
            return "files:" + ",".join(self.paths)
        return f"mp:{self.mp_query}"


def parse_source(text: str, count: int | None = None) -> SourceSpec:
    """`demo`, `mp:QUERY`, or a path (comma-separated for several) -> a SourceSpec."""
    if text == "demo":
        return SourceSpec(kind="demo", **({"count": count} if count else {}))
    if text.startswith("mp:"):
        return SourceSpec(kind="mp", mp_query=text[3:])
    return SourceSpec(kind="files", paths=[p for p in text.split(",") if p])


def iter_raw(spec: SourceSpec, **mp_options: Any) -> Iterator[RawInput]:
    """Every candidate of the source, in a reproducible order."""
    if spec.kind == "demo":
        from cloud_core.prototypes import generate_candidates
        from cloud_core.structures import crystal_to_json

        for ident, crystal in generate_candidates(
            spec.prototypes or None, max_count=spec.count, seed=spec.seed, elements=spec.elements or None
        ):
            yield RawInput(ident, "demo", "json", crystal_to_json(crystal))
    elif spec.kind == "files":
        from cloud_core.structures import expand_inputs, iter_raw_inputs

        yield from iter_raw_inputs(expand_inputs(spec.paths))
    else:
        from flows.materials_project import fetch_candidates, parse_mp_query

        yield from fetch_candidates(parse_mp_query(spec.mp_query), **mp_options)


def shortfall(spec: SourceSpec, produced: int) -> str | None:
    """Why a demo source gave fewer candidates than its count (the generator ran out of distinct ones), or None."""
    if spec.kind != "demo" or produced >= spec.count:
        return None
    from cloud_core.prototypes import PROTOTYPES

    opt_in = [name for name, proto in PROTOTYPES.items() if proto.opt_in]
    return (
        f"the generator has {produced:,} distinct candidates for these prototypes and elements, fewer than the "
        f"{spec.count:,} asked for: all of them were screened"
        + (f" (add the opt-in {', '.join(opt_in)} with `--prototypes all`)" if not spec.prototypes else "")
    )


def iter_batches(spec: SourceSpec, batch_size: int, **mp_options: Any) -> Iterator[list[RawInput]]:
    """The source's candidates in batches of `batch_size` (the unit of work of the screen flow)."""
    batch: list[RawInput] = []
    for raw in iter_raw(spec, **mp_options):
        batch.append(raw)
        if len(batch) >= batch_size:
            yield batch
            batch = []
    if batch:
        yield batch
