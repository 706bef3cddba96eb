"""One `selection:` setting decides which test users tune λ and which are scored, for every stage;
the old keys map onto it with a warning; one default per setting (the YAML's)."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import pytest
import torch
from conftest import run_config
from omegaconf import OmegaConf

from reccocktail.data import selection as sel
from reccocktail.data.samples import Sample, write_items
from reccocktail.utils.io import write_json, write_jsonl

ROOT = Path(__file__).resolve().parents[1]
N_USERS = 12


def _data(out: Path) -> Path:
    items = {str(i): f"Movie number {i}" for i in range(40)}
    write_items(out / "data" / "items.tsv", items)
    rows = []
    for u in range(N_USERS):
        cands = [str((u * 7 + j) % 40) for j in range(30)]
        rows.append(Sample(f"test-{u}", f"u{u}", ["1", "2"], cands[u % 30], cands).to_json())
    write_jsonl(out / "data" / "test.jsonl", rows)
    return out


def _lambda_users(cfg, out: Path) -> set[str]:
    """The users whose prompts the mix stage tunes λ on: its own call, its own arguments."""
    from reccocktail.data.samples import load_samples

    test = load_samples(out / "data" / f"{sel.LAMBDA_SPLIT}.jsonl")
    return {s.user for s in sel.select_users(test, sel.selection_config(cfg), int(cfg.seed)).tuning}


@pytest.mark.parametrize("mix", ["entropy", "grid", "fixed"])
@pytest.mark.parametrize("transductive", [False, True])
def test_lambda_users_and_scored_users_are_disjoint_for_every_mix(mix, transductive, tmp_path):
    from reccocktail.cocktail.stage import mix_config
    from reccocktail.evaluation.samples import eval_samples

    out = _data(tmp_path)
    cfg = run_config({"paths": {"output_dir": str(out)}}, f"mix={mix}", "selection.lambda_users=4",
                     f"selection.transductive={str(transductive).lower()}")
    # the mix group carries no selection key: it cannot hold a default of its own
    assert not {"num_prompts", "transductive"} & set(mix_config(cfg).block)
    tuned = _lambda_users(cfg, out)
    scored = {s.user for s in eval_samples(cfg, out)[0]}
    assert len(tuned) == 4
    if transductive:
        assert scored == {f"u{u}" for u in range(N_USERS)}
    else:
        assert not tuned & scored and len(scored) == N_USERS - 4
    # a mix block from before the change (keys deleted, not null) changes nothing
    del cfg.mix["num_prompts"], cfg.mix["transductive"]
    assert _lambda_users(cfg, out) == tuned
    assert {s.user for s in eval_samples(cfg, out)[0]} == scored


def test_without_the_selection_block_both_stages_fail_naming_it(tmp_path):
    from reccocktail.evaluation.samples import eval_samples

    out = _data(tmp_path)
    cfg = run_config({"paths": {"output_dir": str(out)}})
    del cfg.selection["lambda_users"]
    with pytest.raises(KeyError, match="selection.lambda_users"):
        _lambda_users(cfg, out)
    with pytest.raises(KeyError, match="selection.lambda_users"):
        eval_samples(cfg, out)
    del cfg["selection"]
    with pytest.raises(KeyError, match="selection"):
        eval_samples(cfg, out)


def test_eval_refuses_users_that_tuned_lambda(tmp_path):
    """A lambda.json whose λ users are among the scored ones (the mix ran with another
    setting) stops the evaluation; transductive on purpose or another split does not."""
    from reccocktail.evaluation.samples import eval_samples

    out = _data(tmp_path)
    cfg = run_config({"paths": {"output_dir": str(out)}}, "selection.lambda_users=0")
    write_json(out / "mix" / "lambda.json", {"tuning_users": ["u3", "u5"], "transductive": False,
                                             "tuning_split": "test"})
    with pytest.raises(ValueError, match=r"2 user\(s\).*selection.lambda_users"):
        eval_samples(cfg, out)
    cfg.selection.transductive = True
    assert len(eval_samples(cfg, out)[0]) == N_USERS


def test_eval_refuses_lambda_users_after_a_transductive_mix(tmp_path):
    """A mix that ran transductively still tuned on its λ users: a non-transductive evaluation
    with another selection must refuse to score them; the same selection scores the rest."""
    from reccocktail.evaluation.samples import eval_samples

    out = _data(tmp_path)
    mix_cfg = run_config({"paths": {"output_dir": str(out)}}, "selection.lambda_users=4",
                         "selection.transductive=true")
    tuned = sorted(_lambda_users(mix_cfg, out))
    write_json(out / "mix" / "lambda.json", {"tuning_users": tuned, "transductive": True,
                                             "tuning_split": "test"})
    cfg = run_config({"paths": {"output_dir": str(out)}}, "selection.lambda_users=0")
    with pytest.raises(ValueError, match=r"4 user\(s\).*ran transductively"):
        eval_samples(cfg, out)
    cfg = run_config({"paths": {"output_dir": str(out)}}, "selection.lambda_users=4")
    scored = {s.user for s in eval_samples(cfg, out)[0]}
    assert len(scored) == N_USERS - 4 and not scored & set(tuned)
    cfg.selection.transductive = True  # scoring the λ users on purpose
    assert len(eval_samples(cfg, out)[0]) == N_USERS


@pytest.mark.parametrize("old,new,value,expected", [
    ("mix.num_prompts", "lambda_users", "7", 7),
    ("mix.transductive", "transductive", "true", True),
    ("eval.max_users", "max_scored_users", "5", 5),
])
def test_old_keys_map_onto_the_selection_block_with_a_warning(old, new, value, expected, caplog,
                                                              monkeypatch):
    from reccocktail.config_check import config_errors

    monkeypatch.setattr(sel, "_warned", set())
    cfg = run_config(None, f"{old}={value}")  # no `+`: the old key still composes
    assert config_errors(cfg) == []
    with caplog.at_level(logging.WARNING, logger=sel.__name__):
        parsed = sel.selection_config(cfg)
    assert getattr(parsed, new) == expected
    assert f"{old} is deprecated" in caplog.text and f"selection.{new}" in caplog.text
    plain_cfg = run_config()
    plain = sel.selection_config(plain_cfg)  # unset (null) aliases: the block's own values
    block = plain_cfg.selection
    assert plain == sel.Selection(lambda_users=block.lambda_users, transductive=block.transductive,
                                  max_scored_users=block.max_scored_users)
    assert getattr(plain, new) != expected  # the alias's value came from the alias alone


def test_selection_values_are_checked_before_any_stage():
    from reccocktail.config_check import config_errors

    cfg = run_config(None, "selection.lambda_users=-1")
    with pytest.raises(ValueError, match="selection.lambda_users"):
        sel.selection_config(cfg)
    assert any("selection.lambda_users must be >= 0" in e for e in config_errors(cfg))
    with pytest.raises(ValueError, match="selection.max_scored_users"):
        sel.selection_config(run_config(None, "selection.max_scored_users=0"))


# -- one default per setting ------------------------------------------------------------------

@pytest.mark.parametrize("tuning,lr", [("default", 2e-4), ("gpu", 1e-4)])
def test_tuning_lr_is_the_yaml_value_the_optimizer_gets(tuning, lr):
    """The stage's tuning config and the optimizer both see the composed YAML's lr (the code
    once had 1e-4 of its own beside the YAML's 2e-4)."""
    from reccocktail.models.training import tuning_config
    from reccocktail.models.tuning import InstructionTuningModule

    yaml_lr = float(OmegaConf.load(ROOT / "conf" / "tuning" / f"{tuning}.yaml").lr)
    assert yaml_lr == lr
    for stage in ("general", "specific"):
        t = tuning_config(run_config(None, f"tuning={tuning}"), stage)
        assert t.lr == lr
    module = InstructionTuningModule({}, t, stage="specific")
    module.model = torch.nn.Linear(2, 2)
    with mock.patch.object(InstructionTuningModule, "trainer",
                           SimpleNamespace(estimated_stepping_batches=10)):
        opt = module.configure_optimizers()["optimizer"]
    assert opt.param_groups[0]["initial_lr"] == pytest.approx(lr)


def test_a_missing_stage_key_fails_naming_it():
    from reccocktail.cocktail.stage import mix_config
    from reccocktail.models.training import tuning_config
    from reccocktail.models.tuning_config import parse_tuning

    cfg = run_config()
    block = tuning_config(cfg, "specific").block
    del cfg.tuning["lr"]
    with pytest.raises(KeyError, match="lr"):
        tuning_config(cfg, "specific")
    cfg = run_config(None, "mix=entropy")
    del cfg.mix["k"]
    with pytest.raises(KeyError, match="mix.k"):
        mix_config(cfg)
    # the typed config is complete and typed once parsed: a hand-built block is checked there
    with pytest.raises(KeyError, match="tuning.lr: missing"):
        parse_tuning({k: v for k, v in block.items() if k != "lr"})
    with pytest.raises(ValueError, match="tuning.batch_size: expected"):
        parse_tuning({**block, "batch_size": "two"})
    with pytest.raises(ValueError, match="tuning.sequence.max_titles: expected"):
        parse_tuning({**block, "sequence": {**block["sequence"], "max_titles": "many"}})
    with pytest.raises(ValueError, match="tuning.schedule: unknown value 'cosin'"):
        parse_tuning({**block, "schedule": "cosin"})
    with pytest.raises(ValueError, match=r"tuning.lrr: unknown key \(did you mean tuning.lr\?\)"):
        parse_tuning({**block, "lrr": 1e-4})


@pytest.mark.parametrize("scenario", ["warm", "cold"])
def test_the_ingredient_never_trains_on_the_cold_validation_split(scenario, tmp_path):
    """The paper's instruction recipe trains S on valid.jsonl; in cold that file holds the
    validation-new items (the grid's and early stopping's labels), so S trains on train.jsonl
    only, and the grid finds no validation user that trained S."""
    from reccocktail.models.stage import specific_plan, specific_training_data, tuning_config

    out = _data(tmp_path)  # items "0".."39"
    train = [Sample(f"u{u}:train:{p}", f"u{u}", [str(p)], str(p + 1),
                    [str(p + 1), *[str(30 + j) for j in range(5)]]).to_json()
             for u in range(N_USERS) for p in range(1, 3)]
    valid = [Sample(f"u{u}:valid:3", f"u{u}", ["1", "2"], str(20 + u % 5),
                    [str(20 + u % 5), *[str(30 + j) for j in range(5)]]).to_json()
             for u in range(N_USERS)]
    write_jsonl(out / "data" / "train.jsonl", train)
    write_jsonl(out / "data" / "valid.jsonl", valid)
    cfg = run_config({"paths": {"output_dir": str(out)}}, f"scenario={scenario}", "tuning=default",
                     "mix=grid", "tuning.specific.num_train_prompts=null")
    t = tuning_config(cfg, "specific")
    extra = specific_plan(cfg, out, t)
    _, rows, _ = specific_training_data(cfg, out, t, extra)
    valid_targets = {s["target"] for s in valid}
    trained_valid = [s for s in rows if ":valid:" in s.id]
    if scenario == "cold":
        assert not trained_valid and not {s.target for s in rows} & valid_targets
        assert extra["valid_users_trained"] == [] and "held_out_valid_users" not in extra
        assert len(rows) == len(train)
    else:  # warm: the recipe, minus the grid's users
        held = set(extra["held_out_valid_users"])
        assert held and {s.user for s in trained_valid} == {f"u{u}" for u in range(N_USERS)} - held


def test_eval_samples_record_the_data_hash(tmp_path):
    """Every scored row records the run's data hash (paired tests refuse rows of other data)."""
    from reccocktail.evaluation.samples import eval_samples

    out = _data(tmp_path)
    cfg = run_config({"paths": {"output_dir": str(out)}})
    assert eval_samples(cfg, out)[1]["data_hash"] is None  # no data manifest: nothing to record
    write_json(out / "data" / "manifest.json", {"data_hash": "abc123"})
    assert eval_samples(cfg, out)[1]["data_hash"] == "abc123"
