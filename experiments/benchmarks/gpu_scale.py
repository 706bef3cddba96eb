"""Paper scale on one GPU: what a 7B-shaped backbone costs in every stage.

The Qwen2-7B and Llama-3.1-8B architectures of `conf/backbone/{qwen2_7b,llama31_8b}.yaml`, built
with random weights (the shapes, not the weights, set the cost; nothing is downloaded), bf16 on
a GPU, the configs' LoRA (r16/α32 on q/k/v/o), gradient checkpointing, on the paper's prompts
(10 history items, 30 candidates; ML-1M ~520 and Beauty ~790 tokens). Measured, in order:

  peak      the chip's bf16 matmul rate (fp32 on a CPU): the denominator of every MFU
  train     LoRA training tokens/s, MFU and peak memory for micro-batch sizes up to what fits
  lambda    one entropy λ step on 50 prompts, k=3, both adapters on the fly (EntropyMixModule),
            and the no-grad "entropy before/after" pass over them
  eval      users/s with 30 candidates: shared-prefix LikelihoodScorer, the naive scorer, free
            generation and ranked beam search (BeamScorer); shared-prefix against one prefill
            per user at the training MFU
  bf16      the open anomaly of docs/benchmarks.md (bf16 scoring ~3x slower than fp32 on the H200) taken
            apart: fp32/bf16 x packed/batched x attention kernel (sdpa, sdpa without cuDNN,
            math, eager) x varying/fixed prompt shapes, plus a profile of each dtype
  nf4       the train sweep again with a 4-bit NF4 backbone (bitsandbytes; skipped on a CPU)
  hours     "hours per paper setting on one H200" for G, S, λ and evaluation from these rates
            and the split sizes of the data-stage table of docs/benchmarks.md (stated in the output)

    python experiments/benchmarks/gpu_scale.py --shape tiny            # a CPU check, < 1 min
    python experiments/benchmarks/gpu_scale.py --write-samples outputs/benchmarks/gpu_scale_samples.json.gz
    python experiments/benchmarks/gpu_scale.py --shape qwen2_7b \\
        --samples outputs/benchmarks/gpu_scale_samples.json.gz --out outputs/benchmarks/gpu_scale.json

Prompts come from `--samples` (token ids written by `--write-samples` from ML-1M and Beauty
with SmolLM2's tokenizer, a few hundred KB: what travels to a GPU machine), else are built from
$RECCOCKTAIL_DATA when it is there, else are synthetic token ids of the same lengths (flagged).
`--budget-s` bounds the whole run: a section that would not fit is skipped and says so; the JSON
is rewritten after every section, so a killed run keeps what it measured.

MFU counts the FLOPs the work needs (frozen backbone: forward 2N + input gradients 2N per token,
plus causal attention and the LM head on the answer tokens only); gradient checkpointing's
recomputation is reported separately as HFU. The usual full fine-tuning count (6N) would read
1.5x higher.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import os
import platform
import random
import resource
import sys
import time
from pathlib import Path
from typing import Any

import torch
from common import DATA_ROOT, ROOT
from scale_model import (
    build_model,
    flop_shape,
    lora_model,
    prefill_flops,
    quantize_nf4,
    random_adapters,
    set_attention,
    shape_config,
    train_flops,
    unlora,
)
from scale_prompts import load_samples, stats, write_samples

from reccocktail.utils.io import write_json

# Split sizes of the paper settings (docs/benchmarks.md, "Data stage": full size, as written by the data
# stage here) and the recipe of tuning=gpu / mix=entropy / eval=default.
SETTINGS = {
    #             general train, target train, valid, test users, prompt domain
    "ml1m_warm": (28_671, 981_491, 6_040, 6_040, "ml1m"),
    "ml1m_cold": (28_671, 880_623, 6_040, 5_381, "ml1m"),
    "beauty_warm": (428_005, 131_369, 22_354, 22_354, "beauty"),
    "beauty_cold": (428_005, 134_916, 22_351, 9_483, "beauty"),
    "sports_warm": (356_590, 189_540, 35_598, 35_598, "beauty"),
    "sports_cold": (356_590, 196_710, 35_591, 15_144, "beauty"),
}
RECIPE = {"epochs": 2, "specific_train_prompts": 10_000, "lambda_steps": 20, "lambda_batch": 10,
          "lambda_prompts": 50, "eval_variants": 5}


# -- small helpers --------------------------------------------------------------------------

class Budget:
    """Seconds left of `--budget-s` since the start."""

    def __init__(self, seconds: float) -> None:
        self.t0, self.total = time.perf_counter(), float(seconds)

    def left(self) -> float:
        return self.total - (time.perf_counter() - self.t0)


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def free(dev: torch.device) -> None:
    gc.collect()
    if dev.type == "cuda":
        torch.cuda.empty_cache()


def reset_peak(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)


def peak_gib(dev: torch.device) -> float:
    """Peak device memory since the last reset (GPU), else the process's peak RSS so far."""
    if dev.type == "cuda":
        return round(torch.cuda.max_memory_allocated(dev) / 2**30, 2)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def autocast(dev: torch.device, dtype: torch.dtype):
    """bf16-mixed as Lightning runs it on a GPU (`trainer=gpu`); nothing on a CPU."""
    if dev.type == "cuda" and dtype == torch.bfloat16:
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# -- sections -------------------------------------------------------------------------------

