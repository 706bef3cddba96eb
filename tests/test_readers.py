"""Readers on small fixture files, title cleaning, and the filtering that follows reading."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from reccocktail.data.filtering import build_sequences, in_user_subset, kcore
from reccocktail.data.readers import (
    read_amazon2014,
    read_amazon2018,
    read_ml100k,
    read_ml_dat,
    read_ml_latest,
    read_recbole,
)
from reccocktail.data.titles import clean_title, normalise_title


def write_recbole(folder, inter_rows, item_rows, name="toy"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.inter").write_text(
        "user_id:token\titem_id:token\ttimestamp:float\n"
        + "".join(f"{u}\t{i}\t{t}\n" for u, i, t in inter_rows),
        encoding="utf-8",
    )
    (folder / f"{name}.item").write_text(
        "item_id:token\ttitle:token_seq\n" + "".join(f"{i}\t{t}\n" for i, t in item_rows),
        encoding="utf-8",
    )
    return folder


# -- titles ---------------------------------------------------------------------------------

def test_clean_title_unescapes_html_and_collapses_whitespace():
    assert clean_title("Tom &amp; Jerry\t  (1990)\n") == "Tom & Jerry (1990)"
    assert clean_title("Salt &amp;amp; Pepper") == "Salt & Pepper"  # double-escaped metadata
    assert clean_title(None) == ""
    assert clean_title("   ") == ""


def test_normalise_title_ignores_case_accents_and_punctuation():
    assert normalise_title("Amélie (2001)") == normalise_title("amelie 2001")
    assert normalise_title("Se7en!") != normalise_title("Seven")


# -- RecBole ----------------------------------------------------------------------------------

def test_recbole_reads_canonical_table(tmp_path):
    d = write_recbole(tmp_path / "toy", [("u1", "a", 0), ("u1", "b", 1), ("u2", "a", 0)],
                      [("a", "Tom &amp; Jerry"), ("b", "B  movie")])
    t = read_recbole(d)
    assert list(t.interactions.columns) == ["user", "item", "time"]
    assert t.interactions["user"].tolist() == ["u1", "u1", "u2"]
    assert t.interactions["time"].tolist() == [0.0, 1.0, 0.0]
    assert t.titles == {"a": "Tom &amp; Jerry", "b": "B  movie"}  # cleaned later, not here


def test_recbole_malformed_line_names_file_and_line(tmp_path):
    d = write_recbole(tmp_path / "toy", [("u1", "a", 0)], [("a", "A")])
    p = d / "toy.inter"
    p.write_text(p.read_text() + "u2\tb\n")  # line 3: a field is missing
    with pytest.raises(ValueError, match=r"toy\.inter:3"):
        read_recbole(d)
    p.write_text("user_id:token\titem_id:token\ttimestamp:float\nu1\ta\tsoon\n")
    with pytest.raises(ValueError, match=r"toy\.inter:2: time 'soon'"):
        read_recbole(d)


def test_recbole_missing_file_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.inter"):
        read_recbole(tmp_path / "nothing")


# -- MovieLens --------------------------------------------------------------------------------

def test_ml100k_latin1_titles(tmp_path):
    (tmp_path / "u.data").write_text("1\t10\t5\t881250949\n2\t10\t3\t881250950\n")
    flags = "|".join(["0"] * 18 + ["1"])  # u.item has exactly 24 fields
    (tmp_path / "u.item").write_bytes(f"10|Café Society (1995)|01-Jan-1995||http://x|{flags}\n"
                                      .encode("latin-1"))
    t = read_ml100k(tmp_path)
    assert t.titles["10"] == "Café Society (1995)"
    assert t.interactions["time"].tolist() == [881250949.0, 881250950.0]


def test_ml_dat_utf8_and_latin1(tmp_path):
    (tmp_path / "ratings.dat").write_text("1::7::5::978300760\n")
    (tmp_path / "movies.dat").write_text("7::Amélie (2001)::Comedy\n", encoding="utf-8")
    assert read_ml_dat(tmp_path).titles["7"] == "Amélie (2001)"
    (tmp_path / "movies.dat").write_bytes("7::Amélie (2001)::Comedy\n".encode("latin-1"))
    assert read_ml_dat(tmp_path).titles["7"] == "Amélie (2001)"
    (tmp_path / "ratings.dat").write_text("1::7::5::978300760\n1::7\n")
    with pytest.raises(ValueError, match=r"ratings\.dat:2"):
        read_ml_dat(tmp_path)


def test_ml_latest_quoted_titles(tmp_path):
    (tmp_path / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,5,4.0,100\n")
    (tmp_path / "movies.csv").write_text(
        'movieId,title,genres\n5,"American President, The (1995)",Comedy\n')
    t = read_ml_latest(tmp_path)
    assert t.titles["5"] == "American President, The (1995)"
    assert t.interactions.iloc[0].tolist() == ["1", "5", 100.0]


# -- Amazon -----------------------------------------------------------------------------------

def _gz_lines(path, lines):
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")


def test_amazon2014_gz_with_python_literal_meta(tmp_path):
    rev, meta = tmp_path / "reviews_Toys_5.json.gz", tmp_path / "meta_Toys.json.gz"
    _gz_lines(rev, [
        json.dumps({"reviewerID": "U1", "asin": "A1", "unixReviewTime": 2, "overall": 5.0}),
        json.dumps({"reviewerID": "U1", "asin": "A2", "unixReviewTime": 1}),
    ])
    _gz_lines(meta, [
        "{'asin': 'A1', 'title': 'Lego &amp; Friends', 'related': {'also_bought': ['A2']}}",
        "{'asin': 'A2', 'categories': [['Toys']]}",            # no title: dropped later
        "{'asin': 'ZZ', 'title': 'never reviewed'}",
    ])
    t = read_amazon2014(rev, meta)
    assert t.interactions["item"].tolist() == ["A1", "A2"]
    assert t.titles == {"A1": "Lego &amp; Friends", "A2": None}
    seqs = build_sequences(t, "toys", min_core=1)
    assert seqs.stats["items_without_title"] == 1
    assert seqs.titles == ["Lego & Friends"]

    _gz_lines(meta, ["{'asin': 'A1', 'title': 'ok'}", "{'asin': 'A2', 'title': "])
    with pytest.raises(ValueError, match=r"meta_Toys\.json\.gz:2"):
        read_amazon2014(rev, meta)


def test_amazon2018_json_lines(tmp_path):
    rev, meta = tmp_path / "Games_5.json", tmp_path / "meta_Games.json"
    rev.write_text(json.dumps({"reviewerID": "U", "asin": "G", "unixReviewTime": 5}) + "\n")
    meta.write_text(json.dumps({"asin": "G", "title": "Halo 3 - Xbox 360"}) + "\n")
    t = read_amazon2018(rev, meta)
    assert t.titles == {"G": "Halo 3 - Xbox 360"}
    rev.write_text(rev.read_text() + "{'reviewerID': 'U2'}\n")  # not JSON: 2018 is strict
    with pytest.raises(ValueError, match=r"Games_5\.json:2"):
        read_amazon2018(rev, meta)
    rev.write_text(json.dumps({"reviewerID": "U", "asin": "G"}) + "\n")
    with pytest.raises(ValueError, match=r"Games_5\.json:1.*unixReviewTime"):
        read_amazon2018(rev, meta)


# -- filtering ----------------------------------------------------------------------------------

def test_sequences_are_chronological_per_user_and_deduplicated(tmp_path):
    # positions as time: u1's order is c, a, b (a again later: a duplicate, first kept)
    d = write_recbole(tmp_path / "toy",
                      [("u1", "a", 1), ("u1", "b", 2), ("u1", "c", 0), ("u1", "a", 3),
                       ("u2", "b", 0), ("u2", "c", 5)],
                      [("a", "A"), ("b", "B"), ("c", "C")])
    s = build_sequences(read_recbole(d), "toy", min_core=1)
    u1 = s.users.index("u1")
    assert [s.items[i] for i in s.seq(u1)] == ["c", "a", "b"]
    assert s.stats["duplicates_removed"] == 1


def test_equal_titles_merge_into_one_item(tmp_path):
    d = write_recbole(tmp_path / "toy", [("u1", "a", 0), ("u1", "a2", 1), ("u2", "a2", 0)],
                      [("a", "The Movie"), ("a2", "the  movie!")])
    s = build_sequences(read_recbole(d), "toy", min_core=1)
    assert s.items == ["a"] and s.stats["items_merged_by_title"] == 1
    assert s.lengths.tolist() == [1, 1]  # u1's second interaction became a duplicate


def test_kcore_iterates_until_stable():
    # item 9 has 2 users; dropping it leaves users 1 and 3 with 2 items < k=3, so they go too
    users = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4])
    items = np.array([5, 6, 7, 5, 6, 9, 5, 6, 7, 6, 7, 9, 5, 7, 6])
    keep, rounds = kcore(users, items, 3)
    assert set(users[keep]) == {0, 2, 4} and set(items[keep]) == {5, 6, 7}
    assert rounds == 3
    assert kcore(users, items, 1)[0].all()


def test_user_subset_halves_are_complementary():
    users = [str(i) for i in range(2000)]
    a = in_user_subset(users, 0.5, 0)
    b = in_user_subset(users, 0.5, 0, complement=True)
    assert not (a & b).any() and (a | b).all()
    assert 850 < a.sum() < 1150  # a seeded hash, roughly the fraction


def test_malformed_sample_line_is_named_even_after_blank_lines(tmp_path):
    from reccocktail.data.samples import load_samples

    good = '{"id": "a", "user": "u", "history": ["1"], "target": "2", "candidates": ["2", "3"]}'
    bad = '{"id": "b", "user": "u", "history": ["1"], "target": "9", "candidates": ["2", "3"]}'
    path = tmp_path / "test.jsonl"
    path.write_text(f"{good}\n\n{bad}\n")
    with pytest.raises(ValueError, match=r"test\.jsonl:3: target '9'"):
        load_samples(path)
