"""Training throughput: the LightningModule against a plain PyTorch + peft loop.

All loops train the same LoRA (same seed) on the same batches in the same order (the
length-grouped batch sampler of the data module); they run interleaved, batch by batch, so that
a shared machine's changing load hits them alike. tokens/s counts non-pad tokens and skips the
first (warm-up) step. Three loops are timed:

  plain    the usual loop: `model(**batch).loss` (every position through the LM head), AdamW
  plain_r  the same loop with our `response_loss` (only response positions through the head)
  module   `InstructionTuningModule` under a Lightning Trainer (uses `response_loss`)

module/plain is the end-to-end gain or loss of our code against the textbook loop; module/plain_r
isolates what Lightning itself costs. Also reports the padding fraction of one epoch's batches
with and without length grouping.

    python experiments/benchmarks/train_throughput.py --steps 3 --batch-size 4 \
        --out outputs/benchmarks/train_throughput.json

Samples come from a run's `data/` folder (`--data-dir`), else are built on the fly from ML-1M
(RecBole files under $RECCOCKTAIL_DATA): history = up to 10 items before a user's last item,
29 random negatives. The numbers depend on the machine and on what else runs on it.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import time
from pathlib import Path

import torch
from common import DATA_ROOT, MOVIE_DOMAIN, ROOT, backbone_config, ml1m_samples, tuning_defaults
from omegaconf import OmegaConf

from reccocktail.data.prompts import build_prompt_builder
from reccocktail.data.samples import load_items, load_samples
from reccocktail.models.backbone import load_tokenizer
from reccocktail.models.datamodule import (
    InstructionDataModule,
    LengthGroupedBatchSampler,
    padding_fraction,
)
from reccocktail.models.tuning import build_peft_model, response_loss
from reccocktail.utils.io import write_json

log = logging.getLogger("train_throughput")


class PlainLoop:
    """The textbook loop: one AdamW step per batch on a PeftModel built like the module's."""

    def __init__(self, backbone, lr: float, use_response_loss: bool) -> None:
        self.model = build_peft_model(backbone, init_seed=0)
        self.model.train()
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=lr)
        self.use_response_loss = use_response_loss
        self.times: list[float] = []
        self.tokens: list[int] = []
        self.losses: list[float] = []

    def step(self, batch: dict[str, torch.Tensor]) -> None:
        t0 = time.perf_counter()
        if self.use_response_loss:
            loss = response_loss(self.model, batch["input_ids"], batch["attention_mask"],
                                 batch["labels"])
        else:
            loss = self.model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.times.append(time.perf_counter() - t0)
        self.tokens.append(int(batch["attention_mask"].sum()))
        self.losses.append(float(loss.detach()))


def run_interleaved(backbone, dm: InstructionDataModule, steps: int, lr: float,
                    plain_loops: dict[str, bool]) -> dict:
    """Train the module with Lightning; after each of its steps, run every plain loop on the same
    batch. Interleaving exposes all loops to the same load of a shared machine. The module's
    time of a step is the wall time between two batch starts, minus the plain steps run there."""
    import lightning as L

    from reccocktail.models.tuning import InstructionTuningModule

    plains = {name: PlainLoop(backbone, lr, resp) for name, resp in plain_loops.items()}

    class Interleave(L.Callback):
        def __init__(self):
            self.starts: list[float] = []
            self.plain_s: list[float] = []
            self.tokens: list[int] = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.starts.append(time.perf_counter())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.tokens.append(int(batch["attention_mask"].sum()))
            t0 = time.perf_counter()
            for loop in plains.values():
                loop.step(batch)
            self.plain_s.append(time.perf_counter() - t0)

        def on_train_end(self, trainer, pl_module):
            self.starts.append(time.perf_counter())

    cb = Interleave()
    # the plain loops' per-batch mean: micro_batch
    t = tuning_defaults(lr=lr, init_seed=0, schedule="constant", warmup_steps=0,
                        loss_normalization="micro_batch")
    module = InstructionTuningModule(backbone, t, stage="bench")
    trainer = L.Trainer(accelerator="cpu", devices=1, precision="32-true", max_steps=steps,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, use_distributed_sampler=False,
                        gradient_clip_val=1.0, callbacks=[cb], log_every_n_steps=1,
                        default_root_dir=str(ROOT / "outputs" / "benchmarks"))
    trainer.fit(module, datamodule=dm)
    module_times = [b - a - p for a, b, p in zip(cb.starts[:-1], cb.starts[1:], cb.plain_s)]
    out = {"module": _summary(module_times, cb.tokens, module.step_losses)}
    for name, loop in plains.items():
        out[name] = _summary(loop.times, loop.tokens, loop.losses)
    return out


