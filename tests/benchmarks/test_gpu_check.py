"""benchmarks/gpu_check.sh, testable without a GPU: its dry run lists one command per path and
every training command is a valid lmtune config; with a stand-in `python` (PYTHON=...) the real
script prints exactly one PASS/FAIL/SKIP line per path, counts failures in its exit status and
stops starting paths when its time budget is spent. What the paths do on a GPU is not tested here.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
PATHS = [
    "lora",
    "qlora_nf4_paged",
    "bf16_sdpa",
    "flash_attn",
    "ddp_ws1",
    "fsdp_ws1",
    "zero2_ws1",
    "zero3_ws1",
    "serve_vllm",
    "grpo_vllm",
]

# A stand-in for python: CUDA "available", the packages named in FAKE_HAS "installed"; a training
# run sleeps FAKE_SLEEP s, then fails for fsdp_ws1 (hangs past LIMIT) and zero3_ws1 (an error line)
# and writes summary.json otherwise.
FAKE_PYTHON = r"""#!/usr/bin/env bash
if [ "$1" = -c ]; then
  case "$2" in
    *find_spec*) for m in $FAKE_HAS; do case "$2" in *"'$m'"*) exit 0;; esac; done; exit 1;;
    *print*) echo "GPU: stand-in"; exit 0;;
    *) exit 0;;
  esac
fi
case "$*" in
  *gpu_check_serve.py*) echo ok > "$3"; exit 0;;
  *make_arithmetic*) exit 0;;
esac
out=""; prev=""
for a in "$@"; do case "$prev$a" in --setoutput.dir=*) out=${a#output.dir=};; esac; prev=$a; done
sleep "${FAKE_SLEEP:-0}"
case "$out" in
  *fsdp_ws1) sleep 30;;
  *zero3_ws1) echo "ConfigError: stand-in failure"; exit 2;;
esac
mkdir -p "$out" && echo {} > "$out/summary.json"
"""


def run_script(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    fake = tmp_path / "python"
    fake.write_text(FAKE_PYTHON)
    fake.chmod(0o755)
    full = {**os.environ, "PYTHON": str(fake), "OUT": str(tmp_path / "out"), **env}
    return subprocess.run(["bash", str(SCRIPT), *args], env=full, capture_output=True, text=True, timeout=120)


def test_dry_run_lists_every_path_with_a_valid_config():
    from lmtune.config.loader import load_config

    done = subprocess.run(["bash", str(SCRIPT), "--dry-run"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[1].rstrip(":") for line in lines] == PATHS
    for line in lines:
        name, argv = line.split()[1].rstrip(":"), shlex.split(line.split(":", 1)[1])
        if "train" not in argv:
            assert name == "serve_vllm" and argv[1] == "benchmarks/gpu_check_serve.py"
            continue
        config = argv[argv.index("train") + 1]
        sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
        cfg = load_config(ROOT / config, sets)  # every key and value the script passes is valid
        assert cfg.output.dir.endswith(name)
        assert ("--nproc" in argv) == name.endswith("_ws1")
        if name == "qlora_nf4_paged":
            m = cfg.method
            assert (m.name, m.quant_type, m.double_quant, cfg.train.optim) == (
                "qlora",
                "nf4",
                True,
                "paged_adamw_8bit",
            )
        if name.startswith("zero"):
            assert cfg.distributed.strategy == "deepspeed" and cfg.distributed.zero_stage == int(name[4])


def test_one_line_per_path_and_failures_counted(tmp_path):
    done = run_script(tmp_path, FAKE_HAS="bitsandbytes deepspeed vllm", LIMIT="3")
    lines = done.stdout.splitlines()
    assert lines[0] == "GPU: stand-in"
    status = {line.split()[1]: line.split()[0] for line in lines[1:-1]}
    assert list(status) == PATHS, done.stdout
    assert status == {
        **dict.fromkeys(PATHS, "PASS"),
        "flash_attn": "SKIP",  # not installed
        "fsdp_ws1": "FAIL",
        "zero3_ws1": "FAIL",
    }
    assert "timeout after 3 s" in done.stdout and "ConfigError: stand-in failure" in done.stdout
    assert lines[-1].startswith("2 path(s) failed") and done.returncode == 2


def test_budget_bounds_the_whole_run(tmp_path):
    started = time.monotonic()
    done = run_script(tmp_path, FAKE_HAS="", FAKE_SLEEP="3", BUDGET="25", LIMIT="5")
    elapsed = time.monotonic() - started
    lines = done.stdout.splitlines()[1:-1]
    assert len(lines) == len(PATHS), done.stdout
    assert any("no time left in the 25 s budget" in line for line in lines)
    assert "SKIP serve_vllm (vllm not installed" in done.stdout
    assert elapsed < 25 + 15  # paths start only with 20 s left, and each is cut at what is left
