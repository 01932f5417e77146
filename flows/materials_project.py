"""The Materials Project as a candidate source: a typed query, `mp-api` underneath, a local cache on top.

`fetch_candidates(MPQuery(...))` returns one `RawInput` per material (pymatgen Structure JSON, parsed later by
the encoder's workers). Bad documents are rows with an `error`; a query that cannot run at all (no API key,
key rejected, server down after retries) raises `MPSourceError` with one line that says what to do.

Command-line syntax, the part after `mp:` in `cloud-screen screen --source mp:QUERY`
----------------------------------------------------------------------------------
QUERY is one or more clauses separated by `;` or `:` (`:` needs no shell quoting, `;` does).
A clause is `key=value`, or a bare shorthand:

    mp:Li-Fe-O                      shorthand: a chemical system (has a dash; `*` is a wildcard: Si-*)
    mp:Fe2O3                        shorthand: a formula (also anonymous ABO3 or wildcards Si*)
    mp:mp-149,mp-13                 shorthand: material ids
    mp:chemsys=Li-Fe-O:band_gap=0.5..3:is_stable=true:nsites=..20:max=500
    mp:"elements=Li,O;exclude=Co;e_above_hull=..0.05"

Keys (case-insensitive; aliases in brackets):
    elements [el]            comma list; materials that contain all of them
    exclude [exclude_elements] comma list; materials that contain none of them
    chemsys                  dash-joined elements, e.g. Li-Fe-O
    formula                  e.g. Fe2O3, ABO3, Si*
    ids [material_ids, id]   comma list, e.g. mp-149,mp-13
    band_gap [gap]           range in eV
    e_above_hull [ehull, energy_above_hull]  range in eV/atom
    nsites [num_sites]       range of sites per cell
    is_stable [stable]       true/false
    gnome [include_gnome]    true/false: include GNoME-predicted materials (default false)
    max [max_results]        at most this many materials (default 1000)
A range is `LO..HI`, `LO..`, `..HI`, or one number for an exact value (`band_gap=0` for metals).
Booleans are true/false, yes/no, 1/0. Unknown keys are an error that lists the known ones.

What mp-api does on its own, and what this module does about it
---------------------------------------------------------------
* `MPRester(...)` GETs `{endpoint}heartbeat` twice while it is constructed (server emmet version, database
  version), with a bare `requests.get`: no timeout, no retries (cached per endpoint for the process). There is
  no option to switch this off, so the default client factory first asks the heartbeat itself through our
  session (timeout + back-off): an unreachable or overloaded server becomes a clear error, not a hang.
* It checks that the API key has 32 characters and raises otherwise; we check first, with a clearer message.
* Its own session retries 429/502/504 three times through urllib3. We pass our own session without urllib3
  retries, so `RetrySettings` is the only retry policy (retries do not multiply) and covers 500/503 and
  timeouts too; and the session records the last HTTP status, so failures that mp-api wraps in a free-text
  `MPRestError` are classified by what happened on the wire, not by parsing its message.
* A query with no filter and no page limit makes mp-api download the whole collection from S3 (delta
  tables); we always pass a page limit (`num_chunks`), so every query goes through the REST API.
* `use_document_model=False`: documents come back as plain dicts, so one malformed document is one error
  row instead of a pydantic validation error for the whole page.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import requests
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

from cloud_core.structures import RawInput, known_element

log = logging.getLogger(__name__)

SOURCE = "mp"
DEFAULT_ENDPOINT = "https://api.materialsproject.org/"
API_KEY_HELP = "get a key at https://materialsproject.org/api and run: export MP_API_KEY=<your key>"
# Only what a candidate needs: its id, its structure, and what the provenance record shows.
FIELDS = ("material_id", "formula_pretty", "structure", "last_updated")
# HTTP statuses worth another try: rate limiting and server-side trouble. 401/403 never are.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
AUTH_STATUSES = frozenset({401, 403})
# The REST API serves at most this many documents per page.
MAX_PAGE_SIZE = 1000
CACHE_FORMAT = 1


class MPSourceError(RuntimeError):
    """The Materials Project query could not run; the message is one line that says what to do."""


class MPQueryError(MPSourceError, ValueError):
    """An invalid query (command-line text or `MPQuery` fields)."""


# --------------------------------------------------------------------------------------------------
# The query


def _elements(values: Iterable[str], what: str) -> list[str]:
    """Element symbols, capitalised (li -> Li), unique and sorted so equal queries hash equally."""
    symbols = set()
    for value in values:
        symbol = value.strip().capitalize()
        if not known_element(symbol):
            raise ValueError(f"{what}: unknown element {value.strip()!r}")
        symbols.add(symbol)
    return sorted(symbols)


_MATERIAL_ID = re.compile(r"^(mp|mvc)-[a-z0-9]+$")
_FORMULA = re.compile(r"^[A-Za-z0-9().*]+$")


def _check_range(info: ValidationInfo, high: float | None) -> float | None:
    """Reject a range whose minimum (validated before this maximum) is above it, naming both fields."""
    low_name = info.field_name.removesuffix("_max") + "_min"  # type: ignore[union-attr]
    low = info.data.get(low_name)
    if low is not None and high is not None and low > high:
        raise ValueError(f"{low_name} ({low}) is greater than {info.field_name} ({high})")
    return high


class MPQuery(BaseModel):
    """A Materials Project summary search: every filter given must hold (they combine with AND)."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    material_ids: list[str] | None = Field(None, description="Only these materials, e.g. ['mp-149', 'mp-13'].")
    elements: list[str] | None = Field(
        None, description="Materials containing all of these elements, e.g. ['Li', 'O']."
    )
    exclude_elements: list[str] | None = Field(None, description="Materials containing none of these elements.")
    chemsys: str | None = Field(
        None, description="Chemical system: exactly these elements, dash-joined, e.g. 'Li-Fe-O' ('*' is a wildcard)."
    )
    formula: str | None = Field(None, description="Reduced formula, e.g. 'Fe2O3'; anonymous 'ABO3' or 'Si*' also work.")
    band_gap_min: float | None = Field(None, ge=0, allow_inf_nan=False, description="Smallest band gap (eV).")
    band_gap_max: float | None = Field(None, ge=0, allow_inf_nan=False, description="Largest band gap (eV).")
    energy_above_hull_min: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="Smallest energy above the convex hull (eV/atom)."
    )
    energy_above_hull_max: float | None = Field(
        None, ge=0, allow_inf_nan=False, description="Largest energy above the convex hull (eV/atom); 0.05 is typical."
    )
    nsites_min: int | None = Field(None, ge=1, description="Fewest sites in the cell.")
    nsites_max: int | None = Field(None, ge=1, description="Most sites in the cell.")
    is_stable: bool | None = Field(None, description="Only materials on the convex hull (true) or only off it (false).")
    include_gnome: bool = Field(
        False, description="Include the GNoME-predicted materials (hundreds of thousands, mostly hypothetical)."
    )
    max_results: int = Field(1000, ge=1, le=1_000_000, description="Fetch at most this many materials.")

    @field_validator("elements", "exclude_elements")
    @classmethod
    def _check_elements(cls, value: list[str] | None, info: ValidationInfo) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError(f"{info.field_name}: give at least one element or leave it unset")
        return _elements(value, str(info.field_name))

    @field_validator("material_ids")
    @classmethod
    def _check_ids(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        ids = sorted({v.strip().lower() for v in value})
        if not ids:
            raise ValueError("material_ids: give at least one id or leave it unset")
        if bad := [v for v in ids if not _MATERIAL_ID.match(v)]:
            raise ValueError(f"material_ids: {bad[0]!r} is not a Materials Project id like 'mp-149'")
        return ids

    @field_validator("chemsys")
    @classmethod
    def _check_chemsys(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = [p.strip() for p in value.split("-")]
        wildcards = [p for p in parts if p == "*"]
        try:
            elements = _elements([p for p in parts if p != "*"], "chemsys")
        except ValueError as exc:
            raise ValueError(f"{exc} (chemsys is dash-joined elements, e.g. 'Li-Fe-O')") from None
        if not elements and not wildcards:
            raise ValueError("chemsys is empty")
        return "-".join(elements + wildcards)  # sorted, as MP writes chemical systems

    @field_validator("formula")
    @classmethod
    def _check_formula(cls, value: str | None) -> str | None:
        if value is not None and not _FORMULA.match(value):
            raise ValueError(f"formula {value!r} may only hold letters, digits, '(', ')', '.' and '*'")
        return value

    @field_validator("band_gap_max", "energy_above_hull_max", "nsites_max")
    @classmethod
    def _check_max(cls, value: float | None, info: ValidationInfo) -> float | None:
        return _check_range(info, value)

    def search_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for mp-api's `SummaryRester.search`, paging included."""
        kwargs: dict[str, Any] = {
            "fields": list(FIELDS),
            "include_gnome": self.include_gnome,  # mp-api's default is True; be explicit either way
            "deprecated": False,  # deprecated entries are superseded calculations, never candidates
        }
        for name in ("material_ids", "elements", "exclude_elements", "chemsys", "formula", "is_stable"):
            if (value := getattr(self, name)) is not None:
                kwargs[name] = value
        for name, arg in (
            ("band_gap", "band_gap"),
            ("energy_above_hull", "energy_above_hull"),
            ("nsites", "num_sites"),
        ):
            low, high = getattr(self, f"{name}_min"), getattr(self, f"{name}_max")
            if low is not None or high is not None:
                kwargs[arg] = (low, high)  # mp-api drops the None end
        kwargs["chunk_size"], kwargs["num_chunks"] = page_plan(self.max_results)
        return kwargs


def page_plan(max_results: int) -> tuple[int, int]:
    """(page size, number of pages) for at most `max_results` documents, pages as equal as possible.

    Always a finite number of pages: without one, mp-api downloads a whole collection from S3.
    """
    pages = math.ceil(max_results / MAX_PAGE_SIZE)
    return math.ceil(max_results / pages), pages


# --------------------------------------------------------------------------------------------------
# Command-line text <-> MPQuery

_KEY_ALIASES = {
    "elements": "elements",
    "el": "elements",
    "exclude": "exclude",
    "exclude_elements": "exclude",
    "chemsys": "chemsys",
    "formula": "formula",
    "ids": "ids",
    "id": "ids",
    "material_ids": "ids",
    "band_gap": "band_gap",
    "gap": "band_gap",
    "e_above_hull": "e_above_hull",
    "ehull": "e_above_hull",
    "energy_above_hull": "e_above_hull",
    "nsites": "nsites",
    "num_sites": "nsites",
    "is_stable": "is_stable",
    "stable": "is_stable",
    "gnome": "gnome",
    "include_gnome": "gnome",
    "max": "max",
    "max_results": "max",
}
_KNOWN_KEYS = "elements, exclude, chemsys, formula, ids, band_gap, e_above_hull, nsites, is_stable, gnome, max"
_TRUE, _FALSE = {"true", "yes", "1", "y", "t"}, {"false", "no", "0", "n", "f"}


def _split_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _parse_bool(key: str, value: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise MPQueryError(f"mp query: {key}={value!r} is not true or false")


def _parse_number(key: str, text: str, kind: type) -> float | int:
    try:
        number = kind(text)
    except ValueError:
        raise MPQueryError(f"mp query: {key}: {text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if not math.isfinite(number):
        raise MPQueryError(f"mp query: {key}: {text!r} is not a finite number")
    return number


def _parse_range(key: str, value: str, kind: type) -> tuple[float | int | None, float | int | None]:
    """`LO..HI`, `LO..`, `..HI` or one number (an exact value)."""
    if ".." not in value:
        number = _parse_number(key, value, kind)
        return number, number
    low, _, high = value.partition("..")
    if not low.strip() and not high.strip():
        raise MPQueryError(f"mp query: {key}=.. needs at least one end, e.g. {key}=0.5..3")
    return (
        _parse_number(key, low.strip(), kind) if low.strip() else None,
        _parse_number(key, high.strip(), kind) if high.strip() else None,
    )


def _shorthand(clause: str) -> tuple[str, Any]:
    """A bare clause: material ids, a chemical system (has a dash) or a formula."""
    parts = _split_list(clause)
    if parts and all(_MATERIAL_ID.match(p.lower()) for p in parts):
        return "material_ids", parts
    if "," in clause:
        raise MPQueryError(f"mp query: cannot tell what {clause!r} is; write elements={clause} or ids={clause}")
    if "-" in clause:
        return "chemsys", clause
    return "formula", clause


def _validation_line(exc: ValidationError) -> str:
    """A pydantic error as one line that names each field."""
    problems = []
    for error in exc.errors():
        where = ".".join(str(p) for p in error["loc"])
        message = str(error["msg"]).removeprefix("Value error, ")
        problems.append(f"{where}: {message}" if where and not message.startswith(where) else message)
    return "; ".join(problems)


def make_query(**values: Any) -> MPQuery:
    """Build an `MPQuery`; invalid values raise `MPQueryError` with one line naming the fields."""
    try:
        return MPQuery(**values)
    except ValidationError as exc:
        raise MPQueryError(f"mp query: {_validation_line(exc)}") from None


def parse_mp_query(text: str) -> MPQuery:
    """Parse the command-line form (the part after `mp:`; a leading `mp:` is accepted too).

    The syntax is in this module's docstring. Raises `MPQueryError` (one line) for anything it cannot read.
    """
    body = text.strip().removeprefix("mp:").strip()
    if not body:
        raise MPQueryError("mp query is empty; e.g. mp:Li-Fe-O or mp:elements=Li,O;band_gap=1..3")
    values: dict[str, Any] = {}

    def put(name: str, value: Any, clause: str) -> None:
        if name in values:
            raise MPQueryError(f"mp query: {clause!r} sets {name} a second time")
        values[name] = value

    for clause in (c.strip() for c in re.split(r"[;:]", body)):
        if not clause:
            continue
        if "=" not in clause:
            put(*_shorthand(clause), clause)
            continue
        raw_key, _, value = (s.strip() for s in clause.partition("="))
        key = _KEY_ALIASES.get(raw_key.lower().replace("-", "_"))
        if key is None:
            raise MPQueryError(f"mp query: unknown key {raw_key!r}; known keys: {_KNOWN_KEYS}")
        if not value:
            raise MPQueryError(f"mp query: {raw_key}= has no value")
        if key in ("elements", "exclude", "ids"):
            name = {"elements": "elements", "exclude": "exclude_elements", "ids": "material_ids"}[key]
            put(name, _split_list(value), clause)
        elif key in ("chemsys", "formula"):
            put(key, value, clause)
        elif key in ("band_gap", "e_above_hull", "nsites"):
            name = {"band_gap": "band_gap", "e_above_hull": "energy_above_hull", "nsites": "nsites"}[key]
            low, high = _parse_range(key, value, int if key == "nsites" else float)
            put(f"{name}_min", low, clause)
            values[f"{name}_max"] = high
        elif key == "is_stable":
            put("is_stable", _parse_bool(raw_key, value), clause)
        elif key == "gnome":
            put("include_gnome", _parse_bool(raw_key, value), clause)
        else:  # max
            put("max_results", _parse_number(raw_key, value, int), clause)
    return make_query(**values)


def format_mp_query(query: MPQuery) -> str:
    """The command-line form of a query (without `mp:`); `parse_mp_query` reads it back to an equal query."""

    def number(x: float | int) -> str:
        return str(int(x)) if float(x).is_integer() else repr(float(x))

    def span(low: float | int | None, high: float | int | None) -> str | None:
        if low is None and high is None:
            return None
        if low is not None and low == high:
            return number(low)
        return f"{'' if low is None else number(low)}..{'' if high is None else number(high)}"

    clauses = {
        "ids": ",".join(query.material_ids) if query.material_ids else None,
        "elements": ",".join(query.elements) if query.elements else None,
        "exclude": ",".join(query.exclude_elements) if query.exclude_elements else None,
        "chemsys": query.chemsys,
        "formula": query.formula,
        "band_gap": span(query.band_gap_min, query.band_gap_max),
        "e_above_hull": span(query.energy_above_hull_min, query.energy_above_hull_max),
        "nsites": span(query.nsites_min, query.nsites_max),
        "is_stable": None if query.is_stable is None else str(query.is_stable).lower(),
        "gnome": "true" if query.include_gnome else None,
        "max": str(query.max_results),
    }
    # ':' rather than ';': the printed form pastes into a shell without quotes.
    return ":".join(f"{key}={value}" for key, value in clauses.items() if value is not None)


# --------------------------------------------------------------------------------------------------
# HTTP: retries, and a record of what happened on the wire


@dataclass(frozen=True, slots=True)
class RetrySettings:
    """How hard to try: retries on 429, 5xx, timeouts and dropped connections, never on 401/403."""

    max_retries: int = 4  # retries after the first attempt, per HTTP request
    backoff_s: float = 1.0  # first wait; doubles each retry
    max_delay_s: float = 60.0  # cap on one wait, a server's Retry-After included
    timeout_s: float = 60.0  # per HTTP request (connect and each read)

    def __post_init__(self) -> None:
        if self.max_retries < 0 or self.backoff_s < 0 or self.max_delay_s < 0 or self.timeout_s <= 0:
            raise ValueError(f"invalid {self}: retries and delays must be >= 0, the timeout > 0")


class IncompleteAnswer(requests.RequestException):
    """A 200 answer whose JSON body does not parse: cut short on the way, or broken by the server."""


def _json_problem(response: requests.Response) -> str | None:
    """Why a JSON answer's body does not parse (a cut-short body), or None when it parses or is not JSON."""
    if response.status_code != 200 or "json" not in response.headers.get("Content-Type", ""):
        return None
    try:
        from orjson import loads  # what mp-api parses with (~10 ms for a page of 1,000 structures)
    except ImportError:
        from json import loads
    try:
        loads(response.content)
    except ValueError as exc:  # orjson.JSONDecodeError is a ValueError too
        return _one_line(exc, 120)
    return None


class _RetryingSession(requests.Session):
    """A requests session that retries transient failures itself and remembers the last outcome.

    mp-api turns every failure into `MPRestError` with free text; `last_status` / `last_error` let the
    caller say precisely what went wrong (rejected key, rate limit, server error, timeout).
    """

    def __init__(self, api_key: str, retry: RetrySettings) -> None:
        super().__init__()
        self.retry = retry
        self.last_status: int | None = None
        self.last_error: requests.RequestException | None = None
        self.headers.update({"x-api-key": api_key, "user-agent": f"cloud-screen mp-api/{_mp_api_version()}"})

    def clear_trace(self) -> None:
        self.last_status, self.last_error = None, None

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs["timeout"] = self.retry.timeout_s  # ours, whatever mp-api passes: one place decides
        for attempt in range(self.retry.max_retries + 1):
            self.clear_trace()
            last = attempt == self.retry.max_retries
            try:
                response = super().request(method, url, *args, **kwargs)
            except (requests.Timeout, requests.ConnectionError, requests.exceptions.ChunkedEncodingError) as exc:
                self.last_error = exc  # ChunkedEncodingError: the connection broke in the body (IncompleteRead)
                if last:
                    raise
                self._wait(attempt, None, f"{type(exc).__name__}")
                continue
            self.last_status = response.status_code
            if problem := _json_problem(response):
                self.last_error = IncompleteAnswer(problem)
                if last:
                    return response  # mp-api fails on it; _failure_line says why from last_error
                response.close()
                self._wait(attempt, None, f"invalid JSON ({problem})")
                continue
            if response.status_code not in RETRY_STATUSES or last:
                return response
            response.close()
            self._wait(attempt, response.headers.get("Retry-After"), f"HTTP {response.status_code}")
        raise AssertionError("unreachable")  # the loop returns or raises on its last attempt

    def _wait(self, attempt: int, retry_after: str | None, why: str) -> None:
        delay = min(self.retry.max_delay_s, self.retry.backoff_s * 2**attempt)
        if (server_delay := _retry_after_seconds(retry_after)) is not None:  # wait at least what it asks
            delay = min(self.retry.max_delay_s, max(delay, server_delay))
        log.info("Materials Project: %s, retry %d/%d in %.2f s", why, attempt + 1, self.retry.max_retries, delay)
        time.sleep(delay)


def _retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header (seconds or an HTTP date) in seconds, or None."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, (parsedate_to_datetime(value) - datetime.now(UTC)).total_seconds())
    except (TypeError, ValueError):
        return None


def _one_line(text: object, limit: int = 300) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _failure_line(exc: BaseException, session: _RetryingSession | None, endpoint: str) -> str:
    """One line for a failed query, from what the session saw, falling back to the exception text."""
    retry = session.retry if session is not None else RetrySettings()
    status = session.last_status if session is not None else None
    error = session.last_error if session is not None else None
    tries = f"after {retry.max_retries} retries"
    if status in AUTH_STATUSES:
        return f"Materials Project rejected the API key (HTTP {status}); check MP_API_KEY ({API_KEY_HELP})"
    if status == 429:
        return f"Materials Project is rate-limiting requests (HTTP 429) {tries}; try again later or lower max_results"
    if status is not None and status >= 500:
        return (
            f"Materials Project server error (HTTP {status}) {tries} at {endpoint}; try again later "
            "(status: https://status.materialsproject.org/)"
        )
    if isinstance(error, (IncompleteAnswer, requests.exceptions.ChunkedEncodingError)):
        if isinstance(error, IncompleteAnswer):
            what = f"invalid JSON: {error}"
        else:  # requests' text repeats urllib3's: keep its IncompleteRead(... bytes read, ... more expected)
            found = re.search(r"IncompleteRead\([^)]*\)", str(error))
            what = f"the connection broke mid-answer: {found.group(0) if found else _one_line(error, 120)}"
        return (
            f"Materials Project sent an incomplete answer ({what}) {tries} at "
            f"{endpoint}; nothing was stored, try again later"
        )
    if isinstance(error, requests.Timeout):
        return f"Materials Project did not answer within {retry.timeout_s:g} s {tries} at {endpoint}; try again later"
    if isinstance(error, requests.ConnectionError):
        return f"cannot connect to Materials Project at {endpoint} {tries}: {_one_line(error, 160)}"
    if status is not None and status != 200:
        return f"Materials Project refused the query (HTTP {status}): {_one_line(exc)}"
    return f"Materials Project query failed: {type(exc).__name__}: {_one_line(exc)}"


# --------------------------------------------------------------------------------------------------
# The client

ClientFactory = Callable[..., Any]  # (api_key=, endpoint=, session=) -> an object with .materials.summary.search


def default_client_factory(*, api_key: str, endpoint: str, session: _RetryingSession) -> Any:
    """A real `MPRester` on our session, after a heartbeat check that has a timeout and retries."""
    # mp-api's constructor GETs the heartbeat with no timeout and no retry; ask first through our session.
    response = session.get(endpoint + "heartbeat")
    if response.status_code in RETRY_STATUSES:
        raise MPSourceError(_failure_line(RuntimeError("heartbeat"), session, endpoint))
    session.clear_trace()  # a 403 here (heartbeat unreadable) says nothing about the key: mp-api goes on
    from mp_api.client import MPRester  # heavy (seconds): only when a query really goes to the server

    return MPRester(
        api_key=api_key,
        endpoint=endpoint,
        session=session,
        use_document_model=False,
        mute_progress_bars=True,
        notify_db_version=False,  # would write ~/.mprester.log.yaml
    )


def resolve_api_key(api_key: str | None = None) -> str:
    """The explicit key, else $MP_API_KEY; a missing or malformed key raises `MPSourceError`."""
    key = (api_key or os.environ.get("MP_API_KEY") or "").strip()
    if not key:
        raise MPSourceError(f"no Materials Project API key: MP_API_KEY is not set; {API_KEY_HELP}")
    if len(key) != 32:  # mp-api raises on the same check, with a longer message
        raise MPSourceError(
            f"MP_API_KEY does not look like a Materials Project API key (32 characters, got {len(key)}); {API_KEY_HELP}"
        )
    return key


def _mp_api_version() -> str:
    try:
        return version("mp-api")
    except PackageNotFoundError:
        return "unknown"


def _download(
    query: MPQuery, api_key: str, endpoint: str, factory: ClientFactory, retry: RetrySettings
) -> tuple[list[Any], str | None]:
    """The summary documents for a query, and the database version the server reported."""
    session = _RetryingSession(api_key, retry)
    try:
        client = factory(api_key=api_key, endpoint=endpoint, session=session)
        summary = client.materials.summary
        docs = summary.search(**query.search_kwargs())
        return list(docs), (getattr(client, "db_version", None) or None)
    except MPSourceError:
        raise
    except Exception as exc:  # mp-api wraps everything in MPRestError; the session knows what happened
        raise MPSourceError(_failure_line(exc, session, endpoint)) from exc
    finally:
        session.close()


def _document_row(doc: Any, index: int) -> dict[str, Any]:
    """One cache row for one summary document: the structure as JSON text, or the reason there is none.

    Only the shape is checked here; the encoder's workers parse the structure (a parse failure is their
    error row), so a large query is not parsed twice in this process.
    """
    if hasattr(doc, "model_dump"):  # a document model, from a client made with use_document_model=True
        doc = doc.model_dump()
    if not isinstance(doc, dict):
        return {"id": f"mp-document-{index}", "error": f"malformed document: {type(doc).__name__}, not an object"}
    material_id = doc.get("material_id")
    row: dict[str, Any] = {
        "id": str(getattr(material_id, "string", material_id)) if material_id else f"mp-document-{index}",
        "formula": doc.get("formula_pretty"),
        "last_updated": str(doc["last_updated"]) if doc.get("last_updated") is not None else None,
        "text": None,
        "error": None,
    }
    structure = doc.get("structure")
    if hasattr(structure, "as_dict"):
        structure = structure.as_dict()
    if not material_id:
        row["error"] = "malformed document: no material_id"
    elif structure is None:
        row["error"] = "malformed document: no structure"
    elif not isinstance(structure, dict) or "lattice" not in structure or "sites" not in structure:
        row["error"] = "unreadable structure: not a pymatgen Structure object (needs 'lattice' and 'sites')"
    else:
        try:
            row["text"] = json.dumps(structure)
        except (TypeError, ValueError) as exc:
            row["error"] = f"unreadable structure: {_one_line(exc)}"
    return row


# --------------------------------------------------------------------------------------------------
# The cache: one JSON-lines file per (query, endpoint, mp-api version)


def default_cache_dir() -> Path:
    """$CLOUD_SCREEN_CACHE/mp, else $XDG_CACHE_HOME/cloud-screen/mp, else ~/.cache/cloud-screen/mp."""
    if root := os.environ.get("CLOUD_SCREEN_CACHE"):
        return Path(root).expanduser() / "mp"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cloud-screen" / "mp"


def cache_key(query: MPQuery, endpoint: str) -> str:
    """Hash of the normalised query and what else decides the answer (server, client version, fields)."""
    identity = {
        "format": CACHE_FORMAT,
        "query": query.model_dump(mode="json"),
        "endpoint": endpoint,
        "mp_api": _mp_api_version(),
        "fields": list(FIELDS),
    }
    return hashlib.sha256(json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:32]


def _read_cache(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    """(header, rows) from a cache file, or None when it is absent or unreadable (then we fetch again)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
        header = json.loads(lines[0])
        rows = [json.loads(line) for line in lines[1:]]
        if header.get("format") != CACHE_FORMAT or header.get("count") != len(rows):
            raise ValueError("format or row count mismatch")
        return header, rows
    except FileNotFoundError:
        return None
    except (OSError, ValueError, IndexError, AttributeError) as exc:
        log.warning("ignoring unreadable Materials Project cache %s: %s", path, _one_line(exc))
        return None


def _write_cache(path: Path, header: dict[str, Any], rows: list[dict[str, Any]]) -> bool:
    """Write atomically (temp file + rename), so a crash never leaves a half file that looks complete."""
    tmp_name = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(
            "w", encoding="utf-8", dir=path.parent, prefix=path.name, suffix=".tmp", delete=False
        ) as tmp:
            tmp_name = tmp.name
            tmp.write(json.dumps(header) + "\n")
            for row in rows:
                tmp.write(json.dumps(row) + "\n")
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
        return True
    except OSError as exc:  # a read-only cache must not lose a finished download
        log.warning("could not write the Materials Project cache %s: %s", path, _one_line(exc))
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
        return False


# --------------------------------------------------------------------------------------------------
# Public entry points


@dataclass(slots=True)
class MPFetchResult:
    """The candidates of one query and where they came from (for the run's provenance record)."""

    raws: list[RawInput]
    provenance: dict[str, Any] = field(default_factory=dict)


def _raw(row: dict[str, Any]) -> RawInput:
    return RawInput(row["id"], SOURCE, "json", text=row.get("text"), error=row.get("error"))


def fetch(
    query: MPQuery,
    *,
    api_key: str | None = None,
    cache_dir: Path | None = None,
    endpoint: str | None = None,
    client_factory: ClientFactory | None = None,
    retry: RetrySettings = RetrySettings(),  # frozen: one shared default is safe
    refresh: bool = False,
) -> MPFetchResult:
    """Candidates for a query, from the cache when this query was fetched before, else from the server.

    endpoint: the REST API root (default $MP_API_ENDPOINT, else the public API); refresh: ignore the cache.
    Raises `MPSourceError` (one line) when the query cannot run; bad documents are rows with an error.
    """
    endpoint = endpoint or os.environ.get("MP_API_ENDPOINT") or DEFAULT_ENDPOINT
    endpoint = endpoint if endpoint.endswith("/") else endpoint + "/"
    path = (cache_dir or default_cache_dir()) / f"{cache_key(query, endpoint)}.jsonl"
    cached = None if refresh else _read_cache(path)
    if cached is not None:
        header, rows = cached
        log.info("Materials Project: %d materials from the cache %s", len(rows), path)
        return MPFetchResult([_raw(r) for r in rows], {**header, "from_cache": True, "cache_file": str(path)})

    key = resolve_api_key(api_key)  # only now: a cached query runs without a key, offline
    started = time.perf_counter()
    docs, db_version = _download(query, key, endpoint, client_factory or default_client_factory, retry)
    rows, seen = [], set()
    for index, doc in enumerate(docs[: query.max_results]):
        row = _document_row(doc, index)
        if row["id"] not in seen:  # a page boundary that moved under us must not duplicate a material
            seen.add(row["id"])
            rows.append(row)
    header = {
        "format": CACHE_FORMAT,
        "source": SOURCE,
        "query": query.model_dump(mode="json"),
        "query_text": format_mp_query(query),
        "endpoint": endpoint,
        "db_version": db_version,
        "mp_api_version": _mp_api_version(),
        "fields": list(FIELDS),
        "fetched_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(time.perf_counter() - started, 3),
        "count": len(rows),
        "errors": sum(r["error"] is not None for r in rows),
    }
    written = _write_cache(path, header, rows)
    log.info("Materials Project: %d materials (%d errors) in %.1f s", len(rows), header["errors"], header["seconds"])
    provenance = {**header, "from_cache": False, "cache_file": str(path) if written else None}
    return MPFetchResult([_raw(r) for r in rows], provenance)


def fetch_candidates(
    query: MPQuery,
    *,
    api_key: str | None = None,
    cache_dir: Path | None = None,
    endpoint: str | None = None,
    client_factory: ClientFactory | None = None,
    retry: RetrySettings = RetrySettings(),  # frozen: one shared default is safe
    refresh: bool = False,
) -> list[RawInput]:
    """`fetch(...)` without the provenance: one `RawInput` (pymatgen Structure JSON) per material."""
    return fetch(
        query,
        api_key=api_key,
        cache_dir=cache_dir,
        endpoint=endpoint,
        client_factory=client_factory,
        retry=retry,
        refresh=refresh,
    ).raws
