"""Ask a trained cocktail (or any adapter, or the bare backbone) for recommendations.

`python run.py task=recommend recommend.adapter=outputs/runs/<run>/adapters/cocktail
'recommend.history=["Toy Story (1995)","Heat (1995)"]' 'recommend.candidates=[...]'`

History and candidates are item ids of `recommend.items` (an items.tsv; by default the
`data/items.tsv` of the adapter's run folder) or titles, matched after the data stage's title
cleaning (HTML entities, Unicode NFKC, control and zero-width characters removed) and
case-folding. An entry shaped like an item id (a number, or an id of the catalogue's form) that
is not in the catalogue is refused; any other unknown entry, or one written `title:<text>`, is
used as a free-text title. `recommend.file=requests.jsonl` takes one
`{"id"?, "history": [...], "candidates": [...]}` per line instead; a request whose items cannot
be resolved is reported (its `error`) and the others are ranked. Everything printed is escaped
(control characters shown as `\x1b`-style escapes, no terminal sequences, no rich markup).
`python -m reccocktail.recommend <overrides>` is `python run.py task=recommend <overrides>`. Candidates are ranked by the
log-likelihood of their title as the answer to the paper's prompt (the evaluation's scorer),
printed as a table, and with `recommend.explain=true` the model is asked in a follow-up turn
why the top candidate fits (greedy decoding, at most `explain_max_new_tokens` tokens), as in
the paper's case study.
"""

from __future__ import annotations

import logging
import re
import sys
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError
from rich.console import Console
from rich.table import Table
from rich.text import Text

from reccocktail.cli import run_hydra
from reccocktail.data.prompts import adapter_format, prompt_builder_from_config, prompt_format
from reccocktail.data.samples import Sample, load_items
from reccocktail.data.titles import clean_title
from reccocktail.evaluation.scorers import LikelihoodScorer
from reccocktail.models.adapters import load_adapter, verify_adapter
from reccocktail.models.backbone import load_backbone
from reccocktail.utils.config import need
from reccocktail.utils.device import model_device, place_backbone, resolve_device
from reccocktail.utils.io import iter_jsonl, write_jsonl

log = logging.getLogger(__name__)


def _norm(title: str) -> str:
    """A typed title as the data stage cleans titles (HTML entities, NFKC, control and
    zero-width characters, spaces, `||`), caseless."""
    return clean_title(title).casefold()


FREE_PREFIX = "title:"  # `title:1984`: a free-text title, even when it looks like an id
_ASIN = re.compile(r"B0[A-Z0-9]{8}|\d{9}[\dX]")  # Amazon ids: B0... or an ISBN-10


class ItemResolver:
    """Maps what a user typed (an item id or a title) to an id with a title to show."""

    def __init__(self, items: dict[str, str] | None = None) -> None:
        self.items: dict[str, str] = dict(items or {})
        self._by_title: dict[str, str] = {}
        for item_id, title in self.items.items():
            self._by_title.setdefault(_norm(title), item_id)
        self.free: list[str] = []
        ids = list(self.items)
        # the form of the catalogue's ids (GroupLens numbers, Amazon ASINs): an entry of that
        # form is an id, never a title ("99999" is an unknown film, not a film called "99999")
        self._id_forms = [re.compile(r"\d+")]
        if ids and all(_ASIN.fullmatch(i) for i in ids):
            self._id_forms.append(_ASIN)

    def looks_like_id(self, entry: Any) -> bool:
        """True for a number, or an entry of the catalogue's id form."""
        if isinstance(entry, int) and not isinstance(entry, bool):
            return True
        return any(f.fullmatch(str(entry).strip()) for f in self._id_forms)

    def resolve(self, entry: Any, where: str) -> str:
        raw = str(entry).strip()
        if raw in self.items:
            return raw
        forced = raw.startswith(FREE_PREFIX)
        text = clean_title(raw[len(FREE_PREFIX):] if forced else raw)
        if not text:
            raise ValueError(f"{where}: empty item {raw!r} (nothing visible after removing "
                             "control and zero-width characters)")
        if not forced:
            if text in self.items:
                return text
            found = self._by_title.get(_norm(text))
            if found is not None:
                return found
            if self.looks_like_id(entry if isinstance(entry, int) else text):
                raise ValueError(
                    f"{where}: unknown item id {text!r} (not in the catalogue"
                    + (f" of {len(self.items) - len(self.free)} items"
                       if len(self.items) > len(self.free) else "; no items.tsv given")
                    + f"); for a free-text title write {FREE_PREFIX}{text}")
        # A free-text title, cleaned like the catalogue's titles (`Tom &amp; Jerry` is shown and
        # scored as `Tom & Jerry`), under a private id that can never collide with a real one.
        title = text
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


