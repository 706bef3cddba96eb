"""What a CPU training step of P5 (full fine-tuning) and of the OMfA-style baseline costs,
beside the LoRA ingredient S, on the same demo rows.

Process CPU seconds per step (`time.process_time`, with one torch thread) measure the work
itself, so a machine shared with other jobs does not distort the ratios the way wall time
does; wall seconds are printed too. Modes, on the run's backbone config (SmolLM2-135M):

- `lora`: S as the demo trains it (LoRA on every linear of the top 8 layers, sequence windows
  of <= 40 titles, batch 4), `response_loss` + backward + AdamW;
- `full`: the same batches, `tuning.mode=full` (`models.full.build_full_model`, embeddings frozen);
- `full_emb`: the same with `train_embeddings=true`;
- `omfa`: the OMfA-style contrastive step (`baselines.omfa.contrastive_loss`) on its default
  batch (8 windows of <= 20 titles, general pool and target mixed).

    python experiments/benchmarks/p5_omfa_cost.py --data outputs/runs/<demo run>/data --steps 3
"""

from __future__ import annotations

import argparse
import resource
import time
from pathlib import Path

import torch
from common import MOVIE_DOMAIN
from omegaconf import OmegaConf

from reccocktail.baselines import omfa
from reccocktail.data.prompts import build_prompt_builder
from reccocktail.data.samples import load_items
from reccocktail.models.backbone import load_tokenizer
from reccocktail.models.datamodule import collate
from reccocktail.models.sequence_data import build_windows, load_user_sequences
from reccocktail.models.tuning import build_peft_model, response_loss

ROOT = Path(__file__).resolve().parents[2]


def _backbone(cache_dir: str):
    cfg = OmegaConf.load(ROOT / "conf" / "backbone" / "smollm2_135m.yaml")
    cfg.cache_dir = cache_dir
    return cfg


def _steps(model, batches, loss_fn, lr: float) -> dict:
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    cpu, wall = [], []
    for b in batches:
        c0, w0 = time.process_time(), time.time()
        loss = loss_fn(model, b)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        cpu.append(time.process_time() - c0)
        wall.append(time.time() - w0)
    # the first step allocates the Adam states: report the mean of the later ones too
    later = cpu[1:] or cpu
    return {"cpu_s_per_step": round(sum(later) / len(later), 2), "cpu_s_first": round(cpu[0], 2),
            "wall_s_per_step": round(sum(wall[1:] or wall) / len(wall[1:] or wall), 2),
            "trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", required=True, help="a run's data/ folder (demo: ML-100k)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--modes", default="lora,full,omfa")
    ap.add_argument("--cache-dir", default=str(ROOT / "outputs" / "cache"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = Path(args.data)
    bcfg = _backbone(args.cache_dir)
    tok = load_tokenizer(bcfg)
    items = load_items(data / "items.tsv")
    dom = MOVIE_DOMAIN
    pb = build_prompt_builder(tok, items, dom, bcfg, 32, fmt="sequence")
    seqs = load_user_sequences(data / "sequences.jsonl", items)
    windows = build_windows(seqs, 40, 3, 1)[: 4 * args.steps]
    s_batches = [collate([pb.sequence_example(w.items, w.context) for w in windows[i:i + 4]],
                         pb.pad_token_id) for i in range(0, len(windows), 4)]
    s_targets = sum(w.num_targets for w in windows) / len(s_batches)
    results = {}
    for mode in args.modes.split(","):
        t0 = time.time()
        if mode == "lora":
            model = build_peft_model(bcfg, init_seed=0)
        elif mode in ("full", "full_emb"):
            from reccocktail.models.full import build_full_model

            model = build_full_model(bcfg, train_embeddings=mode == "full_emb")
        elif mode == "omfa":
            model = build_peft_model(bcfg, init_seed=0)
        else:
            raise SystemExit(f"--modes: unknown mode {mode!r}")
        if mode == "omfa":
            cfg = OmegaConf.create({"seed": 0, "backbone": bcfg, "domain": dom,
                                    "data": {"max_title_tokens": 32}, "scenario": {"name": "warm"}})
            settings = OmegaConf.to_container(
                OmegaConf.load(ROOT / "conf" / "baselines" / "omfa.yaml"))
            rows, title_ids, _, _, _ = omfa.build_rows(cfg, data.parent, settings, tok)
            bs = int(settings["batch_size"])
            rows = rows[: bs * args.steps]
            batches = [omfa.collate_windows(rows[i:i + bs], pb.pad_token_id, title_ids)
                       for i in range(0, len(rows), bs)]
            tau = float(settings["temperature"])
            res = _steps(model, batches, lambda m, b, tau=tau: omfa.contrastive_loss(m, b, tau),
                         float(settings["lr"]))
            res["targets_per_step"] = round(sum(len(b["q_tgt"]) for b in batches) / len(batches), 1)
        else:
            res = _steps(model, s_batches, lambda m, b: response_loss(m, **b),
                         5e-5 if mode.startswith("full") else 5e-4)
            res["targets_per_step"] = round(s_targets, 1)
        res["build_s"] = round(time.time() - t0, 1)
        results[mode] = res
        print(mode, res, flush=True)
        del model
    if "lora" in results:
        for mode, r in results.items():
            print(f"{mode}: {r['cpu_s_per_step'] / results['lora']['cpu_s_per_step']:.2f}x "
                  "the LoRA step's CPU time")


if __name__ == "__main__":
    main()
