"""Write the prompt files of examples/grpo_arithmetic.yaml: small additions whose answers code can check.

    python examples/make_arithmetic.py            # -> examples/data/arithmetic_{train,test}.jsonl

Each record is {"prompt": "...", "answer": "<the sum>"}; `answer` is the column the numeric_match
reward reads. Train and test sums never overlap (test pairs are held out before sampling train).
"""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parent / "data"
TEMPLATE = "What is {a} + {b}? Reply with only the number."


def pairs(seed: int = 0) -> list[tuple[int, int]]:
    everything = [(a, b) for a in range(10, 50) for b in range(10, 50)]
    random.Random(seed).shuffle(everything)
    return everything


def write(path: Path, chosen: list[tuple[int, int]]) -> None:
    rows = [{"prompt": TEMPLATE.format(a=a, b=b), "answer": str(a + b)} for a, b in chosen]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def main(n_train: int = 400, n_test: int = 48) -> None:
    OUT.mkdir(exist_ok=True)
    all_pairs = pairs()
    write(OUT / "arithmetic_test.jsonl", all_pairs[:n_test])
    write(OUT / "arithmetic_train.jsonl", all_pairs[n_test : n_test + n_train])
    print(f"wrote {n_train} training and {n_test} test prompts to {OUT}")


if __name__ == "__main__":
    main()