def measure_peak(dev: torch.device, dtype: torch.dtype) -> dict:
    """The best of a few large matmuls: the chip's reachable dense rate in `dtype`."""
    n = 8192 if dev.type == "cuda" else 1024
    a = torch.randn(n, n, device=dev, dtype=dtype)
    b = torch.randn(n, n, device=dev, dtype=dtype)
    best = 0.0
    for _ in range(3):
        a @ b
    for _ in range(10 if dev.type == "cuda" else 3):
        sync(dev)
        t0 = time.perf_counter()
        for _ in range(5):
            a @ b
        sync(dev)
        best = max(best, 5 * 2 * n**3 / (time.perf_counter() - t0))
    return {"dtype": str(dtype).replace("torch.", ""), "n": n, "tflops": round(best / 1e12, 2)}


def train_batches(samples: list[dict], bs: int, pad: int, vocab: int) -> tuple[list[dict], float]:
    """Length-grouped batches (as the data module builds them) of prompt + target answer, and
    their padding fraction."""
    from reccocktail.models.datamodule import collate

    ex = [{"input_ids": [t % vocab for t in s["prompt"] + s["responses"][s["target"]]],
           "labels": [-100] * len(s["prompt"]) + [t % vocab for t in s["responses"][s["target"]]]}
          for s in samples]
    while len(ex) < 2 * bs:
        ex = ex + ex
    ex.sort(key=lambda e: len(e["input_ids"]))
    batches = [collate(ex[i:i + bs], pad) for i in range(0, len(ex) - bs + 1, bs)]
    random.Random(0).shuffle(batches)
    real = sum(int(b["attention_mask"].sum()) for b in batches)
    total = sum(b["attention_mask"].numel() for b in batches)
    return batches, round(1 - real / total, 4)


def train_sweep(model: Any, shape: str, samples: list[dict], pad: int, sizes: list[int], steps: int,
                dev: torch.device, peak: float, budget: Budget, reserve: float,
                quantized: bool = False) -> dict:
    """tokens/s, MFU and peak memory of LoRA training per micro-batch size (stops at OOM)."""
    from reccocktail.models.tuning import response_loss

    _, _, lora = shape_config(shape)
    f = flop_shape(shape)
    peft_model = lora_model(model, lora, quantized)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    rows, last_step = [], 0.0
    for bs in sizes:
        if budget.left() - reserve < last_step * (steps + 1) * 2.2:
            rows.append({"micro_batch": bs, "skipped": "time budget"})
            break
        batches, pad_frac = train_batches(samples, bs, pad, f["V"])
        reset_peak(dev)
        times, tokens, mflops, hflops = [], 0, 0.0, 0.0
        try:
            for i in range(steps + 1):
                b = {k: v.to(dev) for k, v in batches[i % len(batches)].items()}
                sync(dev)
                t0 = time.perf_counter()
                with autocast(dev, torch.bfloat16):
                    loss = response_loss(peft_model, b["input_ids"], b["attention_mask"], b["labels"])
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                opt.zero_grad(set_to_none=True)
                sync(dev)
                if i == 0:
                    continue  # warm-up: kernels, allocator
                times.append(time.perf_counter() - t0)
                lens = b["attention_mask"].sum(1).tolist()
                answers = (b["labels"] != -100).sum(1).tolist()
                tokens += sum(lens)
                for s_len, a in zip(lens, answers):
                    m_, h_ = train_flops(f, int(s_len), int(a))
                    mflops, hflops = mflops + m_, hflops + h_
        except Exception as err:  # noqa: BLE001 - an OOM ends the sweep, anything else is recorded
            opt.zero_grad(set_to_none=True)
            free(dev)
            rows.append({"micro_batch": bs, "error": "out of memory" if is_oom(err) else repr(err)[:300]})
            break
        sec = sum(times)
        last_step = sec / max(1, len(times))
        rows.append({"micro_batch": bs, "steps": len(times), "step_s": round(last_step, 3),
                     "tokens_per_s": round(tokens / sec, 1), "mfu": round(mflops / sec / peak, 4),
                     "hfu": round(hflops / sec / peak, 4), "pad_frac": pad_frac,
                     "peak_gib": peak_gib(dev), "loss": round(float(loss), 3)})
        print(f"  train{' nf4' if quantized else ''} micro-batch {bs:3d}: "
              f"{rows[-1]['tokens_per_s']:10.1f} tok/s  MFU {100 * rows[-1]['mfu']:5.1f}%  "
              f"peak {rows[-1]['peak_gib']} GiB", flush=True)
    del opt, params
    base = unlora(peft_model)
    free(dev)
    ok = [r for r in rows if "tokens_per_s" in r]
    best = max(ok, key=lambda r: r["tokens_per_s"]) if ok else None
    return {"rows": rows, "best": best, "model": base}


