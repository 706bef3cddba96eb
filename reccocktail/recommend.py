"""Ask a trained cocktail (or any adapter, or the bare backbone) for recommendations.

`python run.py task=recommend recommend.adapter=outputs/runs/<run>/adapters/cocktail
'recommend.history=["Toy Story (1995)","Heat (1995)"]' 'recommend.candidates=[...]'`

History and candidates are item ids of `recommend.items` (an items.tsv; by default the
`data/items.tsv` of the adapter's run folder) or titles; an entry that is neither an id nor a
known title is used as a free-text title. `recommend.file=requests.jsonl` takes one
`{"id"?, "history": [...], "candidates": [...]}` per line instead. Candidates are ranked by the
log-likelihood of their title as the answer to the paper's prompt (the evaluation's scorer),
printed as a table, and with `recommend.explain=true` the model is asked in a follow-up turn
why the top candidate fits (greedy decoding, at most `explain_max_new_tokens` tokens), as in
the paper's case study.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

from reccocktail.data.titles import clean_title
from reccocktail.utils.config import need
from reccocktail.utils.device import model_device, place_backbone, resolve_device
from reccocktail.utils.io import iter_jsonl, read_json, write_jsonl

log = logging.getLogger(__name__)


def _norm(title: str) -> str:
    """A typed title as the data stage cleans titles (HTML entities, spaces, `||`), caseless."""
    return clean_title(title).casefold()


class ItemResolver:
    """Maps what a user typed (an item id or a title) to an id with a title to show."""

    def __init__(self, items: dict[str, str] | None = None) -> None:
        self.items: dict[str, str] = dict(items or {})
        self._by_title: dict[str, str] = {}
        for item_id, title in self.items.items():
            self._by_title.setdefault(_norm(title), item_id)
        self.free: list[str] = []

    def resolve(self, entry: Any, where: str) -> str:
        text = str(entry).strip()
        if not text:
            raise ValueError(f"{where}: empty item")
        if text in self.items:
            return text
        found = self._by_title.get(_norm(text))
        if found is not None:
            return found
        # A free-text title, cleaned like the catalogue's titles (`Tom &amp; Jerry` is shown and
        # scored as `Tom & Jerry`), under a private id that can never collide with a real one.
        title = clean_title(text)
        item_id = f"title:{title}"
        if item_id not in self.items:
            self.items[item_id] = title
            self._by_title[_norm(title)] = item_id
            self.free.append(title)
        return item_id


def read_requests(cfg: DictConfig) -> list[dict[str, Any]]:
    """The requests: `recommend.file` (JSON lines) or the single `history`/`candidates` pair."""
    rc = cfg.recommend
    file = need(rc, "file", "recommend")
    if file:
        path = Path(file)
        out = []
        for lineno, row in enumerate(iter_jsonl(path), 1):
            for key in ("history", "candidates"):
                if not isinstance(row.get(key), list):
                    raise ValueError(f"{path}:{lineno}: '{key}' must be a list")
            out.append({"id": str(row.get("id", lineno)), "history": row["history"],
                        "candidates": row["candidates"], "where": f"{path}:{lineno}"})
        if not out:
            raise ValueError(f"{path}: no requests in the file")
        return out
    hist = need(rc, "history", "recommend")
    cands = need(rc, "candidates", "recommend")
    hist = [] if hist is None else OmegaConf.to_container(hist, resolve=True)
    cands = OmegaConf.to_container(cands, resolve=True) if cands else []
    if not isinstance(hist, list) or not isinstance(cands, list):
        raise ValueError("recommend.history and recommend.candidates must be lists")
    return [{"id": "1", "history": hist, "candidates": cands, "where": "recommend"}]


def _items_path(rc: DictConfig) -> Path | None:
    items = need(rc, "items", "recommend")  # `rc.items` would be the DictConfig method
    if items:
        path = Path(items)
        if not path.exists():
            raise FileNotFoundError(f"recommend.items: {path} does not exist")
        return path
    adapter = need(rc, "adapter", "recommend")
    if adapter:
        guess = Path(adapter).parent.parent / "data" / "items.tsv"  # <run>/adapters/<name>
        if guess.exists():
            return guess
    return None


def load_model(cfg: DictConfig):
    """(model, tokenizer, prompt format): the backbone with `recommend.adapter` on it (unless
    null/none), and the format that adapter was trained in (else `tuning.objective`)."""
    from reccocktail.data.prompts import adapter_format, prompt_format
    from reccocktail.models.backbone import load_backbone

    rc = cfg.recommend
    device = resolve_device(cfg, "recommend.device")
    model, tokenizer = load_backbone(cfg.backbone, device=device)
    place_backbone(model, device, cfg, "recommend")
    adapter = need(rc, "adapter", "recommend")
    fmt = prompt_format(cfg)
    if adapter and str(adapter).lower() not in ("none", "null"):
        from reccocktail.models.adapters import check_backbone, load_adapter

        path = Path(adapter)
        if not (path / "adapter_config.json").exists():
            raise FileNotFoundError(
                f"recommend.adapter: {path} holds no adapter_config.json "
                "(expected <run>/adapters/<name>, e.g. adapters/cocktail)"
            )
        manifest = path / "manifest.json"
        if manifest.exists():
            fmt = adapter_format(read_json(manifest))
            # the full weights identity (source, path, init seed, architecture), not the name
            check_backbone(read_json(manifest), cfg.backbone, f"recommend.adapter: {path}")
        model = place_backbone(load_adapter(model, path), device, cfg, "recommend (adapter)")
    model.eval()
    return model, tokenizer, fmt


@torch.no_grad()
def explain(model: Any, builder: Any, history: list[str], candidates: list[str], choice: str,
            template: str, max_new_tokens: int) -> str:
    """A short greedy explanation of why `choice` fits: the ranking prompt, the model's answer
    (the chosen title), then a follow-up question in the same conversation."""
    tok = builder.tokenizer
    question = template.format(title=builder.title(choice), noun=builder.noun, verb=builder.verb)
    first = builder.text(history, candidates)
    if builder.use_chat_template:
        messages = [{"role": "user", "content": first},
                    {"role": "assistant", "content": builder.title(choice)},
                    {"role": "user", "content": question}]
        if builder.system_prompt:
            messages.insert(0, {"role": "system", "content": builder.system_prompt})
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                      return_dict=False)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        ids = list(ids)
    else:
        ids = tok(f"{first}\n{builder.title(choice)}\n{question}\n", add_special_tokens=True)["input_ids"]
    device = model_device(model)
    input_ids = torch.tensor([ids], device=device)
    out = model.generate(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                         max_new_tokens=int(max_new_tokens), do_sample=False,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    return tok.decode(out[0, input_ids.shape[1]:], skip_special_tokens=True).strip()


def _print_ranking(result: dict[str, Any], top_k: int | None) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"Request {result['id']}: ranked candidates "
                  f"(history: {len(result['history'])} items)")
    for col, kw in (("rank", {"justify": "right"}), ("item", {}), ("title", {}),
                    ("log-likelihood", {"justify": "right"}), ("share", {"justify": "right"})):
        table.add_column(col, **kw)
    rows = result["ranking"][: top_k or None]
    for r in rows:
        shown = "–" if r["item"].startswith("title:") else r["item"]
        table.add_row(str(r["rank"]), shown, r["title"], f"{r['score']:.3f}", f"{r['share']:.1%}")
    console = Console()
    console.print(table)
    if result.get("explanation") is not None:
        console.print(f"[bold]Why {result['ranking'][0]['title']}?[/bold] {result['explanation']}")


def run_recommend(cfg: DictConfig) -> dict[str, Any]:
    """Rank the candidates of every request; returns {"requests": [...]} (JSON-able)."""
    from reccocktail.data.prompts import prompt_builder_from_config
    from reccocktail.data.samples import Sample, load_items
    from reccocktail.evaluation.scorers import LikelihoodScorer

    if "recommend" not in cfg:
        raise ValueError("recommend: missing config group (compose with recommend=default)")
    rc = cfg.recommend
    requests = read_requests(cfg)
    items_path = _items_path(rc)
    resolver = ItemResolver(load_items(items_path) if items_path else None)
    samples = []
    for req in requests:
        where = req["where"]
        hist = [resolver.resolve(x, f"{where}: history[{i}]") for i, x in enumerate(req["history"])]
        cands = [resolver.resolve(x, f"{where}: candidates[{i}]")
                 for i, x in enumerate(req["candidates"])]
        if not cands:
            raise ValueError(f"{where}: no candidates given (recommend.candidates or 'candidates')")
        dup = sorted({c for c in cands if cands.count(c) > 1})
        if dup:
            raise ValueError(f"{where}: candidate(s) listed twice: {[resolver.items[d] for d in dup]}")
        samples.append(Sample(id=req["id"], user=req["id"], history=hist, target=cands[0],
                              candidates=cands))
    if resolver.free:
        log.info("%d entr%s used as free-text titles (not ids or titles of %s)", len(resolver.free),
                 "y" if len(resolver.free) == 1 else "ies", items_path or "any items.tsv")

    model, tokenizer, fmt = load_model(cfg)
    builder = prompt_builder_from_config(cfg, tokenizer, resolver.items, fmt=fmt)
    scorer = LikelihoodScorer(model, builder, batch_size=int(need(rc, "batch_size", "recommend")),
                              normalize=bool(need(rc, "normalize", "recommend")))
    results = []
    for req, sample in zip(requests, samples):
        scores = scorer.score([sample])[0].float()
        share = torch.softmax(scores, dim=0)
        order = torch.argsort(scores, descending=True, stable=True).tolist()
        ranking = [{"rank": r + 1, "item": sample.candidates[i], "title": builder.title(sample.candidates[i]),
                    "score": float(scores[i]), "share": float(share[i])} for r, i in enumerate(order)]
        result = {"id": req["id"], "history": [builder.title(h) for h in sample.history],
                  "ranking": ranking, "explanation": None}
        if need(rc, "explain", "recommend"):
            result["explanation"] = explain(
                model, builder, sample.history, sample.candidates, ranking[0]["item"],
                str(need(rc, "explain_prompt", "recommend")),
                int(need(rc, "explain_max_new_tokens", "recommend")))
        if need(rc, "print", "recommend"):
            _print_ranking(result, need(rc, "top_k", "recommend"))
        results.append(result)
    try:
        out = need(rc, "output", "recommend")
    except InterpolationResolutionError:  # no Hydra run folder (a composed config): no file
        out = None
    if out:
        write_jsonl(out, results)
        log.info("wrote %d ranking(s) to %s", len(results), out)
    return {"requests": results, "adapter": need(rc, "adapter", "recommend"), "items": str(items_path) if items_path else None}
