#!/usr/bin/env bash
# One short GPU check of the paths the CPU tests cannot reach, on one CUDA GPU, in under 8 minutes:
#   lora, qlora (bitsandbytes NF4 + double quantization + paged 8-bit AdamW), bf16 + SDPA, flash
#   attention, DDP / FSDP / ZeRO-2 / ZeRO-3 at world size 1, `lmtune serve --engine vllm` and GRPO
#   with vLLM sampling (these two only when vllm is installed).
# Each path is a few steps of examples/quickstart.yaml (GRPO: examples/grpo_arithmetic.yaml) in its
# own process, and prints exactly one line: PASS, FAIL (with the last error line and its log) or
# SKIP (with why: a package not installed, or no time left). Logs go under $OUT.
# Time: the whole script has a budget (BUDGET, default 420 s of path time); each path gets at most
# LIMIT seconds and never more than what is left, so it ends in under 8 minutes whatever hangs.
# Exit status: the number of failed paths.
#   bash benchmarks/gpu_check.sh             # from anywhere; runs in the repository root
#   bash benchmarks/gpu_check.sh --dry-run   # print one line per path with its command, run nothing
set -u
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
OUT=${OUT:-runs/gpu-check}
STEPS=${STEPS:-6}
LIMIT=${LIMIT:-75}      # seconds per training path
BUDGET=${BUDGET:-420}   # seconds for all paths together
PY=${PYTHON:-python}
failed=0
start=$SECONDS

has() { "$PY" -c "import importlib.util, sys; sys.exit(0 if importlib.util.find_spec('$1') else 1)" 2>/dev/null; }

if [ "$DRY" = 0 ]; then
  if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "FAIL cuda: torch.cuda.is_available() is False (no GPU visible)"; exit 1
  fi
  "$PY" -c "import torch; print('GPU:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"
  mkdir -p "$OUT"
fi

TRAIN=("$PY" -m lmtune.cli.app train examples/quickstart.yaml --set "train.max_steps=$STEPS"
       --set train.log_steps=2 --set eval.path=null --set output.overwrite=true)

left() { echo $((BUDGET - (SECONDS - start))); }

run_path() {  # run_path NAME LIMIT CHECK COMMAND...: one line; CHECK is a file that must exist after
  local name=$1 limit=$2 check=$3; shift 3
  if [ "$DRY" = 1 ]; then echo "DRY $name: $*"; return; fi
  local remaining; remaining=$(left)
  if [ "$remaining" -lt 20 ]; then echo "SKIP $name (no time left in the ${BUDGET} s budget)"; return; fi
  [ "$limit" -gt "$remaining" ] && limit=$remaining
  local log="$OUT/$name.log" t0=$SECONDS
  if timeout "$limit" "$@" >"$log" 2>&1 && [ -e "$check" ]; then
    echo "PASS $name ($((SECONDS - t0)) s)"
  else
    local code=$? why
    if [ "$code" = 124 ]; then why="timeout after ${limit} s"
    else why=$(grep -E "Error|error|FAIL" "$log" | tail -1 | cut -c1-160); fi
    echo "FAIL $name (${why:-exit $code}; see $log)"
    failed=$((failed + 1))
  fi
}

train_path() {  # train_path NAME [needs MODULE] ARGS...: a few quickstart steps with ARGS
  local name=$1; shift
  if [ "${1:-}" = needs ]; then
    if [ "$DRY" = 0 ] && ! has "$2"; then echo "SKIP $name ($2 not installed)"; shift 2; return; fi
    shift 2
  fi
  run_path "$name" "$LIMIT" "$OUT/$name/summary.json" "${TRAIN[@]}" --set "output.dir=$OUT/$name" "$@"
}

train_path lora          --set method.name=lora
train_path qlora_nf4_paged needs bitsandbytes --set method.name=qlora --set method.quant_type=nf4 \
                         --set method.double_quant=true --set train.optim=paged_adamw_8bit
train_path bf16_sdpa     --set train.bf16=true --set model.attn_implementation=sdpa --set data.packing=false
train_path flash_attn    needs flash_attn --set train.bf16=true --set model.attn_implementation=flash_attention_2
train_path ddp_ws1       --nproc 1 --set distributed.strategy=ddp
train_path fsdp_ws1      --nproc 1 --set distributed.strategy=fsdp
train_path zero2_ws1     needs deepspeed --nproc 1 --set distributed.strategy=deepspeed --set distributed.zero_stage=2
train_path zero3_ws1     needs deepspeed --nproc 1 --set distributed.strategy=deepspeed --set distributed.zero_stage=3

# vLLM paths: serve the LoRA run above (merged on load), then GRPO sampling with colocated vLLM
if [ "$DRY" = 0 ] && ! has vllm; then
  echo "SKIP serve_vllm (vllm not installed: pip install vllm)"
  echo "SKIP grpo_vllm (vllm not installed: pip install vllm)"
else
  run_path serve_vllm 150 "$OUT/serve_vllm.reply" "$PY" benchmarks/gpu_check_serve.py \
    "$OUT/lora" "$OUT/serve_vllm.reply"
  [ "$DRY" = 0 ] && "$PY" examples/make_arithmetic.py >/dev/null 2>&1
  run_path grpo_vllm 180 "$OUT/grpo_vllm/summary.json" "$PY" -m lmtune.cli.app train examples/grpo_arithmetic.yaml \
    --set rl.use_vllm=true --set train.max_steps=3 --set train.log_steps=1 --set data.val_path=null \
    --set output.overwrite=true --set "output.dir=$OUT/grpo_vllm"
fi

[ "$DRY" = 1 ] && exit 0
echo "$failed path(s) failed in $((SECONDS - start)) s"
exit "$failed"