def lambda_step(model: Any, shape: str, samples: list[dict], pad: int, eos: int, n_prompts: int,
                k: int, micro: list[int], dev: torch.device, budget: Budget, reserve: float) -> dict:
    """One λ step (Adam on the λ logits over `n_prompts` prompts, micro-batched as the stage
    does) and the no-grad mean-entropy pass over the same prompts, per micro-batch size."""
    from reccocktail.cocktail.entropy import EntropyMixModule, left_pad

    _, _, lora = shape_config(shape)
    vocab = flop_shape(shape)["V"]
    prompts = [[t % vocab for t in s["prompt"]] for s in samples]
    while len(prompts) < n_prompts:
        prompts = prompts + prompts
    prompts = prompts[:n_prompts]
    module = EntropyMixModule(model, random_adapters(model, lora), k=k, stop_ids=[eos])
    module.to(dev)
    ids, mask = left_pad(prompts, pad)
    rows, last = [], 0.0
    try:
        for m in micro:
            if budget.left() - reserve < last * 2.5:
                rows.append({"micro_batch": m, "skipped": "time budget"})
                break
            module.micro_batch_size = m
            opt = torch.optim.Adam([module.lambda_logits], lr=0.05)
            reset_peak(dev)
            try:
                with autocast(dev, next(model.parameters()).dtype):  # bf16-mixed in the stage
                    module.objective_backward(ids[:m].to(dev), mask[:m].to(dev))  # warm-up
                opt.zero_grad(set_to_none=True)
                sync(dev)
                t0 = time.perf_counter()
                with autocast(dev, next(model.parameters()).dtype):
                    module.objective_backward(ids.to(dev), mask.to(dev))
                opt.step()
                sync(dev)
                step_s = time.perf_counter() - t0
                step_peak = peak_gib(dev)
                batches = [{"input_ids": ids[i:i + 10], "attention_mask": mask[i:i + 10]}
                           for i in range(0, n_prompts, 10)]
                t0 = time.perf_counter()
                module.mean_entropy(batches)
                sync(dev)
                measure_s = time.perf_counter() - t0
            except Exception as err:  # noqa: BLE001
                free(dev)
                rows.append({"micro_batch": m, "error": "out of memory" if is_oom(err) else repr(err)[:300]})
                break
            last = step_s + measure_s
            rows.append({"micro_batch": m, "step_s": round(step_s, 3),
                         "s_per_prompt_step": round(step_s / n_prompts, 4),
                         "measure_s": round(measure_s, 3),
                         "s_per_prompt_measure": round(measure_s / n_prompts, 4),
                         "peak_gib": step_peak})
            print(f"  lambda micro-batch {m:2d}: step {step_s:7.2f} s / {n_prompts} prompts, "
                  f"no-grad pass {measure_s:6.2f} s, peak {step_peak} GiB", flush=True)
    finally:
        module.mixer.unwrap()
        model.requires_grad_(False)
        del module
        free(dev)
    ok = [r for r in rows if "step_s" in r]
    return {"prompts": n_prompts, "k": k, "rows": rows,
            "best": min(ok, key=lambda r: r["step_s"]) if ok else None}


class _Ids:
    """What the likelihood scorers need of a PromptBuilder when prompts are token ids."""

    def __init__(self, eos: int) -> None:
        self.eos_token_id = int(eos)


def _users(samples: list[dict], vocab: int) -> list[tuple[list[int], list[list[int]]]]:
    return [([t % vocab for t in s["prompt"]], [[t % vocab for t in r] for r in s["responses"]])
            for s in samples]


def score_rate(model: Any, users: list, eos: int, dev: torch.device, kind: str = "shared",
               packed: bool = True, batch_size: int = 30) -> tuple[float, torch.Tensor]:
    """users/s of a scorer over `users` (`shared`: the shared-prefix likelihood, `naive`, or
    `beam`: ranked beam search over the candidates' trie, beam 10), one warm-up user first; and
    the scores."""
    from reccocktail.evaluation import scorers

    cls = {"shared": scorers.LikelihoodScorer, "naive": scorers.NaiveLikelihoodScorer,
           "beam": getattr(scorers, "BeamScorer", None)}[kind]
    scorer = cls(model, _Ids(eos), batch_size=batch_size, packed=packed)
    model.eval()
    with torch.inference_mode():
        scorer.score_ids(*users[0])
        sync(dev)
        t0 = time.perf_counter()
        scores = torch.stack([scorer.score_ids(p, r) for p, r in users])
        sync(dev)
    return len(users) / (time.perf_counter() - t0), scores


