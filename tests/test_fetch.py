"""ML-100k fetch: existing copy, verified zip, rebuild from the recbole package, fallbacks."""

from __future__ import annotations

import hashlib
import importlib.util
import io
import urllib.error
import zipfile
from pathlib import Path

import pytest

from reccocktail.data import fetch

U_DATA = b"196\t242\t3\t881250949\n186\t302\t3\t891717742\n"
U_ITEM = b"1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0\n"


def _sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buf.getvalue()


GOOD = {"u.data": _sha(U_DATA), "u.item": _sha(U_ITEM)}


def test_existing_copy_is_used_without_copying(tmp_path: Path):
    raw = tmp_path / "root" / "ml-100k" / "raw"
    raw.mkdir(parents=True)
    (raw / "u.data").write_bytes(U_DATA)
    (raw / "u.item").write_bytes(U_ITEM)
    out = fetch.ensure_ml100k(tmp_path / "dest", tmp_path / "root", url=None, package=None)
    assert out == raw
    assert not (tmp_path / "dest").exists()


def test_missing_everything_fails_clearly(tmp_path: Path):
    with pytest.raises(fetch.FetchError, match="u.data and u.item"):
        fetch.ensure_ml100k(tmp_path / "dest", tmp_path / "nothing", url=None, package=None)


def test_zip_is_verified_then_extracted(tmp_path: Path):
    data = _zip({"ml-100k/u.data": U_DATA, "ml-100k/u.item": U_ITEM, "ml-100k/README": b"r",
                 "../evil": b"x", "ml-100k/sub/deep": b"y"})
    out = fetch.extract_ml100k_zip(data, tmp_path / "d", expected=GOOD)
    assert (out / "u.data").read_bytes() == U_DATA
    assert (out / "u.item").read_bytes() == U_ITEM
    assert (out / "README").exists()
    assert not (tmp_path / "evil").exists() and not (out / "sub").exists()


def test_zip_with_wrong_content_is_refused(tmp_path: Path):
    data = _zip({"ml-100k/u.data": U_DATA + b"1\t1\t1\t1\n", "ml-100k/u.item": U_ITEM})
    with pytest.raises(fetch.FetchError, match="u.data.*SHA-256"):
        fetch.extract_ml100k_zip(data, tmp_path / "d", expected=GOOD)
    assert not (tmp_path / "d").exists()
    with pytest.raises(fetch.FetchError, match="lacks ml-100k/u.item"):
        fetch.extract_ml100k_zip(_zip({"ml-100k/u.data": U_DATA}), tmp_path / "d", expected=GOOD)
    with pytest.raises(fetch.FetchError, match="not a zip"):
        fetch.extract_ml100k_zip(b"<html>captive portal</html>", tmp_path / "d", expected=GOOD)


def test_official_hashes_guard_the_default_path(tmp_path: Path):
    # A fabricated zip is refused against the official hashes (the default).
    data = _zip({"ml-100k/u.data": U_DATA, "ml-100k/u.item": U_ITEM})
    with pytest.raises(fetch.FetchError, match="SHA-256"):
        fetch.extract_ml100k_zip(data, tmp_path / "d")


def test_ensure_downloads_then_reuses(tmp_path: Path, monkeypatch):
    calls = []
    data = _zip({"ml-100k/u.data": U_DATA, "ml-100k/u.item": U_ITEM})
    monkeypatch.setattr(fetch, "OFFICIAL_SHA256", GOOD)
    monkeypatch.setattr(fetch, "download", lambda url, timeout: calls.append(url) or data)
    dest = tmp_path / "dest"
    assert fetch.ensure_ml100k(dest, url="https://example.invalid/x.zip") == dest
    assert fetch.ensure_ml100k(dest, url="https://example.invalid/x.zip") == dest
    assert len(calls) == 1  # the second call found the verified copy


INTER = b"user_id:token\titem_id:token\trating:float\ttimestamp:float\n" + U_DATA
ITEM = (b"item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
        b"1\tToy Story\t1995\tAnimation Children's Comedy\n"
        b"267\tunkonwn\tunkonwn\tunknown\n")


def test_rebuild_from_recbole_files(tmp_path: Path):
    out = fetch.rebuild_from_recbole(INTER, ITEM, tmp_path / "d", expected={"u.data": _sha(U_DATA)})
    assert (out / "u.data").read_bytes() == U_DATA
    lines = (out / "u.item").read_text(encoding="latin-1").splitlines()
    first = lines[0].split("|")
    assert first[:2] == ["1", "Toy Story (1995)"] and len(first) == 24
    assert first[5:] == U_ITEM.decode().strip().split("|")[5:]  # genre flags as official
    assert lines[1].split("|")[1] == "unknown" and lines[1].split("|")[5] == "1"
    with pytest.raises(fetch.FetchError, match="differ from the official u.data"):
        fetch.rebuild_from_recbole(INTER, ITEM, tmp_path / "e", expected={"u.data": "0" * 64})


def test_download_failure_falls_back_to_package(tmp_path: Path, monkeypatch):
    def offline(url, timeout):
        raise urllib.error.URLError("Name or service not known")

    files = {"ml-100k.inter": INTER, "ml-100k.item": ITEM}
    monkeypatch.setattr(fetch, "download", offline)
    monkeypatch.setattr(fetch, "OFFICIAL_SHA256", {"u.data": _sha(U_DATA)})
    monkeypatch.setattr(fetch, "RECBOLE_SHA256", {k: _sha(v) for k, v in files.items()})
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    monkeypatch.setattr(fetch, "_package_file", lambda pkg, rel: tmp_path / Path(rel).name)
    out = fetch.ensure_ml100k(tmp_path / "dest")
    assert (out / "u.data").read_bytes() == U_DATA
    # A package whose files are not the pinned copy is refused.
    monkeypatch.setattr(fetch, "RECBOLE_SHA256", {k: "0" * 64 for k in files})
    with pytest.raises(fetch.FetchError, match="not the pinned copy"):
        fetch.ensure_ml100k(tmp_path / "dest2")


@pytest.mark.skipif(importlib.util.find_spec("recbole") is None, reason="recbole not installed")
def test_real_recbole_matches_official_udata(tmp_path: Path, shared_data: Path):
    out = fetch.ensure_ml100k(tmp_path / "d", url=None)
    official = shared_data / "ml-100k" / "raw"
    assert (out / "u.data").read_bytes() == (official / "u.data").read_bytes()
    ours = (out / "u.item").read_text(encoding="latin-1").splitlines()
    theirs = (official / "u.item").read_text(encoding="latin-1").splitlines()
    assert [x.split("|")[1].strip() for x in ours] == [x.split("|")[1].strip() for x in theirs]


def test_resolver_form(tmp_path: Path):
    from omegaconf import OmegaConf

    raw = tmp_path / "root" / "ml-100k" / "raw"
    raw.mkdir(parents=True)
    (raw / "u.data").write_bytes(U_DATA)
    (raw / "u.item").write_bytes(U_ITEM)
    OmegaConf.register_new_resolver("ml100k_dir", fetch.ml100k_dir, replace=True)
    cfg = OmegaConf.create({"paths": {"data_root": str(tmp_path / "root"), "cache_dir": str(tmp_path)},
                            "path": "${ml100k_dir:${paths.data_root},${paths.cache_dir}}"})
    assert cfg.path == str(raw)
