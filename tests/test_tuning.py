"""LoRA instruction tuning: labels, batching, overfitting, resume, stages (tiny backbone)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from conftest import run_config, tuning_cfg
from omegaconf import OmegaConf

from reccocktail.data.prompts import PromptBuilder
from reccocktail.data.samples import Sample, write_items
from reccocktail.models.datamodule import (
    InstructionDataModule,
    LengthGroupedBatchSampler,
    collate,
    padding_fraction,
    select_subset,
)
from reccocktail.utils.io import write_jsonl

ROOT = Path(__file__).resolve().parents[1]
WORDS = ["red", "fox", "night", "river", "star", "king", "lost", "city", "blue", "moon", "iron",
         "garden", "winter", "ghost", "dragon", "ocean", "silent", "gold", "wild", "storm"]


# -- fixtures: a tiny domain written in the data stage's format -----------------------------
def make_items(n: int = 24, prefix: str = "") -> dict[str, str]:
    rng = random.Random(7)
    return {f"{prefix}{i}": " ".join(rng.sample(WORDS, 2)).title() + f" ({1980 + i})" for i in range(n)}


def make_samples(items: dict[str, str], n: int, seed: int, num_candidates: int = 5,
                 history: int = 3, tag: str = "s") -> list[Sample]:
    rng = random.Random(seed)
    ids = list(items)
    out = []
    for k in range(n):
        chosen = rng.sample(ids, history + num_candidates)
        hist, cands = chosen[:history], chosen[history:]
        out.append(Sample(id=f"{tag}{k}", user=f"u{k}", history=hist, target=cands[k % num_candidates],
                          candidates=cands))
    return out


def write_domain(data_dir: Path, n_train: int = 12, n_valid: int = 4, general: bool = True,
                 general_seed: int = 3) -> dict[str, str]:
    """`data/` as the data stage writes it: items.tsv, train/valid.jsonl (+ the general pool)."""
    items = make_items()
    write_items(data_dir / "items.tsv", items)
    write_jsonl(data_dir / "train.jsonl", [s.to_json() for s in make_samples(items, n_train, 1)])
    write_jsonl(data_dir / "valid.jsonl", [s.to_json() for s in make_samples(items, n_valid, 2, tag="v")])
    if general:
        gitems = make_items(prefix="src:")
        write_items(data_dir / "general" / "items.tsv", gitems)
        write_jsonl(data_dir / "general" / "train.jsonl",
                    [s.to_json() for s in make_samples(gitems, 8, general_seed, tag="g")])
        write_jsonl(data_dir / "general" / "valid.jsonl",
                    [s.to_json() for s in make_samples(gitems, 2, general_seed + 1, tag="gv")])
    return items


def make_cfg(out_dir: Path, backbone, **tuning):
    """A run config built by hand: tiny backbone, CPU trainer, no loggers."""
    trainer = OmegaConf.load(ROOT / "conf" / "trainer" / "cpu.yaml")
    trainer.enable_progress_bar = False
    trainer.log_every_n_steps = 1
    t = {"lr": 5e-3, "batch_size": 2, "accumulate_grad_batches": 1, "epochs": 1, "max_steps": -1,
         "warmup_ratio": 0.0, "schedule": "constant", "checkpoint_every_n_steps": 2,
         "val_max_samples": 2, "general": {"max_samples": None},
         "specific": {"num_train_prompts": 4, "include_valid": True}}
    for k, v in tuning.items():
        if k in ("general", "specific"):
            t[k].update(v)
        else:
            t[k] = v
    return run_config({
        "seed": 0,
        "backbone": OmegaConf.to_container(backbone),
        "tuning": t,
        "trainer": OmegaConf.to_container(trainer),
        "logger": {},
        "paths": {"output_dir": str(out_dir), "cache_dir": str(out_dir.parent / "cache")},
        "domain": {"name": "toy", "prompt": {"noun": "movie", "verb": "watched"}},
        "data": {"max_title_tokens": 16},
    }, "tuning=default")


def candidate_logprobs(model, builder: PromptBuilder, sample: Sample) -> torch.Tensor:
    """Sum of log-probabilities of each candidate's response given the prompt (no KV sharing)."""
    prompt = builder.prompt_ids(sample.history, sample.candidates)
    scores = []
    with torch.no_grad():
        for c in sample.candidates:
            resp = builder.response_ids(c)
            ids = torch.tensor([prompt + resp])
            logp = torch.log_softmax(model(input_ids=ids).logits[0, :-1].float(), -1)
            tgt = ids[0, 1:]
            scores.append(logp[torch.arange(len(tgt)), tgt][len(prompt) - 1 :].sum())
    return torch.stack(scores)


