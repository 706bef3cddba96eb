"""Mixing operators, unlabeled prompt choice and the `mix` stage, on the tiny Llama."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
from conftest import run_config
from omegaconf import OmegaConf

from reccocktail.cocktail.mix import (
    check_compatible,
    mix_adapters,
    mix_and_save,
    model_module_name,
)
from reccocktail.data.samples import Sample, write_items
from reccocktail.data.selection import split_unlabeled
from reccocktail.models.adapters import read_lora
from reccocktail.utils.io import read_json, write_json, write_jsonl

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def make_adapter(path: Path, backbone_cfg, seed: int, r: int = 4, alpha: int = 8,
                 targets=TARGETS, backbone: str = "tiny_llama", kind: str = "general",
                 perturb_seed: int | None = None):
    """A PEFT LoRA (init seed `seed`) on a fresh tiny backbone, saved with a manifest; A is
    perturbed a little and B set to random values (seeded by `perturb_seed`), as if trained."""
    from peft import LoraConfig, get_peft_model

    from reccocktail.models.backbone import load_backbone

    model = load_backbone(backbone_cfg)[0]
    torch.manual_seed(seed)
    pm = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=list(targets),
                                          lora_dropout=0.0, task_type="CAUSAL_LM"))
    gen = torch.Generator().manual_seed(1000 + (seed if perturb_seed is None else perturb_seed))
    with torch.no_grad():
        for name, p in sorted(pm.named_parameters()):
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
            elif "lora_A" in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05)
    pm.save_pretrained(str(path))
    write_json(path / "manifest.json", {"kind": kind, "backbone": backbone, "init_seed": seed,
                                        "data_hash": "x", "config": {}, "metrics": {}})
    return read_lora(path)


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_llama_cfg):
    root = tmp_path_factory.mktemp("adapters")
    return {
        "g": make_adapter(root / "general", tiny_llama_cfg, seed=1),
        "s": make_adapter(root / "specific", tiny_llama_cfg, seed=1, kind="specific",
                          perturb_seed=99),
        "s2": make_adapter(root / "s2", tiny_llama_cfg, seed=2, kind="specific"),
        "alpha": make_adapter(root / "alpha", tiny_llama_cfg, seed=3, alpha=16),
        "r2": make_adapter(root / "r2", tiny_llama_cfg, seed=4, r=2, alpha=4),
        "qv": make_adapter(root / "qv", tiny_llama_cfg, seed=5, targets=["q_proj", "v_proj"]),
        "other": make_adapter(root / "other", tiny_llama_cfg, seed=1, backbone="tiny_qwen2"),
        "root": root,
    }


def _fresh(cfg):
    from reccocktail.models.backbone import load_backbone

    return load_backbone(cfg)[0]


def _ids() -> torch.Tensor:
    return torch.randint(10, 5000, (2, 9), generator=torch.Generator().manual_seed(0))


def _peft_logits(cfg, folder: Path) -> torch.Tensor:
    from peft import PeftModel

    model = PeftModel.from_pretrained(_fresh(cfg), str(folder)).eval()
    with torch.no_grad():
        return model(input_ids=_ids()).logits


def _mixed_logits(cfg, ads, weights, mode) -> torch.Tensor:
    from reccocktail.cocktail.entropy import LoraMixer

    model = _fresh(cfg)
    mixer = LoraMixer(model, ads, mode)
    mixer.set_weights(weights)
    with torch.no_grad():
        return model(input_ids=_ids()).logits


@pytest.mark.parametrize("mode", ["ab", "delta"])
@pytest.mark.parametrize("granularity", ["model", "layer"])
def test_differentiable_mix_equals_exported_adapter(adapters, tiny_llama_cfg, tmp_path, mode,
                                                    granularity):
    ads = [adapters["g"], adapters["s"]]
    n_mod = len(ads[0].modules)
    if granularity == "model":
        weights = torch.tensor([0.3, 0.7])
        lambdas = [0.3, 0.7]
    else:
        weights = torch.rand(n_mod, 2, generator=torch.Generator().manual_seed(1)).softmax(-1)
        lambdas = {k: weights[j].tolist() for j, k in enumerate(ads[0].modules)}
    mix_and_save(ads, lambdas, mode, tmp_path / "mixed")
    exported = _peft_logits(tiny_llama_cfg, tmp_path / "mixed")
    mixed = _mixed_logits(tiny_llama_cfg, ads, weights, mode)
    base = _fresh(tiny_llama_cfg)(input_ids=_ids()).logits.detach()
    assert (exported - base).abs().max() > 1e-2  # the mix does change the model
    assert (mixed - exported).abs().max() < 1e-5
    manifest = read_json(tmp_path / "mixed" / "manifest.json")
    assert manifest["kind"] == "mixed" and manifest["mode"] == mode
    assert manifest["granularity"] == granularity
    config = read_json(tmp_path / "mixed" / "adapter_config.json")
    assert config["r"] == (4 if mode == "ab" else 8)


@pytest.mark.parametrize("mode", ["ab", "delta"])
def test_endpoints_reproduce_single_adapters(adapters, tiny_llama_cfg, mode):
    ads = [adapters["g"], adapters["s2"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for weights, name in (([1.0, 0.0], "general"), ([0.0, 1.0], "s2")):
            mixed = _mixed_logits(tiny_llama_cfg, ads, weights, mode)
            alone = _peft_logits(tiny_llama_cfg, adapters["root"] / name)
            assert (mixed - alone).abs().max() < 1e-5


def _delta(ad, module: str) -> torch.Tensor:
    return ad.scaling * ad.B[module].double() @ ad.A[module].double()


def test_delta_mode_is_exact_for_different_ranks_and_scalings(adapters):
    ads = [adapters["g"], adapters["r2"], adapters["alpha"]]  # three adapters, r 4/2/4, alpha 8/4/16
    lam = [0.2, 0.5, 0.3]
    config, tensors = mix_adapters(ads, lam, "delta")
    assert config["r"] == 10 and config["lora_alpha"] == 10 and not config["use_rslora"]
    for m in ads[0].modules:
        got = tensors[f"{m}.lora_B.weight"].double() @ tensors[f"{m}.lora_A.weight"].double()
        want = sum(w * _delta(a, m) for w, a in zip(lam, ads))
        assert torch.allclose(got, want, atol=1e-6)


def test_ab_mode_keeps_common_scaling_and_folds_different_ones(adapters):
    g, s, a16 = adapters["g"], adapters["s"], adapters["alpha"]
    m = g.modules[0]
    config, tensors = mix_adapters([g, s], [0.25, 0.75], "ab")
    assert config["lora_alpha"] == 8 and config["r"] == 4
    assert torch.allclose(tensors[f"{m}.lora_A.weight"], 0.25 * g.A[m] + 0.75 * s.A[m], atol=1e-7)
    assert torch.allclose(tensors[f"{m}.lora_B.weight"], 0.25 * g.B[m] + 0.75 * s.B[m], atol=1e-7)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config, tensors = mix_adapters([g, a16], [1.0, 0.0], "ab")
    assert config["lora_alpha"] == config["r"]  # scaling 1: each adapter's own folded into B
    got = tensors[f"{m}.lora_B.weight"].double() @ tensors[f"{m}.lora_A.weight"].double()
    assert torch.allclose(got, _delta(g, m), atol=1e-6)


def test_mismatched_adapters_are_refused_naming_the_difference(adapters):
    g = adapters["g"]
    with pytest.raises(ValueError, match="different backbones.*tiny_llama.*tiny_qwen2"):
        check_compatible([g, adapters["other"]], "delta")
    with pytest.raises(ValueError, match=r"different ranks \(r=4 vs r=2\)"):
        check_compatible([g, adapters["r2"]], "ab")
    check_compatible([g, adapters["r2"]], "delta")  # delta mixes different ranks exactly
    with pytest.raises(ValueError, match="different target modules"):
        check_compatible([g, adapters["qv"]], "ab")
    m = g.modules[0]
    bad = read_lora(adapters["root"] / "specific")
    bad.A[m] = torch.zeros(4, 32)
    with pytest.raises(ValueError, match=f"shape of {m}.lora_A"):
        check_compatible([g, bad], "ab")
    with pytest.raises(ValueError, match="mix.mode"):
        check_compatible([g, adapters["s"]], "sum")
    with pytest.raises(ValueError, match="at least 2"):
        check_compatible([g], "ab")


def test_ab_warns_on_different_init_seeds(adapters):
    with pytest.warns(UserWarning, match="init seeds"):
        check_compatible([adapters["g"], adapters["s2"]], "ab")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_compatible([adapters["g"], adapters["s"]], "ab")
        check_compatible([adapters["g"], adapters["s2"]], "delta")


def test_load_adapter_errors_name_the_file(tmp_path, adapters):
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        read_lora(tmp_path)
    src = adapters["root"] / "general"
    (tmp_path / "adapter_config.json").write_text("{bad", encoding="utf-8")
    (tmp_path / "adapter_model.safetensors").write_bytes((src / "adapter_model.safetensors").read_bytes())
    with pytest.raises(ValueError, match="adapter_config.json:1"):
        read_lora(tmp_path)
    cfg = json.loads((src / "adapter_config.json").read_text())
    cfg["use_dora"] = True
    (tmp_path / "adapter_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    with pytest.raises(ValueError, match="use_dora"):
        read_lora(tmp_path)


def test_layer_lambdas_must_cover_every_module(adapters):
    with pytest.raises(KeyError, match="no λ for module"):
        mix_adapters([adapters["g"], adapters["s"]], {"model.layers.0.self_attn.q_proj": [1, 0]}, "ab")
    with pytest.raises(ValueError, match="3 λ value"):
        mix_adapters([adapters["g"], adapters["s"]], [0.2, 0.3, 0.5], "ab")
    assert model_module_name("base_model.model.model.layers.0.x") == "model.layers.0.x"


# -- unlabeled prompts ------------------------------------------------------------------------

def _samples(users: int, per_user: int = 1) -> list[Sample]:
    return [Sample(id=f"u{u}-{j}", user=f"u{u}", history=["a"], target="b", candidates=["b", "c"])
            for u in range(users) for j in range(per_user)]


def test_split_unlabeled_takes_whole_users_seeded():
    samples = _samples(20, per_user=3)
    tuning, scored = split_unlabeled(samples, 7, seed=3, transductive=False)
    assert len(tuning) == 7
    tuning_users = {s.user for s in tuning}
    assert len(tuning_users) == 3  # 3 + 3 + 1: whole users leave scoring
    assert not tuning_users & {s.user for s in scored}
    assert len(scored) == len(samples) - 9
    again = split_unlabeled(list(reversed(samples)), 7, seed=3, transductive=False)
    assert {s.user for s in again[0]} == tuning_users  # independent of the input order
    other = split_unlabeled(samples, 7, seed=4, transductive=False)
    assert {s.user for s in other[0]} != tuning_users
    t2, s2 = split_unlabeled(samples, 7, seed=3, transductive=True)
    assert [s.id for s in t2] == [s.id for s in tuning] and s2 == samples


def test_split_unlabeled_edge_cases():
    samples = _samples(5)
    tuning, scored = split_unlabeled(samples, 0, seed=0, transductive=False)
    assert tuning == [] and scored == samples
    with pytest.raises(ValueError, match="selection.lambda_users"):
        split_unlabeled(samples, 5, seed=0, transductive=False)
    assert len(split_unlabeled(samples, 50, seed=0, transductive=True)[0]) == 5
    with pytest.raises(ValueError, match="selection.lambda_users"):
        split_unlabeled(samples, -1, seed=0, transductive=True)


# -- the stage ----------------------------------------------------------------------------

def _run_dir(tmp_path: Path, adapters) -> Path:
    import shutil

    out = tmp_path / "run"
    for name, src in (("general", "general"), ("specific", "specific")):
        shutil.copytree(adapters["root"] / src, out / "adapters" / name)
    items = {str(i): f"Movie number {i}" for i in range(40)}
    write_items(out / "data" / "items.tsv", items)
    for split in ("valid", "test"):
        rows = []
        for u in range(6):
            cands = [str((u * 7 + j) % 40) for j in range(30)]
            rows.append({"id": f"{split}-{u}", "user": f"u{u}", "history": ["1", "2", "3"],
                         "target": cands[u % 30], "candidates": cands})
        write_jsonl(out / "data" / f"{split}.jsonl", rows)
    return out


def _cfg(out: Path, tiny_llama_cfg, selection: dict | None = None, **mix):
    """The composed config (mix=<name>, the instruction format) with this test's blocks."""
    name = mix.get("name", "entropy")
    return run_config({
        "seed": 0,
        "backbone": OmegaConf.to_container(tiny_llama_cfg, resolve=True),
        "domain": {"name": "toy", "prompt": {"noun": "movie", "verb": "watched"}},
        "data": {"max_title_tokens": 8},
        "mix": mix,
        "selection": {"lambda_users": 3, "transductive": False, "max_scored_users": None,
                      **(selection or {})},
        "trainer": {"_target_": "lightning.pytorch.Trainer", "accelerator": "cpu", "devices": 1,
                    "enable_progress_bar": False, "enable_model_summary": False},
        "logger": None,
        "paths": {"output_dir": str(out)},
    }, f"mix={name if name in ('entropy', 'fixed', 'grid') else 'entropy'}", "tuning=default")


