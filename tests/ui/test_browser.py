"""The whole workflow driven in a real headless Chromium against a real `lmtune ui` server.

The tests run in file order and share one server and page (training makes the run the later tabs
use). Each checks what the page shows against the files the CLI wrote or an independent
computation, and saves a screenshot of its tab (LMTUNE_UI_SCREENSHOTS=docs/images refreshes the
docs' images).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

RUN = "runs/tiny"
MAX_STEPS = 60  # a tiny model trains ~10 steps/s on a quiet machine: room to click Stop mid-run
SAVE_STEPS = 3


def fill(pg, elem: str, value) -> None:
    box = pg.locator(f"#{elem} input, #{elem} textarea").first
    box.fill(str(value))
    box.press("Tab")


def choose(pg, elem: str, value: str) -> None:
    """Type a value into a Gradio dropdown (they accept custom values here) and confirm it."""
    box = pg.locator(f"#{elem} input").first
    box.click()
    box.fill(value)
    box.press("Enter")
    box.press("Escape")
    box.press("Tab")
    close_list(box)


def close_list(box) -> None:
    """Gradio 6 leaves a dropdown's option list drawn after Enter/Tab; focusing the input and
    blurring it (its own blur handler) closes it, keeping the value."""
    box.focus()
    box.evaluate("e => e.blur()")


OPEN_LISTS = "() => [...document.querySelectorAll('.options')].filter(e => e.getBoundingClientRect().height > 0).length"


def tab(pg, name: str) -> None:
    pg.get_by_role("tab", name=name).click()


def shot(pg, shots: Path, name: str) -> None:
    """A screenshot of the page's top with no dropdown list open (a later update can reopen one)."""
    boxes = pg.locator("input[role=combobox]")
    for i in range(boxes.count()):
        if boxes.nth(i).is_visible():
            close_list(boxes.nth(i))
    pg.evaluate("window.scrollTo(0, 0)")
    pg.wait_for_function(f"() => ({OPEN_LISTS})() === 0", timeout=10_000)
    pg.screenshot(path=str(shots / f"ui-{name}.png"))


def wait_text(pg, elem: str, text: str, timeout: float = 240) -> str:
    pg.wait_for_function(
        "([id, t]) => (document.getElementById(id)?.innerText || '').includes(t)", arg=[elem, text],
        timeout=timeout * 1000,
    )  # fmt: skip
    return pg.inner_text(f"#{elem}")


def metrics(workdir: Path) -> list[dict]:
    path = workdir / RUN / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines() if x.endswith("}")] if path.is_file() else []


def test_data_tab_shows_format_and_trained_tokens(page, workdir, shots):
    pg = page
    choose(pg, "lt-data-file", "data/sums.jsonl")
    fill(pg, "lt-data-model", "models/tiny")
    pg.click("#lt-data-inspect")
    pg.wait_for_selector("#lt-data-example .lt-trained")
    summary = pg.inner_text("#lt-data-summary")
    assert "Detected format: openai" in summary
    assert "16 read, 16 usable, 0 rejected" in summary
    trained = pg.locator("#lt-data-example .lt-trained").all_inner_texts()
    context = "".join(pg.locator("#lt-data-example .lt-context").all_inner_texts())
    # The first record's answer (and its end-of-turn token) is trained; the question is context.
    assert trained == ["1 plus 2 is 3.<|im_end|>\n"]
    assert "What is 1 plus 2?" in context and "1 plus 2 is 3." not in context
    assert "lmtune data inspect data/sums.jsonl --model models/tiny" in summary
    shot(pg, shots, "data")
    # A path outside the working directory is refused with the sentence, not read.
    choose(pg, "lt-data-file", "/etc/passwd")
    pg.click("#lt-data-inspect")
    text = wait_text(pg, "lt-data-summary", "outside the working directory")
    assert "Traceback" not in text