def lora_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


# -- labels and batching --------------------------------------------------------------------
def test_prompt_masked_and_response_labelled_token_by_token(tokenizer):
    items = make_items()
    builder = PromptBuilder(tokenizer, items, noun="movie", verb="watched")
    samples = make_samples(items, 3, seed=5)
    examples = [builder.example(s.history, s.candidates, s.target) for s in samples]
    batch = collate(examples, pad_token_id=tokenizer.pad_token_id)
    width = batch["input_ids"].shape[1]
    assert width == max(len(e["input_ids"]) for e in examples)
    for row, s in enumerate(samples):
        prompt = builder.prompt_ids(s.history, s.candidates)
        resp = builder.response_ids(s.target)
        p, r = len(prompt), len(resp)
        assert resp[-1] == tokenizer.eos_token_id
        assert tokenizer.decode(resp[:-1]).strip() == items[s.target]
        labels, ids, mask = batch["labels"][row], batch["input_ids"][row], batch["attention_mask"][row]
        assert ids[:p].tolist() == prompt
        for j in range(p):
            assert labels[j] == -100
        for j in range(r):
            assert labels[p + j] == resp[j] == ids[p + j]
        assert mask[: p + r].all() and not mask[p + r :].any()
        assert (labels[p + r :] == -100).all()
        assert (ids[p + r :] == tokenizer.pad_token_id).all()


def test_length_grouped_sampler_covers_every_sample_and_cuts_padding():
    rng = random.Random(0)
    lengths = [rng.randint(20, 400) for _ in range(403)]
    grouped = LengthGroupedBatchSampler(lengths, 8, seed=1, mega_batch_mult=16)
    plain = LengthGroupedBatchSampler(lengths, 8, seed=1, group_by_length=False)
    for s in (grouped, plain):
        flat = [i for b in s for i in b]
        assert sorted(flat) == list(range(len(lengths)))
        assert len(list(s)) == len(s)
    assert padding_fraction(lengths, list(grouped)) < 0.5 * padding_fraction(lengths, list(plain))
    # the order is seeded per epoch
    assert list(grouped) == list(LengthGroupedBatchSampler(lengths, 8, seed=1, mega_batch_mult=16))
    first = list(grouped)
    grouped.set_epoch(1)
    assert list(grouped) != first


def test_sampler_shards_over_ranks_and_skips_consumed_batches():
    lengths = list(range(10, 31))  # 21 samples, batch 4 -> 6 batches (2 ranks: 3 each)
    ranks = [LengthGroupedBatchSampler(lengths, 4, seed=3, num_replicas=2, rank=r) for r in (0, 1)]
    b0, b1 = list(ranks[0]), list(ranks[1])
    assert len(b0) == len(b1) == len(ranks[0]) == 3
    glob = ranks[0].global_batches()
    assert b0 == glob[0::2] and b1 == glob[1::2]
    assert sorted(i for b in b0 + b1 for i in b) == list(range(21))
    single = LengthGroupedBatchSampler(lengths, 4, seed=3)
    single.skip(epoch=0, batches=4)
    assert list(single) == glob[4:]
    assert list(single) == glob  # the skip applies once, to the resumed epoch only


def test_select_subset_is_seeded_and_validated():
    items = make_items()
    samples = make_samples(items, 50, seed=0)
    a = select_subset(samples, fraction=0.2, seed=4)
    assert len(a) == 10 and a == select_subset(samples, fraction=0.2, seed=4)
    assert a != select_subset(samples, fraction=0.2, seed=5)
    assert [s.id for s in a] == sorted((s.id for s in a), key=lambda i: int(i[1:]))  # order kept
    assert len(select_subset(samples, fraction=0.5, max_samples=7, seed=0)) == 7
    assert select_subset(samples) == samples
    with pytest.raises(ValueError, match="tuning.fraction"):
        select_subset(samples, fraction=1.5)
    with pytest.raises(ValueError, match="tuning.max_samples"):
        select_subset(samples, max_samples=0)


