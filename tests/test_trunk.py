"""Sharing the lower layers between scored variants gives exactly the separate scores."""

from __future__ import annotations

import json
import random

import pytest
import torch

from reccocktail.data.prompts import PromptBuilder
from reccocktail.data.samples import Sample
from reccocktail.evaluation.scorers import LikelihoodScorer
from reccocktail.evaluation.trunk import TrunkReuse, decoder_layers, first_adapted_layer, plan


def _items(n: int = 40) -> dict[str, str]:
    rng = random.Random(0)
    words = ["Silent", "River", "Golden", "Empire", "Hidden", "Road", "Crown", "Lost", "Heart"]
    return {str(100 + i): " ".join(rng.sample(words, 1 + i % 4)) + f" ({1950 + i})"
            for i in range(n)}


def _samples(items: dict[str, str], n: int, seed: int = 1) -> list[Sample]:
    rng = random.Random(seed)
    ids = list(items)
    out = []
    for u in range(n):
        chosen = rng.sample(ids, 4 + 12)
        out.append(Sample(f"s{u}", f"u{u}", chosen[:4], chosen[4 + rng.randrange(12)], chosen[4:]))
    return out


@pytest.fixture(scope="module")
def four_layer_model(tiny_llama_cfg):
    from omegaconf import OmegaConf

    from reccocktail.models.backbone import load_backbone

    cfg = OmegaConf.merge(tiny_llama_cfg, {"config": {"num_hidden_layers": 4}})
    return load_backbone(cfg)


def _save_adapter(model, path, layers, seed: int) -> None:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    conf = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"],
                      layers_to_transform=layers, init_lora_weights=False)
    peft_model = get_peft_model(model, conf)
    peft_model.save_pretrained(str(path))
    peft_model.unload()


@pytest.mark.parametrize("packed", [True, False])
def test_shared_trunk_scores_equal_separate_scores(four_layer_model, tmp_path, packed):
    from reccocktail.evaluation.stage import AdapterSwitcher

    model, tok = four_layer_model
    items = _items()
    pb = PromptBuilder(tok, items, noun="movie", verb="watched")
    samples = _samples(items, 3)
    dirs = [None]
    for i, seed in enumerate((1, 2)):
        _save_adapter(model, tmp_path / f"a{i}", [2, 3], seed)
        dirs.append(tmp_path / f"a{i}")

    def score(m):
        return LikelihoodScorer(m, pb, batch_size=5, packed=packed).score(samples)

    switcher = AdapterSwitcher(model)
    separate = [score(switcher.use(d)) for d in dirs]
    switcher.drop()
    assert (separate[1] - separate[0]).abs().max() > 1e-3  # the adapters change the scores

    trunk = plan(dirs, model, True, ["likelihood"])
    assert trunk is not None and trunk.boundary == 2
    shared = []
    switcher = AdapterSwitcher(model)
    for d in dirs:
        m = switcher.use(d)
        ctx = trunk.replay(m) if trunk.recorded else trunk.record(m)
        with ctx:
            shared.append(score(m))
    switcher.drop()
    assert trunk.replays == 2 and trunk.nbytes > 0
    for a, b in zip(separate, shared, strict=True):
        assert torch.equal(a, b)
    # the layers are restored: scoring afterwards still works without the trunk
    assert torch.equal(score(model), separate[0])


def test_replay_refuses_other_samples(four_layer_model, tmp_path):
    model, tok = four_layer_model
    items = _items()
    pb = PromptBuilder(tok, items, noun="movie", verb="watched")
    samples = _samples(items, 2)
    trunk = TrunkReuse(2)
    with trunk.record(model):
        LikelihoodScorer(model, pb).score(samples)
    with pytest.raises(RuntimeError, match="share_trunk"), trunk.replay(model):
        LikelihoodScorer(model, pb).score(samples[::-1])
    # fewer calls than recorded are refused too
    with pytest.raises(RuntimeError, match="not replayed"), trunk.replay(model):
        LikelihoodScorer(model, pb).score(samples[:1])
    assert all("forward" not in layer.__dict__ for layer in decoder_layers(model))


def test_first_adapted_layer(tmp_path):
    def adapter(name, layers):
        d = tmp_path / name
        d.mkdir()
        (d / "adapter_config.json").write_text(json.dumps({"layers_to_transform": layers}))
        return d

    top = adapter("top", [22, 23, 29])
    assert first_adapted_layer([None, top], 30) == 22
    assert first_adapted_layer([top, adapter("one", 25)], 30) == 22
    assert first_adapted_layer([top, adapter("all", None)], 30) == 0
    assert first_adapted_layer([None], 30) == 30
    assert first_adapted_layer([top, tmp_path / "not_a_peft_folder"], 30) == 0


def test_lora_below_the_boundary_is_refused(four_layer_model, tmp_path):
    from reccocktail.evaluation.stage import AdapterSwitcher

    model, _ = four_layer_model
    _save_adapter(model, tmp_path / "low", [1, 2], 3)
    switcher = AdapterSwitcher(model)
    try:
        m = switcher.use(tmp_path / "low")
        with pytest.raises(ValueError, match="below the boundary"), TrunkReuse(2).record(m):
            pass
    finally:
        switcher.drop()
    assert plan([None, tmp_path / "low"], model, True, ["likelihood"]).boundary == 1
    assert plan([None, tmp_path / "low"], model, False, ["likelihood"]) is None
    assert plan([None, tmp_path / "low"], model, True, ["beam"]) is None



def test_eval_stage_shares_the_trunk_and_scores_as_alone(tmp_path, tiny_llama_cfg):
    """The eval stage with top-layer adapters: the rows say the lower layer was shared, and each
    variant's scores equal that adapter scored alone on a fresh model."""
    from peft import PeftModel
    from test_eval_stage import _write_data, make_cfg

    from reccocktail.data.samples import load_items, load_samples
    from reccocktail.evaluation.stage import run_eval_stage
    from reccocktail.models.backbone import load_backbone
    from reccocktail.utils.io import read_jsonl, write_json

    _write_data(tmp_path / "data")
    model, tok = load_backbone(tiny_llama_cfg)  # 2 layers: the adapters change layer 1 only
    for seed, name in enumerate(["general", "specific"], start=1):
        _save_adapter(model, tmp_path / "adapters" / name, [1], seed)
        write_json(tmp_path / "adapters" / name / "manifest.json",
                   {"kind": name, "backbone": "tiny_llama", "init_seed": seed, "data_hash": "x",
                    "config": {}, "metrics": {}})
    run_eval_stage(make_cfg(tmp_path, tiny_llama_cfg), tmp_path)
    rows = json.loads((tmp_path / "results.json").read_text())["variants"]
    assert [rows[n].get("shared_lower_layers") for n in ("zero_shot", "general", "specific")] \
        == [1, 1, 1]
    preds = {n: read_jsonl(tmp_path / "predictions" / f"{n}.jsonl") for n in ("general", "specific")}
    test = {s.id: s for s in load_samples(tmp_path / "data" / "test.jsonl")}
    samples = [test[r["id"]] for r in preds["general"]]
    pb = PromptBuilder(tok, load_items(tmp_path / "data" / "items.tsv"), noun="movie",
                       verb="watched")
    for name in ("general", "specific"):
        fresh, _ = load_backbone(tiny_llama_cfg)
        alone = LikelihoodScorer(PeftModel.from_pretrained(fresh, str(tmp_path / "adapters" / name)),
                                 pb).score(samples)
        got = torch.tensor([r["scores"] for r in preds[name]])
        torch.testing.assert_close(got, alone, atol=1e-5, rtol=0)