def test_data_tab_upload_lands_inside_and_is_inspected(page, workdir, tmp_path):
    """A file uploaded through the page's upload control is copied into WORKDIR/uploads/, picked,
    and inspected from there (an alpaca file: another format than the one already inspected)."""
    pg = page
    upload = tmp_path / "mine.jsonl"  # outside the working directory, as a user's own file is
    rows = [
        {"instruction": f"Add {a} and 2.", "input": "", "output": f"{a} plus 2 is {a + 2}."} for a in (2, 3)
    ]
    upload.write_text("".join(json.dumps(r) + "\n" for r in rows))
    pg.set_input_files("#lt-data-upload input[type=file]", str(upload))
    pg.wait_for_function("() => document.querySelector('#lt-data-file input').value === 'uploads/mine.jsonl'")
    assert (workdir / "uploads" / "mine.jsonl").read_bytes() == upload.read_bytes()
    assert sorted(p.name for p in (workdir / "uploads").iterdir()) == ["mine.jsonl"]
    pg.click("#lt-data-inspect")
    summary = wait_text(pg, "lt-data-summary", "uploads/mine.jsonl")
    assert "Detected format: alpaca" in summary and "2 read, 2 usable, 0 rejected" in summary
    assert "lmtune data inspect uploads/mine.jsonl --model models/tiny" in summary
    pg.wait_for_function(
        "() => document.querySelector('#lt-data-example')?.innerText.includes('Add 2 and 2.')"
    )
    trained = pg.locator("#lt-data-example .lt-trained").all_inner_texts()
    context = "".join(pg.locator("#lt-data-example .lt-context").all_inner_texts())
    assert trained == ["2 plus 2 is 4.<|im_end|>\n"]  # the answer is trained, the instruction is context
    assert "Add 2 and 2." in context and "2 plus 2 is 4." not in context


def test_data_tab_broken_file_shows_the_cli_sentence(page, workdir, monkeypatch):
    """A file that is not JSON: the page shows the sentence `lmtune data inspect` prints, no traceback."""
    from typer.testing import CliRunner

    from lmtune.cli.app import app

    pg = page
    (workdir / "data" / "broken.json").write_text("hello, this is not json\n")
    monkeypatch.chdir(workdir)
    cli = CliRunner().invoke(app, ["data", "inspect", "data/broken.json", "--model", "models/tiny"])
    expected = str(cli.exception)  # what the CLI prints after "error: "
    assert expected.startswith("data/broken.json, line 1: invalid JSON")
    choose(pg, "lt-data-file", "data/broken.json")
    pg.click("#lt-data-inspect")
    text = wait_text(pg, "lt-data-summary", "invalid JSON")
    assert " ".join(text.split()) == " ".join(f"error: {expected}".split())
    assert "Traceback" not in text and pg.inner_text("#lt-data-example") == ""


def test_train_stop_resume_finish(page, workdir, shots):
    pg = page
    tab(pg, "Train")
    fill(pg, "lt-cfg-model-name", "models/tiny")
    fill(pg, "lt-cfg-data-path", "data/sums.jsonl")
    fill(pg, "lt-cfg-train-max-steps", MAX_STEPS)
    fill(pg, "lt-cfg-train-save-steps", SAVE_STEPS)
    fill(pg, "lt-cfg-train-log-steps", 1)
    fill(pg, "lt-cfg-output-name", "tiny")
    pg.click("#lt-train-preview")
    yaml_text = wait_text(pg, "lt-train-yaml", "max_steps")
    assert "save_steps: 3" in yaml_text and "name: models/tiny" in yaml_text
    assert "lmtune train runs/tiny.yaml" in pg.inner_text("#lt-train-message")

    pg.click("#lt-train-start")
    wait_text(pg, "lt-train-message", "Started")
    points = "() => Number(document.querySelector('#lt-train-loss .lt-loss')?.dataset.points || 0)"
    pg.wait_for_function(f"({points})() >= 1", timeout=300_000)
    first = pg.evaluate(points)
    pg.wait_for_function(f"({points})() > {first}", timeout=300_000)  # the curve grows while it runs
    assert "tokens/s" in pg.inner_text("#lt-train-status")
    # Stop once the first checkpoint is complete: the step after it has been logged.
    deadline = time.time() + 300
    while time.time() < deadline and max((r["step"] for r in metrics(workdir)), default=0) <= SAVE_STEPS:
        time.sleep(0.2)
    complete = [
        c
        for c in (workdir / RUN / "checkpoints").glob("checkpoint-*")
        if (c / "lmtune_checkpoint.json").is_file()
    ]
    assert complete, "no complete checkpoint before Stop"  # older ones rotate away (save_total_limit)
    pg.click("#lt-train-stop")
    msg = wait_text(pg, "lt-train-message", "Stopped after step")
    assert "Checkpoint kept: runs/tiny/checkpoints/checkpoint-" in msg
    assert max(r["step"] for r in metrics(workdir)) < MAX_STEPS, "stopped too late to test resuming"
    assert not (workdir / RUN / "summary.json").exists()

    pg.click("#lt-train-resume")
    wait_text(pg, "lt-train-message", "--resume")
    pg.wait_for_function(
        "() => /finished|failed/.test(document.getElementById('lt-train-status')?.innerText || '')",
        timeout=600_000,
    )
    status = pg.inner_text("#lt-train-status")
    assert "finished" in status, f"{status}\n{pg.input_value('#lt-train-log textarea')}"
    assert f"step {MAX_STEPS}/{MAX_STEPS}" in status
    rows = metrics(workdir)
    assert max(r["step"] for r in rows) == MAX_STEPS
    assert (workdir / RUN / "summary.json").is_file()
    drawn = pg.evaluate(points)
    assert drawn == len([r for r in rows if "loss" in r])  # every logged loss is on the curve
    wait_text(pg, "lt-train-runs", "finished")
    shot(pg, shots, "train")


