"""bf16 on the CPU: `backbone.dtype: auto` follows the processor's flags (fp32 fallback with a log
line), a bf16 backbone trains an fp32 LoRA with fp32 Adam state as well as fp32 does, scores
with the same top-1, leaves λ and the exported cocktail within 1e-3, and the resolved dtype is
recorded in the cache key, the adapter manifest and the results rows."""

from __future__ import annotations

import json
import logging
import random
import warnings

import pytest
import torch
from conftest import tuning_cfg
from omegaconf import OmegaConf

from reccocktail.utils import device as dev

WITH_BF16 = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 avx512_vnni\n"
WITH_AMX = "processor\t: 0\nflags\t\t: fpu avx512f amx_tile amx_bf16 amx_int8\n"
WITHOUT = "processor\t: 0\nmodel name\t: Old Xeon\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n"


def _tiny(cfg, dtype: str) -> dict:
    out = OmegaConf.to_container(cfg)
    out["dtype"] = dtype
    return out


# -- auto -------------------------------------------------------------------------------------

def test_auto_follows_the_cpu_flags_and_falls_back_to_fp32_with_a_log_line(caplog):
    assert dev.resolve_dtype("auto", "cpu", cpuinfo=WITH_BF16) == "bfloat16"
    assert dev.resolve_dtype("auto", "cpu", cpuinfo=WITH_AMX) == "bfloat16"
    with caplog.at_level(logging.INFO, logger="reccocktail.utils.device"):
        assert dev.resolve_dtype("auto", "cpu", cpuinfo=WITHOUT) == "float32"
    assert any("avx512_bf16" in r.getMessage() and "float32" in r.getMessage()
               for r in caplog.records), caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="reccocktail.utils.device"):
        dev.resolve_dtype("auto", "cpu", cpuinfo=WITH_BF16)
    assert not caplog.records  # no fallback, no fallback line
    # a GPU keeps the fp32 weights it always loaded (the trainer's bf16-mixed does the rest)
    assert dev.resolve_dtype("auto", "cuda", cpuinfo=WITH_BF16) == "float32"
    # an explicit dtype is taken as it is, whatever the processor
    assert dev.resolve_dtype("bfloat16", "cpu", cpuinfo=WITHOUT) == "bfloat16"
    assert dev.resolve_dtype("float32", "cpu", cpuinfo=WITH_BF16) == "float32"
    with pytest.raises(ValueError, match="backbone.dtype"):
        dev.resolve_dtype("bf16", "cpu")
    assert dev.cpu_model(WITH_BF16) == "AMD EPYC" and dev.cpu_model("") is None


@pytest.mark.parametrize(("cpuinfo", "expected"), [(WITH_BF16, "bfloat16"), (WITHOUT, "float32")])
def test_the_run_config_records_the_resolved_dtype(monkeypatch, cpuinfo, expected):
    monkeypatch.setattr(dev, "_read_cpuinfo", lambda: cpuinfo)
    cfg = OmegaConf.create({"trainer": {"accelerator": "cpu", "devices": 1},
                            "backbone": {"name": "x", "dtype": "auto"}})
    OmegaConf.set_struct(cfg, True)
    assert dev.resolve_backbone_dtype(cfg) == expected
    assert cfg.backbone.dtype == expected  # what keys, manifests and rows read from now on


# -- training ---------------------------------------------------------------------------------

