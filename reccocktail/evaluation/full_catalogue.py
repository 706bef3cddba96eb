"""Full-catalogue ranking (`eval.candidates=all`): every method ranks every item, not 30.

Sampled-candidate metrics can reorder methods (Krichene & Rendle, KDD 2020), so a run can also
report the protocol most sequential-recommendation papers use:

* **Catalogue.** The items of the run's `data/items.tsv` a test sample's negatives may come
  from, by the data stage's own rule (`data/splits.py:candidate_pools`): every item in warm; in
  cold every item but the validation-new ones, or with `scenario.cold_negatives=new` the
  test-new items only (both read from the data stage's `new_items.json`; every test target is
  checked to lie in the catalogue).
* **Exclusion** (`eval.exclude_seen`, default true, the usual full-ranking protocol): items the
  user has already interacted with, i.e. their training sequence (`sequences.jsonl`, which ends
  where `scenario.cold_train_part` says) and the sample's history, are removed from that user's
  ranking. The target
  is never removed (items occur once per user after the data stage's de-duplication, so it
  cannot be seen before). LLM rows and baselines apply the same rule.
* **Cut-off.** The LLM rows rank by constrained beam search over a trie of all catalogue titles
  (`scorers.CatalogueBeamScorer`) and only know the top `eval.beam_size` (= B) items: a target
  outside them is a miss. Every row, baselines included, is therefore truncated at B: NDCG@k and
  HR@k for `eval.full_ks` (each <= B, checked early) and MRR@B (1/rank if rank <= B, else 0).
  A prediction row's `rank` is the target's rank when it is within B (true rank for models that
  score every item) and B + 1 ("beyond the beam") for a beam miss.
* **Ties** count against the target, as everywhere (docs/design.md §4).

Everything here is a pure function of ranks, scores and sets, except `FullCatalogue.load`,
which reads the run's data folder.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from reccocktail.data.samples import NEW_ITEMS_FILE, Sample, load_items
from reccocktail.evaluation import confidence
from reccocktail.evaluation.chance import random_full_expectation  # noqa: F401  (re-exported)
from reccocktail.evaluation.config import EvalConfig, eval_config
from reccocktail.evaluation.results import record_results
from reccocktail.utils.config import need
from reccocktail.utils.io import iter_jsonl, read_json, write_jsonl

CANDIDATES = ("sampled", "all")
EXCLUSION_SEEN = "the user's training items and the sample's history (seen items) excluded"
EXCLUSION_NONE = "nothing excluded (seen items stay in the ranking)"


def candidates_mode(cfg: Any) -> str:
    """`eval.candidates` (sampled | all), validated, from a raw config (the config check and
    scripts; a stage reads its parsed `EvalConfig`)."""
    mode = str(need(cfg, "eval.candidates"))
    if mode not in CANDIDATES:
        raise ValueError(f"eval.candidates={mode}: not one of {list(CANDIDATES)}")
    return mode


def cutoffs(full_ks: Sequence[int], beam_size: int | None) -> tuple[tuple[int, ...], int]:
    """(cut-offs `eval.full_ks`, cut-off of every row = `eval.beam_size`, null: the largest
    cut-off), checked: the beam must return at least as many items as the largest cut-off, or
    HR@k would be capped by it."""
    ks = tuple(int(k) for k in full_ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"eval.full_ks={list(ks)}: needs cut-offs >= 1")
    beam = max(ks) if beam_size is None else int(beam_size)
    if beam < max(ks):
        raise ValueError(
            f"eval.beam_size={beam} is smaller than the largest full-catalogue cut-off "
            f"eval.full_ks={list(ks)}: with eval.candidates=all the beam returns the ranked "
            f"top eval.beam_size items, so set eval.beam_size={max(ks)} (or more)")
    return ks, beam


def refuse_generate(scorer: Sequence[str] | str | None) -> None:
    """The greedy `generate` scorer names one item: it cannot rank a catalogue."""
    names = [str(scorer)] if isinstance(scorer, str) else [str(s) for s in scorer or []]
    if "generate" in names:
        raise ValueError("eval.scorer=generate: not available with eval.candidates=all (one "
                         "greedy title ranks one item); use beam (or likelihood, exhaustive and "
                         "slow)")


def full_settings(cfg: Any) -> tuple[tuple[int, ...], int]:
    """`cutoffs` of a raw config's `eval.full_ks` and `eval.beam_size`."""
    return cutoffs(need(cfg, "eval.full_ks"), need(cfg, "eval.beam_size"))


