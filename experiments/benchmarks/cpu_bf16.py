"""CPU speed and ranking agreement of bf16 against fp32 on the demo (SmolLM2-135M, ML-100k).

Three modes, measured interleaved in one process (the order rotates every round, so a shared
machine's changing load hits them alike):

* `fp32`     - the backbone in float32 (`backbone.dtype: float32`; the CPU default before `auto`);
* `bf16`     - the backbone's weights in bfloat16, the LoRA and its Adam state in float32
               (`backbone.dtype: bfloat16`, what `backbone.dtype: auto` picks on a CPU with
               avx512_bf16 / amx_bf16);
* `autocast` - float32 weights under `torch.autocast("cpu", dtype=torch.bfloat16)`.

Per mode: LoRA training tokens/s with the demo's sequence objective, placement (LoRA on the top
8 layers) and micro-batches (the project's `InstructionTuningModule` and `SequenceDataModule`
on the ingredient's windows; AdamW and gradient clipping as the trainer sets them), the loss of
every step (same batches, same init), candidate-scoring users/s with the shared trunk (the eval
stage's scorer, `AdapterSwitcher` and `trunk.plan`), and the peak RSS of the mode alone (a
subprocess per mode: one training step and a few scored users). Then the ranking agreement of
bf16 with fp32 on the same adapters over `--users` test users: top-1 equal fraction, mean
Kendall tau-b over the candidates, NDCG@1 of both and their paired difference with its 95 %
bootstrap CI (evaluation/confidence.py).

    python experiments/benchmarks/cpu_bf16.py --adapters outputs/demo/adapters \
        --out outputs/benchmarks/cpu_bf16.json

The data: `--run` (a run folder whose data stage ran), else the data stage of the demo's config
run into `--work` with every test user written (a demo run writes 100 test users, fewer than
the agreement's 200). The adapters: `--adapters` (default `<--run>/adapters`), e.g. a finished
demo's; the speed rows score `--variants` (zero-shot and the cocktail, the trunk shared), the
agreement `--agree-variants` (the cocktail). An adapter that is not there is replaced by a LoRA
of this benchmark: for speed the one saved after the warm-up step, for the agreement the fp32
mode's after the timed steps (barely trained: then the agreement says little). `--tiny` is a smoke run: a tiny random
Llama and a synthetic data folder, no real data. About 15 minutes on 2 quiet cores at the
defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from reccocktail.data.prompts import prompt_builder_from_config, prompt_format
from reccocktail.data.samples import Sample, load_items, load_samples, write_items
from reccocktail.evaluation.confidence import paired_test, rank_metric_values
from reccocktail.evaluation.config import eval_config
from reccocktail.evaluation.metrics import target_ranks
from reccocktail.evaluation.scorers import build_scorer
from reccocktail.evaluation.stage import AdapterSwitcher
from reccocktail.evaluation.trunk import plan
from reccocktail.models.backbone import load_backbone
from reccocktail.models.sequence_data import SequenceDataModule
from reccocktail.models.training import (
    prompt_builder,
    prompt_cfg,
    specific_training_data,
    tuning_config,
)
from reccocktail.models.tuning import InstructionTuningModule, target_count
from reccocktail.models.tuning_config import TuningConfig
from reccocktail.utils import memory
from reccocktail.utils.device import BF16_CPU_FLAGS, cpu_flags, cpu_model
from reccocktail.utils.io import to_plain, write_json, write_jsonl

ROOT = Path(__file__).resolve().parents[2]
MODES = ("fp32", "bf16", "autocast")
WEIGHTS = {"fp32": "float32", "bf16": "bfloat16", "autocast": "float32"}
# the flags that matter for matrix arithmetic, printed with the processor's model
SHOWN_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16",
               "amx_tile", "amx_bf16", "amx_int8")


# -- setup ------------------------------------------------------------------------------------

def compose(run_dir: Path, tiny: bool) -> DictConfig:
    """The demo's run config (conf/run.yaml defaults: ml100k, sequence objective, SmolLM2 with
    LoRA on the top 8 layers, trainer=cpu), writing into `run_dir`; every test user written."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    overrides = ["logger=none", f"paths.output_dir={run_dir}", "data.max_test_users=null",
                 "eval.progress=false"]
    if tiny:  # LoRA on the top layer only, as the demo's top 8: the shared trunk runs too
        overrides += ["backbone=tiny_llama", "backbone.lora.top_layers=1"]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        cfg = hydra_compose("run", overrides=overrides)
    OmegaConf.set_struct(cfg, False)
    return cfg