def test_stage_fixed_writes_cocktail_wa_and_lambda_json(adapters, tiny_llama_cfg, tmp_path):
    from reccocktail.cocktail.stage import run_mix_stage

    out = _run_dir(tmp_path, adapters)
    summary = run_mix_stage(_cfg(out, tiny_llama_cfg, name="fixed", lambdas=[1.0, 0.0]), out)
    assert summary["lambdas"] == [1.0, 0.0]
    g = adapters["g"]
    cocktail = read_lora(out / "adapters" / "cocktail")
    wa = read_lora(out / "adapters" / "wa")
    for m in g.modules:
        assert torch.equal(cocktail.A[m], g.A[m]) and torch.equal(cocktail.B[m], g.B[m])
        assert torch.allclose(wa.A[m], 0.5 * (g.A[m] + adapters["s"].A[m]))
    assert cocktail.manifest["kind"] == "mixed" and wa.manifest["lambdas"] == [0.5, 0.5]
    info = read_json(out / "mix" / "lambda.json")
    assert info["name"] == "fixed" and info["lambdas"] == [1.0, 0.0] and info["mode"] == "ab"
    assert run_mix_stage(_cfg(out, tiny_llama_cfg, name="fixed", lambdas=[1.0, 0.0]), out)["reused"]
    with pytest.raises(ValueError, match="mix.lambdas"):
        run_mix_stage(_cfg(out, tiny_llama_cfg, name="fixed", lambdas=[0.7, 0.7]), out)
    with pytest.raises(ValueError, match="mix.name"):
        run_mix_stage(_cfg(out, tiny_llama_cfg, name="magic"), out)