def check_config(cfg: Any) -> list[str]:
    """Config errors of the full-catalogue protocol in a raw config, one message each (empty:
    fine): the config check's entry; the stages parse the same rules in `catalogue_config`."""
    try:
        if candidates_mode(cfg) != "all":
            return []
        full_settings(cfg)
        refuse_generate(need(cfg, "eval.scorer"))
    except ValueError as err:
        return [str(err)]
    return []


@dataclass(frozen=True)
class CatalogueConfig:
    """What the full-catalogue protocol reads of the run's config, parsed once at a stage's
    entry (`catalogue_config`) and handed to `FullCatalogue.load`, so no part of the protocol
    reads raw `eval.*` keys again. `scenario`/`cold_negatives` are the run's, used only for a
    data folder whose stats.json does not record them."""

    ks: tuple[int, ...]
    cutoff: int
    exclude_seen: bool
    scenario: str | None = None
    cold_negatives: str | None = None


def catalogue_config(cfg: Any, ec: EvalConfig | None = None) -> CatalogueConfig | None:
    """The protocol's settings from the parsed eval block (`ec`; parsed from `cfg` when None),
    checked (ValueError naming the key); None with sampled candidates."""
    ec = eval_config(cfg) if ec is None else ec
    if ec.candidates not in CANDIDATES:
        raise ValueError(f"eval.candidates={ec.candidates}: not one of {list(CANDIDATES)}")
    if ec.candidates != "all":
        return None
    ks, cutoff = cutoffs(ec.full_ks, ec.beam_size)
    refuse_generate(ec.scorer)
    return CatalogueConfig(ks, cutoff, bool(ec.exclude_seen),
                           OmegaConf.select(cfg, "scenario.name"),
                           OmegaConf.select(cfg, "scenario.cold_negatives"))


# -- metrics (pure) ---------------------------------------------------------------------------

def truncated_metric_values(ranks: torch.Tensor | Sequence[int], ks: Sequence[int],
                            cutoff: int) -> dict[str, torch.Tensor]:
    """Per-sample values `[n]` (float64): NDCG@k = 1/log2(rank+1) and HR@k = 1 when rank <= k,
    MRR@cutoff = 1/rank when rank <= cutoff; 0 otherwise. A rank above `cutoff` is a miss."""
    if max(ks) > cutoff:
        raise ValueError(f"cut-offs {list(ks)} exceed the ranked list's length {cutoff}")
    r = torch.as_tensor(ranks, dtype=torch.float64)
    if r.numel() and float(r.min()) < 1:
        raise ValueError("ranks are 1-based")
    gain = 1.0 / torch.log2(r + 1.0)
    zero = torch.zeros_like(r)
    out = {f"ndcg@{k}": torch.where(r <= k, gain, zero) for k in ks}
    out.update({f"hr@{k}": (r <= k).to(torch.float64) for k in ks})
    out[f"mrr@{cutoff}"] = torch.where(r <= cutoff, 1.0 / r, zero)
    return out


def truncated_metrics(ranks: torch.Tensor | Sequence[int], ks: Sequence[int],
                      cutoff: int) -> dict[str, float]:
    """Means of `truncated_metric_values` over the samples."""
    vals = truncated_metric_values(ranks, ks, cutoff)
    if not len(next(iter(vals.values()))):
        raise ValueError("no samples to score")
    return {k: float(v.mean()) for k, v in vals.items()}


def catalogue_ranks(scores: torch.Tensor, target: torch.Tensor | Sequence[int],
                    allowed: torch.Tensor) -> torch.Tensor:
    """1-based rank of each row's target among its allowed items (ties against the target).

    `scores` `[n, N]` over the catalogue (higher = better), `target` `[n]` column indices,
    `allowed` `[n, N]` bool (False: excluded for that user; the target must be allowed)."""
    if scores.shape != allowed.shape or scores.ndim != 2:
        raise ValueError(f"scores {tuple(scores.shape)} and allowed {tuple(allowed.shape)} "
                         "must both be [n, catalogue size]")
    target = torch.as_tensor(target, dtype=torch.long)
    if torch.isnan(scores).any():
        raise ValueError("NaN scores: the model produced invalid values")
    if not bool(allowed.gather(1, target[:, None]).all()):
        raise ValueError("a target is excluded from its own ranking (seen before the test item?)")
    pos = scores.gather(1, target[:, None])
    return ((scores >= pos) & allowed).sum(dim=1)


