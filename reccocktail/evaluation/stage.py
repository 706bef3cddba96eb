"""Stage `eval`: score every configured variant on the very same samples and tabulate.

Samples: `data/<eval.split>.jsonl`, minus the users whose unlabeled prompts tuned λ (unless
`selection.transductive`), then at most `selection.max_scored_users` users (a seeded choice,
file order kept).
`eval_samples(cfg, out_dir)` is that selection, for any other stage that must score the same
samples (baselines). Variants: `zero_shot` (the bare backbone), any adapter under
`adapters/<name>/` (each ingredient of `ingredients`, wa, cocktail) and
`eval.adapters: {name: path}`. The
backbone is loaded once; adapters are loaded and dropped one after another with peft.

The stage is four parts, run in this order by `run_eval_stage`: `plan_eval` (the eval block
parsed once, adapters, samples and catalogue checked before any model loads),
`record_reference_rows` (random, popularity), `score_variants` with `score_candidates` (the
stored candidates) or `score_full_catalogue` (`eval.candidates=all`) per variant, and
`record_eval` (paired tests, stale mark, loggers, summary).
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from hydra.utils import to_absolute_path
from omegaconf import DictConfig

from reccocktail import runtime
from reccocktail.data.prompts import adapter_format, prompt_builder_from_config, prompt_format
from reccocktail.data.samples import Sample, load_items
from reccocktail.evaluation import full_catalogue as fc
from reccocktail.evaluation import scorers
from reccocktail.evaluation.confidence import ci_fields
from reccocktail.evaluation.config import EvalConfig, eval_config
from reccocktail.evaluation.metrics import (
    random_expectation,
    ranking_metrics,
    target_ranks,
)
from reccocktail.evaluation.reference import load_popularity, popularity_scores
from reccocktail.evaluation.results import (
    clear_stale,
    load_results,
    print_results,
    record_results,
    results_table,
    start_rows,
    update_paired,
)
from reccocktail.evaluation.samples import eval_samples, prediction_rows  # noqa: F401
from reccocktail.evaluation.scorers import num_candidates
from reccocktail.evaluation.trunk import plan as trunk_plan
from reccocktail.ingredients import ingredient_names
from reccocktail.models.adapters import verify_adapter
from reccocktail.models.backbone import load_backbone
from reccocktail.utils.config import check_name, need
from reccocktail.utils.device import backbone_dtype, place_backbone, resolve_device
from reccocktail.utils.io import read_json, write_jsonl

log = logging.getLogger(__name__)

# Which stage writes each standard adapter (for the "run it first" error); an ingredient's
# adapter is written by its own stage (`adapter_stages`).
ADAPTER_STAGE = {"general": "general", "specific": "specific", "wa": "mix", "cocktail": "mix"}
ZERO_SHOT = "zero_shot"


def adapter_stages(names: list[str]) -> dict[str, str]:
    """Variant -> the stage that writes its adapter, for the ingredients `names`."""
    return {**{n: n for n in names}, "wa": "mix", "cocktail": "mix"}


def _resolve_path(p: str) -> Path:
    try:
        return Path(to_absolute_path(p))
    except ValueError:  # Hydra not initialised (tests, notebooks)
        return Path(p).resolve()


def resolve_variants(ec: EvalConfig, out_dir: Path,
                     names: list[str] | None = None) -> list[tuple[str, Path | None]]:
    """(name, adapter folder or None for the bare backbone), checked before any model loads.
    `names`: the run's ingredients (for the "run its stage first" hint)."""
    writers = adapter_stages(names) if names is not None else ADAPTER_STAGE
    for name in (*ec.variants, *ec.adapters):  # names become file names: no `../`
        check_name(str(name), "eval.adapters" if name in ec.adapters else "eval.variants")
    out: list[tuple[str, Path | None]] = []
    for name in ec.variants:
        out.append((name, None if name == ZERO_SHOT else Path(out_dir) / "adapters" / name))
    for name, p in ec.adapters.items():
        out.append((str(name), _resolve_path(str(p))))
    names = [n for n, _ in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"eval.variants/eval.adapters: variant name(s) {dup} given twice")
    missing = []
    for name, path in out:
        if path is not None and not (path / "adapter_config.json").exists():
            stage = writers.get(name)
            hint = (f"run the `{stage}` stage first (stages=[..., {stage}, eval])" if stage
                    else f"eval.adapters.{name} must point at a PEFT adapter folder")
            missing.append(f"{name}: no adapter at {path} ({hint})")
    if missing:
        raise FileNotFoundError("eval: missing adapter(s):\n  " + "\n  ".join(missing))
    return out


