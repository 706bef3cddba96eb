"""One device rule for every stage, no silent CPU fall-back, large backbones refused on the CPU,
and the mix stage's entropy pass back on the configured device after Lightning's teardown."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from reccocktail.utils.device import place_backbone, resolve_device

ROOT = Path(__file__).resolve().parents[1]
# conf/run.yaml's `placement:` block: the one default of the large-backbone rule
PLACEMENT = OmegaConf.create({"placement": OmegaConf.load(ROOT / "conf" / "run.yaml").placement})


def _placement(**over):
    return OmegaConf.merge(PLACEMENT, {"placement": over})


def _cfg(accelerator="cpu", devices=1, **extra):
    return OmegaConf.create({"trainer": {"accelerator": accelerator, "devices": devices}, **extra})


def test_rule_follows_the_trainer_and_never_falls_back(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device(_cfg("cpu")) == torch.device("cpu")
    assert resolve_device(_cfg("auto")) == torch.device("cpu")  # auto may: it says "either"
    for acc in ("gpu", "cuda"):
        with pytest.raises(RuntimeError, match="no CUDA device"):
            resolve_device(_cfg(acc))
    with pytest.raises(RuntimeError, match="eval.device=cuda"):
        resolve_device(_cfg("cpu", eval={"device": "cuda"}), "eval.device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a fake accelerator
    assert resolve_device(_cfg("gpu")) == torch.device("cuda")
    assert resolve_device(_cfg("auto")) == torch.device("cuda")
    assert resolve_device(_cfg("gpu", devices=[1])) == torch.device("cuda", 1)
    # a stage's own device wins; auto/null defer to the trainer
    assert resolve_device(_cfg("gpu", eval={"device": "cpu"}), "eval.device") == torch.device("cpu")
    assert resolve_device(_cfg("gpu", eval={"device": "auto"}), "eval.device").type == "cuda"
    assert resolve_device(_cfg("gpu", recommend={"device": None}), "recommend.device").type == "cuda"
    assert resolve_device(_cfg("cpu", eval={"device": "cuda:1"}), "eval.device") == torch.device("cuda", 1)
    with pytest.raises(ValueError, match="trainer.accelerator"):
        resolve_device(_cfg("tpu"))


class FakeBackbone(torch.nn.Module):
    """A model whose parameters report a device (any device, without the hardware)."""

    def __init__(self, n: int, device: str) -> None:
        super().__init__()
        self.n, self.where, self.moves = n, torch.device(device), []

    def parameters(self, recurse: bool = True):
        yield SimpleNamespace(device=self.where, dtype=torch.bfloat16, numel=lambda: self.n)

    def buffers(self, recurse: bool = True):
        return iter(())

    def to(self, device):
        self.moves.append(torch.device(device))
        self.where = torch.device(device)
        return self


def test_place_moves_a_model_that_lives_elsewhere():
    model = FakeBackbone(7_600_000_000, "cpu")  # e.g. after Lightning's teardown
    place_backbone(model, "cuda", PLACEMENT, "mix (after fit)")
    assert model.moves == [torch.device("cuda")] and model.where.type == "cuda"
    place_backbone(model, "cuda", PLACEMENT, "eval")  # already there: no second copy
    assert model.moves == [torch.device("cuda")]


def test_large_backbone_refused_on_the_cpu_unless_asked():
    with pytest.raises(RuntimeError, match="7.62B parameters.*placement.allow_cpu_large=true"):
        place_backbone(FakeBackbone(7_615_000_000, "cpu"), "cpu", PLACEMENT, "eval")
    place_backbone(FakeBackbone(135_000_000, "cpu"), "cpu", PLACEMENT, "eval")  # small: fine
    place_backbone(FakeBackbone(7_615_000_000, "cpu"), "cpu", _placement(allow_cpu_large=True),
                   "eval")
    low = _placement(large_params=1e6)
    with pytest.raises(RuntimeError, match="placement.large_params"):
        place_backbone(FakeBackbone(2_000_000, "cpu"), "cpu", low, "recommend")


def test_eval_stage_refuses_a_gpu_run_without_a_gpu_and_a_large_cpu_run(tmp_path, tiny_llama_cfg,
                                                                        monkeypatch):
    from test_eval_stage import _write_data, make_cfg

    from reccocktail.evaluation.stage import run_eval_stage

    _write_data(tmp_path / "data")
    cfg = make_cfg(tmp_path, tiny_llama_cfg)
    cfg.eval.variants = ["zero_shot"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg.trainer = {"accelerator": "gpu"}
    with pytest.raises(RuntimeError, match="no CUDA device"):  # not a quiet CPU run
        run_eval_stage(cfg, tmp_path)
    cfg.trainer = {"accelerator": "cpu"}
    cfg.placement.large_params = 1000  # the tiny model counts as large here
    with pytest.raises(RuntimeError, match="placement.allow_cpu_large"):
        run_eval_stage(cfg, tmp_path)
    cfg.placement.allow_cpu_large = True
    assert "zero_shot" in run_eval_stage(cfg, tmp_path)["variants"]


def test_mix_entropy_after_fit_runs_on_the_configured_device(adapters, tiny_llama_cfg, tmp_path,
                                                             monkeypatch):
    """Lightning's teardown calls module.cpu(); the stage must place the module again before
    the 'entropy after' pass, which then sees the configured device."""
    from test_mix import _cfg, _run_dir

    import reccocktail.cocktail.stage as stage
    from reccocktail.cocktail.entropy import EntropyMixModule

    events: list[tuple[str, str]] = []
    real_place, real_mean, real_cpu = stage.place_backbone, EntropyMixModule.mean_entropy, \
        EntropyMixModule.cpu

    def place(model, device, cfg, where):
        events.append(("place", where))
        return real_place(model, device, cfg, where)

    def mean_entropy(self, batches):
        events.append(("entropy", str(next(self.model.parameters()).device)))
        return real_mean(self, batches)

    def cpu(self):
        events.append(("teardown", "cpu"))
        return real_cpu(self)

    monkeypatch.setattr(stage, "place_backbone", place)
    monkeypatch.setattr(EntropyMixModule, "mean_entropy", mean_entropy)
    monkeypatch.setattr(EntropyMixModule, "cpu", cpu)
    out = _run_dir(tmp_path, adapters)
    cfg = _cfg(out, tiny_llama_cfg, name="entropy", k=2, steps=1, batch_size=2)
    stage.run_mix_stage(cfg, out)
    configured = str(resolve_device(cfg))
    assert events == [("place", "mix"), ("entropy", configured), ("teardown", "cpu"),
                      ("place", "mix (after fit)"), ("entropy", configured)]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory, tiny_llama_cfg):
    from test_mix import make_adapter

    root = tmp_path_factory.mktemp("adapters")
    return {"g": make_adapter(root / "general", tiny_llama_cfg, seed=1),
            "s": make_adapter(root / "specific", tiny_llama_cfg, seed=1, kind="specific",
                              perturb_seed=99),
            "root": root}