def test_specific_mix_is_valid_plus_n_sampled_train():
    from reccocktail.models.training import specific_samples, tuning_config

    items = make_items()
    train, valid = make_samples(items, 30, 1), make_samples(items, 5, 2, tag="v")
    t = tuning_config(run_config({"seed": 0, "tuning": {"max_samples": None,
                                                        "specific": {"num_train_prompts": 7}}},
                                 "tuning=default"), "specific")
    pool = specific_samples(train, valid, t)
    assert pool[:5] == valid and len(pool) == 12
    assert {s.id for s in pool[5:]} <= {s.id for s in train}
    assert len(specific_samples(train, valid, t.overlay({"fraction": 0.5}))) == 6
    with pytest.raises(ValueError, match="no training samples"):
        specific_samples(train, valid, t.overlay({"include_valid": False,
                                                  "num_train_prompts": 0}))


# -- training ---------------------------------------------------------------------------------
def test_tiny_model_overfits_and_ranks_trained_targets_first(tiny_llama_cfg, tokenizer, tmp_path):
    """LoRA on attention only must overfit 4 samples. The tiny config's default init (std 0.02)
    bounds every logit by |RMSNorm(h)|·|E| ≈ 8·0.16, so no adapter could fit anything: the test
    widens the init to std 0.3 (a property of the random toy, not of the training code)."""
    import lightning as L

    from reccocktail.models.tuning import InstructionTuningModule

    L.seed_everything(0, verbose=False)
    backbone = OmegaConf.to_container(tiny_llama_cfg)
    backbone["config"]["initializer_range"] = 0.3
    items = make_items()
    builder = PromptBuilder(tokenizer, items, noun="movie", verb="watched")
    samples = make_samples(items, 4, seed=11)
    dm = InstructionDataModule(samples, builder, batch_size=4)
    module = InstructionTuningModule(
        backbone, tuning_cfg(lr=3e-2, init_seed=0, schedule="constant", warmup_steps=0),
        stage="specific",
    )
    trainer = L.Trainer(accelerator="cpu", max_epochs=25, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        use_distributed_sampler=False, default_root_dir=tmp_path)
    trainer.fit(module, datamodule=dm)
    losses = module.step_losses
    assert len(losses) == 25
    assert sum(losses[-3:]) / 3 < 0.3 * losses[0], (losses[0], losses[-3:])
    model = module.model.eval()
    for s in samples:
        scores = candidate_logprobs(model, builder, s)
        assert int(scores.argmax()) == s.target_index, (s.id, scores)
    assert "specific/train_loss" in trainer.callback_metrics
    assert "specific/pad_frac" in trainer.callback_metrics


def test_lora_init_is_seeded_and_gradient_checkpointing_keeps_gradients(tiny_llama_cfg, tokenizer):
    from reccocktail.models.tuning import build_peft_model

    a = build_peft_model(tiny_llama_cfg, init_seed=5)
    b = build_peft_model(tiny_llama_cfg, init_seed=5, gradient_checkpointing=True)
    c = build_peft_model(tiny_llama_cfg, init_seed=6)
    sa, sb, sc = lora_state(a), lora_state(b), lora_state(c)
    assert sa.keys() == sb.keys() and sa
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa if "lora_A" in k)
    # make B non-zero so every LoRA weight gets a gradient
    for m in (a, b):
        with torch.no_grad():
            for n, p in m.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.linspace(-0.1, 0.1, p.numel()).view_as(p))
    items = make_items()
    builder = PromptBuilder(tokenizer, items)
    batch = collate([builder.example(s.history, s.candidates, s.target)
                     for s in make_samples(items, 2, 3)], tokenizer.pad_token_id)
    grads = []
    for m in (a, b):
        m.train()
        m(**batch).loss.backward()
        grads.append({n: p.grad.clone() for n, p in m.named_parameters() if p.requires_grad})
    inner = b.base_model.model
    assert getattr(inner, "is_activation_checkpointing", None) or inner.is_gradient_checkpointing
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], rtol=1e-4, atol=1e-6)