def adapter_dir(rc: DictConfig) -> Path | None:
    """`recommend.adapter` (None: null/none, the bare backbone); a folder without a PEFT
    adapter raises naming it."""
    adapter = need(rc, "adapter", "recommend")
    if not adapter or str(adapter).lower() in ("none", "null"):
        return None
    path = Path(adapter)
    if not (path / "adapter_config.json").exists():
        raise FileNotFoundError(
            f"recommend.adapter: {path} holds no adapter_config.json "
            "(expected <run>/adapters/<name>, e.g. adapters/cocktail)"
        )
    return path


def load_model(cfg: DictConfig):
    """(model, tokenizer, prompt format): the backbone with `recommend.adapter` on it (unless
    null/none), and the format that adapter was trained in (else `tuning.objective`)."""
    model, tokenizer, fmt, _ = load_checked_model(cfg)
    return model, tokenizer, fmt


def load_checked_model(cfg: DictConfig):
    """`load_model` and the adapter's checked manifest ({} without an adapter): its `foreign`
    lists what differs from this config when `allow_foreign_adapters=true` let it through."""
    rc = cfg.recommend
    device = resolve_device(cfg, "recommend.device")
    model, tokenizer = load_backbone(cfg.backbone, device=device)
    place_backbone(model, device, cfg, "recommend")
    path = adapter_dir(rc)
    fmt = prompt_format(cfg)
    manifest: dict[str, Any] = {}
    if path is not None:
        # intact, a manifest, the same weights (source, path, init seed, architecture, not the
        # name) and the configured domain (its prompt wording); the format is the adapter's
        manifest = verify_adapter(path, f"recommend.adapter: {path}", cfg, fields=("domain",))
        if manifest.get("kind"):
            fmt = adapter_format(manifest)
        model = place_backbone(load_adapter(model, path), device, cfg, "recommend (adapter)")
    model.eval()
    return model, tokenizer, fmt, manifest


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


