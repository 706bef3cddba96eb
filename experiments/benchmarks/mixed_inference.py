"""What the cocktail costs at inference and at test-time tuning, side by side in one run.

Forward time (one batch of real-length ML-100k prompts) of: one plain LoRA adapter; the
mixed adapter (mode ab: same rank, so the same cost; mode delta: rank r_G + r_S); both adapters
run separately with their outputs averaged (the ensemble the cocktail replaces); the mixed
adapter merged into the backbone against the bare backbone; the differentiable `LoraMixer`
(λ applied on the fly, what the entropy module runs). Then the time of one λ-learning step
(greedy k tokens + one teacher-forced forward/backward over a batch of unlabeled prompts),
extrapolated to `mix.steps`, beside one epoch of training an ingredient, estimated from the
measured time of one training step per sample times the number of ML-100k training prompts.

Variants are timed interleaved (round-robin) and summarised by their median, so that a CPU
shared with other work slows all of them alike.

    python experiments/benchmarks/mixed_inference.py               # SmolLM2-135M, CPU
    python experiments/benchmarks/mixed_inference.py --backbone tiny_llama --repeats 3
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import tempfile
import time
from pathlib import Path

import torch
from common import DATA_ROOT, ROOT, backbone_config

from reccocktail.cocktail.entropy import (
    EntropyMixModule,
    LoraMixer,
    left_pad,
)
from reccocktail.cocktail.mix import mix_and_save
from reccocktail.data.prompts import PromptBuilder
from reccocktail.models.adapters import read_lora
from reccocktail.models.backbone import load_backbone, lora_config
from reccocktail.utils.io import write_json


def _ml100k(data_root: Path) -> tuple[dict[str, str], int]:
    """Titles of ML-100k and its number of leave-one-out training prompts (all prefixes)."""
    raw = data_root / "ml-100k" / "raw"
    items = {}
    for line in (raw / "u.item").read_text(encoding="latin-1").splitlines():
        parts = line.split("|")
        if len(parts) > 1 and parts[1].strip():
            items[parts[0]] = " ".join(parts[1].split())
    counts: dict[str, int] = {}
    for line in (raw / "u.data").read_text(encoding="latin-1").splitlines():
        user = line.split("\t")[0]
        counts[user] = counts.get(user, 0) + 1
    # training prefixes: every training item after the first (last two go to valid/test)
    return items, sum(max(0, n - 3) for n in counts.values())


def _samples(items: dict[str, str], n: int, history: int, candidates: int, seed: int):
    rng = random.Random(seed)
    ids = sorted(items)
    out = []
    for _ in range(n):
        pick = rng.sample(ids, history + candidates)
        out.append((pick[:history], pick[history:], pick[history]))
    return out


def _adapter(cfg, root: Path, name: str, seed: int, b_seed: int):
    from peft import get_peft_model

    model = load_backbone(cfg)[0]
    torch.manual_seed(seed)
    pm = get_peft_model(model, lora_config(cfg))
    gen = torch.Generator().manual_seed(b_seed)
    with torch.no_grad():
        for pname, p in sorted(pm.named_parameters()):
            if "lora_B" in pname:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.01)
    pm.save_pretrained(str(root / name))
    write_json(root / name / "manifest.json", {"kind": name, "backbone": cfg.name,
                                               "init_seed": seed, "data_hash": "bench"})
    return read_lora(root / name)


def _reset_peak_rss() -> None:
    """Linux: restart the process's peak-RSS counter (VmHWM), so each phase reports its own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def _peak_rss_gb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def _peft(cfg, folder: Path, merge: bool = False):
    from peft import PeftModel

    model = PeftModel.from_pretrained(load_backbone(cfg)[0], str(folder)).eval()
    return model.merge_and_unload() if merge else model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default="smollm2_135m")
    ap.add_argument("--data", default=str(DATA_ROOT))
    ap.add_argument("--batch", type=int, default=1, help="prompts per timed forward")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--num-prompts", type=int, default=50)
    ap.add_argument("--k", type=int, default=3)
    ap.add_argument("--lambda-batch", type=int, default=10, help="mix.batch_size")
    ap.add_argument("--lambda-steps", type=int, default=20, help="mix.steps (extrapolated)")
    ap.add_argument("--measured-steps", type=int, default=1, help="λ steps actually timed")
    ap.add_argument("--micro-batch", type=int, default=2, help="mix.micro_batch_size")
    ap.add_argument("--train-batch", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", default=str(ROOT / "outputs" / "benchmarks" / "mixed_inference.json"))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    cfg = backbone_config(args.backbone)
    items, epoch_samples = _ml100k(Path(args.data))
    bare, tok = load_backbone(cfg)
    builder = PromptBuilder(tokenizer=tok, items=items, noun="movie", verb="watched",
                            max_prompt_tokens=int(cfg.get("max_prompt_tokens", 1024)))
    samples = _samples(items, max(args.num_prompts, args.batch, args.train_batch), 10, 30, seed=0)
    prompts = [builder.prompt_ids(h, c) for h, c, _ in samples]
    ids, mask = left_pad(prompts[: args.batch], tok.pad_token_id)

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        g = _adapter(cfg, root, "general", seed=0, b_seed=1)
        s = _adapter(cfg, root, "specific", seed=0, b_seed=2)
        mix_and_save([g, s], [0.6, 0.4], "ab", root / "mixed_ab")
        mix_and_save([g, s], [0.6, 0.4], "delta", root / "mixed_delta")
        mixer_model = load_backbone(cfg)[0]
        mixer = LoraMixer(mixer_model, [g, s], "ab")
        mixer.set_weights(torch.tensor([0.6, 0.4]))
        models = {
            "plain adapter (G)": _peft(cfg, root / "general"),
            "mixed adapter, ab": _peft(cfg, root / "mixed_ab"),
            "mixed adapter, delta": _peft(cfg, root / "mixed_delta"),
            "LoraMixer (on the fly)": mixer_model,
            "bare backbone": bare,
            "mixed ab merged into backbone": _peft(cfg, root / "mixed_ab", merge=True),
        }
        g_model, s_model = models["plain adapter (G)"], _peft(cfg, root / "specific")

        def run(model):  # a prefill: the LM head on the last position only, so that the
            # adapters' share of the time is not diluted by the 49k-way output layer
            return model(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits

        fns = {name: (lambda m=m: run(m)) for name, m in models.items()}
        fns["G and S run, outputs averaged"] = lambda a=g_model, b=s_model: (run(a) + run(b)) / 2
        times: dict[str, list[float]] = {name: [] for name in fns}
        with torch.inference_mode():
            for fn in fns.values():  # warm-up
                fn()
            for _ in range(args.repeats):
                for name, fn in fns.items():
                    t0 = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - t0)
        med = {name: statistics.median(v) for name, v in times.items()}
        plain = med["plain adapter (G)"]
        print("| variant | forward s (median) | vs plain adapter |\n|---|---|---|", flush=True)
        for name, t in med.items():
            print(f"| {name} | {t:.3f} | {t / plain:.3f} |", flush=True)
        del models, g_model, s_model, fns
        _reset_peak_rss()
        rss_before = _peak_rss_gb()

        # λ learning: EntropyMixModule steps on the unlabeled prompts (batch mix.batch_size)
        module = EntropyMixModule(load_backbone(cfg)[0], [g, s], mode="ab", k=args.k, lr=0.05,
                                  micro_batch_size=args.micro_batch)
        opt = module.configure_optimizers()
        step_times = []
        for step in range(args.measured_steps):  # what training_step does, without a Trainer
            lo = (step * args.lambda_batch) % len(prompts)
            b_ids, b_mask = left_pad(prompts[lo: lo + args.lambda_batch], tok.pad_token_id)
            t0 = time.perf_counter()
            opt.zero_grad()
            module.objective_backward(b_ids, b_mask)  # micro-batched as the stage does
            opt.step()
            step_times.append(time.perf_counter() - t0)
        lam_step = statistics.median(step_times)
        lam_rss = _peak_rss_gb()
        print(f"λ step: {lam_step:.1f} s, peak RSS {lam_rss:.2f} GB (before: {rss_before:.2f})",
              flush=True)
        del module
        _reset_peak_rss()

        # one ingredient training step (LoRA fwd+bwd+Adam) per sample
        from peft import get_peft_model

        train_model = get_peft_model(load_backbone(cfg)[0], lora_config(cfg))
        train_model.train()
        opt = torch.optim.AdamW([p for p in train_model.parameters() if p.requires_grad], lr=1e-4)
        ex = [builder.example(h, c, t) for h, c, t in samples[: args.train_batch]]
        width = max(len(e["input_ids"]) for e in ex)
        x = torch.full((len(ex), width), tok.pad_token_id)
        y = torch.full((len(ex), width), -100)
        am = torch.zeros((len(ex), width), dtype=torch.long)
        for i, e in enumerate(ex):
            n = len(e["input_ids"])
            x[i, :n], y[i, :n], am[i, :n] = (torch.tensor(e["input_ids"]), torch.tensor(e["labels"]),
                                             1)
        train_times = []
        for _ in range(2):
            t0 = time.perf_counter()
            loss = train_model(input_ids=x, attention_mask=am, labels=y).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
            train_times.append(time.perf_counter() - t0)
        per_sample = min(train_times) / len(ex)

    result = {
        "backbone": str(cfg.name), "torch_threads": torch.get_num_threads(),
        "batch": args.batch, "prompt_tokens_mean": sum(map(len, prompts)) / len(prompts),
        "forward_seconds": med,
        "ratio_mixed_ab_to_plain": med["mixed adapter, ab"] / plain,
        "ratio_mixed_delta_to_plain": med["mixed adapter, delta"] / plain,
        "ratio_averaged_outputs_to_plain": med["G and S run, outputs averaged"] / plain,
        "ratio_merged_to_bare": med["mixed ab merged into backbone"] / med["bare backbone"],
        "lambda_step_seconds": lam_step, "lambda_step_peak_rss_gb": lam_rss,
        "lambda_micro_batch": args.micro_batch, "train_peak_rss_gb": _peak_rss_gb(),
        "lambda_steps": args.lambda_steps, "lambda_batch": args.lambda_batch, "k": args.k,
        "lambda_total_seconds_extrapolated": lam_step * args.lambda_steps,
        "lambda_steps_measured": args.measured_steps,
        "train_seconds_per_sample": per_sample,
        "ml100k_train_prompts": epoch_samples,
        "ingredient_epoch_seconds_estimated": per_sample * epoch_samples,
    }
    write_json(args.out, result)
    print(f"backbone {cfg.name}, {torch.get_num_threads()} threads, batch {args.batch}, "
          f"mean prompt {result['prompt_tokens_mean']:.0f} tokens")
    print(f"merged into backbone / bare backbone: {result['ratio_merged_to_bare']:.3f}")
    print(f"λ learning: {lam_step:.1f} s/step (batch {args.lambda_batch}, k={args.k}) x "
          f"{args.lambda_steps} steps = {result['lambda_total_seconds_extrapolated']:.0f} s "
          f"(extrapolated from {args.measured_steps} measured steps)")
    print(f"ingredient epoch (estimate): {per_sample:.2f} s/sample x {epoch_samples} ML-100k "
          f"training prompts = {result['ingredient_epoch_seconds_estimated'] / 3600:.1f} h")
    print(json.dumps({k: v for k, v in result.items() if k.startswith("ratio")}))


if __name__ == "__main__":
    main()
