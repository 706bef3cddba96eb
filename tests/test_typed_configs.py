"""One default per setting: every config group option composes and the typed configs of its
stages (data, mix, eval, tuning) parse; a misspelt, missing or mistyped key fails at the stage's
entry with the key's name; every backbone file holds the keys its loader reads."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf, open_dict

from reccocktail.cocktail.stage import MixConfig, mix_config
from reccocktail.data.stage import DataConfig, data_config, run_data_stage
from reccocktail.evaluation.config import EvalConfig, eval_config
from reccocktail.evaluation.stage import run_eval_stage
from reccocktail.models.training import tuning_config
from reccocktail.models.tuning_config import TuningConfig

CONF = Path(__file__).resolve().parents[1] / "conf"
# Groups chosen by option (conf/<group>/<option>.yaml); `baselines` holds one option whose
# files are its packages, `hydra`/`paths` are plumbing.
GROUPS = ("backbone", "domain", "scenario", "tuning", "mix", "eval", "trainer", "logger",
          "recommend", "size", "debug", "hparams_search", "experiment")
OPTIONS = [f"{'+' if g == 'experiment' else ''}{g}={p.stem}"
           for g in GROUPS for p in sorted((CONF / g).glob("*.yaml"))]


def cfg_of(*overrides: str):
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("run", overrides=list(overrides))


def parse_all(cfg) -> tuple[DataConfig, MixConfig, EvalConfig, TuningConfig, TuningConfig]:
    return (data_config(cfg), mix_config(cfg), eval_config(cfg), tuning_config(cfg, "general"),
            tuning_config(cfg, "specific"))


def test_every_group_option_is_covered():
    assert "+experiment=ml100k_demo" in OPTIONS and "eval=quick" in OPTIONS
    assert len([o for o in OPTIONS if o.startswith("+experiment=")]) >= 9


@pytest.mark.parametrize("override", [None, *OPTIONS])
def test_every_option_composes_and_its_stage_configs_parse(override):
    cfg = cfg_of(*([override] if override else []))
    data, mix, ev, general, specific = parse_all(cfg)
    # each typed value is the composed YAML's, converted to the field's type
    assert data.history_len == int(cfg.data.history_len) and data.seed == int(cfg.seed)
    assert mix.name == cfg.mix.name and ev.split == cfg.eval.split
    scorer = cfg.eval.scorer
    assert ev.scorer == ((scorer,) if isinstance(scorer, str) else tuple(scorer))
    assert ev.ks == tuple(cfg.eval.ks) and all(isinstance(k, int) for k in ev.ks)
    assert general.precision == specific.precision == cfg.trainer.precision
    assert specific.mode == "lora" and specific.lr == float(cfg.tuning.lr)
    assert general.batch_size == int(cfg.tuning.batch_size)


def test_eval_config_reads_the_option_files():
    assert eval_config(cfg_of()).scorer == ("likelihood",)
    assert eval_config(cfg_of("eval=generate")).scorer == ("likelihood", "generate")
    assert eval_config(cfg_of("eval=beam")).beam_size == 10
    quick = eval_config(cfg_of("eval=quick"))
    assert "zero_shot" not in quick.variants
    assert eval_config(cfg_of("eval.max_new_tokens=12")).max_new_tokens == 12
    assert eval_config(cfg_of("+eval.adapters.mine=/tmp/x")).adapters == {"mine": "/tmp/x"}


@pytest.mark.parametrize("override, parse, message", [
    ("+data.histroy_len=5", data_config,
     "data.histroy_len: unknown key (did you mean data.history_len?)"),
    ("+mix.lamda=0.3", mix_config, "mix.lamda: unknown key"),
    ("+eval.scorrer=beam", eval_config, "eval.scorrer: unknown key (did you mean eval.scorer?)"),
])
def test_a_misspelt_key_fails_with_its_name(override, parse, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")
                       .replace("?", r"\?")):
        parse(cfg_of(override))


@pytest.mark.parametrize("key, parse", [
    ("data.history_len", data_config), ("data.max_test_users", data_config),
    ("eval.beam_size", eval_config), ("eval.max_new_tokens", eval_config),
    ("mix.k", mix_config),
])
def test_a_missing_key_fails_with_its_name(key, parse):
    cfg = cfg_of()
    block, name = key.split(".")
    with open_dict(cfg):
        del cfg[block][name]
    with pytest.raises(KeyError, match=rf"{key}: missing config key"):
        parse(cfg)


def test_a_mistyped_or_null_value_fails_with_its_name():
    with pytest.raises(ValueError, match="data.history_len: expected"):
        data_config(cfg_of("data.history_len=ten"))
    with pytest.raises(ValueError, match="data.min_core: null is not allowed"):
        data_config(cfg_of("data.min_core=null"))
    with pytest.raises(ValueError, match="eval.ks: expected"):
        eval_config(cfg_of("eval.ks=[1,x]"))
    with pytest.raises(ValueError, match="eval.scorer: empty"):
        eval_config(cfg_of("eval.scorer=[]"))
    with pytest.raises(ValueError, match="data.negatives: unknown value 'popular'"):
        data_config(cfg_of("data.negatives=popular"))


def test_stages_refuse_a_misspelt_key_before_any_work(tmp_path):
    """The data stage fails before reading a file (its root does not exist), the eval stage
    before looking for an adapter."""
    cfg = cfg_of("+data.histroy_len=5", f"paths.data_root={tmp_path / 'nowhere'}",
                 f"paths.cache_dir={tmp_path / 'cache'}", f"paths.output_dir={tmp_path}")
    with pytest.raises(ValueError, match="data.histroy_len"):
        run_data_stage(cfg, tmp_path)
    assert not (tmp_path / "cache").exists()
    with pytest.raises(ValueError, match="eval.scorrer"):
        run_eval_stage(cfg_of("+eval.scorrer=beam", f"paths.output_dir={tmp_path}"), tmp_path)


def test_prompt_wording_keys_are_checked():
    from reccocktail.data.prompts import build_prompt_builder

    backbone = OmegaConf.load(CONF / "backbone" / "smollm2_135m.yaml")
    with pytest.raises(ValueError, match=r"domain.prompt.nuon: unknown key \(did you mean "
                                         r"domain.prompt.noun\?\)"):
        build_prompt_builder(None, {}, {"prompt": {"nuon": "movie", "verb": "watched"}},
                             backbone, 32)
    with pytest.raises(KeyError, match="domain.prompt.verb: missing config key"):
        build_prompt_builder(None, {}, {"prompt": {"noun": "movie"}}, backbone, 32)
    with pytest.raises(KeyError, match="backbone.chat_template: missing config key"):
        build_prompt_builder(None, {}, {"prompt": {"noun": "movie", "verb": "watched"}},
                             {"max_prompt_tokens": 64}, 32)


class _FakeModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.config = SimpleNamespace(pad_token_id=None)


class _FakeTokenizer:
    pad_token_id = 0

    def __len__(self) -> int:
        return 64


@pytest.mark.parametrize("name", sorted(p.stem for p in (CONF / "backbone").glob("*.yaml")))
def test_every_backbone_file_holds_the_keys_its_loader_reads(name, monkeypatch, tmp_path):
    """load_backbone and lora_config on each composed backbone, the weights and tokenizer
    faked: a key the code reads for the file's source that the file lacks fails here."""
    import transformers

    from reccocktail.models import backbone as bb

    cfg = cfg_of(f"backbone={name}", f"paths.cache_dir={tmp_path}").backbone
    monkeypatch.setattr(bb, "_load_tokenizer_cached", lambda path, trust: _FakeTokenizer())
    monkeypatch.setattr(bb, "locate_gguf", lambda package, file=None: tmp_path / "m.gguf")
    (tmp_path / "m.gguf").write_text("")
    monkeypatch.setattr(bb, "_converted_gguf_dir", lambda gguf, cache: tmp_path)
    seen = {}

    def from_pretrained(path, **kwargs):
        seen.update(kwargs, path=path)
        return _FakeModel()

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    model, _ = bb.load_backbone(cfg)
    if cfg.source == "tiny":
        assert model.config.num_hidden_layers == cfg.config.num_hidden_layers
    else:
        assert seen["trust_remote_code"] is False and seen["attn_implementation"] == "sdpa"
    assert bb.lora_config(cfg, num_layers=30).r == cfg.lora.r