def test_response_loss_equals_the_models_own_loss(tiny_qwen2_cfg, tokenizer):
    from reccocktail.models.tuning import build_peft_model, response_loss

    model = build_peft_model(tiny_qwen2_cfg, init_seed=0)
    items = make_items()
    builder = PromptBuilder(tokenizer, items)
    batch = collate([builder.example(s.history, s.candidates, s.target)
                     for s in make_samples(items, 3, 8)], tokenizer.pad_token_id)
    with torch.no_grad():
        torch.testing.assert_close(response_loss(model, **batch), model(**batch).loss)


def test_nf4_without_cuda_fails_clearly(tiny_llama_cfg):
    from reccocktail.models.backbone import resolve_pretrained
    from reccocktail.models.tuning import build_peft_model

    cfg = OmegaConf.to_container(tiny_llama_cfg)
    cfg.update(source="hub", pretrained=resolve_pretrained(tiny_llama_cfg), quantization="nf4",
               allow_cpu_quantization=False, attn_implementation=None)  # a hub backbone's keys
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(RuntimeError, match="allow_cpu_quantization"):
        build_peft_model(cfg, init_seed=0)


class _Interrupt(RuntimeError):
    pass


def _interrupt_at(monkeypatch, step: int):
    """Make the next stage's trainer die when it reaches `step` (after that step's checkpoint)."""
    import lightning as L

    from reccocktail import runtime as pipeline  # stages build trainers and loggers there

    class Killer(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            if trainer.global_step >= step:
                raise _Interrupt(f"interrupted at step {trainer.global_step}")

    real = pipeline.make_trainer

    def make(cfg, out_dir, stage, callbacks=None, **kw):
        return real(cfg, out_dir, stage, callbacks=[*(callbacks or []), Killer()], **kw)

    monkeypatch.setattr(pipeline, "make_trainer", make)


def test_interrupted_specific_stage_resumes_to_the_same_adapter(tiny_llama_cfg, tmp_path, monkeypatch):
    from reccocktail.models.adapters import load_adapter_weights, read_manifest
    from reccocktail.models.stage import run_specific_stage

    # reference: one uninterrupted run (8 samples, batch 2 -> 4 steps)
    ref_dir = tmp_path / "ref"
    write_domain(ref_dir / "data", general=False)
    no_cache = {"specific": {"reuse": False}}  # both runs train: neither takes the other's S
    ref = run_specific_stage(make_cfg(ref_dir, tiny_llama_cfg, **no_cache), ref_dir)
    assert ref["metrics"]["steps"] == 4 and ref["metrics"]["train_samples"] == 8
    m = read_manifest(ref_dir / "adapters" / "specific")
    assert m["kind"] == "specific" and m["backbone"] == "tiny_llama" and m["init_seed"] == 0

    run_dir = tmp_path / "run"
    write_domain(run_dir / "data", general=False)
    cfg = make_cfg(run_dir, tiny_llama_cfg, **no_cache)
    with monkeypatch.context() as mp:
        _interrupt_at(mp, step=2)
        with pytest.raises(_Interrupt):
            run_specific_stage(cfg, run_dir)
    assert not (run_dir / "adapters" / "specific").exists()
    ckpts = list((run_dir / "specific" / "checkpoints").glob("*/last.ckpt"))
    assert len(ckpts) == 1
    ck = torch.load(ckpts[0], map_location="cpu", weights_only=True)
    assert ck["global_step"] == 2
    assert ck["state_dict"] and all("lora_" in k for k in ck["state_dict"])  # no backbone weights

    out = run_specific_stage(cfg, run_dir)  # the same command again: resumes
    assert out["metrics"]["resumed_from"] == str(ckpts[0]) and out["metrics"]["steps"] == 4
    got = load_adapter_weights(run_dir / "adapters" / "specific")
    want = load_adapter_weights(ref_dir / "adapters" / "specific")
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-5, atol=1e-7)
    # a finished adapter is not trained again
    assert run_specific_stage(cfg, run_dir)["reused"] == "run"