def _summary(times: list[float], tokens: list[int], losses: list[float]) -> dict:
    t, k = times[1:], tokens[1:]  # the first step warms up kernels and allocators
    return {"steps_timed": len(t), "seconds": round(sum(t), 2), "tokens": sum(k),
            "tokens_per_s": round(sum(k) / sum(t), 1) if t else None,
            "losses": [round(x, 4) for x in losses]}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="smollm2_135m", help="a conf/backbone/*.yaml name")
    ap.add_argument("--data-dir", type=Path, default=None, help="a run's data/ folder")
    ap.add_argument("--data-root", type=Path, default=DATA_ROOT)
    ap.add_argument("--num-samples", type=int, default=256, help="samples for the padding measurement")
    ap.add_argument("--steps", type=int, default=3, help="optimizer steps per loop (+1 warm-up)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--mega-batch-mult", type=int, default=50)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks" / "train_throughput.json")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    os.environ.setdefault("RECCOCKTAIL_CACHE", str(ROOT / "outputs" / "cache"))

    backbone = OmegaConf.to_container(backbone_config(args.backbone))
    if args.data_dir is not None:
        items = load_items(args.data_dir / "items.tsv")
        samples = load_samples(args.data_dir / "train.jsonl", items)
        samples = random.Random(0).sample(samples, min(args.num_samples, len(samples)))
        source = str(args.data_dir)
    else:
        samples, items = ml1m_samples(args.data_root, args.num_samples)
        source = "ml-1m (built by the benchmark)"
    tok = load_tokenizer(backbone)
    builder = build_prompt_builder(tok, items, MOVIE_DOMAIN,
                                   backbone, max_title_tokens=32)
    t0 = time.perf_counter()
    dm = InstructionDataModule(samples, builder, batch_size=args.batch_size,
                               mega_batch_mult=args.mega_batch_mult, seed=0)
    lengths = dm.train_lengths()
    tokenize_s = time.perf_counter() - t0
    grouped = LengthGroupedBatchSampler(lengths, args.batch_size, seed=0,
                                        mega_batch_mult=args.mega_batch_mult)
    plain_order = LengthGroupedBatchSampler(lengths, args.batch_size, seed=0, group_by_length=False)
    result: dict = {
        "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
        "backbone": args.backbone, "data": source, "samples": len(samples),
        "batch_size": args.batch_size, "mean_tokens": round(sum(lengths) / len(lengths), 1),
        "tokenize_s": round(tokenize_s, 2),
        "pad_frac_grouped": round(padding_fraction(lengths, grouped.global_batches(0)), 4),
        "pad_frac_random": round(padding_fraction(lengths, plain_order.global_batches(0)), 4),
    }
    log.info("padding: grouped %.1f%%, random %.1f%%", 100 * result["pad_frac_grouped"],
             100 * result["pad_frac_random"])
    n = args.steps + 1
    result.update(run_interleaved(backbone, dm, n, args.lr, {"plain": False, "plain_r": True}))
    for name in ("plain", "plain_r", "module"):
        log.info("%s: %s tok/s", name, result[name]["tokens_per_s"])
    for base in ("plain", "plain_r"):
        if "module" in result and base in result:
            result[f"ratio_module_over_{base}"] = round(
                result["module"]["tokens_per_s"] / result[base]["tokens_per_s"], 3)
    write_json(args.out, result)
    log.info("%s", result)
    return result


if __name__ == "__main__":
    main()
