"""Reading finished runs: one `Run` per `results.json` with the setting its `.hydra/config.yaml`
records, stale runs (a stage restarted and did not complete) left out before anything is
averaged.

A run folder may come from someone else, so its config is data, never code to run: it is read as
plain YAML and no interpolation is resolved through OmegaConf. `${oc.env:...}` would put this
machine's environment (an API key) into the report, `${ml100k_dir:...}` would download and write
files. Only plain references to other keys of the same file (`${seed}`,
`${domain.name}_${scenario.name}`) are filled in, by `_select`; a value that calls a resolver is
kept as the text it is."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from reccocktail.utils.io import read_json

log = logging.getLogger(__name__)


@dataclass
class Run:
    """One run folder: where it came from, its setting, and its variants' metrics."""

    path: Path
    domain: str
    scenario: str
    seed: Any
    setting: dict[str, Any]
    variants: dict[str, dict[str, Any]]
    num_candidates: int = 30
    num_prompts: int | None = None
    lambdas: dict[str, Any] | None = None
    mtime: float = 0.0
    column: str = ""  # the column group: the domain, or the value of `column_by`

    def __post_init__(self) -> None:
        self.column = self.column or self.domain


def key_str(v: Any) -> str:
    """A setting value as a table key (None as `null`, so it sorts and prints)."""
    return "null" if v is None else str(v)


def _load_config(run_dir: Path) -> dict | None:
    """The run's config as plain, unresolved data (see the module docstring)."""
    for cand in (run_dir / ".hydra" / "config.yaml", run_dir / "config.yaml"):
        if cand.exists():
            try:
                node = OmegaConf.to_container(OmegaConf.load(cand), resolve=False)
            except Exception as err:  # noqa: BLE001 (a broken config must not hide the others)
                log.warning("%s: unreadable config (%s)", cand, err)
                continue
            if isinstance(node, dict):
                return node
            log.warning("%s: not a mapping; ignored", cand)
    return None


_REF = re.compile(r"\$\{([A-Za-z_][\w.]*)\}")  # `${a.b}`: a key of the same file, no resolver
_MAX_DEPTH = 8


