"""Every experiment file composes; unknown options and keys fail naming them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
PAPER = [f"{d}_{s}" for d in ("ml1m", "beauty", "toys", "sports") for s in ("warm", "cold")]


def cfg_of(*overrides: str):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("run", overrides=list(overrides))


def test_every_paper_setting_has_an_experiment_file():
    assert set(PAPER) | {"ml100k_demo"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes(name):
    cfg = cfg_of(f"+experiment={name}", "paths.data_root=/data")
    domain, scenario = name.rsplit("_", 1) if name in PAPER else ("ml100k", "warm")
    assert cfg.domain.name == domain and cfg.scenario.name == scenario
    assert cfg.domain.source.reader._target_.startswith("reccocktail.data.readers.read_")
    if name == "ml100k_demo":  # resolved by the fetch chain (tests/test_fetch.py): not /data
        raw = OmegaConf.to_container(cfg.domain.source.reader, resolve=False)["path"]
        assert raw.startswith("${ml100k_dir:")
    else:
        assert cfg.domain.source.reader.path.startswith("/data/")
    assert cfg.domain.general.sources and cfg.domain.prompt.noun
    if name in PAPER:
        assert (cfg.backbone.name, cfg.trainer.accelerator) == ("qwen2_7b", "gpu")
        assert cfg.tuning.lr == 1e-4 and cfg.tuning.general.max_samples is None
        assert cfg.data.max_test_users is None
    if scenario == "cold":
        assert 0 < cfg.scenario.new_item_fraction < 1
    if name != "ml100k_demo":
        OmegaConf.to_container(cfg.domain, resolve=True)  # every interpolation resolves


def test_demo_uses_the_root_defaults():
    root, demo = cfg_of(), cfg_of("+experiment=ml100k_demo")
    for group in ("domain", "scenario", "backbone", "trainer", "data", "tuning", "mix", "eval"):
        assert root[group] == demo[group], group
    assert demo.backbone.name == "smollm2_135m" and demo.trainer.accelerator == "cpu"
    assert demo.data.max_test_users == 100


def test_demo_reads_the_shared_copy_when_there(shared_data):
    cfg = cfg_of(f"paths.data_root={shared_data}")
    assert Path(cfg.domain.source.reader.path) == shared_data / "ml-100k" / "raw"


def test_unknown_group_option_names_it():
    with pytest.raises(ConfigCompositionException, match="nosuchdomain"):
        cfg_of("domain=nosuchdomain")
    with pytest.raises(ConfigCompositionException, match="nosuchexperiment"):
        cfg_of("+experiment=nosuchexperiment")


def test_unknown_key_names_it():
    with pytest.raises(ConfigCompositionException, match="history_lenght"):
        cfg_of("data.history_lenght=5")


def test_cli_prints_the_composed_config():
    out = subprocess.run([sys.executable, "run.py", "+experiment=beauty_cold", "--cfg", "job"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    cfg = OmegaConf.create(out.stdout)
    assert cfg.domain.name == "beauty" and cfg.scenario.name == "cold"
    assert cfg.backbone.name == "qwen2_7b"


def test_one_of_names_the_key_the_choices_and_the_nearest():
    from reccocktail.utils.config import one_of

    assert one_of("ab", ("ab", "cat"), "mix.mode") == "ab"
    with pytest.raises(ValueError, match=r"mix\.mode: unknown value 'catt'; choose one of "
                                         r"\['ab', 'cat'\] \(did you mean 'cat'\?\)"):
        one_of("catt", ("ab", "cat"), "mix.mode")
    with pytest.raises(ValueError, match=r"choose one of \['ab', 'cat'\]$"):
        one_of("zzzz", ("ab", "cat"), "mix.mode")