def _train_planted(backbone: dict, tokenizer, tmp_path, epochs: int):
    """The planted cycle of tests/test_sequence_objective.py (users walk i -> i+1 over 8 items),
    trained with the project's module and data module; returns (module, trainer)."""
    import lightning as L
    from test_sequence_objective import builder, items_

    from reccocktail.models.sequence_data import SequenceDataModule, build_windows
    from reccocktail.models.tuning import InstructionTuningModule

    L.seed_everything(0, verbose=False)
    backbone["config"]["initializer_range"] = 0.3
    pb = builder(tokenizer, items_(8))
    rng = random.Random(0)
    seqs = {}
    for u in range(16):
        start = rng.randrange(8)
        seqs[f"u{u}"] = [str((start + k) % 8) for k in range(7)]
    dm = SequenceDataModule(build_windows(seqs, 40, 2), pb, batch_size=8)
    module = InstructionTuningModule(
        backbone, tuning_cfg(lr=2e-2, init_seed=0, schedule="constant", warmup_steps=0,
                               objective="sequence"), stage="specific")
    trainer = L.Trainer(accelerator="cpu", max_epochs=epochs, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False,
                        default_root_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(module, datamodule=dm)
    return module, trainer


def test_bf16_training_lowers_the_loss_like_fp32_with_fp32_lora_and_adam_state(
        tiny_llama_cfg, tokenizer, tmp_path):
    runs = {d: _train_planted(_tiny(tiny_llama_cfg, d), tokenizer, tmp_path / d, epochs=12)
            for d in ("float32", "bfloat16")}
    module, trainer = runs["bfloat16"]
    frozen = {p.dtype for p in module.model.parameters() if not p.requires_grad}
    trained = {n: p for n, p in module.model.named_parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16}
    assert trained and all("lora_" in n and p.dtype == torch.float32 for n, p in trained.items())
    state = trainer.optimizers[0].state
    moments = [t for s in state.values() for k, t in s.items() if k in ("exp_avg", "exp_avg_sq")]
    assert len(moments) == 2 * len(trained)
    assert all(t.dtype == torch.float32 for t in moments)
    last = {}
    for d, (m, _) in runs.items():
        losses = m.step_losses
        last[d] = sum(losses[-3:]) / 3
        assert last[d] < 0.5 * losses[0], (d, losses[0], losses[-3:])
    # the same descent: bf16 ends where fp32 ends (the loss falls from ~10 to well under 5)
    assert abs(last["bfloat16"] - last["float32"]) < 0.25 * last["float32"] + 0.1, last


@pytest.mark.parametrize("dtype,device,expected", [
    ("bfloat16", "cpu", dev.CPU_LOW_PRECISION_BUCKET), ("float16", "cpu", dev.CPU_LOW_PRECISION_BUCKET),
    ("float32", "cpu", 1), ("bfloat16", "cuda", 1)])
def test_length_buckets_only_for_low_precision_on_the_cpu(dtype, device, expected):
    assert dev.length_bucket(dtype, device) == expected


def test_bucketed_batches_have_the_unbucketed_loss(tiny_llama_cfg, tokenizer):
    """Rounding a batch's width up (bf16 on the CPU) pads with masked, unlabelled positions:
    the loss of the same examples is unchanged, and the width is a multiple of the bucket."""
    from reccocktail.models.datamodule import collate
    from reccocktail.models.tuning import build_peft_model, response_loss

    examples = [{"input_ids": list(range(5, 5 + n)), "labels": [-100] * 3 + list(range(8, 5 + n))}
                for n in (17, 30, 41)]
    model = build_peft_model(_tiny(tiny_llama_cfg, "float32"), init_seed=0)
    plain = collate(examples, pad_token_id=0)
    bucketed = collate(examples, pad_token_id=0, multiple=64)
    assert plain["input_ids"].shape[1] == 41 and bucketed["input_ids"].shape[1] == 64
    assert (bucketed["labels"][:, 41:] == -100).all() and (bucketed["attention_mask"][:, 41:] == 0).all()
    with torch.no_grad():
        a, b = (response_loss(model, **batch) for batch in (plain, bucketed))
    assert torch.allclose(a, b, atol=1e-5), (a, b)


def test_train_adapter_buckets_batches_for_a_bf16_backbone_on_the_cpu(monkeypatch, tmp_path):
    from reccocktail.models import sequence_data, training

    seen: dict = {}

    class Built(Exception):
        pass

    class Recorder:
        def __init__(self, *args, **kwargs):
            seen.update(kwargs)
            raise Built

    monkeypatch.setattr(sequence_data, "SequenceDataModule", Recorder)
    monkeypatch.setattr(training, "SequenceDataModule", Recorder, raising=False)
    for dtype, expected in (("bfloat16", dev.CPU_LOW_PRECISION_BUCKET), ("float32", 1)):
        cfg = OmegaConf.create({"backbone": {"dtype": dtype}, "trainer": {"accelerator": "cpu"}})
        with pytest.raises(Built):
            training.train_adapter(cfg, tmp_path, "specific", tuning_cfg(objective="sequence"),
                                   [object()], [], None, "key")
        assert seen["pad_multiple"] == expected, dtype


# -- scoring ----------------------------------------------------------------------------------

def test_bf16_and_fp32_scoring_give_the_same_top1_on_a_planted_case(tiny_llama_cfg):
    from test_scorers import builder, make_items, make_samples

    from reccocktail.evaluation.scorers import LikelihoodScorer
    from reccocktail.models.backbone import load_backbone

    items = make_items()
    samples = make_samples(items, n_users=6, n_cand=30, seed=5)
    tops = {}
    for d in ("float32", "bfloat16"):
        model, tok = load_backbone(_tiny(tiny_llama_cfg, d))
        assert next(model.parameters()).dtype == getattr(torch, d)
        pb = builder(tok, items)
        top = []
        for s in samples:  # plant a favourite that is not the positive: scoring must follow it
            fav = next(c for c in reversed(s.candidates) if c != s.target)
            bias = torch.zeros(len(tok), dtype=getattr(torch, d))
            bias[pb.response_ids(fav)[:-1]] = 8.0
            hook = model.lm_head.register_forward_hook(lambda m, i, o, b=bias: o + b)
            try:
                scores = LikelihoodScorer(model, pb, batch_size=30).score([s])
            finally:
                hook.remove()
            assert scores.dtype == torch.float32
            top.append(int(scores[0].argmax()))
            assert top[-1] == s.candidates.index(fav), d
        tops[d] = top
    assert tops["bfloat16"] == tops["float32"]


# -- λ and the exported cocktail --------------------------------------------------------------

def _adapters(cfg, root):
    from peft import LoraConfig, get_peft_model

    from reccocktail.models.adapters import read_lora
    from reccocktail.models.backbone import load_backbone
    from reccocktail.utils.io import write_json

    out = []
    for name, b_std in (("g", 0.2), ("s", 0.4)):
        torch.manual_seed(7)
        pm = get_peft_model(load_backbone(cfg)[0], LoraConfig(
            r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
            lora_dropout=0.0, task_type="CAUSAL_LM"))
        gen = torch.Generator().manual_seed(100 + len(out))
        with torch.no_grad():
            for n, p in sorted(pm.named_parameters()):
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=gen) * b_std)
        pm.save_pretrained(str(root / name))
        write_json(root / name / "manifest.json", {"kind": "general", "backbone": "tiny_llama",
                                                   "init_seed": 7, "data_hash": "x"})
        out.append(read_lora(root / name))
    return out