def list_rank(ranked: Sequence[tuple[str, float]], target: str, cutoff: int) -> int:
    """Rank of `target` in a scored top list (ties against it), `cutoff + 1` when absent."""
    scores = dict(ranked)
    if target not in scores:
        return cutoff + 1
    t = scores[target]
    return min(cutoff + 1, sum(1 for item, s in ranked if s >= t))


# -- the run's catalogue ----------------------------------------------------------------------

@dataclass
class FullCatalogue:
    """The catalogue, each scored sample's excluded items, and the cut-offs of one run."""

    items: list[str]                 # catalogue item ids, items.tsv order
    rule: str                        # which items form the catalogue, in words
    excluded: list[set[str]]         # per sample: catalogue items removed from its ranking
    ks: tuple[int, ...]
    cutoff: int
    exclude_seen: bool = True

    def __post_init__(self) -> None:
        self.index = {item: j for j, item in enumerate(self.items)}

    @classmethod
    def load(cls, config: CatalogueConfig | Any, out_dir: str | Path,
             samples: Sequence[Sample]) -> FullCatalogue:
        """From the run folder's data stage output and the parsed protocol settings (a raw
        config is parsed first: tests, notebooks)."""
        cc = config if isinstance(config, CatalogueConfig) else catalogue_config(config)
        if cc is None:
            raise ValueError("eval.candidates=sampled: no full catalogue to rank (set "
                             "eval.candidates=all)")
        data_dir = Path(out_dir) / "data"
        items = load_items(data_dir / "items.tsv")
        keep, rule = catalogue_mask(data_dir, list(items), cc.scenario, cc.cold_negatives)
        ids = [i for i, k in zip(items, keep) if k]
        excluded: list[set[str]] = [set() for _ in samples]
        if cc.exclude_seen:
            seqs = training_items(data_dir / "sequences.jsonl")
            excluded = [(set(seqs.get(s.user, ())) | set(s.history)) - {s.target}
                        for s in samples]
        cat = cls(ids, rule, excluded, cc.ks, cc.cutoff, cc.exclude_seen)
        missing = [s.target for s in samples if s.target not in cat.index]
        if missing:
            raise ValueError(f"{len(missing)} test target(s) {missing[:3]} are not in the "
                             f"catalogue ({rule}); the data folder and the config disagree")
        return cat

    @property
    def exclusion(self) -> str:
        return EXCLUSION_SEEN if self.exclude_seen else EXCLUSION_NONE

    def allowed(self) -> torch.Tensor:
        """`[n, N]` bool: True where an item is ranked for that sample."""
        mask = torch.ones(len(self.excluded), len(self.items), dtype=torch.bool)
        for r, ex in enumerate(self.excluded):
            cols = [self.index[i] for i in ex if i in self.index]
            if cols:
                mask[r, cols] = False
        return mask

    def sizes(self) -> list[int]:
        """Items ranked per sample (the catalogue minus its exclusions)."""
        return [len(self.items) - sum(1 for i in ex if i in self.index) for ex in self.excluded]

    def info(self) -> dict[str, Any]:
        """What every full-catalogue results row records about the protocol."""
        return {"candidates": "all", "catalogue_size": len(self.items),
                "catalogue_rule": self.rule, "exclusion": self.exclusion,
                "exclude_seen": self.exclude_seen, "cutoff": self.cutoff,
                "cutoff_note": f"ranked lists of {self.cutoff} items (eval.beam_size); a target "
                               f"beyond them is a miss; MRR is MRR@{self.cutoff}"}

    def row_fields(self, ranks: torch.Tensor, users: Sequence[Any]) -> tuple[dict[str, float],
                                                                                dict[str, Any]]:
        """(metrics, uncertainty fields) of a row from per-sample ranks (see `ci_fields`)."""
        vals = truncated_metric_values(ranks, self.ks, self.cutoff)
        metrics = {k: float(v.mean()) for k, v in vals.items()}
        cis = confidence.bootstrap_cis(vals, users)
        return metrics, {"ci": {k: [lo, hi] for k, (lo, hi) in cis.items()},
                         "ci_method": confidence.CI_METHOD, "ci_level": confidence.LEVEL,
                         "n_boot": confidence.N_BOOT}

    def ranks_from_scores(self, scores: torch.Tensor, samples: Sequence[Sample]
                          ) -> tuple[torch.Tensor, list[list[tuple[str, float]]]]:
        """Ranks and top-`cutoff` lists from scores `[n, N]` over the catalogue (models that
        score every item: popularity, the baselines, exhaustive likelihood)."""
        allowed = self.allowed()
        target = torch.tensor([self.index[s.target] for s in samples])
        ranks = catalogue_ranks(scores, target, allowed)
        masked = scores.masked_fill(~allowed, float("-inf"))
        top = masked.topk(min(self.cutoff, masked.shape[1]), dim=1)
        lists = [[(self.items[j], float(v)) for v, j in zip(vs, js) if math.isfinite(v)]
                 for vs, js in zip(top.values.tolist(), top.indices.tolist())]
        return ranks, lists