def write_tiny_data(data_dir: Path, users: int, seed: int = 0) -> None:
    """A synthetic data folder (items, sequences, test with 30 candidates) for `--tiny`."""
    rng = random.Random(seed)
    words = ["Silent", "Broken", "Golden", "Hidden", "Wild", "Dark", "Lost", "Red", "Iron"]
    nouns = ["River", "Empire", "Garden", "Summer", "Station", "Heart", "Island", "Road", "Crown"]
    items = {str(i): f"{w} {n} ({1960 + i % 40})"
             for i, (w, n) in enumerate((w, n) for w in words for n in nouns)}
    ids = list(items)
    write_items(data_dir / "items.tsv", items)
    seqs, test = [], []
    for u in range(users):
        seq = rng.sample(ids, 16)
        seqs.append({"user": f"u{u}", "items": seq[:-1]})
        negs = rng.sample([i for i in ids if i not in seq], 29)
        cands = [seq[-1], *negs]
        rng.shuffle(cands)
        test.append(Sample(f"u{u}-test", f"u{u}", seq[-11:-1], seq[-1], cands).to_json())
    write_jsonl(data_dir / "sequences.jsonl", seqs)
    write_jsonl(data_dir / "test.jsonl", test)


def prepare(args: argparse.Namespace) -> tuple[DictConfig, Path]:
    """(config, run folder holding data/): `--run`, a synthetic one (`--tiny`) or the data stage
    run into `--work`."""
    run_dir = Path(args.run) if args.run else Path(args.work)
    cfg = compose(run_dir, args.tiny)
    if args.run:
        if not (run_dir / "data" / "test.jsonl").is_file():
            raise FileNotFoundError(f"--run: {run_dir}/data/test.jsonl missing (a demo run "
                                    "folder whose data stage ran)")
    elif args.tiny:
        write_tiny_data(run_dir / "data", max(args.users, 40))
    elif not (run_dir / "data" / "test.jsonl").is_file():
        from reccocktail.data.stage import run_data_stage

        run_data_stage(cfg, run_dir)
    return cfg, run_dir


def with_dtype(cfg: DictConfig, mode: str) -> dict:
    plain = to_plain(cfg.backbone)
    plain["dtype"] = WEIGHTS[mode]
    return plain


def autocast(mode: str):
    return (torch.autocast("cpu", dtype=torch.bfloat16) if mode == "autocast"
            else contextlib.nullcontext())


# -- training ---------------------------------------------------------------------------------

def step_batches(cfg: DictConfig, run_dir: Path, n_steps: int
                 ) -> tuple[list[list[dict]], TuningConfig]:
    """`n_steps` optimizer steps of micro-batches, as the specific stage trains the ingredient
    (its windows, batch size, length grouping and accumulation); the tuning config."""
    t = tuning_config(cfg, "specific")
    items, windows, _ = specific_training_data(cfg, run_dir, t, {}, label="bench")
    pb = prompt_builder(cfg, items, prompt_cfg(cfg, general=False), prompt_format(cfg))
    dm = SequenceDataModule(windows, pb, batch_size=t.batch_size,
                            group_by_length=t.group_by_length,
                            mega_batch_mult=t.mega_batch_mult, seed=t.seed)
    accum = t.accumulate_grad_batches
    micro: list[dict] = []
    while len(micro) < n_steps * accum:
        micro.extend(dm.train_dataloader())  # another epoch when the windows run out
    return [micro[i * accum:(i + 1) * accum] for i in range(n_steps)], t


class Trainee:
    """One mode's LoRA in training: the project's module, AdamW as `configure_optimizers`
    builds it (without the schedule: a constant rate over a few steps) and the trainer's
    gradient clipping."""

    def __init__(self, cfg: DictConfig, t: TuningConfig, mode: str) -> None:
        self.mode = mode
        self.module = InstructionTuningModule(with_dtype(cfg, mode), t, stage="specific")
        self.module.configure_model()
        self.params = [p for p in self.module.model.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=t.lr, weight_decay=t.weight_decay,
                                     betas=t.betas)
        clip = cfg.trainer.get("gradient_clip_val")
        self.clip = float(clip) if clip else None

    def step(self, micro: list[dict]) -> tuple[float, int, float]:
        """One optimizer step (`tokens` normalisation: the mean over the step's targets);
        returns (loss, tokens, seconds)."""
        n = sum(target_count(b["labels"]) for b in micro)
        t0 = time.perf_counter()
        total = 0.0
        for b in micro:
            with autocast(self.mode):
                s = self.module.loss(b, reduction="sum")
            (s / n).backward()
            total += float(s.detach())
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.params, self.clip)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - t0
        return total / n, sum(int(b["attention_mask"].sum()) for b in micro), seconds

    def state_dtypes(self) -> dict[str, list[str]]:
        moments = {str(v.dtype) for s in self.opt.state.values() for v in s.values()
                   if torch.is_tensor(v) and v.dim() > 0}
        return {"lora": sorted({str(p.dtype) for p in self.params}), "adam": sorted(moments)}


