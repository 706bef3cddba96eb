"""Early stopping of G and S on validation NDCG@1: which users it ranks, that it stops after
`patience` checks without a new best, and that the saved adapter is the best check's."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from test_tuning import make_cfg, write_domain

from reccocktail.models.early_stopping import RankingEarlyStopping

ES = {"enabled": True, "every_n_steps": 1, "patience": 2, "max_users": 2, "normalize": False}


def _record_steps(monkeypatch, weights: dict[int, dict[str, torch.Tensor]]):
    """Make the stage's trainer record the LoRA weights (in the saved adapter's names) after
    every optimizer step."""
    from peft import get_peft_model_state_dict

    from reccocktail import runtime

    class Recorder(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            step = trainer.global_step
            if step not in weights:
                weights[step] = {k: v.detach().clone() for k, v in
                                 get_peft_model_state_dict(pl_module.model).items()}

    real = runtime.make_trainer

    def make(cfg, out_dir, stage, callbacks=None, **kw):
        return real(cfg, out_dir, stage, callbacks=[*(callbacks or []), Recorder()], **kw)

    monkeypatch.setattr(runtime, "make_trainer", make)


def test_early_stopping_stops_and_saves_the_best_steps_adapter(tiny_llama_cfg, tmp_path,
                                                               monkeypatch):
    """A planted NDCG@1 sequence peaking at step 2: with patience 2 training stops at step 4
    (of 8) and the saved S equals the weights after step 2, not those after step 4. The ranked
    samples are exactly the early-stopping users' validation samples, none of which trained S."""
    from reccocktail.data.samples import load_samples
    from reccocktail.models.adapters import load_adapter_weights, read_manifest
    from reccocktail.models.stage import run_specific_stage

    out = tmp_path / "run"
    write_domain(out / "data", n_valid=6, general=False)
    cfg = make_cfg(out, tiny_llama_cfg, epochs=2, early_stopping=ES, specific={"reuse": False})
    planted = iter([0.2, 0.6, 0.4, 0.4, 0.9, 0.9])
    ranked: list[list[str]] = []

    def score(self, trainer, pl_module):
        ranked.append([s.id for s in self.samples])
        v = next(planted)
        return {"ndcg@1": v, "ndcg@3": v}

    monkeypatch.setattr(RankingEarlyStopping, "score", score)
    weights: dict[int, dict[str, torch.Tensor]] = {}
    _record_steps(monkeypatch, weights)
    summary = run_specific_stage(cfg, out)

    m = read_manifest(out / "adapters" / "specific")
    es = m["metrics"]["early_stopping"]
    assert m["metrics"]["steps"] == 4 and summary["metrics"]["steps"] == 4
    assert [c["step"] for c in es["curve"]] == [1, 2, 3, 4]
    assert [c["val_ndcg1"] for c in es["curve"]] == [0.2, 0.6, 0.4, 0.4]
    assert (es["best_step"], es["best_epoch"], es["best_val_ndcg1"]) == (2, 0, 0.6)
    assert es["stopped_early"] and es["restored"] and es["val_users"] == 2
    saved = load_adapter_weights(out / "adapters" / "specific")
    assert saved.keys() == weights[2].keys()
    for k in saved:
        torch.testing.assert_close(saved[k], weights[2][k], rtol=0, atol=0)
    assert any(not torch.equal(weights[2][k], weights[4][k]) for k in saved)
    # the ranked users are the recorded early-stopping users, held out of S's rows
    conf = m["config"]
    users = set(conf["early_stopping_valid_users"])
    valid = load_samples(out / "data" / "valid.jsonl")
    assert len(users) == 2 and ranked and all(
        set(r) == {s.id for s in valid if s.user in users} for r in ranked)
    assert users <= set(conf["held_out_valid_users"])
    assert not users & set(conf["valid_users_trained"])
    assert m["metrics"]["train_samples"] == 4 + 4  # 6 valid - 2 held out, + 4 train prompts
    assert m["config"]["tuning"]["early_stopping"]["enabled"] is True
    # the best weights travel in the Lightning checkpoint (a resumed run keeps them)
    ck = torch.load(next((out / "specific" / "checkpoints").glob("*/last.ckpt")),
                    map_location="cpu", weights_only=True)
    state = next(v for k, v in ck["callbacks"].items() if "RankingEarlyStopping" in k)
    assert state["best"] == 1 and state["best_weights"]


def test_per_epoch_checks_score_the_adapter_that_is_saved(tiny_llama_cfg, tmp_path):
    """every_n_steps=null: one real check per epoch (no patience: the whole budget runs); the
    best check's NDCG@1 is what the saved adapter scores on the same validation samples."""
    from reccocktail.data.prompts import prompt_builder_from_config
    from reccocktail.data.samples import load_items, load_samples
    from reccocktail.models.adapters import load_adapter, read_manifest
    from reccocktail.models.backbone import load_backbone
    from reccocktail.models.early_stopping import rank_validation
    from reccocktail.models.stage import run_specific_stage

    out = tmp_path / "run"
    write_domain(out / "data", n_valid=6, general=False)
    es_cfg = ES | {"every_n_steps": None, "patience": None, "max_users": 3}
    cfg = make_cfg(out, tiny_llama_cfg, epochs=3, lr=2e-2, early_stopping=es_cfg,
                   specific={"reuse": False})
    run_specific_stage(cfg, out)
    es = read_manifest(out / "adapters" / "specific")["metrics"]["early_stopping"]
    assert [c["epoch"] for c in es["curve"]] == [0, 1, 2] and not es["stopped_early"]
    values = [c["val_ndcg1"] for c in es["curve"]]
    assert es["best_val_ndcg1"] == max(values)
    assert es["best_step"] == es["curve"][values.index(max(values))]["step"]
    users = set(read_manifest(out / "adapters" / "specific")["config"]
                ["early_stopping_valid_users"])
    samples = [s for s in load_samples(out / "data" / "valid.jsonl",
                                       load_items(out / "data" / "items.tsv"))
               if s.user in users]
    model, tok = load_backbone(cfg.backbone)
    model = load_adapter(model, out / "adapters" / "specific")
    pb = prompt_builder_from_config(cfg, tok, load_items(out / "data" / "items.tsv"))
    got = rank_validation(model, pb, samples, batch_size=8)
    assert got["ndcg@1"] == pytest.approx(es["best_val_ndcg1"], abs=1e-9)


def test_early_stopping_refuses_what_it_cannot_keep_apart(tiny_llama_cfg, tmp_path):
    """G early-stopped on validation samples it trains on (include_valid) is refused, and so
    are bad counts."""
    from reccocktail.models.stage import run_general_stage
    from reccocktail.models.tuning_config import early_stopping_config

    out = tmp_path / "run"
    write_domain(out / "data")
    cfg = make_cfg(out, tiny_llama_cfg, early_stopping=ES, general={"include_valid": True})
    with pytest.raises(ValueError, match="include_valid"):
        run_general_stage(cfg, out)
    with pytest.raises(ValueError, match="tuning.early_stopping.patience"):
        early_stopping_config({"early_stopping": ES | {"patience": 0}})
    with pytest.raises(ValueError, match="tuning.early_stopping.max_user"):
        early_stopping_config({"early_stopping": ES | {"max_user": 3}})
    assert early_stopping_config({"early_stopping": ES | {"enabled": False}}) is None
