"""P5 (full fine-tuning, `tuning.mode: full`) and the One-Model-for-All-style baseline, on tiny
random backbones: which weights train, the saved model, mixing refusing it, a planted pattern
learned by each, the stored candidates scored exactly, cold items scored from their text."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from conftest import run_config, tuning_cfg
from omegaconf import OmegaConf

from reccocktail.data.samples import Sample, write_items
from reccocktail.utils.io import write_jsonl

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["red", "blue", "night", "river", "stone", "city", "ghost", "summer", "iron", "paper",
         "wolf", "glass", "storm", "garden", "silver", "winter", "echo", "harbor"]
N_ITEMS = 8


def _items(prefix: str = "", n: int = N_ITEMS, seed: int = 3) -> dict[str, str]:
    rng = random.Random(seed)
    return {f"{prefix}{i}": " ".join(rng.sample(WORDS, 2)).title() + f" ({1990 + i})"
            for i in range(n)}


def _cycle_sequences(prefix: str, n_users: int, seed: int, length: int = 7) -> list[dict]:
    """Users walk a fixed cycle of the items (i -> i+1): the planted pattern."""
    rng = random.Random(seed)
    out = []
    for u in range(n_users):
        start = rng.randrange(N_ITEMS)
        out.append({"user": f"{prefix}u{u}",
                    "items": [f"{prefix}{(start + k) % N_ITEMS}" for k in range(length)]})
    return out


def _test_samples() -> list[Sample]:
    """One sample per cycle position: 3 history items, the next one among 5 candidates."""
    out = []
    for k in range(N_ITEMS):
        hist = [str((k + j) % N_ITEMS) for j in range(3)]
        target = str((k + 3) % N_ITEMS)
        cands = [str((k + d) % N_ITEMS) for d in (5, 3, 6, 1, 7)]
        random.Random(k).shuffle(cands)
        out.append(Sample(f"t{k}", f"test{k}", hist, target, cands))
    return out


def _write_run(out: Path, general: bool = True) -> list[Sample]:
    data = out / "data"
    write_items(data / "items.tsv", _items())
    write_jsonl(data / "sequences.jsonl", _cycle_sequences("", 16, 0))
    samples = _test_samples()
    write_jsonl(data / "test.jsonl", [s.to_json() for s in samples])
    if general:
        write_items(data / "general" / "items.tsv", _items("g:", seed=5))
        write_jsonl(data / "general" / "sequences.jsonl", _cycle_sequences("g:", 16, 1))
    return samples


# the prompt keys build_prompt_builder requires, for the builders made by hand below
WORDING = {"prompt": {"noun": "item", "verb": "interacted with"}}
BACKBONE = {"max_prompt_tokens": 256, "chat_template": True}


def _cfg(out: Path, backbone, **tuning) -> OmegaConf:
    trainer = OmegaConf.load(ROOT / "conf" / "trainer" / "cpu.yaml")
    trainer.enable_progress_bar = False
    b = OmegaConf.to_container(backbone)
    b["config"]["initializer_range"] = 0.3  # the toy's logits need a wider init (see test_tuning)
    t = {"objective": "sequence", "mode": "lora", "lr": 2e-2, "batch_size": 8,
         "accumulate_grad_batches": 1, "epochs": 30, "max_steps": -1, "warmup_ratio": 0.0,
         "schedule": "constant", "checkpoint_every_n_steps": 0, "log_every_n_steps": 5,
         "sequence": {"max_titles": 40, "min_context": 2, "windows_per_user": 1},
         "general": {}, "specific": {}, **tuning}
    return run_config({
        "seed": 0, "backbone": b, "tuning": t, "trainer": OmegaConf.to_container(trainer),
        "logger": {}, "scenario": {"name": "warm"},
        "paths": {"output_dir": str(out), "cache_dir": str(out.parent / "cache")},
        "domain": {"name": "toy", "prompt": {"noun": "movie", "verb": "watched"}},
        "data": {"max_title_tokens": 16, "history_len": 10},
        "eval": {"device": "cpu", "batch_size": 8, "normalize": False, "progress": False},
    }, "tuning=default")


def _top1(scores: torch.Tensor, samples: list[Sample]) -> int:
    return int(sum(int(scores[i].argmax()) == s.target_index for i, s in enumerate(samples)))


# -- tuning.mode=full ---------------------------------------------------------------------------
def _fit(module, dm, steps: int, tmp_path: Path) -> None:
    import lightning as L

    L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
              enable_progress_bar=False, enable_model_summary=False,
              use_distributed_sampler=False, default_root_dir=tmp_path).fit(module, datamodule=dm)


@pytest.mark.parametrize("mode", ["full", "lora"])
def test_full_mode_changes_the_base_weights_and_lora_mode_does_not(mode, tiny_llama_cfg,
                                                                    tokenizer, tmp_path):
    from reccocktail.data.prompts import build_prompt_builder
    from reccocktail.models.backbone import load_backbone
    from reccocktail.models.sequence_data import SequenceDataModule, build_windows
    from reccocktail.models.tuning import InstructionTuningModule

    backbone = OmegaConf.to_container(tiny_llama_cfg)
    before = {k: v.clone() for k, v in load_backbone(backbone)[0].state_dict().items()}
    pb = build_prompt_builder(tokenizer, _items(), WORDING, BACKBONE, 16, fmt="sequence")
    seqs = {r["user"]: r["items"] for r in _cycle_sequences("", 4, 0)}
    dm = SequenceDataModule(build_windows(seqs, 40, 2), pb, batch_size=4)
    module = InstructionTuningModule(backbone, tuning_cfg(lr=1e-2, init_seed=0,
                                                            schedule="constant", warmup_steps=0,
                                                            mode=mode, objective="sequence"),
                                     stage="specific")
    _fit(module, dm, 3, tmp_path)
    model = module.model.get_base_model() if mode == "lora" else module.model
    after = {k: v for k, v in model.state_dict().items() if "lora_" not in k}
    after = {k.replace(".base_layer", ""): v for k, v in after.items()}
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    emb = "model.embed_tokens.weight"
    if mode == "full":
        assert "model.layers.0.self_attn.q_proj.weight" in changed
        assert "model.layers.1.mlp.down_proj.weight" in changed and "model.norm.weight" in changed
        assert emb not in changed  # tuning.full.train_embeddings defaults to false (tied head)
    else:
        assert not changed, sorted(changed)[:5]


def test_full_model_round_trips_bit_exactly_and_is_refused_by_mixing(tiny_llama_cfg, tokenizer,
                                                                    tmp_path):
    from reccocktail.models import full
    from reccocktail.models.adapters import read_lora

    model = full.build_full_model(OmegaConf.to_container(tiny_llama_cfg))
    with torch.no_grad():  # make it differ from the seeded init
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    manifest = {"kind": "full", "key": "k1", "backbone": "tiny_llama", "objective": "sequence",
                "trainable": {}, "config": {}, "metrics": {}}
    path = full.save_full_model(model, tokenizer, tmp_path / "p5", manifest)
    assert full.holds_full_model(path, "k1") and not full.holds_full_model(path, "k2")
    names = {f.name for f in path.iterdir()}
    assert "model.safetensors" in names and "config.json" in names
    assert not any(n.endswith((".bin", ".pt", ".pkl", ".ckpt")) for n in names)
    assert not any(n.startswith(".") for n in path.parent.iterdir() if n != path)  # no temp left
    loaded = full.load_full_model(path)
    want, got = model.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
    # the folder is what `from_pretrained` reads, standalone (its tokenizer inside)
    from transformers import AutoTokenizer

    assert AutoTokenizer.from_pretrained(str(path)).encode("a b") == tokenizer.encode("a b")
    with pytest.raises(ValueError, match="fully fine-tuned"):
        read_lora(path)
    with pytest.raises(ValueError, match="manifest"):
        full.save_full_model(model, tokenizer, tmp_path / "bad", {"kind": "full"})


def test_g_and_s_stages_refuse_full_mode(tiny_llama_cfg, tmp_path):
    from reccocktail.models.stage import run_specific_stage

    out = tmp_path / "run"
    _write_run(out, general=False)
    with pytest.raises(ValueError, match="baseline=p5"):
        run_specific_stage(_cfg(out, tiny_llama_cfg, mode="full"), out)
    with pytest.raises(ValueError, match="tuning.mode: unknown value 'fulll'"):
        tuning_cfg(mode="fulll")


def test_p5_learns_a_planted_pattern_on_s_rows_and_scores_the_stored_candidates(tiny_llama_cfg,
                                                                                  tmp_path):
    """Full fine-tuning on S's sequence windows ranks the planted next item first (random: 1 in
    5); its scores are the likelihood scorer's on the saved model, candidate order kept; a second
    run folder takes the model from the cache."""
    from reccocktail.baselines.p5 import run_p5, score_full_model
    from reccocktail.models.full import read_full_manifest

    out = tmp_path / "run"
    samples = _write_run(out, general=False)
    cfg = _cfg(out, tiny_llama_cfg)
    settings = {"kind": "llm_full", "tuning": {"mode": "full", "lr": 3e-3, "epochs": 12,
                                               "batch_size": 4,
                                               "full": {"train_embeddings": False}}}
    scores, info = run_p5(cfg, out, "p5", settings, samples)
    assert scores.shape == (len(samples), 5)
    assert _top1(scores, samples) >= 6, scores  # 8 histories; random expects 1.6
    assert info["reused"] is False and info["train_seconds"] > 0 and info["objective"] == "sequence"
    m = read_full_manifest(out / "models" / "p5")
    assert m["kind"] == "full" and m["config"]["tuning"]["mode"] == "full"
    assert m["metrics"]["train_samples"] == 16  # S's rows: one window per user
    assert not list((out / "baselines" / "p5" / "checkpoints").glob("*/*.ckpt"))
    # the scores are exactly the scorer's on the stored candidates, in their order
    again = score_full_model(cfg, out, out / "models" / "p5", "sequence", samples[:3])
    torch.testing.assert_close(again, scores[:3])
    swapped = [Sample(s.id, s.user, s.history, s.target, list(reversed(s.candidates)))
               for s in samples[:3]]
    torch.testing.assert_close(score_full_model(cfg, out, out / "models" / "p5", "sequence",
                                                swapped), scores[:3].flip(1))
    # the same settings in another run folder: the cached model, not a new training
    out2 = tmp_path / "run2"
    _write_run(out2, general=False)
    scores2, info2 = run_p5(_cfg(out2, tiny_llama_cfg), out2, "p5", settings, samples)
    assert info2["reused"] == "cache"
    torch.testing.assert_close(scores2, scores)


def test_p5_settings_must_ask_for_full_mode(tiny_llama_cfg, tmp_path):
    from reccocktail.baselines.p5 import p5_tuning

    with pytest.raises(ValueError, match="baselines.p5.tuning.mode"):
        p5_tuning(_cfg(tmp_path, tiny_llama_cfg), {"tuning": {"lr": 1e-4}})


# -- One Model for All --------------------------------------------------------------------------
OMFA = {"kind": "llm_embed", "general_windows": None, "target_windows": None, "max_titles": 20,
        "min_context": 2, "batch_size": 8, "epochs": 25, "lr": 2e-2, "warmup_ratio": 0.0,
        "temperature": 0.1, "item_prefix": "Title:", "score_batch_size": 16}


def test_omfa_batch_masks_the_users_other_titles_and_targets_every_position(tokenizer):
    from reccocktail.baselines.omfa import collate_windows, item_tokens, title_window
    from reccocktail.data.prompts import build_prompt_builder

    items = _items()
    pb = build_prompt_builder(tokenizer, items, WORDING, BACKBONE, 16, fmt="sequence")
    rows = [title_window(pb, ["0", "1", "2", "3"], 2), title_window(pb, ["5", "6", "7"], 2)]
    title_ids = {pb.title(i): item_tokens(pb, i, [1]) for i in items}
    b = collate_windows(rows, pb.pad_token_id, title_ids)
    assert b["q_tgt"].tolist() == [2, 3, 6]  # titles 2, 3 (row 0) and 7 (row 1), batch order
    assert b["q_row"].tolist() == [0, 0, 1]
    # the state at the end of the previous title's chunk predicts the next title
    assert b["input_ids"][0, b["q_pos"][0]].item() == pb.response_ids("1")[-1]
    assert b["neg_mask"][0].tolist() == [True, True, False, True, False, False, False]
    assert b["neg_mask"][2].tolist() == [False] * 4 + [True, True, False]
    assert b["item_ids"][0, : 1 + len(pb.response_ids("0"))].tolist() == [1, *pb.response_ids("0")]


def test_omfa_learns_a_planted_pattern_and_scores_cold_items_from_their_text(tiny_llama_cfg,
                                                                           tmp_path):
    """Trained on both domains' cycles, the user state after a history is most similar to the
    planted next title (random: 1 in 5); a new item (an id no training row holds) is scored from
    its title alone: with a trained item's title it gets that item's score, and its score is
    the cosine of the history encoding and the encoding of its text."""
    import torch.nn.functional as F
    from peft import PeftModel

    from reccocktail.baselines.omfa import (
        _builder,
        item_tokens,
        last_states,
        run_omfa,
        score_samples,
    )
    from reccocktail.models.backbone import load_backbone, load_tokenizer

    out = tmp_path / "run"
    samples = _write_run(out)
    cfg = _cfg(out, tiny_llama_cfg)
    cfg.backbone.lora.target_modules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                        "up_proj", "down_proj"]
    scores, info = run_omfa(cfg, out, "omfa", dict(OMFA), samples)
    assert scores.shape == (len(samples), 5)
    assert info["windows"] == {"general": 16, "target": 16} and info["reused"] is False
    assert info["loss_last"] < info["loss_first"]
    assert _top1(scores, samples) >= 5, scores  # 8 histories; random expects 1.6

    # cold: items "new" (an unseen title) and "twin" (the title of item 3) are in no training row
    items = {**_items(), "new": "Lantern Orchard (2001)", "twin": _items()["3"]}
    tok = load_tokenizer(cfg.backbone)
    pb = _builder(cfg, tok, items, general=False)
    base, _ = load_backbone(cfg.backbone)
    model = PeftModel.from_pretrained(base, str(out / "models" / "omfa")).eval()
    prefix = list(tok("Title:", add_special_tokens=False)["input_ids"])
    s = Sample("c", "cold", ["0", "1", "2"], "new", ["3", "twin", "new", "5", "6"])
    got = score_samples(model, pb, [s], prefix)[0]
    assert got[0] == got[1]  # same text, same score: ids carry nothing
    with torch.no_grad():
        u = F.normalize(last_states(model, torch.tensor([pb.prompt_ids(s.history)]),
                                    torch.ones(1, len(pb.prompt_ids(s.history)),
                                               dtype=torch.long)), dim=-1)
        toks = item_tokens(pb, "new", prefix)
        v = F.normalize(last_states(model, torch.tensor([toks]), torch.ones(1, len(toks),
                                                                            dtype=torch.long)), dim=-1)
    torch.testing.assert_close(got[2], (u @ v.T)[0, 0], rtol=1e-4, atol=1e-5)
    # scores of the stored candidates, in their order
    s_rev = Sample("c", "cold", s.history, s.target, list(reversed(s.candidates)))
    torch.testing.assert_close(score_samples(model, pb, [s_rev], prefix)[0], got.flip(0))
    # the second time the run folder's model is used
    _, info2 = run_omfa(cfg, out, "omfa", dict(OMFA), samples[:2])
    assert info2["reused"] == "run"


def test_baseline_names_and_settings_are_registered():
    from hydra import compose, initialize_config_dir

    from reccocktail.baselines.registry import BASELINES
    from reccocktail.baselines.stage import baseline_names, settings_for

    assert baseline_names(["p5", "omfa"]) == ["p5", "omfa"]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("run", overrides=["baseline=[p5,omfa]", "tuning.mode=lora"])
    assert settings_for(cfg, "p5")["tuning"]["mode"] == "full"
    for name in ("p5", "omfa"):  # run by their own module, on the backbone
        assert settings_for(cfg, name)["kind"] == BASELINES[name].kind
        assert BASELINES[name].runner() and BASELINES[name].uses_backbone
    from reccocktail.config_check import config_errors

    assert not config_errors(cfg)
    cfg.tuning.mode = "half"
    assert any("tuning.mode" in e for e in config_errors(cfg))
    assert json.dumps(OmegaConf.to_container(cfg.tuning.full))  # a plain block