def generate_rate(model: Any, samples: list[dict], vocab: int, eos: int, pad: int, batch: int,
                  dev: torch.device) -> dict:
    """users/s of free greedy generation (GenerateMatchScorer's settings), left-padded batches,
    each decoding as many tokens as the batch's longest target title (+ end of turn)."""
    from transformers import GenerationConfig

    from reccocktail.evaluation.scorers import _pad

    groups = [samples[i:i + batch] for i in range(0, len(samples) - batch + 1, batch)] or [samples]
    model.eval()
    secs, users, new_tokens = [], 0, []
    with torch.inference_mode():
        for j, g in enumerate([groups[0], *groups]):  # the first is a warm-up
            prompts = [[t % vocab for t in s["prompt"]] for s in g]
            n_new = max(len(s["responses"][s["target"]]) for s in g)
            ids, mask = _pad(prompts, max(map(len, prompts)), pad, dev, left=True)
            cfg = GenerationConfig(max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                                   num_beams=1, eos_token_id=eos, pad_token_id=pad)
            sync(dev)
            t0 = time.perf_counter()
            model.generate(input_ids=ids, attention_mask=mask, generation_config=cfg)
            sync(dev)
            if j:
                secs.append(time.perf_counter() - t0)
                users += len(g)
                new_tokens.append(n_new)
    return {"users_per_s": round(users / sum(secs), 3), "batch": len(groups[0]),
            "users": users, "new_tokens_mean": round(sum(new_tokens) / len(new_tokens), 1)}


def eval_rates(model: Any, shape: str, samples: list[dict], meta: dict, dev: torch.device,
               n_shared: int, n_naive: int, gen_batch: int, gen_users: int, train_mfu: float | None,
               peak: float, budget: Budget, reserve: float) -> dict:
    f = flop_shape(shape)
    users = _users(samples[: n_shared + 1], f["V"])
    eos, pad = meta["eos_token_id"], meta["pad_token_id"]
    out: dict[str, Any] = {}
    reset_peak(dev)
    rate, shared_scores = score_rate(model, users, eos, dev)
    out["shared"] = {"users_per_s": round(rate, 3), "users": len(users) - 1}
    print(f"  eval shared-prefix: {rate:8.3f} users/s", flush=True)
    if n_naive < 1:
        out["naive"] = {"skipped": "--naive-users 0"}
    elif budget.left() - reserve > 25 * (n_naive + 1) / max(rate, 1e-9):
        nrate, naive_scores = score_rate(model, users[: n_naive + 1], eos, dev, kind="naive")
        diff = float((naive_scores[1:] - shared_scores[1:n_naive + 1]).abs().max())
        out["naive"] = {"users_per_s": round(nrate, 3), "users": n_naive,
                        "max_abs_diff_vs_shared": diff, "shared_speedup": round(rate / nrate, 2)}
        print(f"  eval naive:         {nrate:8.3f} users/s", flush=True)
    else:
        out["naive"] = {"skipped": "time budget"}
    if budget.left() - reserve > 10:
        try:
            out["generate"] = generate_rate(model, samples[: gen_users + gen_batch], f["V"], eos, pad,
                                            gen_batch, dev)
            print(f"  eval generate:      {out['generate']['users_per_s']:8.3f} users/s "
                  f"(batch {out['generate']['batch']})", flush=True)
        except Exception as err:  # noqa: BLE001
            free(dev)
            out["generate"] = {"error": "out of memory" if is_oom(err) else repr(err)[:300]}
    else:
        out["generate"] = {"skipped": "time budget"}
    p_mean = sum(len(p) for p, _ in users[1:]) / max(1, len(users) - 1)
    if train_mfu:
        ideal = train_mfu * peak / prefill_flops(f, int(p_mean))
        out["ideal_users_per_s"] = round(ideal, 3)
        out["shared_vs_ideal"] = round(rate / ideal, 3)
    if budget.left() - reserve > 10:
        try:
            brate, _ = score_rate(model, users, eos, dev, kind="beam")
            out["beam"] = {"users_per_s": round(brate, 3), "users": len(users) - 1, "beam_size": 10}
            print(f"  eval ranked beam:   {brate:8.3f} users/s", flush=True)
        except Exception as err:  # noqa: BLE001
            free(dev)
            out["beam"] = {"error": "out of memory" if is_oom(err) else repr(err)[:300]}
    else:
        out["beam"] = {"skipped": "time budget"}
    out["peak_gib"] = peak_gib(dev)
    return out


def bf16_suite(model: Any, shape: str, samples: list[dict], meta: dict, dev: torch.device,
               n_users: int, budget: Budget, reserve: float, kernels: list[str] | None = None,
               profile: bool = True) -> dict:
    """The shared-prefix scorer's users/s over attention kernel x path x shapes x dtype (dtype
    innermost, so that a cut budget still leaves fp32/bf16 pairs), then a profile per dtype."""
    vocab = flop_shape(shape)["V"]
    varying = _users(samples[: n_users + 1], vocab)
    fixed = [varying[1]] * (n_users + 1)
    eos = meta["eos_token_id"]
    if kernels is None:
        kernels = ["sdpa", "sdpa-no-cudnn", "eager", "sdpa-math"] if dev.type == "cuda" else ["sdpa", "eager"]
    keep = reserve + (12.0 if profile else 0.0)  # room left for the two profiles
    rows: list[dict] = []
    profiles: dict[str, Any] = {}
    for kernel in kernels:
        set_attention(model, "eager" if kernel == "eager" else "sdpa")
        for packed in (True, False):
            for shapes, users in (("varying", varying), ("fixed", fixed)):
                for dtype in (torch.float32, torch.bfloat16):
                    if budget.left() < keep:
                        if not rows or "skipped" not in rows[-1]:
                            rows.append({"skipped": "time budget"})
                        continue
                    model.to(dtype)
                    try:
                        with _sdpa_context(kernel):
                            rate, _ = score_rate(model, users, eos, dev, packed=packed)
                        row: dict[str, Any] = {"users_per_s": round(rate, 3)}
                    except Exception as err:  # noqa: BLE001 - a kernel that refuses the inputs
                        row = {"error": repr(err)[:200]}
                    rows.append({"dtype": str(dtype).replace("torch.", ""), "attention": kernel,
                                 "path": "packed" if packed else "batched", "shapes": shapes, **row})
    set_attention(model, "sdpa")
    for dtype in (torch.float32, torch.bfloat16):
        if profile and budget.left() > reserve:
            model.to(dtype)
            profiles[str(dtype).replace("torch.", "")] = _profile(model, varying[:4], eos, dev)
    model.to(torch.bfloat16 if dev.type == "cuda" else torch.float32)
    return {"rows": rows, "profiles": profiles}


