"""A self-contained HTML report of one screening run: provenance, the ranked table, Debye curves, a Pareto plot.

The file opens offline: plotly.js is inlined once (with the first figure), nothing is fetched from a CDN, and
the CSS is inline. Every string that comes from data (candidate ids, formulas, SCOPE strings, parameters) is
HTML-escaped, in the tables and in the plot labels alike, so a hostile name shows as text and never runs.

    write_report(Path("run.html"), run, ranked, curves, objectives=["band_gap", "debye_temperature"])
"""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
import polars as pl

__all__ = ["write_report"]

MAX_CURVES = 10  # Debye curves drawn per plot: more lines are unreadable
MAX_SCATTER_POINTS = 20_000  # SVG scatter stays responsive up to about this many points
PLOT_HEIGHT = 440  # px
GAS_CONSTANT = 8.314462618  # J/(K mol): the Dulong-Petit limit of Cv is 3R

# Columns shown first in the ranked table, in this order; any others follow in frame order.
LEAD_COLUMNS = ("rank", "candidate_id", "formula", "spacegroup", "scope", "score", "pareto")
PROPERTY_COLUMNS = (
    "formation_energy_per_atom",
    "band_gap",
    "log10_k_vrh",
    "log10_g_vrh",
    "debye_temperature",
    "cv_300K",
    "cv_305K",
)
# Units for table headers and plot axes; a column without one is shown bare.
UNITS = {
    "formation_energy_per_atom": "eV/atom",
    "band_gap": "eV",
    "log10_k_vrh": "log10 GPa",
    "log10_g_vrh": "log10 GPa",
    "debye_temperature": "K",
    "cv_300K": "J/(K mol)",
    "cv_305K": "J/(K mol)",
}
# Provenance keys shown first, in this order; any others follow.
RUN_KEYS = (
    "run_id",
    "status",
    "started",
    "finished",
    "source",
    "model_id",
    "model_hash",
    "code_version",
    "host",
    "device",
    "parameters",
    "counts",
    "timings",
)
FALLBACK_AXES = ("formation_energy_per_atom", "debye_temperature")

# Plots are drawn while the page is still being parsed, before later content can change their width (a
# scrollbar appearing, say); one resize after load fits them to their final boxes.
RESIZE_SCRIPT = """
<script>
window.addEventListener("load", function () {
  document.querySelectorAll(".plotly-graph-div").forEach(function (div) { Plotly.Plots.resize(div); });
});
</script>"""

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1f2328;
       margin: 0 auto; padding: 1.5rem 2rem 3rem; max-width: 1400px; background: #fff; }
