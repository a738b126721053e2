"""Run lmtune's loss masking on every chat template (*.jinja) in a folder and say, per template,
whether the test records are masked or rejected (and why).

    python benchmarks/template_survey.py DIR [--tokenizer TOKENIZER_DIR] [--json OUT]

e.g. on the 70 templates llama.cpp ships (not part of lmtune; fetch them to /tmp):

    pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d /tmp/lcp
    tar xzf /tmp/lcp/llama_cpp_python-0.3.36.tar.gz -C /tmp/lcp
    PYTHONPATH=src python benchmarks/template_survey.py \\
        /tmp/lcp/llama_cpp_python-0.3.36/vendor/llama.cpp/models/templates

The vocabulary is a stand-in (default: the Qwen2 tokenizer the tests build from shared/; a template's
control tokens then tokenise into pieces, which masking handles like any text), so this surveys the
*templates*. A masked record also passes a sanity check: the trained text contains the visible text of
every trained answer and none of a weight-0 answer. "error" means the masking code itself raised (a bug
or, before the fix, a template exception escaping as a traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

RECORDS: list[list[dict[str, Any]]] = [
    [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "你好，今天天气怎么样？"},
        {"role": "assistant", "content": "Skipped answer.", "weight": 0},
        {"role": "user", "content": "Say hello in Chinese."},
        {"role": "assistant", "content": "你好！"},
    ],
    [
        {"role": "user", "content": "What is 2+2?"},
        {"role": "assistant", "content": "Four.", "reasoning_content": "Two plus two is four."},
        {"role": "user", "content": "And 3+3?"},
        {"role": "assistant", "content": "<think>\nThree plus three.\n</think>\n\nSix."},
    ],
    [
        {"role": "user", "content": "Name a colour."},
        {"role": "assistant", "content": "Blue."},
    ],
    [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call12345",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "content": '{"temp_c": 21}', "tool_call_id": "call12345"},
        {"role": "assistant", "content": "It is 21 °C in Paris."},
    ],
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Current weather in a city.",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
]


def _calls(record: list[dict[str, Any]]) -> bool:
    return any(m.get("tool_calls") for m in record)


def visible(content: str) -> str:
    return content.split("</think>")[-1].strip()


def survey_one(tokenizer: Any, template: str) -> dict[str, Any]:
    from lmtune.tokenize.masking import IGNORE, MaskingError, tokenize_conversations

    tokenizer.chat_template = template
    try:
        outs = tokenize_conversations(
            tokenizer, [(r, TOOLS if _calls(r) else None) for r in RECORDS], max_length=4096
        )
    except Exception as err:  # noqa: BLE001 - the survey reports whatever escapes masking
        return {"status": "error", "detail": f"{type(err).__name__}: {str(err)[:120]}"}
    rejects: dict[str, int] = {}
    wrong: list[str] = []
    for rec, out in zip(RECORDS, outs):
        if isinstance(out, MaskingError):
            rejects[out.reason] = rejects.get(out.reason, 0) + 1
            continue
        trained = tokenizer.decode([t for t, lab in zip(out.input_ids, out.labels) if lab != IGNORE])
        for m in rec:
            if m["role"] in ("user", "system") and m["content"] in trained:
                wrong.append(f"{m['role']} text trained")
            if m["role"] != "assistant" or not m["content"]:
                continue
            if m.get("weight") == 0 and visible(m["content"]) in trained:
                wrong.append("weight-0 answer trained")
            if m.get("weight") != 0 and visible(m["content"]) not in trained:
                wrong.append(f"answer {visible(m['content'])!r} not trained")
    if wrong:
        return {"status": "wrong", "detail": "; ".join(wrong)}
    if rejects:
        return {"status": "reject", "detail": ", ".join(f"{k} x{v}" for k, v in rejects.items())}
    return {"status": "pass", "detail": ""}


def default_tokenizer() -> Any:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from transformers import AutoTokenizer

    from families import tokenizer_dir  # the tests' cached Qwen2 tokenizer from shared/

    return AutoTokenizer.from_pretrained(tokenizer_dir("qwen2"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path, help="folder of *.jinja chat templates")
    ap.add_argument("--tokenizer", help="tokenizer folder to use as the stand-in vocabulary")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    import logging

    logging.getLogger("transformers").setLevel(logging.ERROR)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(args.tokenizer) if args.tokenizer else default_tokenizer()
    results = {}
    for path in sorted(args.dir.glob("*.jinja")):
        results[path.stem] = r = survey_one(tok, path.read_text())
        print(f"{r['status']:7} {path.stem}" + (f"  ({r['detail']})" if r["detail"] else ""), flush=True)
    counts: dict[str, int] = {}
    for r in results.values():
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    print(f"\n{len(results)} templates: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