def test_pipeline_runs_both_stages_from_the_hydra_config(tmp_path):
    """`stages=[general,specific]` through `run(cfg)` with the project's config groups."""
    import os

    from hydra import compose, initialize_config_dir

    from reccocktail.models.adapters import read_manifest
    from reccocktail.pipeline import run

    out = tmp_path / "run"
    write_domain(out / "data")
    cache = os.environ["RECCOCKTAIL_CACHE"]  # the converted tokenizer lives there
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = compose("run", overrides=[
            "backbone=tiny_llama", "tuning=smoke", "logger=none", "stages=[general,specific]",
            f"paths.output_dir={out}", f"paths.cache_dir={tmp_path / 'cache'}",
            f"backbone.cache_dir={cache}", f"backbone.tokenizer.cache_dir={cache}",
            "+trainer.enable_progress_bar=false",
        ])
    summaries = run(cfg)
    assert summaries["general"]["metrics"]["steps"] == 4
    assert summaries["specific"]["metrics"]["train_samples"] == 8  # smoke: max_samples 8
    g, s = read_manifest(out / "adapters" / "general"), read_manifest(out / "adapters" / "specific")
    assert g["init_seed"] == s["init_seed"] == cfg.seed
    assert g["config"]["tuning"]["max_samples"] == 8 and s["kind"] == "specific"
    assert (out / "stages" / "specific.json").is_file()


def test_grid_validation_users_are_held_out_of_the_ingredient(tiny_llama_cfg, tmp_path):
    """With mix=grid, the validation users the grid will score never train S (instruction
    objective, include_valid); the held-out set is recorded and equals the grid's choice."""
    from reccocktail.data.samples import load_samples
    from reccocktail.data.selection import selection_samples
    from reccocktail.models.adapters import read_manifest
    from reccocktail.models.stage import run_specific_stage

    out = tmp_path / "run"
    write_domain(out / "data", n_valid=6, general=False)
    cfg = make_cfg(out, tiny_llama_cfg, max_steps=1)
    cfg.mix = {"name": "grid", "grid_max_users": 2}
    run_specific_stage(cfg, out)
    conf = read_manifest(out / "adapters" / "specific")["config"]
    valid = load_samples(out / "data" / "valid.jsonl")
    grid_users = {s.user for s in selection_samples(valid, cfg.mix, 0)}
    assert set(conf["held_out_valid_users"]) == grid_users and len(grid_users) == 2
    assert not grid_users & set(conf["valid_users_trained"])
    assert grid_users | set(conf["valid_users_trained"]) == {s.user for s in valid}
    cfg.mix = {"name": "entropy"}  # nothing selects on validation data: no one held out
    assert selection_samples(valid, cfg.mix, 0) == []


# -- what an accumulated step's gradient is ---------------------------------------------------
def _one_step_gradients(backbone, builder, windows, batch_size: int, accumulate: int,
                        normalization: str) -> dict[str, torch.Tensor]:
    """The LoRA gradients of the first optimizer step (float64, lr 0) over `windows`."""
    import lightning as L

    from reccocktail.models.sequence_data import SequenceDataModule
    from reccocktail.models.tuning import InstructionTuningModule

    module = InstructionTuningModule(
        backbone, tuning_cfg(lr=0.0, init_seed=0, schedule="constant", warmup_steps=0,
                               loss_normalization=normalization), stage="specific")
    module.configure_model()
    module.model.double()
    with torch.no_grad():  # B = 0 at init would leave every lora_A gradient at zero
        for n, p in module.model.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.linspace(-0.2, 0.2, p.numel(), dtype=p.dtype).view_as(p))
    dm = SequenceDataModule(windows, builder, batch_size=batch_size, seed=0)
    trainer = L.Trainer(accelerator="cpu", max_steps=1, accumulate_grad_batches=accumulate,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False,
                        limit_val_batches=0)
    trainer.fit(module, datamodule=dm)
    # Lightning zeroes gradients before a step's first micro-batch, so after the one step
    # they are still that step's (after the normalisation hook: it runs before the step)
    grads = {n: p.grad for n, p in module.named_parameters() if p.requires_grad}
    assert trainer.global_step == 1 and grads
    assert all(g is not None for g in grads.values())
    assert all(g.dtype == torch.float64 for g in grads.values())
    return grads