def _lookup(cfg: dict, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _fill(cfg: dict, value: Any, depth: int = 0) -> Any:
    """`value` with its plain references to other keys filled in; a value holding anything
    else in `${...}` (a resolver: `oc.env`, `ml100k_dir`, `hydra`, ...) is returned as its text,
    never resolved."""
    if not isinstance(value, str) or "${" not in value or depth > _MAX_DEPTH:
        return value
    if _REF.sub("", value).count("${"):  # a resolver call (or a nested one): left as text
        return value
    whole = _REF.fullmatch(value)
    if whole:
        return _fill(cfg, _lookup(cfg, whole.group(1)), depth + 1)
    parts = {}
    for ref in _REF.findall(value):
        got = _fill(cfg, _lookup(cfg, ref), depth + 1)
        if isinstance(got, (dict, list)) or (isinstance(got, str) and "${" in got):
            return value
        parts[ref] = "null" if got is None else str(got)
    return _REF.sub(lambda m: parts[m.group(1)], value)


def _select(cfg: dict | None, key: str, default: Any = None) -> Any:
    if cfg is None:
        return default
    value = _fill(cfg, _lookup(cfg, key))
    return default if value is None else value


def load_run(results_path: Path, group_by: Sequence[str] = (), column_by: str | None = None) -> Run:
    """One run from its `results.json` and the `.hydra/config.yaml` beside it. In a run whose
    ingredient started from the base spirit (`tuning.specific.init_from: general`), the
    `specific` variant is the second-round fine-tuned model and is reported as `second_round`."""
    results = read_json(results_path)
    if not isinstance(results, dict) or not isinstance(results.get("variants"), dict):
        raise ValueError(f"{results_path}: expected {{'variants': {{name: {{'metrics': ...}}}}}}")
    run_dir = results_path.parent
    cfg = _load_config(run_dir)
    if cfg is None:
        log.warning("%s: no .hydra/config.yaml; domain/scenario/seed taken from results.json", run_dir)
    meta = results.get("meta", {}) if isinstance(results.get("meta"), dict) else {}

    def pick(key: str, meta_key: str, default: Any) -> Any:
        v = _select(cfg, key)
        if isinstance(v, str) and "${" in v:  # a resolver call: never resolved here
            log.warning("%s: %s = %r is not resolved (a run's config is read, not run); "
                        "taken from results.json", run_dir, key, v)
            v = None
        return meta.get(meta_key, default) if v is None else v

    variants = {}
    for name, row in results["variants"].items():
        if not isinstance(row, dict) or not isinstance(row.get("metrics"), dict):
            raise ValueError(f"{results_path}: variant {name!r} has no 'metrics' object")
        variants[str(name)] = row
    if _select(cfg, "tuning.specific.init_from") == "general" and "specific" in variants:
        variants["second_round"] = variants.pop("specific")
    lam = None
    lam_path = run_dir / "mix" / "lambda.json"
    if lam_path.exists():
        try:
            lam = read_json(lam_path)
        except ValueError as err:
            log.warning("%s", err)
    # λ prompts: selection.lambda_users; mix.num_prompts in older runs (or as the deprecated
    # alias, which wins when set)
    num_prompts = _select(cfg, "mix.num_prompts")
    if num_prompts is None:
        num_prompts = pick("selection.lambda_users", "num_prompts", None)
    domain = str(pick("domain.name", "domain", "?"))
    setting = {k: _select(cfg, k) for k in group_by}
    column = ""
    if column_by:
        setting = {"domain": domain, **setting}  # the domain moves from the columns to the tables
        column = key_str(_select(cfg, column_by))
    return Run(
        path=run_dir,
        domain=domain,
        scenario=str(pick("scenario.name", "scenario", "?")),
        seed=pick("seed", "seed", None),
        setting=setting,
        column=column,
        variants=variants,
        num_candidates=int(pick("data.num_candidates", "num_candidates", 30)),
        num_prompts=None if num_prompts is None else int(num_prompts),
        lambdas=lam if isinstance(lam, dict) else ({"lambdas": lam} if lam is not None else None),
        mtime=results_path.stat().st_mtime,
    )


def find_results(folders: Iterable[str | Path]) -> list[Path]:
    """Every results.json below the folders (a folder may also be a results.json itself)."""
    found: list[Path] = []
    for folder in folders:
        folder = Path(folder)
        if folder.is_file() and folder.name == "results.json":
            found.append(folder)
        elif folder.is_dir():
            found.extend(sorted(p for p in folder.rglob("results.json") if ".hydra" not in p.parts))
        else:
            raise FileNotFoundError(f"{folder}: no such folder")
    return sorted(set(found))


def stale_reason(results_path: Path) -> str | None:
    """Why a run's results cannot be trusted (a stage restarted after its rows were written and
    did not complete them, or the eval stage's summary is missing), else None."""
    results = read_json(results_path)
    stale = results.get("stale") if isinstance(results, dict) else None
    if stale:
        return "stage(s) " + ", ".join(f"{s} (started {t})" for s, t in stale.items()) + \
            " restarted after its rows were written and did not complete them"
    if (results_path.parent / "stages").is_dir() and \
            not (results_path.parent / "stages" / "eval.json").exists():
        return "stages/eval.json is missing: the evaluation did not complete"
    return None


def collect_runs(folders: Iterable[str | Path], group_by: Sequence[str] = (),
                 column_by: str | None = None) -> list[Run]:
    """Every complete run below `folders`; runs whose files disagree are left out, loudly."""
    runs = []
    for p in find_results(folders):
        reason = stale_reason(p)
        if reason:
            log.warning("%s: not aggregated: %s; rerun its eval stage", p.parent, reason)
            continue
        runs.append(load_run(p, group_by, column_by))
    return runs