def test_stage_refuses_corrupt_and_foreign_adapters(adapters, tiny_llama_cfg, tmp_path):
    """A corrupt cocktail is mixed again, never reused; an S of another run (the cold split in
    this warm run) or without a manifest is refused naming what differs; with
    allow_foreign_adapters=true it is mixed and lambda.json and the cocktail record it."""
    from reccocktail.cocktail.stage import run_mix_stage
    from reccocktail.models.adapters import AdapterError, is_intact

    out = _run_dir(tmp_path, adapters)
    write_json(out / "data" / "manifest.json", {"data_hash": "x"})  # what S was trained on
    cfg = _cfg(out, tiny_llama_cfg, name="fixed", lambdas=[0.5, 0.5])
    run_mix_stage(cfg, out)
    cocktail = out / "adapters" / "cocktail"
    weights = cocktail / "adapter_model.safetensors"
    good = weights.read_bytes()
    weights.write_bytes(good[: len(good) // 2])
    assert run_mix_stage(cfg, out)["reused"] is False
    assert is_intact(cocktail) and weights.read_bytes() == good

    spec = out / "adapters" / "specific" / "manifest.json"
    write_json(spec, {**read_json(spec), "data_hash": "cold-data",
                      "run": {"scenario": "cold", "domain": "toy"}})
    with pytest.raises(AdapterError, match=r"mix: adapter 'specific': .* scenario: 'cold' "
                                           r"\(adapter\) vs 'warm' \(this run\)"):
        run_mix_stage(cfg, out)
    cfg.allow_foreign_adapters = True
    assert run_mix_stage(cfg, out)["reused"] is False  # not the cocktail of the run's own S
    recorded = read_json(out / "mix" / "lambda.json")["foreign_adapters"]
    assert list(recorded) == ["specific"] and "scenario: 'cold'" in " ".join(recorded["specific"])
    assert read_json(cocktail / "manifest.json")["foreign_sources"] == recorded

    cfg.allow_foreign_adapters = False
    spec.unlink()  # no manifest: refused, naming it (not "different LoRA init seeds")
    with pytest.raises(AdapterError, match=rf"{spec}: no adapter manifest"):
        run_mix_stage(cfg, out)


class _LambdaReadingScorer:
    """Stand-in scorer: ranks the target first only when the mix holds λ_G = 0.7."""

    def __init__(self, model, builder, batch_size=8, normalize=False):
        self.model = model

    def score(self, samples):
        lam = self.model.model.layers[0].self_attn.q_proj.weights
        scores = torch.zeros(len(samples), len(samples[0].candidates))
        for i, s in enumerate(samples):
            scores[i, s.target_index] = 1.0 if abs(float(lam[0]) - 0.7) < 1e-6 else -1.0
        return scores


def _metrics(scores, target_index, ks=(1, 3)):
    rank = (scores > scores.gather(1, target_index[:, None])).sum(1) + 1
    return {f"ndcg@{k}": float(((rank <= k) / torch.log2(rank + 1.0)).mean()) for k in ks}


def test_stage_grid_picks_best_validation_lambda(adapters, tiny_llama_cfg, tmp_path):
    from reccocktail.cocktail.stage import run_mix_stage

    out = _run_dir(tmp_path, adapters)
    cfg = _cfg(out, tiny_llama_cfg, name="grid", grid=[0.0, 0.3, 0.5, 0.7, 1.0], grid_max_users=4)
    summary = run_mix_stage(cfg, out, scorer_factory=_LambdaReadingScorer, metrics_fn=_metrics)
    assert summary["lambdas"] == pytest.approx([0.7, 0.3])
    info = read_json(out / "mix" / "lambda.json")
    assert [r["lambda"][0] for r in info["grid"]] == [0.0, 0.3, 0.5, 0.7, 1.0]
    assert info["num_valid"] == 4 and len(info["valid_users"]) == 4
    assert read_json(out / "adapters" / "cocktail" / "manifest.json")["lambdas"] == pytest.approx(
        [0.7, 0.3])


def test_stage_entropy_records_users_and_curve(adapters, tiny_llama_cfg, tmp_path):
    from reccocktail.cocktail.stage import run_mix_stage

    out = _run_dir(tmp_path, adapters)
    cfg = _cfg(out, tiny_llama_cfg, name="entropy", granularity="layer", k=2, lr=0.1, steps=2,
               batch_size=2)
    summary = run_mix_stage(cfg, out)
    info = read_json(out / "mix" / "lambda.json")
    assert info["granularity"] == "layer" and info["transductive"] is False
    assert len(info["tuning_users"]) == 3 and len(info["tuning_sample_ids"]) == 3
    assert info["num_scored"] == 3 and len(info["curve"]) == 2
    lam = info["lambdas"]
    assert len(lam) == len(adapters["g"].modules)
    assert all(abs(sum(v) - 1) < 1e-6 for v in lam.values())
    assert any(abs(v[0] - 0.5) > 1e-4 for v in lam.values())  # λ moved from its start
    assert summary["granularity"] == "layer"
    assert _peft_logits(tiny_llama_cfg, out / "adapters" / "cocktail").isfinite().all()
    # the eval stage, from the same `selection:` setting, scores none of the λ users ...
    from reccocktail.evaluation.samples import eval_samples

    scored, _ = eval_samples(cfg, out)
    assert len(scored) == info["num_scored"] == 3
    assert not set(info["tuning_users"]) & {s.user for s in scored}
    assert info["tuning_split"] == "test" and info["lambda_users"] == 3
    # ... and refuses to when it is run with another setting than the mix stage was
    cfg.selection.lambda_users = 1
    with pytest.raises(ValueError, match="selection.lambda_users"):
        eval_samples(cfg, out)
    cfg.selection.transductive = True  # on purpose: every user scored, λ users too
    assert len(eval_samples(cfg, out)[0]) == 6


def test_stage_records_the_lambda_objective_and_keys_the_mix_by_it(adapters, tiny_llama_cfg,
                                                                   tmp_path):
    from reccocktail.cocktail.stage import mix_config, run_mix_stage

    out = _run_dir(tmp_path, adapters)
    common = dict(k=2, lr=0.1, steps=1, batch_size=3)
    cfg = _cfg(out, tiny_llama_cfg, name="entropy", objective="infomax", **common)
    assert run_mix_stage(cfg, out)["reused"] is False
    info = read_json(out / "mix" / "lambda.json")
    assert info["lambda_objective"] == "infomax" and "anchor_beta" not in info
    assert set(info["curve"][0]) >= {"loss", "entropy", "lambda"}
    assert info["curve"][0]["loss"] < info["curve"][0]["entropy"]  # minus H(mean answer)
    assert run_mix_stage(cfg, out)["reused"] is True
    # β keys the anchored objective only
    same = _cfg(out, tiny_llama_cfg, name="entropy", objective="infomax", anchor_beta=9.0, **common)
    assert mix_config(same).block == mix_config(cfg).block
    anchored = _cfg(out, tiny_llama_cfg, name="entropy", objective="anchored", anchor_beta=2.0,
                    **common)
    assert run_mix_stage(anchored, out)["reused"] is False
    info = read_json(out / "mix" / "lambda.json")
    assert info["lambda_objective"] == "anchored" and info["anchor_beta"] == 2.0
    with pytest.raises(ValueError, match="mix.objective"):
        mix_config(_cfg(out, tiny_llama_cfg, name="entropy", objective="tent"))
    # the paper's objective stays the default
    assert mix_config(_cfg(out, tiny_llama_cfg, name="entropy")).objective == "entropy"


def test_stage_grid_with_the_real_likelihood_scorer(adapters, tiny_llama_cfg, tmp_path):
    pytest.importorskip("reccocktail.evaluation.scorers")
    from reccocktail.cocktail.stage import run_mix_stage

    out = _run_dir(tmp_path, adapters)
    cfg = _cfg(out, tiny_llama_cfg, name="grid", grid=[0.0, 1.0], grid_max_users=2)
    summary = run_mix_stage(cfg, out)
    info = read_json(out / "mix" / "lambda.json")
    assert len(info["grid"]) == 2 and all(0.0 <= r["ndcg@1"] <= 1.0 for r in info["grid"])
    best = max(info["grid"], key=lambda r: (r["ndcg@1"], r["ndcg@3"]))
    assert summary["lambdas"] == best["lambda"]


def test_stage_grid_refuses_users_that_trained_s(adapters, tiny_llama_cfg, tmp_path):
    """The grid's validation users must not have trained S (recorded in S's manifest)."""
    from reccocktail.cocktail.stage import run_mix_stage
    from reccocktail.data.samples import load_samples
    from reccocktail.data.selection import selection_samples

    out = _run_dir(tmp_path, adapters)
    cfg = _cfg(out, tiny_llama_cfg, name="grid", grid=[0.0, 0.7], grid_max_users=2)
    grid_users = {s.user for s in selection_samples(load_samples(out / "data" / "valid.jsonl"),
                                                   cfg.mix, 0)}
    mpath = out / "adapters" / "specific" / "manifest.json"
    manifest = read_json(mpath)
    manifest.setdefault("config", {})["valid_users_trained"] = [sorted(grid_users)[0], "u99"]
    write_json(mpath, manifest)
    with pytest.raises(ValueError, match="trained the ingredient"):
        run_mix_stage(cfg, out, scorer_factory=_LambdaReadingScorer, metrics_fn=_metrics)
    manifest["config"]["valid_users_trained"] = ["u99"]
    write_json(mpath, manifest)
    run_mix_stage(cfg, out, scorer_factory=_LambdaReadingScorer, metrics_fn=_metrics)
    assert set(read_json(out / "mix" / "lambda.json")["valid_users"]) == grid_users