def _sdpa_context(kernel: str):
    if kernel in ("sdpa", "eager"):
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    if kernel == "sdpa-math":
        return sdpa_kernel([SDPBackend.MATH])
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


def _profile(model: Any, users: list, eos: int, dev: torch.device) -> dict:
    """Where a scored user's time goes: busy device time against wall time, top kernels."""
    from torch.profiler import ProfilerActivity, profile

    from reccocktail.evaluation.scorers import LikelihoodScorer

    scorer = LikelihoodScorer(model, _Ids(eos), batch_size=30)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with torch.inference_mode():
        scorer.score_ids(*users[0])
        sync(dev)
        t0 = time.perf_counter()
        with profile(activities=acts) as prof:
            for p, r in users[1:]:
                scorer.score_ids(p, r)
            sync(dev)
        wall = time.perf_counter() - t0
    events = prof.key_averages()

    def dev_time(e) -> float:
        return float(getattr(e, "self_device_time_total", getattr(e, "self_cuda_time_total", 0.0)))

    busy = sum(dev_time(e) for e in events) / 1e6 if dev.type == "cuda" else None
    key = "self_cuda_time_total" if dev.type == "cuda" else "self_cpu_time_total"
    top = sorted(events, key=dev_time if dev.type == "cuda" else (lambda e: e.self_cpu_time_total),
                 reverse=True)[:12]
    return {"users": len(users) - 1, "wall_s": round(wall, 4),
            "device_busy_s": None if busy is None else round(busy, 4),
            "ops": sum(e.count for e in events),
            "top": [{"name": e.key[:80], "count": e.count,
                     "self_ms": round((dev_time(e) if dev.type == "cuda" else e.self_cpu_time_total) / 1e3, 3)}
                    for e in top], "sort": key}


def hours_table(res: dict, stats_by_domain: dict) -> dict:
    """Hours per paper setting on this chip from the measured rates (None where one is missing)."""
    best = (res.get("train") or {}).get("best")
    lam = (res.get("lambda") or {}).get("best")
    ev = res.get("eval") or {}
    ml1m = stats_by_domain["ml1m"]
    rows = {}
    for name, (gen, train, valid, test, dom) in SETTINGS.items():
        st = stats_by_domain.get(dom) or ml1m
        tokens = st["mean_prompt_tokens"] + st["mean_response_tokens"]
        shared = ((ev.get(dom) or ev.get("ml1m") or {}).get("shared") or {}).get("users_per_s")
        longer = st["mean_prompt_tokens"] / ml1m["mean_prompt_tokens"]  # λ was timed on ML-1M
        tok_s = best["tokens_per_s"] if best else None
        g = gen * RECIPE["epochs"] * tokens / tok_s / 3600 if tok_s else None
        s_n = min(RECIPE["specific_train_prompts"], train) + valid
        s = s_n * RECIPE["epochs"] * tokens / tok_s / 3600 if tok_s else None
        lam_h = None
        if lam:
            lam_h = longer * (RECIPE["lambda_steps"] * RECIPE["lambda_batch"] * lam["s_per_prompt_step"]
                              + 2 * RECIPE["lambda_prompts"] * lam["s_per_prompt_measure"]) / 3600
        scored = test - RECIPE["lambda_prompts"]
        e = RECIPE["eval_variants"] * scored / shared / 3600 if shared else None
        parts = [g, s, lam_h, e]
        rows[name] = {"G_h": _r(g), "S_h": _r(s), "lambda_h": _r(lam_h, 4), "eval_h": _r(e),
                      "total_h": _r(sum(parts)) if all(p is not None for p in parts) else None,
                      "lambda_over_S": _r(lam_h / s, 4) if lam_h and s else None,
                      "G_prompts": gen, "S_prompts": s_n, "scored_users": scored,
                      "tokens_per_prompt": round(tokens, 1)}
    return rows


