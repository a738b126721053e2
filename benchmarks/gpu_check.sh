#!/usr/bin/env bash
# One short GPU check (< 8 minutes on one CUDA GPU) of the paths the CPU tests cannot reach:
# LoRA, QLoRA (bitsandbytes), DDP / FSDP / ZeRO-2 / ZeRO-3 at world size 1, bf16 + SDPA and
# flash attention, each a few steps of examples/quickstart.yaml. Prints one PASS/FAIL line per path
# and a log per path under $OUT (default runs/gpu-check). Each path runs in its own process with a
# timeout; a failure (or a missing package: bitsandbytes, deepspeed, flash-attn) is reported and the
# script goes on. Exit status: the number of failed paths.
#   bash benchmarks/gpu_check.sh            # from the repository root
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/gpu-check}
STEPS=${STEPS:-8}
LIMIT=${LIMIT:-75}          # seconds per path
mkdir -p "$OUT"
failed=0

if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "FAIL cuda: torch.cuda.is_available() is False (no GPU visible)"; exit 1
fi
python -c "import torch; print('GPU:', torch.cuda.get_device_name(0), '| torch', torch.__version__)"

COMMON=(--set "train.max_steps=$STEPS" --set train.log_steps=2 --set eval.max_new_tokens=8
        --set eval.compare_base=false --set output.overwrite=true)

check() {  # check NAME ARGS... : run `lmtune train examples/quickstart.yaml ARGS` with a timeout
  local name=$1; shift
  local log="$OUT/$name.log" started=$SECONDS
  if timeout "$LIMIT" python -m lmtune.cli.app train examples/quickstart.yaml "${COMMON[@]}" \
       --set "output.dir=$OUT/$name" "$@" >"$log" 2>&1 \
     && [ -f "$OUT/$name/summary.json" ]; then
    echo "PASS $name ($((SECONDS - started)) s)"
  else
    local code=$?
    [ "$code" = 124 ] && why="timeout after ${LIMIT}s" || why=$(grep -E "error|Error" "$log" | tail -1 | cut -c1-160)
    echo "FAIL $name (${why:-exit $code}; see $log)"
    failed=$((failed + 1))
  fi
}

check lora         --set method.name=lora
check qlora        --set method.name=qlora --set method.quant_type=nf4 --set method.double_quant=true --set train.optim=adamw_8bit
check bf16_sdpa    --set train.bf16=true --set model.attn_implementation=sdpa --set data.packing=false
check flash_attn   --set train.bf16=true --set model.attn_implementation=flash_attention_2
check ddp_ws1      --nproc 1 --set distributed.strategy=ddp
check fsdp_ws1     --nproc 1 --set distributed.strategy=fsdp
check zero2_ws1    --nproc 1 --set distributed.strategy=deepspeed --set distributed.zero_stage=2
check zero3_ws1    --nproc 1 --set distributed.strategy=deepspeed --set distributed.zero_stage=3

echo "$failed path(s) failed"
exit "$failed"