# -- scoring ----------------------------------------------------------------------------------

def score(model, variants: list[tuple[str, Path | None]], pb, samples, ec, mode: str
          ) -> tuple[dict[str, torch.Tensor], float]:
    """Every variant's scores as the eval stage computes them (shared trunk when it applies),
    and the seconds for all of them."""
    trunk = plan([p for _, p in variants], model, ec.share_trunk, ["likelihood"])
    switcher = AdapterSwitcher(model)
    out = {}
    t0 = time.perf_counter()
    for name, path in variants:
        m = switcher.use(path)
        ctx = contextlib.nullcontext() if trunk is None else (
            trunk.replay(m) if trunk.recorded else trunk.record(m))
        with ctx, autocast(mode):
            out[name] = build_scorer("likelihood", m, pb, ec).score(samples).float()
    seconds = time.perf_counter() - t0
    switcher.drop()
    return out, seconds


def kendall_tau_b(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Kendall tau-b between the rows of two [users, candidates] score matrices (ties counted
    as in tau-b; two all-tied rows agree: 1)."""
    c = a.shape[1]
    i, j = torch.triu_indices(c, c, 1)
    da = torch.sign(a[:, i] - a[:, j]).double()
    db = torch.sign(b[:, i] - b[:, j]).double()
    den = torch.sqrt((da != 0).sum(1).double() * (db != 0).sum(1).double())
    tau = (da * db).sum(1) / den.clamp(min=1e-12)
    return torch.where(den > 0, tau, torch.ones_like(tau))


def agreement(ref: torch.Tensor, other: torch.Tensor, samples: list[Sample]) -> dict[str, Any]:
    targets = torch.tensor([s.target_index for s in samples])
    users = [s.user for s in samples]
    n_ref = rank_metric_values(target_ranks(ref, targets), [1])["ndcg@1"]
    n_oth = rank_metric_values(target_ranks(other, targets), [1])["ndcg@1"]
    test = paired_test(n_oth, n_ref, users)
    return {"users": len(samples),
            "top1_equal": round(float((ref.argmax(1) == other.argmax(1)).double().mean()), 4),
            "kendall_tau_mean": round(float(kendall_tau_b(ref, other).mean()), 4),
            "max_abs_score_diff": float((ref - other).abs().max()),
            "ndcg@1_fp32": round(float(n_ref.mean()), 4),
            "ndcg@1_bf16": round(float(n_oth.mean()), 4),
            "ndcg@1_diff": round(test.diff, 4), "ndcg@1_diff_ci": [round(x, 4) for x in test.ci],
            "ndcg@1_diff_p": round(test.p, 4)}


def variants_of(adapters: Path, names: list[str], fallback: Path) -> tuple[list, str]:
    """(name, adapter folder or None) for `--variants`: `adapters/<name>`; those missing are
    replaced by `fallback` (one LoRA saved by this benchmark), said in the returned note."""
    out, missing = [], []
    for n in names:
        if n == "zero_shot":
            out.append((n, None))
            continue
        path = adapters / n
        if (path / "adapter_config.json").is_file():
            out.append((n, path))
        else:
            missing.append(n)
    if missing:
        out.append(("bench_lora", fallback))
    note = (f"no {missing} in {adapters}: a LoRA trained by this benchmark instead"
            if missing else f"adapters of {adapters}")
    return out, note


# -- memory: one mode alone in a subprocess ---------------------------------------------------

def memory_child(args: argparse.Namespace) -> None:
    """One training step and `--memory-users` scored users in `args.child` mode; prints the
    process's peak RSS."""
    cfg, run_dir = compose(Path(args.run or args.work), args.tiny), Path(args.run or args.work)
    mode = args.child
    steps, t = step_batches(cfg, run_dir, 1)
    trainee = Trainee(cfg, t, mode)
    trainee.step(steps[0])
    train_peak = memory.peak_rss_mib()
    del trainee
    memory.release()
    model, tok = load_backbone(with_dtype(cfg, mode))
    items = load_items(run_dir / "data" / "items.tsv")
    pb = prompt_builder_from_config(cfg, tok, items, fmt=prompt_format(cfg))
    samples = load_samples(run_dir / "data" / "test.jsonl", items)[: args.memory_users]
    score(model, [("zero_shot", None)], pb, samples, eval_config(cfg), mode)
    peak = memory.peak_rss_mib()
    print(json.dumps({"mode": mode, "peak_rss_mib": round(peak), "train_peak_rss_mib":
                      round(train_peak)}))


def measure_memory(args: argparse.Namespace, run_dir: Path, mode: str) -> dict:
    cmd = [sys.executable, __file__, "--child", mode, "--work", str(run_dir),
           "--memory-users", str(args.memory_users), *(["--tiny"] if args.tiny else []),
           *(["--threads", str(args.threads)] if args.threads else [])]
    if args.run:
        cmd += ["--run", str(args.run)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if proc.returncode != 0:
        return {"error": proc.stderr[-1500:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- main -------------------------------------------------------------------------------------

def machine() -> dict[str, Any]:
    flags = cpu_flags()
    return {"cpu_model": cpu_model() or platform.processor(),
            "cpu_flags": [f for f in SHOWN_FLAGS if f in flags],
            "bf16_native": bool(flags & set(BF16_CPU_FLAGS)),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(), "loadavg_start": round(os.getloadavg()[0], 2)}


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, default=None, help="a demo run folder (data/, adapters/)")
    ap.add_argument("--adapters", type=Path, default=None,
                    help="the folder of the adapters to score (default: <--run>/adapters), e.g. a "
                         "finished demo's, while the data stage writes every test user to --work")
    ap.add_argument("--work", type=Path, default=ROOT / "outputs" / "benchmarks" / "cpu_bf16_run",
                    help="where the data stage writes when --run is not given")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=2, help="timed training steps per mode and round")
    ap.add_argument("--score-users", type=int, default=10,
                    help="users scored per mode and round for users/s")
    ap.add_argument("--users", type=int, default=200, help="users of the bf16-fp32 agreement")
    ap.add_argument("--variants", default="zero_shot,cocktail",
                    help="variants timed for users/s, with the shared trunk (adapters/<name> of "
                         "--run; zero_shot: the bare backbone)")
    ap.add_argument("--agree-variants", default="cocktail",
                    help="variants of the bf16-fp32 agreement (e.g. zero_shot,general,cocktail)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--memory-users", type=int, default=5)
    ap.add_argument("--no-memory", action="store_true", help="skip the per-mode subprocesses")
    ap.add_argument("--tiny", action="store_true", help="smoke run: tiny random Llama, toy data")
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "benchmarks" / "cpu_bf16.json")
    ap.add_argument("--child", choices=MODES, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        if args.threads:
            torch.set_num_threads(args.threads)
        memory_child(args)
        return None
    if args.threads:
        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()
    cfg, run_dir = prepare(args)
    ec = eval_config(cfg)
    info = machine()
    print(f"{info['cpu_model']}; flags {' '.join(info['cpu_flags'])}; torch {info['torch']}, "
          f"{info['threads']} threads", flush=True)

    # training: the same batches for every mode, one warm-up step, then rounds of timed steps
    steps, t = step_batches(cfg, run_dir, 1 + args.rounds * args.steps)
    trainees = {m: Trainee(cfg, t, m) for m in MODES}
    losses: dict[str, list[float]] = {m: [] for m in MODES}
    tok_s: dict[str, list[float]] = {m: [] for m in MODES}
    for m in MODES:
        losses[m].append(round(trainees[m].step(steps[0])[0], 5))  # warm-up, untimed
    bench_lora = run_dir / "bench" / "lora_warmup"
    trainees["fp32"].module.model.save_pretrained(str(bench_lora))

    items = load_items(run_dir / "data" / "items.tsv")
    test = load_samples(run_dir / "data" / "test.jsonl", items)
    adapters = args.adapters or run_dir / "adapters"
    variants, note = variants_of(adapters, args.variants.split(","), bench_lora)
    bases = {"float32": load_backbone(with_dtype(cfg, "fp32")),
             "bfloat16": load_backbone(with_dtype(cfg, "bf16"))}
    pb = prompt_builder_from_config(cfg, bases["float32"][1], items, fmt=prompt_format(cfg))
    users_s: dict[str, list[float]] = {m: [] for m in MODES}
    score(bases["float32"][0], variants[:1], pb, test[:1], ec, "fp32")  # warm-up, untimed
    k = args.score_users
    for r in range(args.rounds):
        order = MODES[r % 3:] + MODES[:r % 3]
        for m in order:
            for i in range(args.steps):
                loss, tokens, sec = trainees[m].step(steps[1 + r * args.steps + i])
                losses[m].append(round(loss, 5))
                tok_s[m].append(tokens / sec)
        chunk = [test[(r * k + j) % len(test)] for j in range(k)]
        for m in order:
            _, sec = score(bases[WEIGHTS[m]][0], variants, pb, chunk, ec, m)
            users_s[m].append(len(chunk) / sec)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{m} {tok_s[m][-1]:.0f} tok/s {users_s[m][-1]:.2f} users/s" for m in order),
            flush=True)
    dtypes = {m: trainees[m].state_dtypes() for m in MODES}
    # agreement on the run's adapters; one it lacks: the fp32 LoRA after the timed steps
    final = run_dir / "bench" / "lora_fp32_trained"
    trainees["fp32"].module.model.save_pretrained(str(final))
    agree_variants, agree_note = variants_of(adapters, args.agree_variants.split(","), final)
    del trainees
    memory.release()

    # agreement: the same adapters scored in fp32 and bf16 on the same users
    users = test[: args.users]
    if len(users) < args.users:
        print(f"only {len(users)} test users in {run_dir}/data (a demo run writes 100): the "
              "agreement runs on them; without --run the data stage writes every test user",
              flush=True)
    ref, _ = score(bases["float32"][0], agree_variants, pb, users, ec, "fp32")
    oth, _ = score(bases["bfloat16"][0], agree_variants, pb, users, ec, "bf16")
    agree = {n: agreement(ref[n], oth[n], users) for n, _ in agree_variants}
    del bases
    memory.release()

    mem = {} if args.no_memory else {m: measure_memory(args, run_dir, m) for m in MODES}
    rows = {}
    for m in MODES:
        rows[m] = {"train_tokens_per_s": round(median(tok_s[m]), 1),
                   "train_x_fp32": round(median(tok_s[m]) / median(tok_s["fp32"]), 3),
                   "score_users_per_s": round(median(users_s[m]), 3),
                   "score_x_fp32": round(median(users_s[m]) / median(users_s["fp32"]), 3),
                   "peak_rss_mib": mem.get(m, {}).get("peak_rss_mib"),
                   "train_peak_rss_mib": mem.get(m, {}).get("train_peak_rss_mib"),
                   "losses": losses[m], "trainable_dtypes": dtypes[m],
                   "train_tokens_per_s_all": [round(x, 1) for x in tok_s[m]],
                   "score_users_per_s_all": [round(x, 3) for x in users_s[m]]}
    result = {"machine": {**info, "loadavg_end": round(os.getloadavg()[0], 2)},
              "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
              "backbone": str(cfg.backbone.name), "run": str(run_dir),
              "variants": [n for n, _ in variants], "adapters": note,
              "agreement_variants": [n for n, _ in agree_variants], "agreement_adapters": agree_note,
              "tuning": {k: t[k] for k in ("batch_size", "accumulate_grad_batches", "lr")},
              "modes": rows, "agreement_bf16_vs_fp32": agree,
              "memory_errors": {m: v["error"] for m, v in mem.items() if "error" in v},
              "seconds": round(time.perf_counter() - t_start, 1)}
    write_json(args.out, result)

    print(f"\n{info['cpu_model']} ({', '.join(info['cpu_flags'])}), torch {info['torch']}, "
          f"{info['threads']} threads; {args.rounds} rounds x {args.steps} steps, "
          f"{k} users per scoring round; variants {result['variants']} ({note})\n")
    print("| mode | train tok/s | x fp32 | score users/s | x fp32 | peak RSS MiB | "
          "loss first -> last |")
    print("|---|---|---|---|---|---|---|")
    for m, r in rows.items():
        print(f"| {m} | {r['train_tokens_per_s']} | {r['train_x_fp32']} | "
              f"{r['score_users_per_s']} | {r['score_x_fp32']} | {r['peak_rss_mib']} | "
              f"{r['losses'][0]} -> {r['losses'][-1]} |")
    print(f"\nbf16 vs fp32 on {len(users)} users, same adapters ({agree_note}):\n")
    print("| variant | top-1 equal | Kendall tau | NDCG@1 fp32 | NDCG@1 bf16 | diff [95% CI] |")
    print("|---|---|---|---|---|---|")
    for n, a in agree.items():
        print(f"| {n} | {a['top1_equal']} | {a['kendall_tau_mean']} | {a['ndcg@1_fp32']} | "
              f"{a['ndcg@1_bf16']} | {a['ndcg@1_diff']:+.4f} [{a['ndcg@1_diff_ci'][0]:+.4f}, "
              f"{a['ndcg@1_diff_ci'][1]:+.4f}] |")
    for m, e in result["memory_errors"].items():
        print(f"memory subprocess {m} failed:\n{e}")
    print(f"\n{result['seconds']:.0f} s in all; wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