def _r(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(x, nd)


# -- the run --------------------------------------------------------------------------------

def environment(dev: torch.device) -> dict:
    import peft
    import transformers

    env = {"date": datetime.date.today().isoformat(), "python": platform.python_version(),
           "torch": torch.__version__, "transformers": transformers.__version__,
           "peft": peft.__version__, "device": str(dev), "cpu_threads": torch.get_num_threads()}
    try:
        import bitsandbytes

        env["bitsandbytes"] = bitsandbytes.__version__
    except Exception:  # noqa: BLE001
        env["bitsandbytes"] = None
    if dev.type == "cuda":
        p = torch.cuda.get_device_properties(dev)
        env.update(chip=p.name, memory_gib=round(p.total_memory / 2**30, 1),
                   capability=f"{p.major}.{p.minor}", cuda=torch.version.cuda,
                   cudnn=torch.backends.cudnn.version())
    else:
        env["chip"] = f"CPU ({os.cpu_count()} cores)"
    return env


def run_shape(shape: str, args, samples: dict, dev: torch.device, budget: Budget, peak: dict,
              save) -> dict:
    res: dict[str, Any] = {"shape": shape, "flops": flop_shape(shape)}
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    ml1m = samples["domains"]["ml1m"]
    pad = samples["pad_token_id"]
    gpu = dev.type == "cuda"
    t0 = time.perf_counter()
    model = build_model(shape, dtype, dev)
    res["build_s"] = round(time.perf_counter() - t0, 1)
    res["parameters"] = sum(p.numel() for p in model.parameters())
    res["dtype"] = str(dtype).replace("torch.", "")
    print(f"{shape}: {res['parameters'] / 1e9:.2f}B parameters, {res['dtype']} on {dev} "
          f"(built in {res['build_s']} s)", flush=True)
    sizes = [int(x) for x in (args.batch_sizes or ("1,2,4,8,16,32,64" if gpu else "1,2")).split(",")]
    pk = peak["tflops"] * 1e12
    reserve = args.reserve_s

    t = time.perf_counter()
    out = train_sweep(model, shape, ml1m, pad, sizes, args.train_steps, dev, pk, budget, reserve)
    model = out.pop("model")
    res["train"] = {**out, "seconds": round(time.perf_counter() - t, 1)}
    save(res)

    t = time.perf_counter()
    micro = [int(x) for x in (args.lambda_micro or ("2,10" if gpu else "2")).split(",")]
    res["lambda"] = lambda_step(model, shape, ml1m, pad, samples["eos_token_id"], args.lambda_prompts,
                                3, micro, dev, budget, reserve)
    res["lambda"]["seconds"] = round(time.perf_counter() - t, 1)
    save(res)

    t = time.perf_counter()
    mfu = (res["train"]["best"] or {}).get("mfu")
    res["eval"] = {}
    for dom, dsamples in samples["domains"].items():
        if budget.left() < reserve + 10:
            res["eval"][dom] = {"skipped": "time budget"}
            continue
        res["eval"][dom] = eval_rates(model, shape, dsamples, samples, dev, args.users, args.naive_users,
                                      args.gen_batch or (16 if gpu else 2),
                                      args.gen_users or (32 if gpu else 2), mfu, pk, budget, reserve)
    res["eval"]["seconds"] = round(time.perf_counter() - t, 1)
    save(res)

    if args.anomaly_main and budget.left() > reserve + 30:
        t = time.perf_counter()
        kernels = ["sdpa", "sdpa-no-cudnn"] if gpu else ["sdpa"]
        res["bf16_main"] = bf16_suite(model, shape, ml1m, samples, dev, max(2, args.users // 2),
                                      budget, reserve, kernels=kernels, profile=False)
        res["bf16_main"]["seconds"] = round(time.perf_counter() - t, 1)
        save(res)

    if (gpu or args.nf4_cpu) and budget.left() > reserve + 30:
        t = time.perf_counter()
        try:
            model = quantize_nf4(model, dev)
            res["nf4"] = train_sweep(model, shape, ml1m, pad, sizes, args.train_steps, dev, pk,
                                     budget, reserve, quantized=True)
            res["nf4"].pop("model")
        except ImportError as err:
            res["nf4"] = {"skipped": f"bitsandbytes: {err}"}
        except Exception as err:  # noqa: BLE001 - recorded, the other figures stand
            res["nf4"] = {"error": repr(err)[:300]}
        res["nf4"]["seconds"] = round(time.perf_counter() - t, 1)
    else:
        res["nf4"] = {"skipped": "needs CUDA (bitsandbytes NF4); --nf4-cpu forces it"
                      if not gpu else "time budget"}
    del model
    free(dev)
    res["hours"] = hours_table(res, {d: stats(s) for d, s in samples["domains"].items()})
    res["targets"] = targets(res)
    save(res)
    return res


def targets(res: dict) -> dict:
    """The issue's targets beside what was measured (None: not measured)."""
    mfu = ((res.get("train") or {}).get("best") or {}).get("mfu")
    ideal = ((res.get("eval") or {}).get("ml1m") or {}).get("shared_vs_ideal")
    lam = (res.get("hours") or {}).get("ml1m_warm", {}).get("lambda_over_S")
    rows = {"train_mfu": (mfu, 0.40, mfu is not None and mfu >= 0.40),
            "shared_vs_one_prefill": (ideal, 0.50, ideal is not None and ideal >= 0.50),
            "lambda_over_S": (lam, 0.02, lam is not None and lam < 0.02)}
    return {k: {"measured": v, "target": t, "met": ok} for k, (v, t, ok) in rows.items()}


def print_summary(result: dict) -> None:
    env = result["environment"]
    print(f"\n== gpu_scale: {env['chip']}, torch {env['torch']}, transformers {env['transformers']}, "
          f"peft {env['peft']}, {env['date']} ==")
    print(f"peak matmul ({result['peak']['dtype']}): {result['peak']['tflops']} TFLOP/s; "
          f"prompts: {result['samples_source']}")
    for dom, st in result["prompt_stats"].items():
        print(f"  {dom}: {st['n']} prompts, mean {st['mean_prompt_tokens']} tokens "
              f"({st['min_prompt_tokens']}-{st['max_prompt_tokens']}), answer {st['mean_response_tokens']}")
    for res in result["shapes"]:
        print(f"\n-- {res['shape']} ({res['parameters'] / 1e9:.2f}B, {res['dtype']}) --")
        for label, sec in (("train", res.get("train")), ("nf4", res.get("nf4"))):
            if not sec or "rows" not in sec:
                print(f"{label}: {sec}")
                continue
            print(f"{label}: micro-batch  tokens/s     MFU    HFU   peak GiB  pad")
            for r in sec["rows"]:
                if "tokens_per_s" in r:
                    print(f"  {r['micro_batch']:>14d} {r['tokens_per_s']:9.1f} {100 * r['mfu']:6.1f}% "
                          f"{100 * r['hfu']:5.1f}% {r['peak_gib']:9.2f} {100 * r['pad_frac']:4.1f}%")
                else:
                    print(f"  {r['micro_batch']:>14d}  {r.get('error') or r.get('skipped')}")
        lam = res.get("lambda") or {}
        for r in lam.get("rows", []):
            if "step_s" in r:
                print(f"lambda ({lam['prompts']} prompts, k={lam['k']}) micro-batch {r['micro_batch']}: "
                      f"step {r['step_s']} s, "
                      f"no-grad pass {r['measure_s']} s, peak {r['peak_gib']} GiB")
        for dom, ev in (res.get("eval") or {}).items():
            if not isinstance(ev, dict) or dom in ("shared", "seconds"):
                continue
            line = ", ".join(f"{k} {v.get('users_per_s')}" for k, v in ev.items()
                             if isinstance(v, dict) and "users_per_s" in v)
            extra = f"; shared/ideal {ev['shared_vs_ideal']}" if "shared_vs_ideal" in ev else ""
            print(f"eval {dom} users/s: {line}{extra}")
        print(f"hours per paper setting on one {env['chip']} (G is shared by warm and cold):")
        print(f"  {'setting':12s} {'G':>7s} {'S':>7s} {'λ':>8s} {'eval':>7s} {'total':>7s} {'λ/S':>7s}")
        for name, h in res["hours"].items():
            print(f"  {name:12s} " + " ".join(
                f"{'-' if h[k] is None else h[k]:>7}" for k in ("G_h", "S_h", "lambda_h", "eval_h",
                                                               "total_h", "lambda_over_S")))
        print(f"  sizes: {RECIPE}; per setting (general, target train, valid, test): "
              + "; ".join(f"{k} {v[:4]}" for k, v in SETTINGS.items()))
        print("targets: " + "; ".join(f"{k} {t['measured']} (target {t['target']}, "
                                      f"{'met' if t['met'] else 'not met'})"
                                      for k, t in res["targets"].items()))
    if result.get("bf16"):
        print("\nbf16 anomaly (shared-prefix users/s):")
        print(f"  {'dtype':9s} {'attention':14s} {'path':8s} {'shapes':8s} users/s")
        for r in result["bf16"]["rows"]:
            if "dtype" in r:
                print(f"  {r['dtype']:9s} {r['attention']:14s} {r['path']:8s} {r['shapes']:8s} "
                      f"{r.get('users_per_s', r.get('error'))}")
        for dt, p in result["bf16"].get("profiles", {}).items():
            print(f"  profile {dt}: wall {p['wall_s']} s for {p['users']} users, device busy "
                  f"{p['device_busy_s']} s, {p['ops']} ops; top: "
                  + ", ".join(f"{t['name'][:40]} {t['self_ms']} ms" for t in p["top"][:4]))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", default="tiny",
                    help="tiny | qwen2_7b | llama31_8b | smollm2_135m, or a comma list")
    ap.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    ap.add_argument("--samples", type=Path, default=None, help="a file written by --write-samples")
    ap.add_argument("--write-samples", type=Path, default=None, metavar="PATH",
                    help="write the prompt file (token ids) from $RECCOCKTAIL_DATA and exit")
    ap.add_argument("--num-samples", type=int, default=64, help="prompts per domain (--write-samples)")
    ap.add_argument("--data-root", type=Path, default=DATA_ROOT)
    ap.add_argument("--budget-s", type=float, default=420.0, help="wall-clock budget of the run")
    ap.add_argument("--reserve-s", type=float, default=20.0, help="kept back for the last sections")
    ap.add_argument("--batch-sizes", default=None, help="training micro-batches (GPU: 1..64, CPU: 1,2)")
    ap.add_argument("--train-steps", type=int, default=3, help="timed steps per micro-batch (+1 warm-up)")
    ap.add_argument("--lambda-prompts", type=int, default=50)
    ap.add_argument("--lambda-micro", default=None, help="λ micro-batches (GPU: 2,10; CPU: 2)")
    ap.add_argument("--users", type=int, default=None, help="users timed per scorer (GPU 16, CPU 2)")
    ap.add_argument("--naive-users", type=int, default=None, help="GPU 4, CPU 1")
    ap.add_argument("--gen-batch", type=int, default=None)
    ap.add_argument("--gen-users", type=int, default=None)
    ap.add_argument("--anomaly-shape", default=None,
                    help="shape of the bf16 suite (GPU: smollm2_135m, CPU: tiny; 'none' skips)")
    ap.add_argument("--anomaly-s", type=float, default=90.0, help="budget of the bf16 suite")
    ap.add_argument("--anomaly-main", action="store_true",
                    help="also time fp32 against bf16 scoring on the main shape (needs 4 bytes/param)")
    ap.add_argument("--nf4-cpu", action="store_true", help="run the NF4 sweep on a CPU too (slow)")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads on a CPU (default 1: on a shared machine more threads "
                         "spin-wait on each other, 20x slower here)")
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks" / "gpu_scale.json")
    args = ap.parse_args(argv)
    os.environ.setdefault("RECCOCKTAIL_CACHE", str(ROOT / "outputs" / "cache"))

    if args.write_samples is not None:
        out = write_samples(args.write_samples, args.num_samples, args.data_root)
        size = args.write_samples.stat().st_size
        print(f"wrote {args.write_samples} ({size / 1024:.0f} KiB): "
              + ", ".join(f"{d}: {stats(s)}" for d, s in out["domains"].items()))
        return {"samples": str(args.write_samples), "bytes": size}

    budget = Budget(args.budget_s)
    dev = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    gpu = dev.type == "cuda"
    if not gpu or args.threads:
        torch.set_num_threads(args.threads or 1)
    args.users = args.users or (16 if gpu else 2)
    args.naive_users = args.naive_users if args.naive_users is not None else (4 if gpu else 1)
    samples, source = load_samples(args.samples, args.data_root, args.num_samples,
                                   ROOT / "outputs" / "benchmarks" / "gpu_scale_samples.json.gz")
    result: dict[str, Any] = {"environment": environment(dev), "samples_source": source,
                              "prompt_stats": {d: stats(s) for d, s in samples["domains"].items()},
                              "recipe": RECIPE, "settings": {k: list(v) for k, v in SETTINGS.items()},
                              "args": {k: str(v) for k, v in vars(args).items()}, "shapes": []}
    result["peak"] = measure_peak(dev, torch.bfloat16 if gpu else torch.float32)
    print(f"peak matmul: {result['peak']}", flush=True)

    def save(partial: dict | None = None) -> None:
        shapes = [r for r in result["shapes"] if r is not partial] + ([partial] if partial else [])
        write_json(args.out, {**result, "shapes": shapes, "elapsed_s": round(budget.total - budget.left(), 1)})

    # the bf16 anomaly first, on its own share of the budget: the quickest open question
    anomaly = args.anomaly_shape or ("smollm2_135m" if gpu else "tiny")
    if anomaly != "none":
        t = time.perf_counter()
        try:
            model = build_model(anomaly, torch.float32, dev)
            result["bf16"] = bf16_suite(model, anomaly, samples["domains"]["ml1m"], samples, dev,
                                        8 if gpu else args.users, Budget(min(args.anomaly_s, budget.left())), 5.0)
            del model
        except Exception as err:  # noqa: BLE001 - recorded, the shapes still run
            result["bf16"] = {"error": repr(err)[:500]}
        result["bf16"].update(shape=anomaly, seconds=round(time.perf_counter() - t, 1))
        free(dev)
        save()

    shapes = [s.strip() for s in args.shape.split(",") if s.strip()]
    for i, shape in enumerate(shapes):
        share = Budget(budget.left() / (len(shapes) - i) - (15 if gpu else 0))
        try:
            res = run_shape(shape, args, samples, dev, share, result["peak"], save)
        except Exception as err:  # noqa: BLE001 - the next shape still runs
            res = {"shape": shape, "error": repr(err)[:500]}
            free(dev)
        result["shapes"] = [r for r in result["shapes"] if r.get("shape") != shape] + [res]
        save()

    result["elapsed_s"] = round(budget.total - budget.left(), 1)
    write_json(args.out, result)
    ok = [r for r in result["shapes"] if "hours" in r]
    if ok:
        print_summary({**result, "shapes": ok})
    for r in result["shapes"]:
        if "error" in r:
            print(f"{r['shape']}: FAILED {r['error']}", file=sys.stderr)
    print(f"\nwrote {args.out} ({result['elapsed_s']} s)")
    return result


if __name__ == "__main__":
    main()
