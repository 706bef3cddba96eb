"""The whole config is checked before the first stage: unknown keys and bad choice values fail
with the key's name; every shipped configuration passes."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from reccocktail.config_check import check_config, config_errors

CONF = Path(__file__).resolve().parents[1] / "conf"


def cfg_of(*overrides: str):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("run", overrides=list(overrides))


@pytest.mark.parametrize("overrides", [
    [], ["debug=fast"], ["mix=grid"], ["mix=fixed"], ["eval=generate"], ["eval=beam"], ["tuning=gpu"],
    ["eval=quick"], ["mix.num_prompts=5", "mix.transductive=true", "eval.max_users=3"],
    ["hparams_search=ml100k_optuna"], ["scenario=cold", "scenario.cold_negatives=new"],
    ["+tuning.general.lr=1e-3", "+tuning.specific.objective=sequence"],
    ["eval.scorer=[likelihood,generate]", "+eval.adapters.mine=/tmp/x"],
    *[[f"+experiment={p.stem}"] for p in sorted((CONF / "experiment").glob("*.yaml"))],
])
def test_every_shipped_configuration_passes(overrides):
    assert config_errors(cfg_of(*overrides)) == []


def test_misspelt_keys_fail_with_their_name_and_a_suggestion():
    errors = config_errors(cfg_of("+mix.lamda=0.3", "+data.histroy_len=5", "+foo=1"))
    text = "; ".join(errors)
    assert "mix.lamda: unknown key" in text
    assert "data.histroy_len: unknown key (did you mean data.history_len?)" in text
    assert "foo: unknown top-level key" in text
    with pytest.raises(ValueError, match="mix.lamda"):
        check_config(cfg_of("+mix.lamda=0.3"))


def test_misspelt_selection_and_stage_keys_fail_with_their_name():
    errors = "; ".join(config_errors(cfg_of("+selection.lamda_users=3", "+mix.num_prompt=3",
                                            "+eval.max_user=3", "+tuning.lrr=1e-3")))
    assert "selection.lamda_users: unknown key (did you mean selection.lambda_users?)" in errors
    assert "mix.num_prompt: unknown key (did you mean mix.num_prompts?)" in errors
    assert "eval.max_user: unknown key (did you mean eval.max_users?)" in errors
    assert "tuning.lrr: unknown key" in errors
    # the keys eval=quick sets in the global package are no keys of the eval block
    assert "eval.selection.max_scored_users: unknown key" in "; ".join(
        config_errors(cfg_of("+eval.selection.max_scored_users=3")))


def test_bad_choice_values_fail_before_any_stage(tmp_path, monkeypatch):
    errors = config_errors(cfg_of("mix.mode=abx", "eval.scorer=likelyhood",
                                  "tuning.objective=sequnce"))
    assert any(e.startswith("mix.mode=abx: not one of") for e in errors)
    assert any(e.startswith("eval.scorer=likelyhood") for e in errors)
    assert any(e.startswith("tuning.objective=sequnce") for e in errors)
    from reccocktail import pipeline

    ran = []
    monkeypatch.setattr(pipeline, "_resolve", lambda target: ran.append(target))
    cfg = cfg_of("mix.mode=abx", f"paths.output_dir={tmp_path}", "logger=none")
    with pytest.raises(ValueError, match="mix.mode=abx"):
        pipeline.run(cfg)
    assert ran == []  # no stage started


@pytest.mark.parametrize("search", ["beam", "exact"])
def test_beam_with_normalize_is_refused_naming_the_keys(search, tmp_path, monkeypatch):
    """Beam and exact search rank by summed log-probs: `eval.normalize=true` beside them would
    be ignored silently, so the config check refuses it before any stage (and the eval stage's
    own parse does too); normalised likelihood alone passes."""
    from reccocktail import pipeline
    from reccocktail.evaluation.stage import eval_config

    bad = cfg_of("eval=beam", "eval.normalize=true", f"eval.search={search}")
    errors = "; ".join(config_errors(bad))
    assert "eval.normalize=true" in errors and "eval.scorer=" in errors
    assert f"eval.search={search}" in errors
    with pytest.raises(ValueError, match="eval.normalize"):
        eval_config(bad)
    assert config_errors(cfg_of("eval.normalize=true")) == []
    assert config_errors(cfg_of("eval=beam", f"eval.search={search}")) == []
    ran = []
    monkeypatch.setattr(pipeline, "_resolve", lambda target: ran.append(target))
    bad = cfg_of("eval=beam", "eval.normalize=true", f"paths.output_dir={tmp_path}", "logger=none")
    with pytest.raises(ValueError, match="eval.normalize=true"):
        pipeline.run(bad)
    assert ran == []  # no stage started
