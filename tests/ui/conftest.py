"""Fixtures for the UI tests: a working directory holding a tiny model and a data file, a real
`lmtune ui` server started in it, and a real headless Chromium (Debian's package) driven by
Playwright.

A missing browser is a test failure that says how to install it, never a skip: these tests are
the only proof that the page works.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from tests.ui.support import CHROMIUM_HELP, chromium_path, write_sums

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="module")
def workdir(tiny_model_dir, tmp_path_factory) -> Path:
    """The folder `lmtune ui` serves: models/tiny (a copy of the tiny Llama) and data/sums.jsonl."""
    root = tmp_path_factory.mktemp("ui_work")
    shutil.copytree(tiny_model_dir, root / "models" / "tiny")
    write_sums(root / "data" / "sums.jsonl")
    return root


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(workdir):
    """`lmtune ui` as a user starts it, in `workdir`; yields its URL."""
    port = free_port()
    env = dict(os.environ, PYTHONPATH=str(SRC), HF_HUB_OFFLINE="1", GRADIO_ANALYTICS_ENABLED="False")
    log = (workdir / "ui.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "lmtune.cli.app", "ui", "--port", str(port)],
        cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"lmtune ui exited: {(workdir / 'ui.log').read_text()[-2000:]}", pytrace=False)
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("lmtune ui did not answer within 180 s", pytrace=False)
    yield url
    os.killpg(proc.pid, signal.SIGINT)  # the server and any job it started
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


@pytest.fixture(scope="module")
def page(server):
    """A headless Chromium page on the UI."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"playwright is not installed: {CHROMIUM_HELP}", pytrace=False)
    exe = chromium_path()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=exe, args=["--no-sandbox", "--disable-gpu"])
        pg = browser.new_page(viewport={"width": 1200, "height": 900})
        pg.set_default_timeout(120_000)
        pg.goto(server, wait_until="domcontentloaded")
        pg.wait_for_selector("#lt-data-inspect")
        yield pg
        browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    """Where screenshots go: LMTUNE_UI_SCREENSHOTS (docs/images to refresh the docs), else a temp folder."""
    target = os.environ.get("LMTUNE_UI_SCREENSHOTS")
    # Resolved now: some tests chdir into the working directory before their screenshot.
    out = Path(target).resolve() if target else tmp_path_factory.mktemp("ui_shots")
    out.mkdir(parents=True, exist_ok=True)
    return out