def test_chat_streams_the_trained_run(page, workdir, shots, monkeypatch):
    from lmtune.infer.generate import GenerationOptions, generate_replies
    from lmtune.run.load import load_target

    pg = page
    tab(pg, "Chat")
    choose(pg, "lt-chat-target", RUN)
    fill(pg, "lt-chat-message", "What is 3 plus 5?")
    # Record every length the reply takes as it arrives.
    pg.evaluate(
        """() => { window.lengths = [];
        new MutationObserver(() => { const b = document.querySelectorAll('#lt-chat-bot .bot');
          const t = b.length ? b[b.length - 1].innerText : ''; window.lengths.push(t.length); })
        .observe(document.getElementById('lt-chat-bot'), {subtree: true, childList: true, characterData: true}); }"""
    )
    pg.click("#lt-chat-send")
    wait_text(pg, "lt-chat-status", "done", timeout=300)
    shown = pg.locator("#lt-chat-bot .bot").last.inner_text()
    grew = sorted(set(pg.evaluate("window.lengths")))
    assert len([n for n in grew if 0 < n < len(shown)]) >= 2, f"reply did not stream: lengths {grew}"
    monkeypatch.chdir(workdir)  # the run names its base model as the UI was given it: models/tiny
    loaded = load_target(RUN, quiet=True)
    (expected,) = generate_replies(
        loaded.model, loaded.tokenizer, [[{"role": "user", "content": "What is 3 plus 5?"}]],
        GenerationOptions(max_new_tokens=64),
    )  # fmt: skip
    assert " ".join(shown.split()) == " ".join(expected.split())
    shot(pg, shots, "chat")


def test_chat_side_by_side_with_the_base_model(page, workdir, monkeypatch):
    """The compare box streams the same message to the run's base model in a second column."""
    from lmtune.infer.generate import GenerationOptions, generate_replies
    from lmtune.run.load import load_target

    pg = page
    tab(pg, "Chat")
    pg.locator("#lt-chat-compare input").check()
    fill(pg, "lt-chat-message", "What is 2 plus 2?")
    pg.click("#lt-chat-send")
    pg.wait_for_function(
        """() => document.querySelectorAll('#lt-chat-base .bot').length > 0
            && (document.getElementById('lt-chat-status')?.innerText || '').includes('done')""",
        timeout=300_000,
    )
    shown = pg.locator("#lt-chat-base .bot").last.inner_text()
    assert "lmtune chat models/tiny" in pg.inner_text("#lt-chat-status")  # the base's own command
    monkeypatch.chdir(workdir)
    base = load_target("models/tiny", quiet=True)
    (expected,) = generate_replies(
        base.model, base.tokenizer, [[{"role": "user", "content": "What is 2 plus 2?"}]],
        GenerationOptions(max_new_tokens=64),
    )  # fmt: skip
    assert " ".join(shown.split()) == " ".join(expected.split())
    pg.locator("#lt-chat-compare input").uncheck()


def test_evaluate_shows_report(page, workdir, shots):
    pg = page
    tab(pg, "Evaluate")
    choose(pg, "lt-eval-target", RUN)
    choose(pg, "lt-eval-data", "data/sums.jsonl")
    fill(pg, "lt-eval-limit", 4)
    pg.click("#lt-eval-run")
    report = wait_text(pg, "lt-eval-report", "evaluate: done", timeout=400)
    doc = json.loads((workdir / RUN / "eval" / "ui.json").read_text())
    assert "lmtune eval runs/tiny --data data/sums.jsonl" in report
    assert "Traceback" not in report and doc
    shot(pg, shots, "evaluate")


def test_export_shows_parity_report(page, workdir, shots):
    pg = page
    tab(pg, "Export")
    choose(pg, "lt-export-target", RUN)
    pg.wait_for_function(
        "() => document.querySelector('#lt-export-out textarea, #lt-export-out input').value.endsWith('.gguf')"
    )
    pg.click("#lt-export-run")
    report = wait_text(pg, "lt-export-report", "Parity report", timeout=400)
    verify = json.loads((workdir / "runs" / "tiny-export" / "tiny.verify.json").read_text())
    assert verify["passed"] is True
    assert "Parity: passed" in report
    assert "lmtune export runs/tiny runs/tiny-export/tiny.gguf --format gguf --quant f16" in report
    shot(pg, shots, "export")
