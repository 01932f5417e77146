"""The HTML run report: escaping, self-containment, empty inputs, and (marked `browser`) rendering in Chromium."""

from __future__ import annotations

import io
import math
import os
import re
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from catalogs.report import MAX_CURVES, write_report
from tests.conftest import CHROMIUM, CHROMIUM_ARGS, sync_playwright_or_skip

HOSTILE_ID = "<script>alert(1)</script>"
HOSTILE_FORMULA = "<img src=x onerror=alert(2)>"
OBJECTIVES = ["band_gap", "debye_temperature"]
GAS_CONSTANT = 8.314462618


def _run() -> dict:
    """Provenance as the catalog records it."""
    started = datetime(2026, 3, 1, 12, 0, 0)
    return {
        "run_id": "run-2026-03-01-abc",
        "started": started,
        "finished": started + timedelta(seconds=83.4),
        "status": "completed",
        "source": "generator",
        "parameters": {"n": 40, "variant": "detailed", "elements": ["Na", "Cl"], "note": "<b>bold?</b>"},
        "model_id": "default",
        "model_hash": "sha256:0123456789abcdef",
        "code_version": "0.1.0+g1234567",
        "host": "worker-1",
        "device": "cpu",
        "counts": {"candidates": 40, "encoded": 39, "failed": 1},
        "timings": {"encode_s": 1.234, "infer_s": 12.5},
    }


def _ranked(n: int = 40) -> pl.DataFrame:
    """A ranked list, best first, with properties, their std, an extra column and one hostile candidate."""
    rng = np.random.default_rng(7)
    ids = [f"gen-{i:05d}" for i in range(n)]
    formulas = [f"Na{i % 3 + 1}Cl{i % 2 + 1}" for i in range(n)]
    ids[1], formulas[1] = HOSTILE_ID, HOSTILE_FORMULA
    pareto = [False] * n
    for i in (i for i in (0, 1, 4, 9) if i < n):
        pareto[i] = True
    return pl.DataFrame(
        {
            "rank": list(range(1, n + 1)),
            "candidate_id": ids,
            "formula": formulas,
            "spacegroup": rng.integers(1, 231, n).tolist(),
            "scope": [f"225 | F m -3 m | 4a Na | 4b Cl | {i}" for i in range(n)],
            "score": np.linspace(1.0, 0.1, n).tolist(),
            "pareto": pareto,
            "formation_energy_per_atom": rng.normal(-1.5, 0.5, n).tolist(),
            "formation_energy_per_atom_std": rng.uniform(0.01, 0.1, n).tolist(),
            "band_gap": rng.uniform(0, 6, n).tolist(),
            "band_gap_std": rng.uniform(0.05, 0.4, n).tolist(),
            "debye_temperature": rng.uniform(150, 900, n).tolist(),
            "cv_300K": rng.uniform(15, 24.9, n).tolist(),
            "novelty": rng.uniform(0, 1, n).tolist(),  # an extra column the report must show as well
        }
    )


