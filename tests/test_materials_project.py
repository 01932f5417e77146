"""The Materials Project source, driven through the real `MPRester` against a fake server on 127.0.0.1.

The fake answers the two endpoints mp-api calls for a summary search (`/heartbeat` at construction,
`/materials/summary/` for the search) with the JSON envelope it expects, and can be told to fail: reject the
key, rate-limit, return 503, or answer too slowly. No test touches the network.
"""

from __future__ import annotations

import functools
import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from cloud_core.encode import EncodeSettings, encode_chunk
from cloud_core.structures import crystal_from_text
from flows.materials_project import (
    MPQuery,
    MPQueryError,
    MPSourceError,
    RetrySettings,
    fetch,
    fetch_candidates,
    format_mp_query,
    page_plan,
    parse_mp_query,
)

KEY = "k" * 32
FAST = RetrySettings(max_retries=2, backoff_s=0.01, max_delay_s=0.05, timeout_s=2.0)


@functools.cache
def _structures() -> dict[str, Any]:
    """Rock salt NaCl and diamond Si, primitive fcc cells (explicit: from_spacegroup costs 0.4 s each)."""
    from pymatgen.core import Lattice, Structure

    def fcc(a: float) -> Lattice:
        return Lattice([[0, a / 2, a / 2], [a / 2, 0, a / 2], [a / 2, a / 2, 0]])

    nacl = Structure(fcc(5.64), ["Na", "Cl"], [[0, 0, 0], [0.5, 0.5, 0.5]])
    si = Structure(fcc(5.43), ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    return {"mp-22862": nacl, "mp-149": si}


def _document(material_id: str, structure: Any, **extra: Any) -> dict[str, Any]:
    doc = {
        "material_id": material_id,
        "formula_pretty": structure.composition.reduced_formula if hasattr(structure, "composition") else "X",
        "structure": structure.as_dict() if hasattr(structure, "as_dict") else structure,
        "last_updated": "2025-01-01T00:00:00",
        "band_gap": 1.0,  # a field nobody asked for: the server must leave it out
    }
    return doc | extra


class FakeMP:
    """State of the fake server: documents, what it was asked, and how it should misbehave."""

    def __init__(self, docs: list[dict[str, Any]]) -> None:
        self.docs = docs
        self.hits: Counter[str] = Counter()
        self.summary_params: list[dict[str, str]] = []
        self.summary_keys: list[str | None] = []
        self.failures: list[int] = []  # statuses the next summary requests answer with, in order
        self.always_status: int | None = None  # every summary request answers with this
        self.heartbeat_status: int | None = None
        self.delay_s = 0.0
        self.retry_after = "0"  # the Retry-After header of a 429
        # Cut-short answers: "length" (the connection closes before Content-Length bytes) or "json" (a body
        # cut in the middle, with a matching Content-Length), for the next summary requests in order ...
        self.truncated: list[str] = []
        self.truncate_skip: int | None = None  # ... and "json" for every request of the page at this _skip
        self.lock = threading.Lock()
        self.endpoint = ""

    def summary_hits(self) -> int:
        return self.hits["/materials/summary/"]


def _handler(fake: FakeMP) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # keep pytest output clean
            pass

        def _send(self, status: int, body: Any, headers: dict[str, str] | None = None, cut: str | None = None) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            if cut == "json":
                data = data[: len(data) // 2]
            self.send_header("Content-Length", str(len(data)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            if cut == "length":
                data = data[: len(data) // 2]
                self.close_connection = True
            self.wfile.write(data)

        def do_GET(self) -> None:
            url = urlparse(self.path)
            params = {k: v[-1] for k, v in parse_qs(url.query).items()}
            with fake.lock:
                fake.hits[url.path] += 1
            if url.path == "/heartbeat":
                if fake.heartbeat_status:
                    return self._send(fake.heartbeat_status, {"detail": "unavailable"})
                return self._send(
                    200, {"db_version": "2025.09.25", "access_controlled_batch_ids": [], "version": "0.87.3"}
                )
            if url.path != "/materials/summary/":
                return self._send(404, {"detail": "Not Found"})
            with fake.lock:
                fake.summary_params.append(params)
                fake.summary_keys.append(self.headers.get("x-api-key"))
                status = fake.failures.pop(0) if fake.failures else fake.always_status
                cut = fake.truncated.pop(0) if fake.truncated and status is None else None
                if fake.truncate_skip is not None and int(params.get("_skip", 0)) == fake.truncate_skip:
                    cut = "json"
            if fake.delay_s:
                time.sleep(fake.delay_s)
            if self.headers.get("x-api-key") != KEY:
                return self._send(401, {"detail": "Invalid API key"})
            if status is not None:
                retry_after = {"Retry-After": fake.retry_after} if status == 429 else {}
                return self._send(status, {"detail": f"status {status}"}, retry_after)
            fields = params.get("_fields", "").split(",")
            skip, limit = int(params.get("_skip", 0)), int(params.get("_limit", 1000))
            page = [
                {k: v for k, v in doc.items() if k in fields} if isinstance(doc, dict) else doc
                for doc in fake.docs[skip : skip + limit]
            ]
            return self._send(200, {"data": page, "meta": {"total_doc": len(fake.docs), "max_limit": 1000}}, cut=cut)

    return Handler


@pytest.fixture
def fake_mp(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeMP]:
    fake = FakeMP([_document(mid, s) for mid, s in _structures().items()])
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    server.handle_error = lambda *args: None  # a client that timed out closes its socket: not our failure
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    fake.endpoint = f"http://127.0.0.1:{server.server_port}/"
    monkeypatch.setenv("MP_API_KEY", KEY)
    monkeypatch.setenv("MP_API_ENDPOINT", fake.endpoint)
    yield fake
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Nothing here may reach the real API or write to the real cache."""
    monkeypatch.setenv("MP_API_ENDPOINT", "http://127.0.0.1:9/")  # the discard port: refused at once
    monkeypatch.setenv("CLOUD_SCREEN_CACHE", str(tmp_path / "default-cache"))
    monkeypatch.delenv("MP_API_KEY", raising=False)


def _query(**values: Any) -> MPQuery:
    return MPQuery(**{"elements": ["Na", "Cl", "Si"], **values})


# --------------------------------------------------------------------------------------------------
# Successful queries


def test_fetch_returns_raw_inputs_the_encoder_encodes(fake_mp: FakeMP, tmp_path: Path) -> None:
    raws = fetch_candidates(_query(), cache_dir=tmp_path, retry=FAST)
    assert [r.id for r in raws] == ["mp-22862", "mp-149"]
    assert {(r.source, r.fmt, r.error) for r in raws} == {("mp", "json", None)}
    structures = _structures()
    for raw in raws:  # the JSON round-trips to the same cell and sites
        crystal = crystal_from_text(raw.text or "", "json")
        assert crystal.nsites == len(structures[raw.id])
    table = encode_chunk(raws, EncodeSettings())
    assert table["error"].to_list() == [None, None]
    assert all(isinstance(s, str) and s for s in table["scope"].to_list())
    assert table["id"].to_list() == ["mp-22862", "mp-149"]


def test_query_parameters_sent(fake_mp: FakeMP, tmp_path: Path) -> None:
    query = MPQuery(
        elements=["O", "li"],
        exclude_elements=["Co"],
        band_gap_min=0.5,
        band_gap_max=3,
        energy_above_hull_max=0.05,
        nsites_max=20,
        is_stable=True,
        max_results=7,
    )
    fetch_candidates(query, cache_dir=tmp_path, retry=FAST)
    (params,) = fake_mp.summary_params
    assert params["elements"] == "Li,O"
    assert params["exclude_elements"] == "Co"
    assert (params["band_gap_min"], params["band_gap_max"]) == ("0.5", "3.0")
    assert params["energy_above_hull_max"] == "0.05" and "energy_above_hull_min" not in params
    assert params["nsites_max"] == "20" and "nsites_min" not in params
    assert params["is_stable"] == "True"
    assert params["deprecated"] == "False"
    assert params["_fields"] == "material_id,formula_pretty,structure,last_updated"
    assert params["_limit"] == "7"
    assert params["batch_id_not_eq"] == "gnome_r2scan_statics"  # include_gnome=False, mp-api's default is True
    assert fake_mp.summary_keys == [KEY]

    fetch_candidates(MPQuery(chemsys="O-Li", include_gnome=True), cache_dir=tmp_path, retry=FAST)
    params = fake_mp.summary_params[-1]
    assert params["chemsys"] == "Li-O"
    assert "batch_id_not_eq" not in params


def test_max_results_caps_and_pages(fake_mp: FakeMP, tmp_path: Path) -> None:
    fake_mp.docs = [_document(f"mp-{i}", _structures()["mp-149"]) for i in range(1, 6)]
    raws = fetch_candidates(_query(max_results=3), cache_dir=tmp_path, retry=FAST)
    assert [r.id for r in raws] == ["mp-1", "mp-2", "mp-3"]
    assert page_plan(1) == (1, 1)
    assert page_plan(1000) == (1000, 1)
    assert page_plan(1500) == (750, 2)
    size, pages = page_plan(250_001)
    assert size <= 1000 and size * pages >= 250_001


def test_second_identical_query_is_served_from_the_cache(fake_mp: FakeMP, tmp_path: Path) -> None:
    first = fetch(_query(), cache_dir=tmp_path, retry=FAST)
    assert fake_mp.summary_hits() == 1
    assert first.provenance["from_cache"] is False
    assert first.provenance["db_version"] == "2025.09.25"
    assert first.provenance["count"] == 2
    # Same query written differently (element order and case): same normalised query, same cache entry.
    second = fetch(MPQuery(elements=["si", "Cl", "Na"]), cache_dir=tmp_path, retry=FAST)
    assert fake_mp.summary_hits() == 1
    assert second.provenance["from_cache"] is True
    assert second.raws == first.raws
    (cache_file,) = tmp_path.glob("*.jsonl")
    assert not list(tmp_path.glob("*.tmp"))  # written atomically: no temp file left behind
    header = json.loads(cache_file.read_text().splitlines()[0])
    assert header["query"]["elements"] == ["Cl", "Na", "Si"]
    # A cached query needs no key at all.
    fake_mp_key = fetch_candidates(_query(), cache_dir=tmp_path, api_key=None, retry=FAST)
    assert len(fake_mp_key) == 2
    # A different query, or refresh=True, asks the server again.
    fetch_candidates(_query(max_results=1), cache_dir=tmp_path, retry=FAST)
    fetch_candidates(_query(), cache_dir=tmp_path, retry=FAST, refresh=True)
    assert fake_mp.summary_hits() == 3


def test_default_cache_dir_follows_cloud_screen_cache(fake_mp: FakeMP, tmp_path: Path) -> None:
    fetch_candidates(_query(), retry=FAST)
    fetch_candidates(_query(), retry=FAST)
    assert fake_mp.summary_hits() == 1
    assert len(list((tmp_path / "default-cache" / "mp").glob("*.jsonl"))) == 1


def test_unreadable_cache_file_is_fetched_again(fake_mp: FakeMP, tmp_path: Path) -> None:
    fetch_candidates(_query(), cache_dir=tmp_path, retry=FAST)
    (cache_file,) = tmp_path.glob("*.jsonl")
    cache_file.write_text(cache_file.read_text()[:-40])  # a truncated file (not one we wrote)
    raws = fetch_candidates(_query(), cache_dir=tmp_path, retry=FAST)
    assert len(raws) == 2 and fake_mp.summary_hits() == 2


def test_malformed_documents_are_error_rows(fake_mp: FakeMP, tmp_path: Path) -> None:
    si = _structures()["mp-149"]
    fake_mp.docs = [
        _document("mp-149", si),
        {"material_id": "mp-1", "formula_pretty": "X"},  # no structure
        _document("mp-2", "garbage"),  # not a structure at all
        _document("mp-3", {"lattice": "nonsense", "sites": [1, 2]}),  # looks like one, does not parse
        _document("", si),  # no id
    ]
    raws = fetch_candidates(_query(), cache_dir=tmp_path, retry=FAST)
    errors = {r.id: r.error for r in raws}
    assert errors["mp-149"] is None
    assert "no structure" in (errors["mp-1"] or "")
    assert "unreadable structure" in (errors["mp-2"] or "")
    assert errors["mp-3"] is None  # the encoder's workers parse it, and fail there (next lines)
    assert "no material_id" in (errors["mp-document-4"] or "")
    table = encode_chunk(raws, EncodeSettings())
    rows = {row["id"]: row for row in table.iter_rows(named=True)}
    assert rows["mp-149"]["error"] is None and rows["mp-149"]["scope"]
    assert all(rows[i]["error"] for i in ("mp-1", "mp-2", "mp-3", "mp-document-4"))


# --------------------------------------------------------------------------------------------------
# Keys, auth and retries


def test_missing_api_key_is_one_line_naming_mp_api_key(fake_mp: FakeMP, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("MP_API_KEY", raising=False)
    with pytest.raises(MPSourceError) as info:
        fetch_candidates(_query(), cache_dir=tmp_path, retry=FAST)
    message = str(info.value)
    assert "\n" not in message
    assert "MP_API_KEY" in message and "https://materialsproject.org/api" in message
    assert sum(fake_mp.hits.values()) == 0


def test_malformed_api_key_is_one_line(fake_mp: FakeMP, tmp_path: Path) -> None:
    with pytest.raises(MPSourceError, match=r"32 characters, got 5") as info:
        fetch_candidates(_query(), cache_dir=tmp_path, api_key="short", retry=FAST)
    assert "\n" not in str(info.value) and sum(fake_mp.hits.values()) == 0


def test_rejected_key_is_one_line_and_not_retried(fake_mp: FakeMP, tmp_path: Path) -> None:
    with pytest.raises(MPSourceError) as info:
        fetch_candidates(_query(), cache_dir=tmp_path, api_key="x" * 32, retry=FAST)
    message = str(info.value)
    assert "\n" not in message
    assert "rejected the API key (HTTP 401)" in message and "MP_API_KEY" in message
    assert fake_mp.summary_hits() == 1
    assert not list(tmp_path.glob("*.jsonl"))  # a failure is never cached


def test_rate_limited_twice_then_succeeds(fake_mp: FakeMP, tmp_path: Path) -> None:
    fake_mp.failures = [429, 429]
    raws = fetch_candidates(_query(), cache_dir=tmp_path, retry=FAST)
    assert len(raws) == 2
    assert fake_mp.summary_hits() == 3


def test_persistent_server_error_is_one_line_after_the_retries(fake_mp: FakeMP, tmp_path: Path) -> None:
    fake_mp.always_status = 503
    with pytest.raises(MPSourceError) as info:
        fetch_candidates(_query(), cache_dir=tmp_path, retry=FAST)
    message = str(info.value)
    assert "\n" not in message
    assert "HTTP 503" in message and "after 2 retries" in message
    assert fake_mp.summary_hits() == 3  # 1 + max_retries: mp-api's own retries are not stacked on ours


def test_server_down_at_heartbeat_is_one_line(fake_mp: FakeMP, tmp_path: Path) -> None:
    fake_mp.heartbeat_status = 502
    with pytest.raises(MPSourceError, match=r"HTTP 502.*after 2 retries") as info:
        fetch_candidates(_query(), cache_dir=tmp_path, retry=FAST)
    assert "\n" not in str(info.value)
    assert fake_mp.hits["/heartbeat"] == 3 and fake_mp.summary_hits() == 0


def test_timeouts_are_retried_then_one_line(fake_mp: FakeMP, tmp_path: Path) -> None:
    fake_mp.delay_s = 0.6
    retry = RetrySettings(max_retries=1, backoff_s=0.01, timeout_s=0.2)
    with pytest.raises(MPSourceError, match=r"did not answer within 0.2 s after 1 retries") as info:
        fetch_candidates(_query(), cache_dir=tmp_path, retry=retry)
    assert "\n" not in str(info.value)
    assert fake_mp.summary_hits() == 2


def test_cut_short_answers_are_retried_then_succeed(fake_mp: FakeMP, tmp_path: Path) -> None:
    """A connection that breaks in the body (IncompleteRead), then a body cut in the middle of its JSON."""
    fake_mp.truncated = ["length", "json"]
    raws = fetch_candidates(_query(), cache_dir=tmp_path, retry=FAST)
    assert [r.id for r in raws] == ["mp-22862", "mp-149"]
    assert fake_mp.summary_hits() == 3


@pytest.mark.parametrize(
    ("cut", "reason"),
    [
        ("json", "invalid JSON: unexpected end of data"),
        ("length", "the connection broke mid-answer: IncompleteRead("),
    ],
)
def test_persistently_cut_short_answer_is_one_line_and_never_cached(
    fake_mp: FakeMP, tmp_path: Path, cut: str, reason: str
) -> None:
    fake_mp.truncated = [cut] * 3
    with pytest.raises(MPSourceError) as info:
        fetch_candidates(_query(), cache_dir=tmp_path, retry=FAST)
    message = str(info.value)
    assert "\n" not in message, message
    assert message.startswith("Materials Project sent an incomplete answer (") and reason in message
    assert "after 2 retries" in message and "nothing was stored" in message
    assert fake_mp.summary_hits() == 3
    assert not list(tmp_path.glob("*.jsonl")) and not list(tmp_path.glob("*.tmp"))


def test_retry_after_is_waited_for_up_to_the_cap(fake_mp: FakeMP, tmp_path: Path) -> None:
    patient = RetrySettings(max_retries=2, backoff_s=0.01, max_delay_s=5.0, timeout_s=2.0)
    fake_mp.retry_after, fake_mp.failures = "1", [429]
    started = time.monotonic()
    assert len(fetch_candidates(_query(), cache_dir=tmp_path, retry=patient)) == 2
    assert 1.0 <= time.monotonic() - started < 4.0  # the server's 1 s, not the 0.01 s back-off
    # a server that asks for 30 s waits no more than max_delay_s, and a persistent 429 is one line
    fake_mp.retry_after, fake_mp.always_status = "30", 429
    capped = RetrySettings(max_retries=2, backoff_s=0.01, max_delay_s=0.2, timeout_s=2.0)
    started = time.monotonic()
    with pytest.raises(MPSourceError) as info:
        fetch_candidates(_query(), cache_dir=tmp_path, retry=capped, refresh=True)
    assert time.monotonic() - started < 3.0
    assert "rate-limiting requests (HTTP 429) after 2 retries" in str(info.value) and "\n" not in str(info.value)


def test_a_failed_page_stores_no_partial_batch_through_the_screen_flow(
    fake_mp: FakeMP, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prefect_harness
) -> None:
    """Page 2 of 3 always comes back cut short: the screen flow fails with the one line, stores no candidate and
    no prediction, records the run as failed, caches nothing; when the server is well, --resume finishes it."""
    import flows.materials_project as mp
    from catalogs.catalog import Catalog
    from flows.screen import screen
    from flows.sources import SourceSpec

    si = _structures()["mp-149"]
    fake_mp.docs = [
        _document(f"mp-{i + 1}", si.copy().scale_lattice(si.volume * 1.1**i)) for i in range(5)
    ]  # distinct cells
    monkeypatch.setattr(mp, "MAX_PAGE_SIZE", 2)  # 5 materials: pages of 2, 2 and 1
    monkeypatch.setattr(mp, "fetch_candidates", functools.partial(mp.fetch_candidates, retry=FAST))
    fake_mp.truncate_skip = 2
    catalog = tmp_path / "mp.duckdb"
    source = SourceSpec(kind="mp", mp_query="elements=Si:max=5")
    with pytest.raises(MPSourceError, match=r"incomplete answer \(invalid JSON") as info:
        screen(catalog=str(catalog), source=source, batch_size=16, report=False, encode_workers=1)
    skips = [p.get("_skip", "0") for p in fake_mp.summary_params]
    assert skips.count("0") == 1 and skips.count("2") == 3  # page 1 came, page 2 was tried 1 + 2 times
    store = Catalog(catalog)
    run = store.query("SELECT run_id, status, message FROM runs").row(0, named=True)
    assert run["status"] == "failed" and str(info.value) in run["message"]
    assert store.query("SELECT (SELECT count(*) FROM predictions) + (SELECT count(*) FROM candidates)").item() == 0
    assert not list((tmp_path / "default-cache").rglob("*.jsonl"))

    fake_mp.truncate_skip = None
    result = screen(catalog=str(catalog), source=source, batch_size=16, report=False, resume=run["run_id"])
    assert result.run_id == run["run_id"] and result.counts["predicted"] == 5
    done = store.query("SELECT status, message FROM runs").row(0, named=True)
    assert done["status"] == "completed" and "after it was failed" in done["message"]
    assert store.query("SELECT count(*), count(DISTINCT candidate_id) FROM predictions").row(0) == (5, 5)


def test_unreachable_server_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(MPSourceError, match=r"cannot connect to Materials Project at http://127.0.0.1:9/") as info:
        fetch_candidates(_query(), cache_dir=tmp_path, api_key=KEY, retry=FAST)
    assert "\n" not in str(info.value)


def test_client_factory_replaces_mp_rester(tmp_path: Path) -> None:
    """A fake MPRester-compatible client: no server at all, documents as pydantic-free dicts."""
    calls: list[dict[str, Any]] = []

    class Summary:
        def search(self, **kwargs: Any) -> list[dict[str, Any]]:
            calls.append(kwargs)
            return [_document("mp-149", _structures()["mp-149"])]

    class Client:
        db_version = "test"
        materials = type("Materials", (), {"summary": Summary()})()

    result = fetch(MPQuery(formula="Si"), cache_dir=tmp_path, api_key=KEY, client_factory=lambda **kw: Client())
    assert [r.id for r in result.raws] == ["mp-149"] and result.provenance["db_version"] == "test"
    assert calls[0]["formula"] == "Si" and calls[0]["include_gnome"] is False and calls[0]["num_chunks"] == 1


# --------------------------------------------------------------------------------------------------
# The query and its command-line form


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Li-Fe-O", {"chemsys": "Fe-Li-O"}),
        ("mp:Fe2O3", {"formula": "Fe2O3"}),
        ("mp-149,mp-13", {"material_ids": ["mp-13", "mp-149"]}),
        ("Si-*", {"chemsys": "Si-*"}),
        (
            "elements=Li,O;band_gap=0.5..3;is_stable=true;nsites=..20;max=500",
            {"elements": ["Li", "O"], "band_gap_min": 0.5, "band_gap_max": 3.0, "is_stable": True, "nsites_max": 20},
        ),
        ("chemsys=Li-Fe-O:e_above_hull=..0.05:gnome=yes", {"chemsys": "Fe-Li-O", "energy_above_hull_max": 0.05}),
        ("Li-O; Gap=0 ; exclude=Co,Ni", {"chemsys": "Li-O", "band_gap_min": 0.0, "band_gap_max": 0.0}),
        ("ids=MP-149;stable=no;nsites=4..", {"material_ids": ["mp-149"], "is_stable": False, "nsites_min": 4}),
    ],
)
def test_parse_mp_query(text: str, expected: dict[str, Any]) -> None:
    query = parse_mp_query(text)
    for name, value in expected.items():
        assert getattr(query, name) == value
    assert parse_mp_query(format_mp_query(query)) == query  # the printed form reads back the same


def test_parse_mp_query_defaults_and_flags() -> None:
    query = parse_mp_query("elements=Li,O;band_gap=0.5..3;max=500")
    assert query.max_results == 500 and query.include_gnome is False and query.is_stable is None
    assert parse_mp_query("Li-O:gnome=true").include_gnome is True
    assert parse_mp_query("Li-O:exclude=Co,Ni").exclude_elements == ["Co", "Ni"]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("", "empty"),
        ("bandgap=1..2", "unknown key 'bandgap'; known keys: elements"),
        ("band_gap=3..1", "band_gap_min (3.0) is greater than band_gap_max (1.0)"),
        ("nsites=20..4", "nsites_min (20) is greater than nsites_max (4)"),
        ("band_gap=abc", "band_gap: 'abc' is not a number"),
        ("band_gap=..", "needs at least one end"),
        ("band_gap=-1..2", "band_gap_min"),
        ("band_gap=nan", "not a finite number"),
        ("nsites=2.5", "nsites: '2.5' is not an integer"),
        ("elements=Li,Xx", "unknown element 'Xx'"),
        ("Li-Qq", "unknown element 'Qq'"),
        ("is_stable=maybe", "'maybe' is not true or false"),
        ("max=0", "max_results"),
        ("Li-O;Na-Cl", "sets chemsys a second time"),
        ("ids=149", "not a Materials Project id"),
        ("Li,O", "write elements=Li,O"),
        ("formula=Fe 2O3", "formula"),
        ("elements=", "has no value"),
    ],
)
def test_parse_mp_query_errors_are_one_line(text: str, needle: str) -> None:
    with pytest.raises(MPQueryError) as info:
        parse_mp_query(text)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message
    assert isinstance(info.value, MPSourceError) and isinstance(info.value, ValueError)


def test_mp_query_model_validation_names_the_field() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError) as info:
        MPQuery(band_gap_min=2.0, band_gap_max=1.0)
    (error,) = info.value.errors()
    assert error["loc"] == ("band_gap_max",)
    assert "band_gap_min (2.0) is greater than band_gap_max (1.0)" in error["msg"]
    with pytest.raises(ValidationError, match="unknown_filter"):
        MPQuery(unknown_filter=1)  # type: ignore[call-arg]
    schema = MPQuery.model_json_schema()["properties"]
    assert all(prop.get("description") for prop in schema.values())  # every field has a UI description
