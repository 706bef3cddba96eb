"""The baseline registry is the one list of baselines: it and conf/baselines/ name the same
models with the same `kind`, every entry's code exists, and every reader (stage, config check,
pipeline, pre-flight) refuses what it does not list, naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from reccocktail.baselines import stage as bstage
from reccocktail.baselines.models import ID_MODELS
from reccocktail.baselines.registry import BASELINES, FAMILIES, NAMES, baseline_names, lookup
from reccocktail.config_check import config_errors
from reccocktail.preflight import needs_backbone

CONF = Path(__file__).resolve().parents[1] / "conf"


def cfg_of(*overrides: str):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("run", overrides=list(overrides))


def conf_models() -> dict[str, str]:
    """name -> `kind` of every model file of conf/baselines (default.yaml holds `common`)."""
    return {f.stem: str(OmegaConf.load(f).kind)
            for f in sorted((CONF / "baselines").glob("*.yaml")) if f.stem != "default"}


def test_registry_and_conf_folder_list_the_same_baselines_and_kinds():
    assert set(BASELINES) == set(conf_models())
    assert {n: b.kind for n, b in BASELINES.items()} == conf_models()
    # the group's defaults list packages every model under its name, and only those
    defaults = OmegaConf.to_container(OmegaConf.load(CONF / "baselines" / "default.yaml").defaults)
    listed = {str(d).split("@")[1] for d in defaults if "@" in str(d)}
    assert listed == set(BASELINES)
    # and the composed default config holds a block for each
    assert set(cfg_of().baselines) - {"common"} == set(BASELINES)


def test_every_entry_names_code_that_exists():
    for name, b in BASELINES.items():
        assert b.family in FAMILIES and b.group == f"baselines.{name}"
        assert not (b.build and b.run), name
        if b.build:
            assert callable(b.builder())
        if b.run:
            assert callable(b.runner()) and b.uses_backbone and not b.ranks_full_catalogue
        if b.kind == "id":
            assert name in ID_MODELS
    assert [n for n, b in BASELINES.items() if not b.trained] == ["pop"]
    with pytest.raises(ValueError, match="baselines.pop.kind: 'popularity' is not trainable"):
        BASELINES["pop"].builder()


def test_an_unknown_baseline_fails_naming_baseline():
    with pytest.raises(ValueError, match=r"baseline: unknown name\(s\) \['bert4rec'\]"):
        baseline_names(["sasrec", "bert4rec"])
    assert baseline_names("bpr") == ["bpr"] and baseline_names(None) == []
    errors = config_errors(cfg_of("baseline=[sasrec,bert4rec]"))
    assert any(e.startswith("baseline: unknown name(s) ['bert4rec']; choose from") for e in errors)
    assert str(list(NAMES)) in "; ".join(errors)
    with pytest.raises(ValueError, match="baseline: unknown name 'bert4rec'"):
        lookup("bert4rec")


def test_pipeline_refuses_an_unknown_baseline_before_any_stage(tmp_path):
    from reccocktail.pipeline import run

    cfg = cfg_of("baseline=bert4rec", "logger=none", f"hydra.run.dir={tmp_path}",
                 "stages=[data]")
    with pytest.raises(ValueError, match=r"baseline: unknown name\(s\) \['bert4rec'\]"):
        run(cfg)
    assert not (tmp_path / "data").exists()


def test_a_block_with_another_kind_fails_naming_its_key():
    cfg = cfg_of("baseline=sasrec", "baselines.sasrec.kind=text")
    assert any(e.startswith("baselines.sasrec.kind=text: sasrec is a 'id' baseline")
               for e in config_errors(cfg))
    with pytest.raises(ValueError, match="baselines.sasrec.kind=text"):
        bstage.settings_for(cfg, "sasrec")
    with pytest.raises(KeyError, match="baselines.sasrec.kind"):
        lookup("sasrec", {"model": {}})
    assert not config_errors(cfg_of("baseline=[sasrec,p5]"))


def test_preflight_reads_which_baselines_load_the_backbone():
    cfg = cfg_of()
    assert not needs_backbone(cfg, ["baselines"], ["pop", "sasrec", "unisrec"])
    assert needs_backbone(cfg, ["baselines"], ["pop", "p5"])
    assert needs_backbone(cfg, ["baselines"], ["omfa"])
    assert {n for n, b in BASELINES.items() if b.uses_backbone} == {"p5", "omfa"}
