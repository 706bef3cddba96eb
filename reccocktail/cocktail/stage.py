"""Stage `mix`: blend the ingredients (`ingredients`, default the base spirit G and the
ingredient S, in list order) into the cocktail adapter.

`mix.name` picks how λ is chosen, one strategy each (`STRATEGIES`): `entropy` (learned on
unlabeled test-time prompts, the paper's RecCocktail; `mix.objective` picks what is minimised,
the paper's entropy by default), `fixed` (`mix.lambdas`, a list in ingredient order or a
mapping name -> weight; 0.5/0.5 is RecCocktail-WA) or `grid` (the points of the simplex with
step `mix.grid_step`, or for two ingredients λ of the first over `mix.grid`, chosen by
validation NDCG@1). Writes `adapters/cocktail`, `adapters/wa` (always the uniform average of
the ingredients, for the WA ablation) and `mix/lambda.json`, which names the ingredients. A
rerun with the same adapters and mix config reuses what is there.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from reccocktail.cocktail.entropy import OBJECTIVES, EntropyMixModule, LoraMixer, PromptDataset
from reccocktail.cocktail.mix import (
    GRANULARITIES,
    MODES,
    LoraAdapter,
    check_compatible,
    describe_lambdas,
    mix_and_save,
)
from reccocktail.data.prompts import adapter_format, prompt_builder_from_config, prompt_format
from reccocktail.data.samples import Sample, load_items, load_samples
from reccocktail.data.selection import (
    LAMBDA_SPLIT,
    select_users,
    selection_config,
    selection_samples,
)
from reccocktail.evaluation.config import eval_config
from reccocktail.evaluation.metrics import ranking_metrics
from reccocktail.evaluation.scorers import LikelihoodScorer
from reccocktail.ingredients import KEY, by_name, ingredient_names, resolve_weights
from reccocktail.models.adapters import is_intact, read_lora, run_identity, verify_adapter
from reccocktail.models.backbone import load_backbone
from reccocktail.runtime import make_trainer
from reccocktail.utils.config import need, one_of, unknown_keys
from reccocktail.utils.device import backbone_dtype, place_backbone, resolve_device
from reccocktail.utils.io import file_sha256, read_json, stable_hash, write_json

log = logging.getLogger(__name__)

NAMES = ("entropy", "fixed", "grid")


# The keys each mix option must set (its YAML in conf/mix/ holds their one default).
_KEYS = {"fixed": ("lambdas",), "grid": ("grid", "grid_step", "grid_max_users"),
         "entropy": ("objective", "anchor_beta", "init_lambdas", "k", "lr", "steps",
                     "batch_size", "measure_entropy", "micro_batch_size")}
_DEPRECATED = ("num_prompts", "transductive")  # now selection.* (reccocktail/data/selection.py)


@dataclass(frozen=True)
class MixConfig:
    """The `mix:` block, parsed once at the stage's entry: every key its option needs, strictly
    (a missing one raises naming it); `block` is what the reuse key hashes."""

    name: str
    mode: str
    granularity: str
    block: dict[str, Any]
    lambdas: Any = None
    grid: Any = None
    grid_step: float | None = None
    grid_max_users: int | None = None
    init_lambdas: Any = None
    k: int = 0
    lr: float = 0.0
    steps: int = 0
    batch_size: int = 0
    measure_entropy: bool = False
    micro_batch_size: int | None = None
    objective: str = "entropy"
    anchor_beta: float = 0.0


def mix_config(cfg: DictConfig) -> MixConfig:
    """Parse and check `cfg.mix` (name, mode, granularity and the option's own keys)."""
    block = OmegaConf.to_container(cfg.mix, resolve=True) if "mix" in cfg else None
    if not isinstance(block, dict):
        raise ValueError("mix: missing config group (choose mix=entropy, mix=fixed or mix=grid)")
    # a key of another option is accepted (conf/size sets the entropy option's steps for all)
    unknown_keys(block, {"name", "mode", "granularity", *_DEPRECATED,
                         *(k for keys in _KEYS.values() for k in keys)}, "mix")
    name = need(block, "name", "mix")
    one_of(name, NAMES, "mix.name")
    mode, granularity = need(block, "mode", "mix"), need(block, "granularity", "mix")
    one_of(mode, MODES, "mix.mode")
    one_of(granularity, GRANULARITIES, "mix.granularity")
    own = {k: need(block, k, "mix") for k in _KEYS[name]}
    for k in ("k", "steps", "batch_size"):
        if k in own:
            own[k] = int(own[k])
    for k in ("lr", "anchor_beta"):
        if k in own:
            own[k] = float(own[k])
    if "objective" in own:

        one_of(own["objective"], OBJECTIVES, "mix.objective")
    if "measure_entropy" in own:
        own["measure_entropy"] = bool(own["measure_entropy"])
    if name == "fixed":  # one weight per ingredient, in `ingredients` order
        names = ingredient_names(cfg)
        given = own["lambdas"]
        own["lambdas"] = check_lambdas([1.0 / len(names)] * len(names) if given is None else given,
                                       len(names), names=names)
        if not isinstance(given, list):  # null (uniform) or a mapping: keyed as the list it is
            block = {**block, "lambdas": own["lambdas"]}
    key_block = {k: v for k, v in block.items() if k not in _DEPRECATED
                 # β changes nothing but the anchored objective: it keys only that one
                 and not (k == "anchor_beta" and block.get("objective") != "anchored")
                 # no step: the `grid` list, as before the key existed
                 and not (k == "grid_step" and v is None)}
    return MixConfig(name=name, mode=mode, granularity=granularity, block=key_block, **own)


def check_lambdas(lambdas: Any, n: int, key: str = "mix.lambdas",
                  names: Sequence[str] | None = None) -> list[float]:
    """λ must be n non-negative weights summing to 1 (the paper's constraint); with `names`
    (the ingredients), also a mapping name -> weight, returned in ingredient order."""
    if names is not None:
        lambdas = resolve_weights(lambdas, names, key)
    try:
        lam = [float(x) for x in lambdas]
    except (TypeError, ValueError) as err:
        raise ValueError(f"{key}: expected a list of {n} numbers, got {lambdas!r}") from err
    if len(lam) != n or any(x < 0 for x in lam) or abs(sum(lam) - 1.0) > 1e-6:
        raise ValueError(f"{key}: expected {n} non-negative weights summing to 1, got {lam}")
    return lam


def _is_rank_zero() -> bool:
    return getattr(rank_zero_only, "rank", 0) == 0


def _specific_users(out_dir: Path) -> set[str]:
    """The users whose validation samples trained S (recorded in its manifest)."""
    m = out_dir / "adapters" / "specific" / "manifest.json"
    return set((read_json(m).get("config") or {}).get("valid_users_trained", [])) \
        if m.exists() else set()


def check_formats(paths: dict[str, Path], fmt: str) -> None:
    """G and S must have learned the prompt format the λ is tuned and the cocktail scored in."""
    for name, p in paths.items():
        m = p / "manifest.json"
        if m.exists() and adapter_format(read_json(m)) != fmt:
            raise ValueError(f"{m}: adapter {name!r} was trained with tuning.objective="
                             f"{adapter_format(read_json(m))!r}, but this run uses {fmt!r}")


# -- λ by validation grid ------------------------------------------------------------------

def simplex_grid(k: int, step: float) -> list[list[float]]:
    """Every λ of k weights that are multiples of `step` summing to 1, in lexicographic order
    of the first k-1 weights (the last is 1 minus their sum, so two ingredients give
    [g, 1 - g] for g = 0, step, ..., 1, the `mix.grid` list's points)."""
    n = round(1.0 / float(step)) if step and float(step) > 0 else 0
    if n < 1 or abs(n * float(step) - 1.0) > 1e-9:
        raise ValueError(f"mix.grid_step={step!r}: expected 1/n for a whole n >= 1 (e.g. 0.1, "
                         "0.25, 0.5)")
    if k < 2:
        raise ValueError(f"mix=grid: {k} ingredient(s); a grid mixes at least 2")
    out = []
    for counts in itertools.product(range(n + 1), repeat=k - 1):
        if sum(counts) > n:
            continue
        head = [c / n for c in counts]
        out.append([*head, 0.0 if sum(counts) == n else 1.0 - math.fsum(head)])
    return out


def grid_points(grid: Sequence[float] | None, step: float | None, k: int) -> list[list[float]]:
    """The λ vectors `mix=grid` scores: the simplex of `mix.grid_step` when set, else, for two
    ingredients, [g, 1 - g] for g in `mix.grid` (λ of the first ingredient)."""
    if step is not None:
        return simplex_grid(k, step)
    if k != 2:
        raise ValueError(f"mix.grid lists λ of the first of two ingredients, and {KEY} holds "
                         f"{k}: set mix.grid_step (e.g. mix.grid_step=0.1) to search the simplex")
    values = [float(g) for g in grid or []]
    if not values or any(not 0.0 <= g <= 1.0 for g in values):
        raise ValueError(f"mix.grid: expected values in [0, 1], got {grid}")
    return [[g, 1.0 - g] for g in values]


def grid_search(model: Any, mixer: Any, builder: Any, samples: Sequence[Sample],
                grid: Sequence[float] | Sequence[Sequence[float]], batch_size: int = 8,
                scorer_factory: Callable[..., Any] | None = None,
                metrics_fn: Callable[..., dict] | None = None) -> tuple[list[float], list[dict]]:
    """λ over `grid` (λ vectors, or numbers g for the pair (g, 1-g)), chosen by NDCG@1 (ties:
    NDCG@3, then the first in grid)."""
    if scorer_factory is None:
        scorer_factory = LikelihoodScorer
    if metrics_fn is None:
        metrics_fn = ranking_metrics
    if not samples:
        raise ValueError("mix=grid: no validation samples to choose λ on")
    points = [[float(x) for x in g] if isinstance(g, Sequence) else [float(g), 1.0 - float(g)]
              for g in grid]
    if not points or any(not 0.0 <= x <= 1.0 for p in points for x in p):
        raise ValueError(f"mix.grid: expected values in [0, 1], got {list(grid)}")
    scorer = scorer_factory(model, builder, batch_size=batch_size, normalize=False)
    target = torch.tensor([s.target_index for s in samples])
    rows = []
    for lam in points:
        mixer.set_weights(torch.tensor(lam))
        with torch.no_grad():
            scores = scorer.score(list(samples))
        metrics = {k: float(v) for k, v in metrics_fn(scores, target, ks=(1, 3)).items()}
        rows.append({"lambda": lam, **metrics})
        log.info("mix grid: λ=%s ndcg@1=%.4f", [round(x, 4) for x in lam],
                 metrics.get("ndcg@1", float("nan")))
    best = max(range(len(rows)), key=lambda i: (rows[i]["ndcg@1"], rows[i].get("ndcg@3", 0.0), -i))
    return rows[best]["lambda"], rows


# -- λ by entropy --------------------------------------------------------------------------

def learn_entropy_lambdas(cfg: DictConfig, out_dir: Path, model: Any, tokenizer: Any,
                          adapters: Sequence[LoraAdapter], prompts: Sequence[Sequence[int]],
                          mcfg: MixConfig, stop_ids: Sequence[int] | None = None
                          ) -> tuple[Any, list[dict]]:
    """Train only the λ logits of an `EntropyMixModule` on `mcfg.objective`; returns (λ for
    `mix_adapters`, the per-step curve, the mean entropy over all tuning prompts before and
    after)."""
    if not prompts:
        raise ValueError("mix=entropy: no unlabeled prompts (selection.lambda_users is 0 or "
                         "test is empty)")
    module = EntropyMixModule(model, adapters, mode=mcfg.mode, granularity=mcfg.granularity,
                              k=mcfg.k, lr=mcfg.lr, init_lambdas=mcfg.init_lambdas,
                              micro_batch_size=mcfg.micro_batch_size, stop_ids=stop_ids,
                              objective=mcfg.objective, anchor_beta=mcfg.anchor_beta)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ds = PromptDataset(prompts, pad)
    loader = torch.utils.data.DataLoader(
        ds, batch_size=mcfg.batch_size, shuffle=True, collate_fn=ds.collate,
        generator=torch.Generator().manual_seed(int(cfg.seed)))
    steps = mcfg.steps
    epochs = -(-steps // max(1, len(loader)))  # enough passes over the prompts for `steps`
    trainer = make_trainer(cfg, out_dir, "mix", max_steps=steps, max_epochs=epochs,
                           enable_checkpointing=False, limit_val_batches=0, log_every_n_steps=1,
                           gradient_clip_val=None)  # manual optimisation; Adam on 2 logits
    # the objective on every tuning prompt at λ = init and at the learned λ (2 extra passes)
    whole = torch.utils.data.DataLoader(ds, batch_size=mcfg.batch_size, collate_fn=ds.collate)
    measure = mcfg.measure_entropy
    before = module.mean_entropy(whole) if measure else None
    trainer.fit(module, loader)
    # Lightning's teardown moved the module (backbone included) to the CPU: back to the device
    place_backbone(module, resolve_device(cfg), cfg, "mix (after fit)")
    lambdas = module.learned_lambdas()
    after = module.mean_entropy(whole) if measure else None
    module.mixer.unwrap()
    if measure:
        log.info("mix: mean entropy over the %d tuning prompts %.4f -> %.4f", len(ds), before, after)
    return lambdas, module.curve, {"entropy_before": before, "entropy_after": after}


# -- one strategy per λ method -------------------------------------------------------------

@dataclass
class MixRun:
    """What every λ strategy reads: the run, the parsed mix block, the ingredients (names and
    LoRA factors, in `ingredients` order) and the prompt format."""

    cfg: DictConfig
    out_dir: Path
    mcfg: MixConfig
    names: list[str]
    adapters: list[LoraAdapter]
    fmt: str
    selection: Any
    seed: int
    scorer_factory: Callable[..., Any] | None = None
    metrics_fn: Callable[..., dict] | None = None

    def backbone(self) -> tuple[Any, Any, Any]:
        """(model, tokenizer, prompt builder) on the run's device, for grid and entropy."""

        device = resolve_device(self.cfg)
        model, tokenizer = load_backbone(self.cfg.backbone, device=device)
        place_backbone(model, device, self.cfg, "mix")
        items = load_items(self.out_dir / "data" / "items.tsv")
        return model, tokenizer, prompt_builder_from_config(self.cfg, tokenizer, items,
                                                            fmt=self.fmt)


def fixed_lambdas(run: MixRun) -> tuple[Any, dict[str, Any]]:
    """`mix.lambdas` as given (a list in ingredient order or a mapping name -> weight; null:
    uniform), checked and put in ingredient order by `mix_config`."""
    return list(run.mcfg.lambdas), {"granularity": "model"}


def grid_lambdas(run: MixRun) -> tuple[Any, dict[str, Any]]:
    """The grid point with the best validation NDCG@1 (`grid_points`), on validation users
    that trained no ingredient."""

    points = grid_points(run.mcfg.grid, run.mcfg.grid_step, len(run.names))
    valid = selection_samples(load_samples(run.out_dir / "data" / "valid.jsonl"),
                              run.mcfg.block, run.seed)
    trained = _specific_users(run.out_dir)
    if trained & {s.user for s in valid}:
        raise ValueError(
            f"mix=grid: validation users {sorted(trained & {s.user for s in valid})[:5]} "
            "trained the ingredient S; rerun the `specific` stage with this mix config "
            "(it leaves the grid's users out)")
    model, _tokenizer, builder = run.backbone()
    mixer = LoraMixer(model, run.adapters, run.mcfg.mode)
    lambdas, rows = grid_search(
        model, mixer, builder, valid, points, batch_size=eval_config(run.cfg).batch_size,
        scorer_factory=run.scorer_factory, metrics_fn=run.metrics_fn)
    mixer.unwrap()
    return lambdas, {"granularity": "model", "grid": rows, "num_valid": len(valid),
                     "valid_users": sorted({s.user for s in valid})}


def entropy_lambdas(run: MixRun) -> tuple[Any, dict[str, Any]]:
    """λ learned on the unlabeled prompts of the λ users (`mix.objective`), one weight per
    ingredient (per module with `granularity=layer`)."""
    mcfg = run.mcfg
    init = resolve_weights(mcfg.init_lambdas, run.names, "mix.init_lambdas")
    if init is not None:
        mcfg = replace(mcfg, init_lambdas=init)
    model, tokenizer, builder = run.backbone()
    test = load_samples(run.out_dir / "data" / f"{LAMBDA_SPLIT}.jsonl")
    # the users the eval stage leaves out of scoring: one function, one setting
    chosen_users = select_users(test, run.selection, run.seed)
    tuning, scored = chosen_users.tuning, chosen_users.scored
    prompts = [builder.prompt_ids(s.history, s.candidates) for s in tuning]
    # the answer ends at the builder's end token (end of turn, or the sequence
    # separator): positions after it are the next turn, not the answer (masked)
    stop_ids = sorted({int(builder.eos_token_id), int(tokenizer.eos_token_id)})
    lambdas, curve, whole = learn_entropy_lambdas(run.cfg, run.out_dir, model, tokenizer,
                                                  run.adapters, prompts, mcfg, stop_ids)
    info: dict[str, Any] = {"entropy_positions": {
        "k": mcfg.k, "stop_token_ids": stop_ids,
        "rule": "the first k greedy answer tokens up to and including the first stop "
                "token; positions after it are masked"}}
    info.update(whole)
    info["lambda_objective"] = mcfg.objective
    if mcfg.objective == "anchored":
        info["anchor_beta"] = mcfg.anchor_beta
    info.update(granularity=mcfg.granularity, k=mcfg.k, lr=mcfg.lr, steps=mcfg.steps,
                curve=curve, tuning_split=LAMBDA_SPLIT,
                tuning_users=sorted({s.user for s in tuning}),
                tuning_sample_ids=[s.id for s in tuning], num_scored=len(scored))
    return lambdas, info


# mix.name -> how λ is chosen: f(run) -> (λ for `mix_adapters`, what lambda.json records)
STRATEGIES: dict[str, Callable[[MixRun], tuple[Any, dict[str, Any]]]] = {
    "fixed": fixed_lambdas, "grid": grid_lambdas, "entropy": entropy_lambdas}


# -- the stage -----------------------------------------------------------------------------

def load_ingredients(cfg: DictConfig, out_dir: Path, names: list[str], mode: str, fmt: str
                     ) -> tuple[dict[str, Path], list[LoraAdapter], dict[str, Any]]:
    """The ingredients' folders and LoRA factors, each checked: intact, of this backbone, this
    run's data, scenario, domain and prompt format, and mixable in `mode`. The third value names
    the adapters of another run used on purpose (`allow_foreign_adapters`, recorded)."""
    paths = {a: out_dir / "adapters" / a for a in names}
    checked = {a: verify_adapter(p, f"mix: adapter {a!r}", cfg, out_dir) for a, p in paths.items()}
    foreign = {a: m["foreign"] for a, m in checked.items() if m.get("foreign")}
    adapters = [read_lora(p, a) for a, p in paths.items()]
    check_compatible(adapters, mode)
    check_formats(paths, fmt)
    return paths, adapters, foreign


def mix_key(cfg: DictConfig, out_dir: Path, mcfg: MixConfig, paths: dict[str, Path], fmt: str,
            foreign: dict[str, Any]) -> str:
    """What the cocktail depends on: the mix block, the data, the ingredients' weights, the
    prompt format, λ users (entropy only: fixed and grid keep their key when they change), the
    foreign adapters and the backbone's dtype (fp32 keeps the keys of mixes made before it was
    keyed)."""
    selection = selection_config(cfg)
    data_manifest = out_dir / "data" / "manifest.json"
    data_hash = read_json(data_manifest).get("data_hash") if data_manifest.exists() else None
    chosen = ([selection.lambda_users, selection.transductive] if mcfg.name == "entropy" else None)
    dtype = backbone_dtype(cfg.backbone)
    return stable_hash(mcfg.block, int(need(cfg, "seed")), need(cfg, "data.max_title_tokens"),
                       need(cfg, "backbone.name"), data_hash,
                       [file_sha256(p / "adapter_model.safetensors") for p in paths.values()],
                       fmt, *([chosen] if chosen else []), *([foreign] if foreign else []),
                       *([dtype] if dtype != "float32" else []))


def _reusable(out_dir: Path, key: str) -> dict[str, Any] | None:
    """The previous lambda.json when the cocktail and WA on disk are intact and of this key."""
    cocktail, wa = out_dir / "adapters" / "cocktail", out_dir / "adapters" / "wa"
    lam_file = out_dir / "mix" / "lambda.json"
    if not (lam_file.exists() and (cocktail / "manifest.json").exists() and wa.exists()):
        return None
    if read_json(cocktail / "manifest.json").get("mix_key") != key or not is_intact(cocktail) \
            or not is_intact(wa):
        return None
    return read_json(lam_file)


def save_mix(cfg: DictConfig, out_dir: Path, adapters: list[LoraAdapter], lambdas: Any,
             info: dict[str, Any], key: str, foreign: dict[str, Any]) -> None:
    """Write adapters/wa (the uniform average), adapters/cocktail (λ) and mix/lambda.json, on
    rank zero only."""
    if not _is_rank_zero():
        return
    names, fmt, mode = info["ingredients"], info["objective"], info["mode"]
    run_id = {"run": run_identity(cfg, out_dir), "backbone_dtype": info["backbone_dtype"],
              **({"foreign_sources": foreign} if foreign else {})}
    uniform = [1.0 / len(adapters)] * len(adapters)  # WA: [0.5, 0.5] for G and S
    mix_and_save(adapters, uniform, mode, out_dir / "adapters" / "wa",
                 extra={"name": "wa", "objective": fmt, "ingredients": names, **run_id})
    metrics = {}
    if info.get("curve"):
        first, last = info["curve"][0], info["curve"][-1]
        metrics = {"entropy_first": first["entropy"], "entropy_last": last["entropy"],
                   "loss_first": first["loss"], "loss_last": last["loss"]}
    mix_and_save(adapters, lambdas, mode, out_dir / "adapters" / "cocktail",
                 extra={"name": info["name"], "mix_key": key, "metrics": metrics,
                        "objective": fmt, "ingredients": names, **run_id})
    write_json(out_dir / "mix" / "lambda.json", info)


def run_mix_stage(cfg: DictConfig, out_dir: Path, scorer_factory: Callable[..., Any] | None = None,
                  metrics_fn: Callable[..., dict] | None = None) -> dict[str, Any]:
    """Write adapters/wa, adapters/cocktail and mix/lambda.json; returns a summary.

    `scorer_factory`/`metrics_fn` replace the evaluation package's LikelihoodScorer and
    ranking_metrics for mix=grid (tests inject small stand-ins).
    """
    out_dir = Path(out_dir)
    mcfg = mix_config(cfg)
    names = ingredient_names(cfg)
    selection = selection_config(cfg)  # the same setting the eval stage scores by
    name, mode, fmt = mcfg.name, mcfg.mode, prompt_format(cfg)
    paths, adapters, foreign = load_ingredients(cfg, out_dir, names, mode, fmt)
    key = mix_key(cfg, out_dir, mcfg, paths, fmt, foreign)
    prev = _reusable(out_dir, key)
    if prev is not None:
        log.info("mix: reusing %s (same adapters and mix config)", out_dir / "adapters" / "cocktail")
        return {"name": name, "mode": mode, "lambdas": prev.get("lambdas"), "reused": True}

    t0 = time.time()
    info: dict[str, Any] = {"name": name, "mode": mode, "adapters": list(names),
                            "objective": fmt, "backbone_dtype": backbone_dtype(cfg.backbone),
                            "transductive": selection.transductive,
                            "lambda_users": selection.lambda_users}
    if foreign:  # adapters of another run, used on purpose (allow_foreign_adapters)
        info["foreign_adapters"] = foreign
    run = MixRun(cfg, out_dir, mcfg, names, adapters, fmt, selection, int(need(cfg, "seed")),
                 scorer_factory=scorer_factory, metrics_fn=metrics_fn)
    lambdas, found = STRATEGIES[name](run)
    info.update(found)
    info["lambdas"] = describe_lambdas(lambdas)["lambdas"]
    info["ingredients"] = list(names)  # λ by name: the weight of each ingredient
    info["lambda_by_name"] = by_name(info["lambdas"], names)
    info["seconds"] = round(time.time() - t0, 2)
    save_mix(cfg, out_dir, adapters, lambdas, info, key, foreign)
    summary = {k: info[k] for k in ("name", "mode", "granularity", "transductive", "seconds")}
    summary["lambdas"] = lambdas if not isinstance(lambdas, dict) else {
        "mean": [sum(v[i] for v in lambdas.values()) / len(lambdas) for i in range(len(names))]}
    summary["reused"] = False
    summary["ingredients"] = list(names)
    return summary
