"""Readers for the interaction-log formats of recommendation research.

Every reader returns one canonical `SourceTable`: interactions (user, item, time) as strings and
floats, in file order, plus the raw titles by item id. Nothing is filtered here (that is
`filtering.py`), so each reader only knows its format. A malformed line raises a ValueError that
names the file and the line; so does a row with more or fewer fields than its header or format
says (a row is never cut or padded silently). The one repair: a MovieLens title holding the
field separator (`|` in u.item, `::` in movies.dat, formats without quoting) is joined back when
the fields after it keep their fixed form, since the count then explains itself exactly. Readers are chosen in the domain config by `_target_`.

Time is whatever orders a user's interactions: a unix timestamp, or the position in the user's
sequence (RecBole files here), never compared across users.
"""

from __future__ import annotations

import ast
import csv
import gzip
import io
import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from reccocktail.data.titles import decode_bytes, read_text

log = logging.getLogger(__name__)
_INT = re.compile(r"\d+")  # MovieLens user and item ids


@dataclass
class SourceTable:
    """One dataset in canonical form: `interactions` has columns user, item (str), time (float)."""

    interactions: pd.DataFrame
    titles: dict[str, str | None]
    files: list[Path] = field(default_factory=list)


def _require(path: Path) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    return path


def _records(text: str, path: Path, sep: str, quoting: int = csv.QUOTE_NONE) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of every non-blank line."""
    if len(sep) == 1:
        reader = csv.reader(io.StringIO(text), delimiter=sep, quoting=quoting, strict=True)
        try:
            for row in reader:
                if row and any(f.strip() for f in row):
                    yield reader.line_num, row
        except csv.Error as err:
            raise ValueError(f"{path}:{reader.line_num}: malformed line ({err})") from err
    else:
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                yield lineno, line.split(sep)


def _interactions(records: Iterator[tuple[int, list[str]]], path: Path, cols: tuple[int, int, int | None],
                  n_fields: int, numeric_ids: bool = False) -> pd.DataFrame:
    """A canonical frame from delimited records; `cols` = indices of user, item, time (None: file order).
    `numeric_ids`: user and item ids must be integers (MovieLens), else the line is named."""
    users: list[str] = []
    items: list[str] = []
    times: list[str] = []
    lines: list[int] = []
    ui, ii, ti = cols
    for lineno, row in records:
        if len(row) != n_fields:
            raise ValueError(
                f"{path}:{lineno}: expected {n_fields} fields, got {len(row)}: {row!r:.120}"
                + ("" if len(row) < n_fields else " (a separator inside a field?)")
            )
        u, i = row[ui].strip(), row[ii].strip()
        if not u or not i:
            raise ValueError(f"{path}:{lineno}: empty user or item id: {row!r:.120}")
        if numeric_ids:
            for what, v in (("user", u), ("item", i)):
                if not _INT.fullmatch(v):
                    raise ValueError(f"{path}:{lineno}: {what} id {v!r} is not a number (this "
                                     f"format's ids are integers): {row!r:.120}")
        users.append(u)
        items.append(i)
        if ti is not None:
            times.append(row[ti])
        lines.append(lineno)
    if ti is None:
        time = np.arange(len(users), dtype=np.float64)
    else:
        time = pd.to_numeric(pd.Series(times, dtype=object), errors="coerce").to_numpy(np.float64)
        bad = np.flatnonzero(~np.isfinite(time))
        if len(bad):
            k = int(bad[0])
            raise ValueError(f"{path}:{lines[k]}: time {times[k]!r} is not a number")
    return pd.DataFrame({"user": users, "item": items, "time": time})


def _read_interactions(text: str, path: Path, sep: str, cols: tuple[int, int, int | None],
                       n_fields: int, skip: int = 0, quoting: int = csv.QUOTE_NONE,
                       numeric_ids: bool = False) -> pd.DataFrame:
    """Fast path through pandas' C parser; any irregularity (short or long rows, empty fields,
    a non-numeric time, or with `numeric_ids` a non-numeric id) re-reads the file line by line,
    which raises naming the line."""
    if len(sep) == 1:
        try:
            raw = pd.read_csv(io.StringIO(text), sep=sep, header=None, skiprows=skip, dtype=str,
                              quoting=quoting, na_filter=False, engine="c",
                              skip_blank_lines=True)
            ui, ii, ti = cols
            ok = raw.shape[1] == n_fields and not (raw == "").to_numpy().any()
            if ok:
                time = (np.arange(len(raw), dtype=np.float64) if ti is None else
                        pd.to_numeric(raw[ti], errors="coerce").to_numpy(np.float64))
                user, item = raw[ui].str.strip(), raw[ii].str.strip()
                ids_ok = not numeric_ids or bool(user.str.fullmatch(_INT.pattern).all()
                                                 and item.str.fullmatch(_INT.pattern).all())
                if np.isfinite(time).all() and ids_ok:
                    return pd.DataFrame({"user": user, "item": item, "time": time})
        except (pd.errors.ParserError, ValueError):
            pass
    records = _records(text, path, sep, quoting)
    for _ in range(skip):
        next(records, None)
    return _interactions(records, path, cols, n_fields, numeric_ids)


def _header_index(header: list[str], path: Path, wanted: str, required: bool = True) -> int | None:
    names = [h.split(":")[0].strip() for h in header]
    if wanted in names:
        return names.index(wanted)
    if required:
        raise ValueError(f"{path}:1: header has no {wanted!r} field (fields: {names})")
    return None


# -- RecBole atomic files ---------------------------------------------------------------------

def read_recbole(path: str | Path, dataset: str | None = None, encoding: str = "auto",
                 title_field: str = "title") -> SourceTable:
    """`<path>/<dataset>.inter` (user_id, item_id, timestamp) and `<dataset>.item` (item_id, title).

    Without a timestamp field the file order is the time."""
    folder = Path(path)
    dataset = dataset or folder.name
    inter = _require(folder / f"{dataset}.inter")
    item = _require(folder / f"{dataset}.item")

    text = read_text(inter, encoding)
    try:
        _, header = next(_records(text, inter, "\t"))
    except StopIteration as err:
        raise ValueError(f"{inter}: empty file") from err
    ui = _header_index(header, inter, "user_id")
    ii = _header_index(header, inter, "item_id")
    ti = _header_index(header, inter, "timestamp", required=False)
    df = _read_interactions(text, inter, "\t", (ui, ii, ti), len(header), skip=1)

    records = _records(read_text(item, encoding), item, "\t")
    try:
        _, header = next(records)
    except StopIteration as err:
        raise ValueError(f"{item}: empty file") from err
    ii = _header_index(header, item, "item_id")
    tt = _header_index(header, item, title_field)
    titles: dict[str, str | None] = {}
    for lineno, row in records:
        if len(row) != len(header):
            # RecBole files cannot quote: a tab inside a title shifts every field after it
            raise ValueError(
                f"{item}:{lineno}: expected {len(header)} tab-separated fields (as the header), "
                f"got {len(row)}: {row!r:.120}"
                + ("" if len(row) < len(header) else " (a tab inside a field?)")
            )
        titles[row[ii].strip()] = row[tt]
    return SourceTable(df, titles, [inter, item])


# -- MovieLens ------------------------------------------------------------------------------

def read_ml100k(path: str | Path, encoding: str = "auto") -> SourceTable:
    """MovieLens-100k: `u.data` (user, item, rating, time; tabs) and `u.item` ('|', 24 fields:
    id|title|release date|video release date|IMDb URL|19 genre flags).

    The placeholder title "unknown" (item 267) is dropped like a missing title."""
    table = _read_movielens(Path(path), "u.data", "\t", "u.item", "|", 24, _u_item_tail, encoding)
    unknown = [i for i, t in table.titles.items() if t is not None and t.strip() == "unknown"]
    for i in unknown:
        table.titles[i] = None
    if unknown:
        log.info("%s: %d placeholder title(s) 'unknown' dropped (items %s)", table.files[1],
                 len(unknown), unknown[:5])
    return table


def read_ml_dat(path: str | Path, encoding: str = "auto") -> SourceTable:
    """MovieLens-1M / 10M: `ratings.dat` (user::item::rating::time), `movies.dat` (id::title::genres)."""
    return _read_movielens(Path(path), "ratings.dat", "::", "movies.dat", "::", 3, _genres_tail,
                           encoding)


_DATE = re.compile(r"(\d{1,2}-[A-Za-z]{3}-\d{4})?")
_GENRES = re.compile(r"[A-Za-z' -]+(\|[A-Za-z' -]+)*|\(no genres listed\)")


def _u_item_tail(fields: list[str]) -> bool:
    """The fixed fields after a u.item title: two dates (or empty), a URL (or empty), 19 flags."""
    release, video, url, *flags = fields
    return (bool(_DATE.fullmatch(release)) and bool(_DATE.fullmatch(video))
            and (not url or url.startswith("http")) and len(flags) == 19
            and all(f in ("0", "1") for f in flags))


def _genres_tail(fields: list[str]) -> bool:
    """The field after a movies.dat title: `Genre|Genre|...`."""
    return len(fields) == 1 and bool(_GENRES.fullmatch(fields[0]))


def _read_movielens(folder: Path, data_name: str, data_sep: str, item_name: str, item_sep: str,
                    item_fields: int, tail_ok: Callable[[list[str]], bool], encoding: str
                    ) -> SourceTable:
    """Header-less MovieLens files: ratings (user, item, rating, time) and items (id, title, ...)."""
    data = _require(folder / data_name)
    item = _require(folder / item_name)
    df = _read_interactions(read_text(data, encoding), data, data_sep, (0, 1, 3), 4,
                            numeric_ids=True)
    records = _records(read_text(item, encoding), item, item_sep)
    titles = _titles(records, item, item_fields, 0, 1, sep=item_sep, tail_ok=tail_ok)
    return SourceTable(df, titles, [data, item])


def read_ml_latest(path: str | Path, encoding: str = "auto") -> SourceTable:
    """MovieLens latest(-small): `ratings.csv` and `movies.csv` (quoted CSV with headers)."""
    folder = Path(path)
    data = _require(folder / "ratings.csv")
    item = _require(folder / "movies.csv")
    text = read_text(data, encoding)
    _, header = next(_records(text, data, ",", csv.QUOTE_MINIMAL), (0, []))
    cols = tuple(_header_index(header, data, k) for k in ("userId", "movieId", "timestamp"))
    df = _read_interactions(text, data, ",", cols, len(header), skip=1, quoting=csv.QUOTE_MINIMAL,
                            numeric_ids=True)
    records = _records(read_text(item, encoding), item, ",", csv.QUOTE_MINIMAL)
    _, header = next(records, (0, []))
    titles = _titles(records, item, len(header), _header_index(header, item, "movieId"),
                     _header_index(header, item, "title"))
    return SourceTable(df, titles, [data, item])


def _titles(records: Iterator[tuple[int, list[str]]], path: Path, n_fields: int, id_col: int,
            title_col: int, sep: str | None = None,
            tail_ok: Callable[[list[str]], bool] | None = None) -> dict[str, str | None]:
    """Titles by item id; every row must have exactly `n_fields` fields.

    A longer row of a format that cannot quote (u.item, movies.dat) is a title holding the
    separator when the fields after the title still have their fixed form (`tail_ok`): its
    extra fields are joined back into the title (never a silent cut). Any other count raises
    naming the file and line."""
    titles: dict[str, str | None] = {}
    rejoined: list[int] = []
    for lineno, row in records:
        extra = len(row) - n_fields
        if extra > 0 and tail_ok is not None and sep is not None:
            end = title_col + extra + 1
            if tail_ok(row[end:]):
                row = [*row[:title_col], sep.join(row[title_col:end]), *row[end:]]
                rejoined.append(lineno)
        if len(row) != n_fields:
            hint = "" if len(row) < n_fields else (
                f" (a separator inside a field; a title holding {sep!r} is joined back only "
                "when the fields after it keep their fixed form)" if sep else
                " (a separator inside an unquoted field?)")
            raise ValueError(
                f"{path}:{lineno}: expected {n_fields} fields, got {len(row)}: {row!r:.160}{hint}")
        titles[row[id_col].strip()] = row[title_col]
    if rejoined:
        log.warning("%s:%d: %d title(s) hold the separator %r; their fields were joined back "
                    "into the title", path, rejoined[0], len(rejoined), sep)
    return titles


# -- Amazon reviews -------------------------------------------------------------------------

_ASIN = re.compile(r"""["']asin["']\s*:\s*["']([^"']+)["']""")


def _open_lines(path: Path) -> Iterator[tuple[int, str]]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            line = decode_bytes(raw).strip()
            if line:
                yield lineno, line


def _objects(path: Path, python_literals: bool, keep_asins: set[str] | None = None
             ) -> Iterator[tuple[int, dict]]:
    """JSON objects, one a line; with `python_literals`, lines that are Python dict literals
    (Amazon 2014 metadata) are parsed with `ast.literal_eval` (never `eval`)."""
    for lineno, line in _open_lines(_require(path)):
        if keep_asins is not None:
            m = _ASIN.search(line)
            if m is not None and m.group(1) not in keep_asins:
                continue  # metadata of an item nobody reviewed: skip the expensive parse
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            if not python_literals:
                raise ValueError(f"{path}:{lineno}: invalid JSON ({err.msg})") from err
            try:
                obj = ast.literal_eval(line)
            except (ValueError, SyntaxError, MemoryError, RecursionError) as err2:
                raise ValueError(f"{path}:{lineno}: neither JSON nor a Python literal ({err2})") from err2
        if not isinstance(obj, dict):
            raise ValueError(f"{path}:{lineno}: expected an object, got {type(obj).__name__}")
        yield lineno, obj


def _read_amazon(reviews: str | Path, meta: str | Path, python_literals: bool) -> SourceTable:
    reviews, meta = Path(reviews), Path(meta)
    users: list[str] = []
    items: list[str] = []
    times: list[float] = []
    for lineno, obj in _objects(reviews, python_literals):
        try:
            users.append(str(obj["reviewerID"]))
            items.append(str(obj["asin"]))
            times.append(float(obj["unixReviewTime"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(
                f"{reviews}:{lineno}: a review needs reviewerID, asin and a numeric "
                f"unixReviewTime ({type(err).__name__}: {err})"
            ) from err
    keep = set(items)
    titles: dict[str, str | None] = {}
    for lineno, obj in _objects(meta, python_literals, keep_asins=keep):
        if "asin" not in obj:
            raise ValueError(f"{meta}:{lineno}: metadata without an asin")
        asin = str(obj["asin"])
        if asin in keep:
            title = obj.get("title")
            titles[asin] = title if isinstance(title, str) else None
    df = pd.DataFrame({"user": users, "item": items, "time": np.asarray(times, dtype=np.float64)})
    return SourceTable(df, titles, [reviews, meta])


def read_amazon2014(reviews: str | Path, meta: str | Path) -> SourceTable:
    """Amazon 2014 (McAuley): `reviews_<D>_5.json.gz` and `meta_<D>.json.gz`, whose lines are
    JSON or Python dict literals (the metadata is the latter)."""
    return _read_amazon(reviews, meta, python_literals=True)


def read_amazon2018(reviews: str | Path, meta: str | Path) -> SourceTable:
    """Amazon 2018 (Ni et al.): `<D>_5.json(.gz)` and `meta_<D>.json(.gz)`, strict JSON lines."""
    return _read_amazon(reviews, meta, python_literals=False)
