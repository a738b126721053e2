"""The serve_vllm path of benchmarks/gpu_check.sh: `lmtune serve RUN --engine vllm` on a free port,
one chat request through the openai client once /v1/models answers, the reply written to OUT.

    python benchmarks/gpu_check_serve.py RUN_DIR REPLY_FILE
Exit status 0 only when a non-empty reply came back; the server is stopped either way.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(run_dir: str, reply_file: str, wait_s: float = 120.0) -> int:
    from openai import OpenAI

    if not Path(run_dir).is_dir():
        print(f"FAIL: {run_dir} does not exist (the lora path must pass first)", file=sys.stderr)
        return 1
    port = free_port()
    cmd = [sys.executable, "-m", "lmtune.cli.app", "serve", run_dir, "--engine", "vllm", "--port", str(port)]
    server = subprocess.Popen(cmd)
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", timeout=30)
        deadline = time.monotonic() + wait_s
        while True:
            if server.poll() is not None:
                print(f"FAIL: the server exited with {server.returncode}", file=sys.stderr)
                return 1
            try:
                model = client.models.list().data[0].id
                break
            except Exception:
                if time.monotonic() > deadline:
                    print(f"FAIL: no /v1/models answer within {wait_s:.0f} s", file=sys.stderr)
                    return 1
                time.sleep(2)
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "Who are you?"}], max_tokens=16
        )
        text = reply.choices[0].message.content or ""
        print(f"{model}: {text!r}")
        if not text.strip():
            print("FAIL: empty reply", file=sys.stderr)
            return 1
        Path(reply_file).write_text(text, encoding="utf-8")
        return 0
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2]))
