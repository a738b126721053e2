"""`lmtune` commands run as subprocesses for the UI, with their output kept in a log file.

Why subprocesses: training, evaluation and export take minutes and hold gigabytes; in a child
process they never block the page, Stop can interrupt them the way Ctrl-C does (SIGINT, so the
trainer's own interrupt handling runs), and what the UI runs is exactly the command it shows.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import lmtune

ERROR_PREFIX = "error:"


def lmtune_env() -> dict[str, str]:
    """The child runs this same lmtune (its source folder first on PYTHONPATH), with plain output."""
    env = dict(os.environ)
    src = str(Path(lmtune.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join([src, *[p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]])
    env.setdefault("COLUMNS", "110")
    env["TERM"] = "dumb"
    env["PYTHONUNBUFFERED"] = "1"
    return env


def command_line(args: list[str]) -> str:
    """The command as a user would type it."""
    return "lmtune " + " ".join(shlex.quote(a) for a in args)


class Job:
    """One running `lmtune ARGS` with its log; safe to poll from several UI callbacks at once."""

    def __init__(self, args: list[str], log: Path, cwd: str | Path) -> None:
        self.args = list(args)
        self.log = Path(log)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        self.started = time.time()
        self.stopped = False
        self._lock = threading.Lock()
        with self.log.open("w", encoding="utf-8") as out:
            out.write(f"$ {command_line(args)}\n")
            out.flush()
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "lmtune.cli.app", *args],
                cwd=str(cwd),
                env=lmtune_env(),
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C in the UI's terminal does not reach the job
            )

    @property
    def command(self) -> str:
        return command_line(self.args)

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll()

    def output(self) -> str:
        try:
            return self.log.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 25) -> str:
        """The last lines, progress-bar redraws (carriage returns) collapsed to their final state."""
        text = self.output().replace("\r\n", "\n")
        kept = [line.rsplit("\r", 1)[-1] for line in text.split("\n")]
        return "\n".join(kept[-lines:]).strip("\n")

    def error(self) -> str | None:
        """The CLI's one-sentence error (`error: ...`), else the last output line of a failed run."""
        code = self.returncode
        if code in (None, 0) or (self.stopped and code in (130, -signal.SIGINT)):
            return None
        text = self.output()
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        idx = next((i for i in range(len(lines) - 1, -1, -1) if lines[i].startswith(ERROR_PREFIX)), None)
        if idx is not None:
            return " ".join(lines[idx:])[len(ERROR_PREFIX) :].strip()
        last = lines[-1] if lines else "(no output)"
        return f"`{self.command}` exited with code {code}: {last}"

    def stop(self, timeout: float = 120.0) -> int | None:
        """Interrupt as Ctrl-C does, wait for a clean exit, kill only if it does not come."""
        with self._lock:
            if not self.running:
                return self.returncode
            self.stopped = True
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def wait(self, timeout: float | None = None) -> int | None:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
