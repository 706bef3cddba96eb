#!/usr/bin/env bash
# The GPU code paths of the whole pipeline in a few minutes, each on `debug=fast` sizes
# (real ML-100k, a dozen users):
#   1. tiny   a tiny random Llama, trainer=gpu (bf16-mixed), mix and eval on cuda
#   2. hub    the paper's backbone config (qwen2_7b: source=hub, bf16 weights, sdpa) with
#             gradient checkpointing, loading MODEL (a hub name or a local folder)
#   3. nf4    the same backbone in 4-bit NF4 through bitsandbytes (QLoRA)
#   4. ddp1   trainer=ddp on one GPU (an NCCL process group of one rank)
#
#   MODEL=/models/Qwen2-7B-Instruct bash experiments/gpu_smoke.sh
#   TOKENIZER=/path/to/tokenizer_folder bash experiments/gpu_smoke.sh   # when the GGUF package is absent
# Run folders land in ${SMOKE_DIR:-/tmp/reccocktail_smoke}/<step>; each step prints its table.
set -uo pipefail
MODEL=${MODEL:-Qwen/Qwen2-7B-Instruct}
D=${SMOKE_DIR:-/tmp/reccocktail_smoke}; mkdir -p "$D"
TOK=()
if [ -n "${TOKENIZER:-}" ]; then TOK=(backbone.tokenizer.source=hub "++backbone.tokenizer.pretrained=$TOKENIZER"); fi
COMMON=(debug=fast trainer=gpu logger=csv "paths.cache_dir=$D/cache")
HUB=(backbone=qwen2_7b "backbone.pretrained=$MODEL" tuning.gradient_checkpointing=true)
status=0
step() {  # name, overrides...
  local name=$1; shift
  local t0=$SECONDS
  if python3 run.py "${COMMON[@]}" "$@" "hydra.run.dir=$D/$name" > "$D/$name.log" 2>&1; then
    echo "=== $name: ok, $((SECONDS - t0)) s"
    grep -E "^\| (Random|Popularity|Zero|RecCocktail)" "$D/$name/results.md" | cut -d'|' -f1-4
  else
    echo "=== $name: FAILED after $((SECONDS - t0)) s (log: $D/$name.log)"; tail -25 "$D/$name.log"; status=1
  fi
}
step tiny "${TOK[@]}"
step hub "${HUB[@]}"
step nf4 "${HUB[@]}" backbone.quantization=nf4
step ddp1 "${TOK[@]}" trainer=ddp trainer.devices=1 "paths.cache_dir=$D/cache_ddp"
exit $status
