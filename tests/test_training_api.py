"""The public training API (`reccocktail.models.training`) that the adapter stages and the LLM
baselines share: its required tuning keys are a constant kept equal to the shipped defaults."""

from __future__ import annotations

from unittest import mock

import pytest
from conftest import run_config
from omegaconf import OmegaConf

from reccocktail.models.training import (
    STAGE_BLOCKS,
    STAGE_TUNING_KEYS,
    TUNING_KEYS,
    required_tuning_keys,
    tuning_config,
)
from reccocktail.utils.paths import CONF_DIR


def test_required_tuning_keys_are_those_of_the_default_tuning_file():
    """A key added to conf/tuning/default.yaml must be added to the constant (and back): the
    constant is what a run's tuning config is checked against."""
    node = OmegaConf.to_container(OmegaConf.load(CONF_DIR / "tuning" / "default.yaml"),
                                  resolve=False)
    assert list(TUNING_KEYS) == [k for k in node if k not in STAGE_BLOCKS]
    for stage in STAGE_BLOCKS:
        assert list(STAGE_TUNING_KEYS[stage]) == list(node[stage])
        assert required_tuning_keys(stage) == [*TUNING_KEYS, *STAGE_TUNING_KEYS[stage]]
    with pytest.raises(ValueError, match="tuning stage"):
        required_tuning_keys("mix")


def test_tuning_config_reads_no_yaml_at_run_time():
    cfg = run_config()
    with mock.patch.object(OmegaConf, "load", side_effect=AssertionError("read a YAML file")):
        t = tuning_config(cfg, "specific")
    assert t.num_train_prompts == cfg.tuning.specific.num_train_prompts
    del cfg.tuning.specific["reuse"]
    with pytest.raises(KeyError, match="reuse"):
        tuning_config(cfg, "specific")