h1 { font-size: 1.6rem; margin: 0 0 .2rem; }
h2 { font-size: 1.2rem; margin: 2rem 0 .6rem; padding-bottom: .25rem; border-bottom: 1px solid #d0d7de; }
.subtitle, .note { color: #57606a; }
.note { font-style: italic; }
table { border-collapse: collapse; font-size: 13px; }
th, td { padding: .25rem .6rem; border-bottom: 1px solid #eaeef2; text-align: left; vertical-align: top; }
thead th { position: sticky; top: 0; background: #f6f8fa; border-bottom: 2px solid #d0d7de; vertical-align: bottom; }
thead th .unit { font-weight: 400; color: #57606a; white-space: nowrap; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.front td { background: #fff8e6; }
table.kv th { background: #f6f8fa; font-weight: 600; white-space: nowrap; }
table.kv table.kv { font-size: 12px; }
.scroll { overflow-x: auto; max-width: 100%; }
code { font: 12px ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; overflow-wrap: anywhere; }
td.scope code { display: inline-block; min-width: 28ch; max-width: 64ch; }
.plot { border: 1px solid #eaeef2; border-radius: 6px; padding: .25rem; margin-bottom: 1rem; }
footer { margin-top: 2.5rem; color: #8c959f; font-size: 12px; }
"""


def write_report(
    path: Path,
    run: dict[str, Any],
    ranked: pl.DataFrame,
    curves: pl.DataFrame,
    objectives: list[str],
    title: str | None = None,
    top: int = 50,
) -> Path:
    """Write the HTML report of one screening run to `path` and return the path.

    `ranked` is the ranked list, best first (rank, candidate_id, formula, ..., score, pareto, properties);
    `curves` the Debye curves of the top candidates in long form (candidate_id, temperature, cv, u, ...);
    `objectives` the ranking objectives, the first two of which are the Pareto plot's axes. Empty frames give
    a report that says so. The file is written next to its final place and renamed, so a reader never sees half.
    """
    path = Path(path)
    run_id = str(run.get("run_id", "")) or "unnamed run"
    title = title or f"cloud-screen report: {run_id}"
    figures = _FigureWriter()
    sections = [
        _section("Run provenance", _definition_table(_ordered_items(run, RUN_KEYS))),
        _section(_ranked_heading(ranked.height, top), _ranked_html(ranked, top, objectives)),
        _section("Debye heat capacity and internal energy", _curves_html(curves, ranked, figures)),
        _section("Pareto plot", _pareto_html(ranked, objectives, figures)),
    ]
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    document = (
        "<!DOCTYPE html>\n<html lang='en'>\n<head>\n<meta charset='utf-8'>\n"
        "<meta name='viewport' content='width=device-width, initial-scale=1'>\n"
        f"<title>{_esc(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<header><h1>{_esc(title)}</h1><div class='subtitle'>{_status_line(run)}</div></header>\n"
        + "\n".join(sections)
        + (RESIZE_SCRIPT if figures.library_included else "")
        + f"\n<footer>Generated {generated} by cloud-screen. Self-contained: opens offline.</footer>\n"
        "</body>\n</html>\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(document, encoding="utf-8")
    tmp.replace(path)
    return path


# --- formatting -------------------------------------------------------------------------------------------------


def _esc(value: object) -> str:
    """HTML-escape any value's text (quotes too, so it is safe in attributes)."""
    return html.escape(str(value), quote=True)


def _format_number(value: float) -> str:
    """About four significant digits without exponent in the usual range; exponent for tiny or huge values."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e6 or magnitude < 1e-3:
        return f"{value:.3e}"
    decimals = max(0, 3 - math.floor(math.log10(magnitude)))
    return f"{value:.{decimals}f}"


def _format_value(value: object) -> str:
    """Text of one cell (unescaped): numbers rounded, booleans as yes/no, missing as a dash."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}" if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        return _format_number(value)
    if isinstance(value, datetime):
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return ", ".join(_format_value(item) for item in value)
    return str(value)


def _is_number(value: object) -> bool:
    """Whether a cell is numeric (right-aligned); booleans are not."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def _label(column: str) -> str:
    """Column name with its unit, for headers and axes."""
    unit = UNITS.get(column) or UNITS.get(column.removesuffix("_std"))
    return f"{column} ({unit})" if unit else column


def _header(column: str) -> str:
    """Table header cell: the name breakable at underscores, its unit on a line of its own."""
    name = "_<wbr>".join(_esc(part) for part in column.split("_"))
    unit = UNITS.get(column) or UNITS.get(column.removesuffix("_std"))
    unit_html = f"<br><span class='unit'>({_esc(unit)})</span>" if unit else ""
    return f"<th title='{_esc(column)}'>{name}{unit_html}</th>"


def _section(heading: str, body: str) -> str:
    """One titled section of the page."""
    return f"<section>\n<h2>{_esc(heading)}</h2>\n{body}\n</section>"


def _note(text: str) -> str:
    """A short italic remark, e.g. why a plot is absent."""
    return f"<p class='note'>{_esc(text)}</p>"


# --- provenance ----------------------------------------------------------------------------------------------------


def _ordered_items(mapping: Mapping[str, Any], first: Sequence[str]) -> list[tuple[str, Any]]:
    """The mapping's items, the keys of `first` leading in that order, the rest in their own order."""
    lead = [(key, mapping[key]) for key in first if key in mapping]
    return lead + [(key, value) for key, value in mapping.items() if key not in first]


def _definition_table(items: Iterable[tuple[str, Any]]) -> str:
    """A two-column key/value table; nested mappings become nested tables."""
    rows = []
    for key, value in items:
        if isinstance(value, Mapping):
            cell = _definition_table(value.items()) if value else "—"
        elif isinstance(value, float) and str(key).endswith(("_s", "seconds")):
            cell = _esc(f"{_format_number(value)} s")
        elif isinstance(value, list | tuple | set) and any(isinstance(item, Mapping) for item in value):
            cell = f"<code>{_esc(json.dumps(list(value), default=str))}</code>"
        else:
            cell = _esc(_format_value(value))
        rows.append(f"<tr><th>{_esc(key)}</th><td>{cell}</td></tr>")
    if not rows:
        return _note("No provenance recorded.")
    return "<table class='kv'>" + "".join(rows) + "</table>"


def _status_line(run: Mapping[str, Any]) -> str:
    """One line under the title: status, source, model and duration when known (escaped)."""
    parts = []
    for key in ("status", "source", "model_id"):
        if run.get(key) not in (None, ""):
            parts.append(f"{key}: {_format_value(run[key])}")
    started, finished = run.get("started"), run.get("finished")
    if isinstance(started, datetime) and isinstance(finished, datetime):
        parts.append(f"duration: {_format_number((finished - started).total_seconds())} s")
    return _esc(" · ".join(parts))


# --- ranked table --------------------------------------------------------------------------------------------------


def _table_columns(columns: Sequence[str]) -> list[str]:
    """Display order: identity columns, known properties each followed by its `_std`, then everything else."""
    present = set(columns)
    order = [name for name in LEAD_COLUMNS if name in present]
    for name in PROPERTY_COLUMNS:
        order += [col for col in (name, f"{name}_std") if col in present]
    # Unknown properties keep their `_std` beside them too.
    for name in columns:
        if name in order:
            continue
        order.append(name)
        if f"{name}_std" in present and f"{name}_std" not in order:
            order.append(f"{name}_std")
    return order


def _ranked_heading(total: int, top: int) -> str:
    """'Ranked candidates (top 50 of 1,234)', or just 'Ranked candidates' when all or none are shown."""
    shown = min(max(top, 0), total)
    return f"Ranked candidates (top {shown:,} of {total:,})" if 0 < shown < total else "Ranked candidates"


def _ranked_html(ranked: pl.DataFrame, top: int, objectives: Sequence[str]) -> str:
    """The top `top` rows of the ranked list as an HTML table, Pareto-front rows highlighted."""
    parts = []
    if objectives:
        parts.append(f"<p>Objectives: {', '.join(f'<code>{_esc(name)}</code>' for name in objectives)}</p>")
    if ranked.height == 0:
        return "".join(parts) + _note("No candidates were ranked in this run.")
    columns = _table_columns(ranked.columns)
    head = "".join(_header(col) for col in columns)
    body = []
    for row in ranked.head(max(top, 0)).select(columns).iter_rows(named=True):
        cells = []
        for col in columns:
            value = row[col]
            text = _esc(_format_value(value))
            if col == "scope" and value is not None:
                cells.append(f"<td class='scope'><code>{text}</code></td>")
            else:
                cells.append(f"<td class='num'>{text}</td>" if _is_number(value) else f"<td>{text}</td>")
        css = " class='front'" if row.get("pareto") is True else ""
        body.append(f"<tr{css}>{''.join(cells)}</tr>")
    parts.append(
        "<div class='scroll'><table class='ranked'><thead><tr>"
        + head
        + "</tr></thead><tbody>"
        + "".join(body)
        + "</tbody></table></div>"
    )
    if "pareto" in ranked.columns:
        parts.append(_note("Highlighted rows lie on the Pareto front."))
    return "".join(parts)


# --- figures -------------------------------------------------------------------------------------------------------


class _FigureWriter:
    """Turns figures into HTML divs, inlining plotly.js with the first one only (the page needs it once)."""

    def __init__(self) -> None:
        self.library_included = False

    def div(self, figure: go.Figure, div_id: str) -> str:
        """A plot div with its script; the first call also carries the whole plotly.js library inline."""
        include: bool = not self.library_included
        self.library_included = True
        markup = pio.to_html(
            figure,
            full_html=False,
            include_plotlyjs=include,  # True inlines the bundled plotly.min.js: no CDN, opens offline
            include_mathjax=False,
            div_id=div_id,
            default_height=f"{PLOT_HEIGHT}px",
            config={"displaylogo": False, "responsive": True},
        )
        return f"<div class='plot'>{markup}</div>"


def _layout(figure: go.Figure, title: str, x_title: str, y_title: str) -> None:
    """Shared plain look for every figure."""
    figure.update_layout(
        template="plotly_white",
        title={"text": _esc(title), "x": 0.02},
        height=PLOT_HEIGHT,
        margin={"l": 70, "r": 20, "t": 50, "b": 55},
        xaxis_title=_esc(x_title),
        yaxis_title=_esc(y_title),
        legend={"font": {"size": 11}},
        hovermode="closest",
    )


def _candidate_labels(ranked: pl.DataFrame) -> dict[str, tuple[int | None, str | None]]:
    """candidate_id -> (rank, formula) from the ranked list, for legend and hover text."""
    if ranked.height == 0 or "candidate_id" not in ranked.columns:
        return {}
    ranks = ranked["rank"].to_list() if "rank" in ranked.columns else list(range(1, ranked.height + 1))
    formulas = ranked["formula"].to_list() if "formula" in ranked.columns else [None] * ranked.height
    ids = ranked["candidate_id"].cast(pl.String).to_list()
    return {cid: (rank, formula) for cid, rank, formula in zip(ids, ranks, formulas, strict=True)}


def _curve_candidates(curves: pl.DataFrame, labels: Mapping[str, Any]) -> list[str]:
    """Up to MAX_CURVES candidate ids of `curves`, best-ranked first, unranked ones after in their order."""
    present = curves["candidate_id"].cast(pl.String).unique(maintain_order=True).to_list()
    position = {cid: i for i, cid in enumerate(labels)}
    return sorted(present, key=lambda cid: position.get(cid, len(position)))[:MAX_CURVES]


def _curves_html(curves: pl.DataFrame, ranked: pl.DataFrame, figures: _FigureWriter) -> str:
    """Cv(T) and U(T) of the top candidates, one line each, beside each other."""
    required = {"candidate_id", "temperature"}
    if curves.height == 0 or not required <= set(curves.columns):
        return _note("No Debye curves in this run.")
    labels = _candidate_labels(ranked)
    chosen = _curve_candidates(curves, labels)
    data = curves.with_columns(pl.col("candidate_id").cast(pl.String)).filter(pl.col("candidate_id").is_in(chosen))
    plots = []
    specs = [
        ("cv", "Heat capacity Cv(T)", "Cv (J/(K mol atoms))", "plot-cv"),
        ("u", "Phonon internal energy U(T)", "U (J/mol atoms)", "plot-u"),
    ]
    for column, title, y_title, div_id in specs:
        if column not in data.columns:
            continue
        figure = go.Figure()
        for cid in chosen:
            part = data.filter(pl.col("candidate_id") == cid).sort("temperature")
            rank, formula = labels.get(cid, (None, None))
            name = " ".join(str(p) for p in (f"#{rank}" if rank is not None else None, formula, cid) if p)
            figure.add_trace(
                go.Scatter(
                    x=part["temperature"].to_list(),
                    y=part[column].to_list(),
                    mode="lines",
                    name=_esc(name),
                    hovertemplate=f"{_esc(name)}<br>T = %{{x:.4g}} K<br>{column} = %{{y:.4g}}<extra></extra>",
                )
            )
        _layout(figure, title, "temperature (K)", y_title)
        if column == "cv":
            # The classical limit every Debye Cv curve approaches: a reader's sanity check.
            figure.add_hline(
                y=3 * GAS_CONSTANT,
                line={"dash": "dot", "color": "#8c959f", "width": 1},
                annotation_text="3R (Dulong–Petit)",
                annotation_position="top left",
            )
        plots.append(figures.div(figure, div_id))
    if not plots:
        return _note("The Debye curves have neither a cv nor a u column.")
    total = curves["candidate_id"].n_unique()
    shown = f"{len(chosen)} of {total} candidates with curves, best-ranked first."
    return f"<p>{_esc(shown)}</p>{''.join(plots)}"


def _pareto_axes(ranked: pl.DataFrame, objectives: Sequence[str]) -> tuple[str, str] | None:
    """The first two objectives, or formation energy vs Debye temperature; None when the columns are absent."""
    numeric = {name for name, dtype in ranked.schema.items() if dtype.is_numeric()}
    usable = [name for name in objectives if name in numeric]
    if len(usable) >= 2:
        return usable[0], usable[1]
    if all(name in numeric for name in FALLBACK_AXES):
        return FALLBACK_AXES
    return None


def _scatter_subset(ranked: pl.DataFrame) -> pl.DataFrame:
    """All rows when few enough; else the whole front plus the best-ranked others up to MAX_SCATTER_POINTS."""
    if ranked.height <= MAX_SCATTER_POINTS:
        return ranked
    if "pareto" not in ranked.columns:
        return ranked.head(MAX_SCATTER_POINTS)
    front = ranked.filter(pl.col("pareto").fill_null(False))
    rest = ranked.filter(~pl.col("pareto").fill_null(False)).head(max(MAX_SCATTER_POINTS - front.height, 0))
    return pl.concat([front, rest])


def _hover_texts(frame: pl.DataFrame) -> list[str]:
    """Escaped 'rank id<br>formula' per row; plotly decodes the entities, so names show literally."""
    n = frame.height
    ids = frame["candidate_id"].cast(pl.String).to_list() if "candidate_id" in frame.columns else [""] * n
    formulas = frame["formula"].cast(pl.String).to_list() if "formula" in frame.columns else [None] * n
    ranks = frame["rank"].to_list() if "rank" in frame.columns else [None] * n
    texts = []
    for cid, formula, rank in zip(ids, formulas, ranks, strict=True):
        head = f"#{rank} {cid}" if rank is not None else str(cid)
        texts.append(_esc(head) + (f"<br>{_esc(formula)}" if formula else ""))
    return texts


def _pareto_html(ranked: pl.DataFrame, objectives: Sequence[str], figures: _FigureWriter) -> str:
    """Scatter of the ranked candidates on two objectives, Pareto-front points highlighted."""
    if ranked.height == 0:
        return _note("No ranked candidates to plot.")
    axes = _pareto_axes(ranked, objectives)
    if axes is None:
        return _note(
            "Skipped: fewer than two numeric objectives, and no formation_energy_per_atom and "
            "debye_temperature columns to plot instead."
        )
    x, y = axes
    notes = []
    if len([name for name in objectives if name in ranked.columns]) < 2:
        notes.append(f"Fewer than two objectives: showing {x} against {y}.")
    subset = _scatter_subset(ranked)
    if subset.height < ranked.height:
        notes.append(f"Showing {subset.height:,} of {ranked.height:,} candidates: the Pareto front, then by rank.")
    data = subset.filter(pl.col(x).is_not_null() & pl.col(y).is_not_null())
    if data.height < subset.height:
        notes.append(f"{subset.height - data.height:,} candidates without {x} or {y} are not plotted.")
    if data.height == 0:
        return "".join(_note(text) for text in notes) + _note(f"No candidate has both {x} and {y}.")
    on_front = data["pareto"].fill_null(False) if "pareto" in data.columns else pl.Series([False] * data.height)
    figure = go.Figure()
    groups = [
        (~on_front, "other candidates", {"size": 6, "color": "rgba(99,110,130,0.45)"}),
        (on_front, "Pareto front", {"size": 10, "color": "#d1242f", "symbol": "diamond", "line": {"width": 1}}),
    ]
    hover = f"%{{text}}<br>{_esc(x)} = %{{x:.4g}}<br>{_esc(y)} = %{{y:.4g}}<extra></extra>"
    for mask, name, marker in groups:
        part = data.filter(mask)
        if part.height == 0:
            continue
        figure.add_trace(
            go.Scatter(
                x=part[x].to_list(),
                y=part[y].to_list(),
                mode="markers",
                name=name,
                marker=marker,
                text=_hover_texts(part),
                hovertemplate=hover,
            )
        )
    _layout(figure, f"{y} vs {x}", _label(x), _label(y))
    return "".join(_note(text) for text in notes) + figures.div(figure, "plot-pareto")