def test_lambda_and_cocktail_on_a_bf16_backbone_match_fp32_within_1e3(tiny_llama_cfg, tmp_path):
    import lightning as L

    from reccocktail.cocktail.entropy import EntropyMixModule, PromptDataset
    from reccocktail.cocktail.mix import mix_adapters
    from reccocktail.models.backbone import load_backbone

    adapters = _adapters(tiny_llama_cfg, tmp_path)
    assert all(a.A[a.modules[0]].dtype == torch.float32 for a in adapters)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(100, 5000, (int(k),), generator=g).tolist()
               for k in torch.randint(6, 14, (6,), generator=g)]
    lams, cocktails = {}, {}
    for d in ("float32", "bfloat16"):
        model = load_backbone(_tiny(tiny_llama_cfg, d))[0]
        with torch.no_grad():
            model.get_input_embeddings().weight.mul_(10.0)  # confident enough to move λ
        torch.manual_seed(0)
        module = EntropyMixModule(model, adapters, mode="ab", k=3, lr=0.05)
        assert module.lambda_logits.dtype == torch.float32
        ds = PromptDataset(prompts, pad_id=0)
        loader = torch.utils.data.DataLoader(ds, batch_size=6, collate_fn=ds.collate)
        trainer = L.Trainer(accelerator="cpu", max_steps=4, max_epochs=-1, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False,
                            enable_model_summary=False)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer.fit(module, loader)
        lams[d] = torch.tensor(module.learned_lambdas())
        module.mixer.unwrap()
        _, tensors = mix_adapters(adapters, lams[d].tolist(), "ab")
        assert all(t.dtype == torch.float32 for t in tensors.values())  # the export stays fp32
        cocktails[d] = tensors
    assert (lams["float32"] - 0.5).abs().max() > 0.05, lams  # λ moved: the check can fail
    assert (lams["bfloat16"] - lams["float32"]).abs().max() < 1e-3, lams
    for k, t in cocktails["float32"].items():
        assert (cocktails["bfloat16"][k] - t).abs().max() < 1e-3, k