def _check_manifest(name: str, path: Path, cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """The adapter's manifest, refused when the adapter is corrupt, has no manifest, or was
    trained on other weights or for another run (`models.adapters.verify_adapter`)."""
    return verify_adapter(path, f"eval: adapter {name!r}", cfg, out_dir)


class AdapterSwitcher:
    """One backbone, one adapter at a time: load the next adapter, activate it, drop the last."""

    def __init__(self, base: torch.nn.Module) -> None:
        self.base, self.peft, self.active, self.n = base, None, None, 0

    def use(self, path: Path | None):
        """The model to score with: the bare backbone for None, else with that adapter."""
        if path is None:
            if self.peft is not None:
                self.drop()
            return self.base
        from peft import PeftModel  # lazy: +3.2 s (peft)

        self.n += 1
        name = f"eval{self.n}"
        if self.peft is None:
            self.peft = PeftModel.from_pretrained(self.base, str(path), adapter_name=name,
                                                  is_trainable=False)
        else:
            self.peft.load_adapter(str(path), adapter_name=name, is_trainable=False)
            self.peft.set_adapter(name)
            if self.active is not None:
                self.peft.delete_adapter(self.active)
        self.active = name
        self.peft.eval()
        return self.peft

    def drop(self) -> None:
        """Remove every LoRA layer: the backbone is bare again."""
        if self.peft is not None:
            self.base = self.peft.unload()
            self.peft, self.active = None, None


def _log_results(cfg: DictConfig, data: dict[str, Any], keys: list[str]) -> None:
    """Plain metrics `eval/<variant>/<metric>` to every logger, plus a table where supported."""
    try:
        loggers = runtime.make_loggers(cfg)
    except Exception as err:  # noqa: BLE001 - logging must not take the stage down
        log.warning("no loggers for the eval results: %s", err)
        return
    flat = {f"eval/{k}/{m}": v for k in keys for m, v in data["variants"][k]["metrics"].items()}
    columns, rows = results_table(data, ci=True)
    for lg in loggers:
        try:
            lg.log_metrics(flat)
            if hasattr(lg, "log_table"):  # WandbLogger
                lg.log_table(key="eval/results", columns=columns, data=rows)
            lg.save()
        except Exception as err:  # noqa: BLE001
            log.warning("logging eval results to %s failed: %s", type(lg).__name__, err)


@dataclass
class EvalPlan:
    """Everything the stage settles before the first model loads: the parsed eval block, the
    variants and their checked manifests, the samples, and the full catalogue (None: the
    stored candidates)."""

    ec: EvalConfig
    ingredients: list[str]
    variants: list[tuple[str, Path | None]]
    manifests: dict[str, dict[str, Any]]
    backbone: str
    samples: list[Sample]
    info: dict[str, Any]
    catalogue: fc.FullCatalogue | None

    @property
    def scorer_names(self) -> list[str]:
        return list(self.ec.scorer)


def plan_eval(cfg: DictConfig, out_dir: Path) -> EvalPlan:
    """Parse the eval block once and check what would fail later: the full-catalogue settings,
    a missing or corrupt adapter (before any model loads), the samples and catalogue."""
    ec = eval_config(cfg)
    cc = fc.catalogue_config(cfg, ec)  # None: the stored candidates
    names = ingredient_names(cfg)
    variants = resolve_variants(ec, out_dir, names)  # a missing adapter fails before any model
    backbone_name = str(need(cfg, "backbone.name"))
    # every adapter checked before the first is scored (a corrupt one fails here, not later)
    manifests = {n: _check_manifest(n, p, cfg, out_dir) for n, p in variants if p is not None}
    samples, info = eval_samples(cfg, out_dir, ec.split)
    cat = fc.FullCatalogue.load(cc, out_dir, samples) if cc is not None else None
    return EvalPlan(ec, names, variants, manifests, backbone_name, samples, info, cat)


def record_reference_rows(out_dir: Path, plan: EvalPlan) -> list[str]:
    """The random-expectation and popularity rows (`eval.reference`), on the plan's samples
    and candidates; the keys recorded."""
    if not plan.ec.reference:
        return []
    if plan.catalogue is not None:
        return _full_reference_rows(out_dir, plan.catalogue, plan.samples, plan.info)
    samples, info, ks = plan.samples, plan.info, plan.ec.ks
    c = num_candidates(samples)
    record_results(out_dir, "random", random_expectation(c, ks), scorer="expectation",
                   num_candidates=c, **info)
    seq = out_dir / "data" / "sequences.jsonl"
    if not seq.exists():
        log.warning("%s missing: no popularity row", seq)
        return ["random"]
    targets = torch.tensor([s.target_index for s in samples])
    pop = popularity_scores(samples, load_popularity(seq))
    record_results(out_dir, "popularity", ranking_metrics(pop, targets, ks),
                   **ci_fields(target_ranks(pop, targets), [s.user for s in samples], ks),
                   scorer="popularity", **info)
    write_jsonl(out_dir / "predictions" / "popularity.jsonl", prediction_rows(samples, pop))
    return ["random", "popularity"]


def _full_reference_rows(out_dir: Path, cat: fc.FullCatalogue, samples: list,
                         info: dict) -> list[str]:
    """Random expectation and popularity over the full catalogue (same exclusion, cut-off)."""
    record_results(out_dir, "random", fc.random_full_expectation(cat.sizes(), cat.ks, cat.cutoff),
                   scorer="expectation", **cat.info(), **info)
    seq = out_dir / "data" / "sequences.jsonl"
    if not seq.exists():
        log.warning("%s missing: no popularity row", seq)
        return ["random"]
    counts = load_popularity(seq)
    row = torch.tensor([float(counts.get(i, 0)) for i in cat.items])
    ranks, lists = cat.ranks_from_scores(row.expand(len(samples), -1), samples)
    fc.record_row(out_dir, "popularity", cat, samples, ranks, lists, scorer="popularity", **info)
    return ["random", "popularity"]


def _search_fields(scorer: Any, beam_size: int, approximate: int) -> dict[str, Any]:
    """What a beam-scorer row records: the list length and the search, so a table can tell
    `exact top-k` rows from beam rows (and count searches cut by `max_expansions`)."""
    out: dict[str, Any] = {"beam_size": beam_size, "search": scorer.search_mode,
                           "normalize": False}  # the searches rank by summed log-probs
    if scorer.search_mode == "exact":
        out["search_note"] = f"exact top-{beam_size} (best-first over the title trie)"
        out["approximate_searches"] = approximate
    return out


def _row_key(name: str, scorer: str) -> str:
    """A variant's row: its name for the likelihood scorer, `<name>.<scorer>` for the others."""
    return name if scorer == "likelihood" else f"{name}.{scorer}"


def variant_meta(name: str, path: Path | None, plan: EvalPlan, out_dir: Path, dtype: Any,
                 fmt: str) -> dict[str, Any]:
    """What every row of one variant records beside its metrics: adapter, backbone, objective,
    the adapter's kind and foreign sources, and for the cocktail its λ."""
    meta: dict[str, Any] = {"adapter": None if path is None else str(path),
                            "backbone": plan.backbone, "backbone_dtype": dtype,
                            "objective": fmt, **plan.info}
    if path is None:
        return meta
    manifest = plan.manifests[name]
    meta["adapter_kind"] = manifest.get("kind")
    for field in ("foreign", "foreign_sources"):  # used on purpose: recorded
        if manifest.get(field):
            meta[field] = manifest[field]
    if name == "cocktail" and (out_dir / "mix" / "lambda.json").exists():
        meta["lambda"] = read_json(out_dir / "mix" / "lambda.json")
        # what λ minimised (runs from before the key: the paper's entropy)
        meta["lambda_objective"] = meta["lambda"].get(
            "lambda_objective", "entropy" if meta["lambda"].get("name") == "entropy" else None)
    return meta


def _scorer_fields(sname: str, scorer: Any, normalize: bool, n: int) -> dict[str, Any]:
    """What a stored-candidates row records about how its scorer ranked (after scoring)."""
    if sname in ("likelihood", "naive"):
        return {"normalize": normalize}
    if sname == "beam":
        return _search_fields(scorer, scorer.beam_size, scorer.approximate)
    if sname == "generate":
        return {"valid_ratio": scorer.valid_ratio,
                "multi_title_ratio": sum(m.num_titles > 1 for m in scorer.matches) / n,
                "multi_match": scorer.multi}
    return {}


def score_candidates(out_dir: Path, plan: EvalPlan, name: str, model: Any, pb: Any,
                     meta: dict[str, Any], trunk: Any) -> list[str]:
    """One variant ranked on the stored candidates by every scorer: a row (with CIs) and a
    predictions file each; the likelihood scorer replays the shared lower layers (`trunk`)."""
    ec, samples, info = plan.ec, plan.samples, plan.info
    targets = torch.tensor([s.target_index for s in samples])
    users = [s.user for s in samples]  # the unit of the bootstrap and of the paired test
    keys = []
    for sname in plan.scorer_names:
        scorer = scorers.build_scorer(sname, model, pb, ec.scorers)
        key = _row_key(name, sname)
        share = trunk is not None and sname == "likelihood"
        ctx = contextlib.nullcontext() if not share else (
            trunk.replay(model) if trunk.recorded else trunk.record(model))
        t0 = time.time()
        with ctx:
            scores = scorer.score(samples)
        seconds = time.time() - t0
        extra: dict[str, Any] = {"scorer": sname, "seconds": round(seconds, 2),
                                 "users_per_s": round(info["num_users"] / max(seconds, 1e-9), 3)}
        if share:
            extra["shared_lower_layers"] = trunk.boundary
        extra.update(_scorer_fields(sname, scorer, ec.normalize, len(samples)))
        metrics = ranking_metrics(scores, targets, ec.ks)
        record_results(out_dir, key, metrics, **ci_fields(target_ranks(scores, targets), users, ec.ks),
                       **meta, **extra)
        write_jsonl(out_dir / "predictions" / f"{key}.jsonl",
                    prediction_rows(samples, scores, scorer))
        keys.append(key)
        log.info("eval %s: %s", key, metrics)
    return keys


def score_full_catalogue(out_dir: Path, plan: EvalPlan, name: str, model: Any, pb: Any,
                         meta: dict[str, Any], beam: Any) -> tuple[list[str], Any]:
    """One variant ranked over the full catalogue by every scorer; returns the row keys and
    the beam scorer (its title trie is built once and reused by every variant)."""
    keys = []
    for sname in plan.scorer_names:
        key = _row_key(name, sname)
        beam = _score_full(plan.ec, out_dir, key, sname, model, pb, plan.catalogue, plan.samples,
                           beam, {**meta, "scorer": sname})
        keys.append(key)
    return keys, beam


def _score_full(ec: EvalConfig, out_dir: Path, key: str, sname: str, model: Any, pb: Any,
                cat: fc.FullCatalogue, samples: list, full_beam: Any, meta: dict) -> Any:
    """One variant, one scorer, over the full catalogue; returns the (reused) beam scorer.

    `beam`: constrained beam search over the trie of every catalogue title (built once, the
    model swapped per variant); `likelihood`/`naive`: every catalogue item scored (exhaustive,
    the reference the beam approximates; slow)."""
    t0 = time.time()
    extra: dict[str, Any] = {}
    if sname == "beam":
        if full_beam is None:
            full_beam = scorers.CatalogueBeamScorer(model, pb, beam_size=cat.cutoff,
                                                    progress=ec.progress, search_mode=ec.search,
                                                    item_ids=cat.items)
        full_beam.model = model
        before = full_beam.approximate
        lists = full_beam.rank(samples, cat.excluded)
        ranks = torch.tensor([fc.list_rank(lst, s.target, cat.cutoff)
                              for lst, s in zip(lists, samples)])
        extra.update(_search_fields(full_beam, cat.cutoff, full_beam.approximate - before))
    else:
        scorer = scorers.build_scorer(sname, model, pb, ec.scorers)
        responses = [pb.response_ids(i) for i in cat.items]
        with scorers.EvalMode(model), torch.inference_mode():
            scores = torch.stack([scorer.score_ids(pb.prompt_ids(s.history, []), responses)
                                  for s in samples])
        ranks, lists = cat.ranks_from_scores(scores, samples)
        extra["normalize"] = ec.normalize
    seconds = time.time() - t0
    n_users = len({s.user for s in samples})
    extra.update(seconds=round(seconds, 2), users_per_s=round(n_users / max(seconds, 1e-9), 3))
    metrics = fc.record_row(out_dir, key, cat, samples, ranks, lists, **meta, **extra)
    log.info("eval %s (full catalogue): %s", key, metrics)
    return full_beam


def _check_formats(plan: EvalPlan, fmt: str) -> None:
    """Every adapter was trained in this run's prompt format (`tuning.objective`)."""
    wrong = {n: adapter_format(m) for n, m in plan.manifests.items()
             if m and adapter_format(m) != fmt}
    if wrong:
        raise ValueError(f"eval: adapter(s) trained with another tuning.objective than this "
                         f"run's {fmt!r}: {wrong}; set tuning.objective to match")


def score_variants(cfg: DictConfig, out_dir: Path, plan: EvalPlan) -> list[str]:
    """Load the backbone once and score every variant in turn (its adapter switched in), on
    the stored candidates or the full catalogue; the row keys recorded."""
    fmt = prompt_format(cfg)
    _check_formats(plan, fmt)
    device = resolve_device(cfg, "eval.device")
    dtype = backbone_dtype(cfg.backbone, device)
    model, tokenizer = load_backbone(cfg.backbone, device=device)
    place_backbone(model, device, cfg, "eval")
    items = load_items(out_dir / "data" / "items.tsv")
    pb = prompt_builder_from_config(cfg, tokenizer, items, fmt=fmt)
    switcher = AdapterSwitcher(model)
    beam = None  # one catalogue trie per run, shared by every variant
    # the layers below every adapter are computed once for all variants (likelihood only)
    trunk = None if plan.catalogue is not None else trunk_plan(
        [p for _, p in plan.variants], model, plan.ec.share_trunk, plan.scorer_names)
    keys: list[str] = []
    for name, path in plan.variants:
        meta = variant_meta(name, path, plan, out_dir, dtype, fmt)
        scoring_model = switcher.use(path)
        if plan.catalogue is not None:
            done, beam = score_full_catalogue(out_dir, plan, name, scoring_model, pb, meta, beam)
        else:
            done = score_candidates(out_dir, plan, name, scoring_model, pb, meta, trunk)
        keys += done
    switcher.drop()
    return keys  # the trunk's recorded states (they can be large) go with this frame


def record_eval(cfg: DictConfig, out_dir: Path, plan: EvalPlan, keys: list[str]) -> dict[str, Any]:
    """Close the stage's rows: the paired tests (cocktail against every other row, baselines
    included), the stale mark lifted, loggers and the printed table; the stage summary."""
    if keys:
        update_paired(out_dir)
    clear_stale(out_dir, ("data", *plan.ingredients, "mix", "eval"))
    data = load_results(out_dir)
    _log_results(cfg, data, keys)
    if plan.ec.print:
        print_results(data)
    return {"variants": {k: data["variants"][k]["metrics"] for k in keys},
            "results": str(out_dir / "results.json"), **plan.info}


def run_eval_stage(cfg: DictConfig, out_dir: Path) -> dict[str, Any]:
    """Score the configured variants; write results.json/.md and predictions/<variant>.jsonl.
    Every scored row carries 95 % bootstrap CIs; the `paired` block (cocktail vs the others)
    is recomputed from predictions/ at the end.

    Runs on global rank 0 only: under DDP, Lightning re-runs the pipeline in every rank, and
    scoring is a single-process job here (the other ranks return at once)."""
    from lightning.pytorch.utilities import rank_zero_only  # lazy: +1.4 s (lightning)

    if getattr(rank_zero_only, "rank", 0) != 0:
        return {"skipped": "not global rank 0"}
    out_dir = Path(out_dir)
    plan = plan_eval(cfg, out_dir)
    # the rows this stage writes go first: a killed evaluation leaves fewer rows and a stale
    # mark, never new rows beside old ones
    start_rows(out_dir, ["random", "popularity", *(n for n, _ in plan.variants)], "eval")
    keys = record_reference_rows(out_dir, plan)
    if plan.variants:
        keys += score_variants(cfg, out_dir, plan)
    return record_eval(cfg, out_dir, plan, keys)