def catalogue_mask(data_dir: Path, item_ids: list[str], scenario: str | None = None,
                   cold_negatives: str | None = None) -> tuple[list[bool], str]:
    """Which items.tsv items the test negatives may come from, and the rule in words. The
    data stage's stats.json says the scenario; `scenario`/`cold_negatives` (the run's config)
    stand in for a data folder written before it recorded them."""
    stats_path = data_dir / "stats.json"
    stats = read_json(stats_path) if stats_path.exists() else {}
    scenario = stats.get("scenario") or _required(scenario, "scenario.name")
    if scenario != "cold":
        return [True] * len(item_ids), "every item of data/items.tsv"
    cold_neg = stats.get("cold_negatives") or _required(cold_negatives, "scenario.cold_negatives")
    new_path = data_dir / NEW_ITEMS_FILE
    if not new_path.exists():
        raise FileNotFoundError(
            f"{new_path}: missing; the cold catalogue is read from the data stage's list of new "
            "items (a data folder written before it existed: rerun the data stage)")
    new = read_json(new_path)
    if cold_neg == "new":
        test_new = set(new["test"])
        return [i in test_new for i in item_ids], (
            "the test-new items only (cold, scenario.cold_negatives=new: the items test "
            "negatives come from)")
    valid_new = set(new["valid"])
    return [i not in valid_new for i in item_ids], (
        "every item of data/items.tsv but the validation-new ones (cold: warm and test-new "
        "items, as test negatives)")


def _required(value: str | None, key: str) -> str:
    if value is None:
        return need({}, key)  # the missing-key error, naming it
    return value


def training_items(path: Path) -> dict[str, list[str]]:
    """`user -> training items` of `sequences.jsonl` (the seen items of the exclusion rule)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: needed for eval.exclude_seen=true (run the data stage)")
    return {str(r["user"]): [str(i) for i in r["items"]] for r in iter_jsonl(path)}


def prediction_rows(samples: Sequence[Sample], ranks: torch.Tensor,
                    lists: Sequence[Sequence[tuple[str, float]]], sizes: Sequence[int],
                    digits: int = 5) -> list[dict]:
    """One row per sample: id, user, target, the ranked top list with scores, the target's rank
    (cut-off + 1 = beyond the list) and how many items were ranked."""
    return [{"id": s.id, "user": s.user, "target": s.target,
             "ranked": [i for i, _ in lst], "scores": [round(v, digits) for _, v in lst],
             "rank": int(r), "num_ranked": int(n)}
            for s, r, lst, n in zip(samples, ranks.tolist(), lists, sizes)]


def record_row(out_dir: str | Path, name: str, cat: FullCatalogue, samples: Sequence[Sample],
               ranks: torch.Tensor, lists: Sequence[Sequence[tuple[str, float]]],
               **meta: Any) -> dict[str, float]:
    """Record one full-catalogue row in results.json and its predictions file; its metrics."""
    metrics, ci = cat.row_fields(ranks, [s.user for s in samples])
    record_results(out_dir, name, metrics, **ci, **cat.info(), **meta)
    write_jsonl(Path(out_dir) / "predictions" / f"{name}.jsonl",
                prediction_rows(samples, ranks, lists, cat.sizes()))
    return metrics