# -- where the dtype is recorded --------------------------------------------------------------

def test_manifest_cache_key_and_results_rows_record_the_resolved_dtype(
        monkeypatch, tmp_path, tiny_llama_cfg):
    from test_eval_stage import _write_data, make_cfg

    from reccocktail.evaluation.stage import run_eval_stage
    from reccocktail.models import adapters as ad
    from reccocktail.models.training import adapter_manifest, tuning_config

    monkeypatch.setattr(dev, "_read_cpuinfo", lambda: WITH_BF16)
    cfg = make_cfg(tmp_path, _tiny(tiny_llama_cfg, "auto"))
    cfg.eval.variants = ["zero_shot"]
    fp32 = make_cfg(tmp_path, _tiny(tiny_llama_cfg, "float32"))
    explicit = make_cfg(tmp_path, _tiny(tiny_llama_cfg, "bfloat16"))
    t = tuning_config(cfg, "general")
    # a key made before the run resolves `auto` is already the resolved dtype's key
    key_auto = ad.general_cache_key(cfg.backbone, "h", t)
    assert dev.resolve_backbone_dtype(cfg) == "bfloat16" and cfg.backbone.dtype == "bfloat16"
    assert key_auto == ad.general_cache_key(cfg.backbone, "h", t) \
        == ad.general_cache_key(explicit.backbone, "h", t)
    assert key_auto != ad.general_cache_key(fp32.backbone, "h", t)
    m = adapter_manifest(cfg, "general", t, "h", key_auto, {}, tmp_path)
    assert m["backbone_dtype"] == "bfloat16" and m["config"]["backbone"]["dtype"] == "bfloat16"
    assert adapter_manifest(fp32, "general", t, "h", "k", {}, tmp_path)["backbone_dtype"] \
        == "float32"

    _write_data(tmp_path / "data")
    run_eval_stage(cfg, tmp_path)
    rows = json.loads((tmp_path / "results.json").read_text())["variants"]
    assert rows["zero_shot"]["backbone_dtype"] == "bfloat16"
    assert rows["random"]["backbone_dtype"] is None  # no backbone scored it


def test_benchmark_agreement_counts_top1_and_kendall_tau():
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location(
        "cpu_bf16", ROOT / "experiments" / "benchmarks" / "cpu_bf16.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    a = torch.tensor([[3.0, 2.0, 1.0, 0.0], [0.0, 1.0, 2.0, 3.0]])
    tau = bench.kendall_tau_b(a, torch.stack([a[0], a[1].flip(0)]))
    assert tau.tolist() == pytest.approx([1.0, -1.0])
    from reccocktail.data.samples import Sample

    samples = [Sample("s0", "u0", [], "a", ["a", "b", "c", "d"]),
               Sample("s1", "u1", [], "h", ["e", "f", "g", "h"])]
    other = torch.stack([a[0], a[1].flip(0)])  # user 1's top-1 moves from h to e
    got = bench.agreement(a, other, samples)
    assert got["top1_equal"] == 0.5 and got["kendall_tau_mean"] == 0.0
    assert got["ndcg@1_fp32"] == 1.0 and got["ndcg@1_bf16"] == 0.5
    assert got["ndcg@1_diff"] == -0.5