def test_accumulated_gradient_is_the_token_mean_of_the_effective_batch(tiny_llama_cfg, tokenizer):
    """4 windows with 2, 9, 4 and 12 targets: one step as 2 micro-batches x 2, 4 x 1 or 1 x 4
    gives the same LoRA gradient (the mean over all 27 target tokens) with
    loss_normalization=tokens; with micro_batch the split changes it."""
    from reccocktail.data.prompts import build_prompt_builder
    from reccocktail.models.sequence_data import Window
    from reccocktail.models.tuning import target_count

    items = make_items()
    ids = list(items)
    builder = build_prompt_builder(tokenizer, items, {"prompt": {"noun": "movie",
                                                                 "verb": "watched"}},
                                   {"max_prompt_tokens": 512, "chat_template": True}, 16,
                                   fmt="sequence")
    windows = [Window(f"u{k}", tuple(ids[k:k + 3 + n]), 3) for k, n in enumerate((2, 9, 4, 12))]
    examples = [builder.sequence_example(w.items, w.context) for w in windows]
    counts = [target_count(collate([e], 0)["labels"]) for e in examples]
    assert len(set(counts)) == 4  # the windows' target counts differ (in tokens too)
    backbone = OmegaConf.to_container(tiny_llama_cfg)
    ref = _one_step_gradients(backbone, builder, windows, 4, 1, "tokens")
    for bs, acc in ((2, 2), (1, 4)):
        got = _one_step_gradients(backbone, builder, windows, bs, acc, "tokens")
        assert got.keys() == ref.keys()
        for k in ref:
            torch.testing.assert_close(got[k], ref[k], rtol=1e-10, atol=1e-13)
    # the old rule weights the 1 x 4 micro-batches equally: not the token mean
    old = _one_step_gradients(backbone, builder, windows, 1, 4, "micro_batch")
    assert any(not torch.allclose(old[k], ref[k], rtol=1e-6, atol=1e-9) for k in ref)
    # with one micro-batch per step both rules are the same mean
    same = _one_step_gradients(backbone, builder, windows, 4, 1, "micro_batch")
    for k in ref:
        torch.testing.assert_close(same[k], ref[k], rtol=1e-10, atol=1e-13)


def test_cache_keys_of_adapters_trained_before_the_new_keys_are_kept():
    """Early stopping off and loss_normalization=micro_batch leave the result config (and so
    the cache keys) as they were before the keys existed; `tokens` or early stopping on change
    it. The pinned hash was computed on the code before these keys existed."""
    from reccocktail.models.training import result_block as result_config
    from reccocktail.utils.io import stable_hash

    before = {"objective": "instruction", "mode": "lora", "full": {"train_embeddings": False},
              "lr": 2e-4, "batch_size": 2, "accumulate_grad_batches": 4, "epochs": 1, "seed": 0,
              "init_seed": 0, "reuse": True, "ckpt_path": None}
    # stable_hash(result_config(before)) before the keys existed: "5f8ba6e7db211625"
    off = {"enabled": False, "every_n_steps": 5, "patience": 3, "max_users": 64,
           "normalize": False}
    now = before | {"loss_normalization": "micro_batch", "early_stopping": off}
    assert stable_hash(result_config(now)) == "5f8ba6e7db211625"
    tokens = result_config(now | {"loss_normalization": "tokens"})
    assert tokens["loss_normalization"] == "tokens" and "early_stopping" not in tokens
    on = result_config(now | {"early_stopping": off | {"enabled": True}})
    assert on["early_stopping"]["enabled"] is True
    assert len({stable_hash(x) for x in (result_config(now), tokens, on)}) == 3
    with pytest.raises(ValueError, match="tuning.loss_normalization"):
        result_config(now | {"loss_normalization": "token"})