def shown(text: Any) -> str:
    """Text as printed: control, format and other invisible characters (escape sequences from a
    requests file or a model's answer) become visible escapes like `\\x1b`; never raw."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                   for c in str(text))


def _print_ranking(result: dict[str, Any], top_k: int | None) -> None:
    console = Console()
    if result.get("error"):  # Text, not markup: nothing from the request is interpreted
        console.print(Text(f"Request {shown(result['id'])}: refused: {shown(result['error'])}",
                           style="bold red"))
        return
    table = Table(title=Text(f"Request {shown(result['id'])}: ranked candidates "
                             f"(history: {len(result['history'])} items)"))
    for col, kw in (("rank", {"justify": "right"}), ("item", {}), ("title", {}),
                    ("log-likelihood", {"justify": "right"}), ("share", {"justify": "right"})):
        table.add_column(col, **kw)
    rows = result["ranking"][: top_k or None]
    for r in rows:
        item = "–" if r["item"].startswith(FREE_PREFIX) else r["item"]
        table.add_row(str(r["rank"]), Text(shown(item)), Text(shown(r["title"])),
                      f"{r['score']:.3f}", f"{r['share']:.1%}")
    console.print(table)
    if result.get("explanation") is not None:
        why = Text(f"Why {shown(result['ranking'][0]['title'])}? ", style="bold")
        console.print(why + Text(shown(result["explanation"])))


def _sample(resolver: ItemResolver, req: dict[str, Any]):
    """The request as a Sample (target: the first candidate, unused), or a ValueError saying
    which entry of which request is wrong."""
    where = req["where"]
    hist = [resolver.resolve(x, f"{where}: history[{i}]") for i, x in enumerate(req["history"])]
    cands = [resolver.resolve(x, f"{where}: candidates[{i}]")
             for i, x in enumerate(req["candidates"])]
    if not cands:
        raise ValueError(f"{where}: no candidates given (recommend.candidates or 'candidates')")
    dup = sorted({c for c in cands if cands.count(c) > 1})
    if dup:
        raise ValueError(f"{where}: candidate(s) listed twice: {[resolver.items[d] for d in dup]}")
    return Sample(id=req["id"], user=req["id"], history=hist, target=cands[0], candidates=cands)


def run_recommend(cfg: DictConfig) -> dict[str, Any]:
    """Rank the candidates of every request; returns {"requests": [...]} (JSON-able). A request
    whose items cannot be resolved gets an `error` instead of a ranking (the others are
    ranked); when none can be ranked, a ValueError lists why."""
    if "recommend" not in cfg:
        raise ValueError("recommend: missing config group (compose with recommend=default)")
    rc = cfg.recommend
    adapter_dir(rc)  # a wrong adapter path fails before the requests are read
    requests = read_requests(cfg)
    items_path = _items_path(rc)
    resolver = ItemResolver(load_items(items_path) if items_path else None)
    samples: list[Any] = []
    for req in requests:
        try:
            samples.append(_sample(resolver, req))
        except ValueError as err:
            samples.append(None)
            req["error"] = str(err.args[0])
            log.warning("%s", shown(req["error"]))
    errors = [r["error"] for r in requests if r.get("error")]
    if len(errors) == len(requests):
        raise ValueError("; ".join(errors) if len(errors) == 1 else
                         f"recommend: none of the {len(errors)} requests can be ranked: "
                         + "; ".join(errors))
    if resolver.free:
        log.info("%d entr%s used as free-text titles (not ids or titles of %s)", len(resolver.free),
                 "y" if len(resolver.free) == 1 else "ies", items_path or "any items.tsv")

    model, tokenizer, fmt, manifest = load_checked_model(cfg)
    builder = prompt_builder_from_config(cfg, tokenizer, resolver.items, fmt=fmt)
    scorer = LikelihoodScorer(model, builder, batch_size=int(need(rc, "batch_size", "recommend")),
                              normalize=bool(need(rc, "normalize", "recommend")))
    results = []
    for req, sample in zip(requests, samples):
        if sample is None:
            result: dict[str, Any] = {"id": req["id"], "error": req["error"], "ranking": []}
            if need(rc, "print", "recommend"):
                _print_ranking(result, None)
            results.append(result)
            continue
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
    summary = {"requests": results, "adapter": need(rc, "adapter", "recommend"),
               "items": str(items_path) if items_path else None}
    if manifest.get("foreign"):  # an adapter of another run, used on purpose
        summary["foreign"] = manifest["foreign"]
    return summary


def main(argv: list[str] | None = None) -> None:
    """`python -m reccocktail.recommend <overrides>`: `python run.py task=recommend <overrides>`
    (the same config tree, checks and run folder; `reccocktail recommend` takes flags)."""
    args = list(sys.argv[1:] if argv is None else argv)
    given = [a for a in args if a.split("=", 1)[0].lstrip("+~") == "task"]
    if any(a.split("=", 1)[1:] != ["recommend"] for a in given):
        raise SystemExit(f"python -m reccocktail.recommend runs task=recommend; got {given}")
    run_hydra(args if given else ["task=recommend", *args])


if __name__ == "__main__":
    main()