def _curves(ranked: pl.DataFrame, count: int = 12) -> pl.DataFrame:
    """Long-form Cv(T), U(T) of the top `count` candidates (Einstein-like shapes: the report needs no physics)."""
    temperatures = np.linspace(5, 1000, 60)
    frames = []
    for cid, theta in ranked.select("candidate_id", "debye_temperature").head(count).iter_rows():
        x = 0.75 * theta / temperatures
        cv = 3 * GAS_CONSTANT * x**2 * np.exp(x) / np.expm1(x) ** 2
        u = 3 * GAS_CONSTANT * 0.75 * theta * (0.5 + 1 / np.expm1(x))
        frames.append(pl.DataFrame({"candidate_id": cid, "temperature": temperatures, "cv": cv, "u": u}))
    return pl.concat(frames)


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full report with a hostile candidate, written once for the module."""
    ranked = _ranked()
    path = tmp_path_factory.mktemp("report") / "nested" / "run.html"
    assert write_report(path, _run(), ranked, _curves(ranked), OBJECTIVES, top=25) == path
    return path


def _tbody_rows(text: str) -> list[str]:
    """The body rows of the ranked table."""
    body = text.split("<table class='ranked'>", 1)[1].split("</tbody>", 1)[0]
    return re.findall(r"<tr[ >].*?</tr>", body.split("<tbody>", 1)[1])


def test_report_escapes_data_and_is_self_contained(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    # Hostile names appear only escaped: as table text, and as entities in the plot data.
    assert "<script>alert(" not in text and "<img src=x" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&lt;img src=x onerror=alert(2)&gt;" in text
    assert "&lt;b&gt;bold?&lt;/b&gt;" in text  # provenance parameters are escaped too
    # Self-contained: no external script or stylesheet, plotly.js inlined exactly once.
    assert not re.search(r"<script[^>]*\bsrc\s*=", text, re.IGNORECASE)
    assert not re.search(r"<link[^>]*\bhref\s*=\s*['\"]?https?:", text, re.IGNORECASE)
    assert len(re.findall(r"plotly\.js v\d", text)) == 1
    assert text.index("plotly.js v") < text.index("Plotly.newPlot")
    for div_id in ("plot-cv", "plot-u", "plot-pareto"):
        assert f'id="{div_id}"' in text


def test_report_table_contents(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    rows = _tbody_rows(text)
    assert len(rows) == 25  # `top`
    assert "Ranked candidates (top 25 of 40)" in text
    header = text.split("<thead>", 1)[1].split("</thead>", 1)[0]
    columns = re.findall(r"<th title='([^']*)'>", header)
    assert columns[:7] == ["rank", "candidate_id", "formula", "spacegroup", "scope", "score", "pareto"]
    assert columns.index("band_gap_std") == columns.index("band_gap") + 1
    assert "novelty" in columns
    assert "debye_<wbr>temperature<br><span class='unit'>(K)</span>" in header
    # Rounded numbers (about four significant digits), Pareto rows highlighted, provenance shown.
    assert not re.search(r"\d\.\d{6,}", "".join(rows))
    assert sum("class='front'" in row for row in rows) == 4
    assert "run-2026-03-01-abc" in text and "sha256:0123456789abcdef" in text and "12.50 s" in text


def test_report_empty_inputs(tmp_path: Path) -> None:
    ranked = _ranked().clear()
    curves = pl.DataFrame(schema={"candidate_id": pl.String, "temperature": pl.Float64, "cv": pl.Float64})
    path = write_report(tmp_path / "empty.html", {"run_id": "empty-run"}, ranked, curves, [])
    text = path.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>") and text.rstrip().endswith("</html>")
    assert "No candidates were ranked in this run." in text
    assert "No Debye curves in this run." in text
    assert "No ranked candidates to plot." in text
    assert "Plotly.newPlot" not in text  # nothing to plot, so no 4 MB library either
    # Frames with no columns at all work too.
    bare = write_report(tmp_path / "bare.html", {}, pl.DataFrame(), pl.DataFrame(), [])
    assert "No candidates were ranked" in bare.read_text(encoding="utf-8")


def test_report_pareto_axes_fallback(tmp_path: Path) -> None:
    ranked = _ranked(8)
    text = write_report(tmp_path / "one.html", _run(), ranked, pl.DataFrame(), ["band_gap"]).read_text()
    assert "Fewer than two objectives: showing formation_energy_per_atom against debye_temperature." in text
    assert 'id="plot-pareto"' in text and len(re.findall(r"plotly\.js v\d", text)) == 1
    plain = ranked.drop("formation_energy_per_atom", "debye_temperature")
    text = write_report(tmp_path / "none.html", _run(), plain, pl.DataFrame(), []).read_text()
    assert "Skipped: fewer than two numeric objectives" in text and "Plotly.newPlot" not in text


def test_report_limits_curves(report: Path) -> None:
    text = report.read_text(encoding="utf-8")
    assert f"{MAX_CURVES} of 12 candidates with curves" in text


# --- headless Chromium ---------------------------------------------------------------------------------------------


def _artifacts(tmp_path: Path) -> Path:
    """Where screenshots go: $CLOUD_SCREEN_ARTIFACTS when set (CI keeps them), else the test's tmp_path."""
    folder = Path(os.environ.get("CLOUD_SCREEN_ARTIFACTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _assert_not_blank(png: bytes) -> None:
    """The PNG has many colours, not one flat fill."""
    from PIL import Image  # pillow comes with matplotlib, which pymatgen requires

    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.uint32)
    assert image.shape[0] > 100 and image.shape[1] > 100
    assert image.reshape(-1, 3).std(axis=0).max() > 5
    # One integer per pixel: np.unique on a flat array is fast, unlike on rows.
    packed = (image[..., 0] << 16) | (image[..., 1] << 8) | image[..., 2]
    assert len(np.unique(packed)) > 50


@pytest.mark.browser
def test_report_renders_in_chromium(report: Path, tmp_path: Path) -> None:
    sync_playwright = sync_playwright_or_skip()
    errors: list[str] = []
    dialogs: list[str] = []
    requests: list[str] = []

    def route(route) -> None:
        # Only the file itself may load; any other request would mean the report is not self-contained.
        url = route.request.url
        if url.startswith(("file:", "data:", "blob:", "about:")):
            route.continue_()
        else:
            requests.append(url)
            route.abort()

    def dialog(d) -> None:
        dialogs.append(d.message)
        d.dismiss()

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1300, "height": 900})
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("dialog", dialog)
            page.route("**/*", route)
            page.goto(report.as_uri(), wait_until="load")
            page.wait_for_selector("#plot-pareto .main-svg", timeout=15_000)

            plots = page.eval_on_selector_all(
                ".plotly-graph-div",
                """divs => divs.map(d => ({
                    id: d.id,
                    svgs: d.querySelectorAll('svg.main-svg').length,
                    traces: d.querySelectorAll('.scatterlayer .trace').length,
                    points: d.querySelectorAll('.scatterlayer .point').length,
                }))""",
            )
            by_id = {plot["id"]: plot for plot in plots}
            assert set(by_id) == {"plot-cv", "plot-u", "plot-pareto"}
            assert all(plot["svgs"] > 0 and plot["traces"] > 0 for plot in plots), plots
            assert by_id["plot-cv"]["traces"] == by_id["plot-u"]["traces"] == MAX_CURVES
            assert by_id["plot-pareto"]["traces"] == 2 and by_id["plot-pareto"]["points"] == 40

            # The hostile names are shown as text, not run.
            table = page.inner_text("table.ranked")
            assert HOSTILE_ID in table and HOSTILE_FORMULA in table
            assert page.locator("table.ranked img").count() == 0

            png = page.screenshot(full_page=True)
            (_artifacts(tmp_path) / "report.png").write_bytes(png)
            _assert_not_blank(png)
            _assert_not_blank(page.locator("#plot-pareto").screenshot())

            # Hover text of a Pareto-front point names the candidate; the hostile one (rank 2) shows as text.
            point = page.locator("#plot-pareto .scatterlayer .trace").nth(1).locator(".point").nth(1)
            point.scroll_into_view_if_needed()
            box = point.bounding_box()
            assert box is not None
            page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
            page.wait_for_selector("#plot-pareto .hoverlayer .hovertext", timeout=5_000)
            hover = page.locator("#plot-pareto .hoverlayer").text_content() or ""
            assert f"#2 {HOSTILE_ID}" in hover and HOSTILE_FORMULA in hover, hover
        finally:
            browser.close()

    assert errors == [], errors
    assert dialogs == [], dialogs
    assert requests == [], f"the report tried the network: {requests}"


def test_hostile_fixture_is_ranked_second() -> None:
    """Guard for the browser test: the hostile candidate is among the rows and the curves shown."""
    ranked = _ranked()
    assert ranked["candidate_id"][1] == HOSTILE_ID and ranked["pareto"][1]
    assert HOSTILE_ID in _curves(ranked)["candidate_id"].to_list()
    assert math.isclose(_curves(ranked)["cv"].max(), 3 * GAS_CONSTANT, rel_tol=0.05)
