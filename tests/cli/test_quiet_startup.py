"""Commands that need no model weights start without torch/transformers and print no library
warnings (issue 23); importing the heavy stack through lmtune prints no unactionable lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml
from tests.conftest import TINY

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "peft", "trl", "accelerate", "torchao")
# Runs the CLI in this interpreter, then reports which heavy modules it imported.
PROBE = """
import json, sys
from lmtune.cli.app import main
sys.argv = ["lmtune", *sys.argv[1:]]
try:
    main()
except SystemExit as e:
    code = e.code
else:
    code = 0
print("@@" + json.dumps({"code": code, "heavy": [m for m in HEAVY if m in sys.modules]}))
""".replace("HEAVY", repr(HEAVY))


def probe(*args: str) -> tuple[dict, str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=120
    )
    line = next(x for x in done.stdout.splitlines() if x.startswith("@@"))
    return json.loads(line[2:]), done.stdout, done.stderr


def assert_quiet(stderr: str) -> None:
    noisy = [x for x in stderr.splitlines() if "Warning" in x or "Failed to load" in x or x.startswith("W1")]
    assert not noisy, stderr


def test_estimate_imports_no_torch_and_prints_no_warnings(tmp_path):
    (
        tmp_path / "model"
    ).mkdir()  # config.json written by hand: this test process need not import transformers
    (tmp_path / "model" / "config.json").write_text(json.dumps({**TINY, "model_type": "llama"}))
    config = tmp_path / "run.yaml"
    config.write_text(
        yaml.safe_dump({"model": {"name": str(tmp_path / "model")}, "data": {"path": "x.jsonl"}})
    )
    result, out, err = probe("estimate", str(config), "--memory", "16GB", "--device", "cpu", "--nproc", "8")
    assert result == {"code": 0, "heavy": []}, out + err
    assert "Recommended:" in out
    assert_quiet(err)


def test_config_commands_and_help_import_no_torch():
    for args in (["--help"], ["config", "show", "examples/quickstart.yaml"], ["config", "schema"]):
        result, out, err = probe(*args)
        assert result == {"code": 0, "heavy": []}, (args, out[-2000:], err)
        assert_quiet(err)


def test_the_heavy_stack_imports_quietly_through_lmtune():
    """peft and transformers pull torchao, whose CUDA-only extensions fail to load on a CPU torch
    and whose enums make torch's pytree warn: lmtune's logger filters drop exactly those lines,
    and a library's other warnings still show."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    code = (
        "import logging, lmtune, torchao; print('imported');"
        "logging.getLogger('torchao').warning('Other torchao news')"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0 and "imported" in done.stdout, done.stderr
    assert_quiet(done.stderr.replace("Other torchao news", ""))
    assert "Other torchao news" in done.stderr
