#!/usr/bin/env bash
# GRPO with vLLM generation on one CUDA GPU: 3 steps of examples/grpo_arithmetic.yaml with
# rl.use_vllm=true (colocated vLLM), same config otherwise. Prints one line: PASS, FAIL or SKIP.
# Called from benchmarks/gpu_check.sh; run alone: bash benchmarks/gpu_check_grpo.sh
set -u
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
if ! python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
  echo "grpo+vllm: SKIP (no CUDA GPU)"; exit 0
fi
if ! python -c "import vllm" 2>/dev/null; then
  echo "grpo+vllm: SKIP (vllm not installed: pip install vllm)"; exit 0
fi
python examples/make_arithmetic.py > /dev/null
if timeout 900 lmtune train examples/grpo_arithmetic.yaml \
    --set rl.use_vllm=true --set train.max_steps=3 --set train.log_steps=1 \
    --set data.val_path=null --set output.dir="$out/run" > "$out/log.txt" 2>&1 \
  && python - "$out/run/metrics.jsonl" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
ok = [r["step"] for r in rows] == [1, 2, 3] and all("rewards/numeric_match/mean" in r for r in rows)
ok = ok and all(r["completions/mean_length"] > 0 for r in rows)
sys.exit(0 if ok else 1)
PY
then
  echo "grpo+vllm: PASS (3 steps, rewards and completion lengths logged; $out/run)"
else
  echo "grpo+vllm: FAIL (last lines of the log follow)"; tail -20 "$out/log.txt"; exit 1
fi
