"""The tokenizer half of a GGUF: vocabulary, token types, merges, special ids, chat template.

llama.cpp does not run a Hugging Face tokenizer; it rebuilds one from these keys. Two kinds:

SentencePiece-style (Llama 2, Mistral v0.1, Gemma, Phi-3: a BPE tokenizer.json with byte fallback
and "▁" for spaces) is written as tokenizer.ggml.model "llama": the pieces, a score per piece and
the token types (BYTE for the <0xNN> fallback pieces). llama.cpp's SentencePiece tokenizer merges
the adjacent pair whose joined piece has the highest score, so each piece scores minus the rank of
the first merge that makes it: the merge order transformers applies, restated as llama.cpp reads it.

For a byte-level
BPE tokenizer (GPT-2 style: SmolLM2, Qwen2, Llama 3) that takes the token strings in id order,
which of them are special (CONTROL) or added (USER_DEFINED), the merge list, and a *name* for the
pre-tokenizer split (`tokenizer.ggml.pre`): llama.cpp keeps its own table of split regexes keyed by
that name. We read the split off the tokenizer's own pre-tokenizer and name it, rather than hash a
probe text against a table of known tokenizers as llama.cpp's converter does, so a fine-tuned
copy of a known tokenizer is named the same way and an unknown split is an error, not a guess.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from lmtune.errors import ConfigError
from lmtune.models.gguf_import import end_of_turn_id
from lmtune.models.tokens import unique_ids

# llama.cpp's token types (gguf.TokenType); plain ints so this module needs no gguf import.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_SPACE = "\u2581"  # SentencePiece's visible space


@dataclass
class VocabMetadata:
    """Everything `tokenizer.*` in the GGUF holds, in the form the writer takes."""

    model: str  # tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    pre: str | None
    tokens: list[str]
    token_types: list[int]
    merges: list[str]
    bos_id: int | None
    eos_id: int | None
    eot_id: int | None
    unk_id: int | None
    pad_id: int | None
    add_bos: bool
    add_eos: bool
    chat_template: str | list[dict[str, str]] | None
    scores: list[float] | None = None
    add_space_prefix: bool = False


def vocab_metadata(tokenizer: Any, vocab_size: int, generation_eos: Any = None) -> VocabMetadata:
    """Describe `tokenizer` for a model whose embedding has `vocab_size` rows.

    `generation_eos` (the generation config's eos id or ids) decides the file's eos: when it names
    the chat template's end-of-turn token, that token is eos, so llama.cpp stops where the model
    was trained to stop instead of running on into a made-up next turn.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ConfigError(
            f"GGUF export needs a fast (tokenizer.json) tokenizer; {type(tokenizer).__name__} is a slow one. "
            "Load the tokenizer with use_fast=True."
        )
    spec = json.loads(backend.to_str())
    sentencepiece = _tokenizer_kind(spec) == "llama"
    tokens, types = _tokens_and_types(tokenizer, vocab_size, sentencepiece)
    eot = end_of_turn_id(tokenizer)
    eos = tokenizer.eos_token_id
    if eot is not None and eot in unique_ids(generation_eos):
        eos = eot
    add_bos, add_eos = _adds_special_tokens(tokenizer)
    merges = _merges(spec["model"].get("merges") or [])
    return VocabMetadata(
        model="llama" if sentencepiece else "gpt2",
        pre=None if sentencepiece else pre_tokenizer_name(spec.get("pre_tokenizer")),
        tokens=tokens,
        token_types=types,
        merges=[] if sentencepiece else merges,
        scores=_piece_scores(tokens, merges) if sentencepiece else None,
        add_space_prefix=sentencepiece and _adds_space_prefix(spec),
        bos_id=tokenizer.bos_token_id,
        eos_id=eos,
        eot_id=eot,
        unk_id=tokenizer.unk_token_id,
        pad_id=tokenizer.pad_token_id,
        add_bos=add_bos,
        add_eos=add_eos,
        chat_template=_chat_template(tokenizer),
    )


def add_vocab(writer: Any, meta: VocabMetadata) -> None:
    """Write `meta` under the keys llama.cpp (and transformers' GGUF reader) look for."""
    writer.add_tokenizer_model(meta.model)
    if meta.pre is not None:
        writer.add_tokenizer_pre(meta.pre)
    writer.add_token_list(meta.tokens)
    if meta.scores is not None:
        writer.add_token_scores(meta.scores)
    writer.add_token_types(meta.token_types)
    if meta.merges:
        writer.add_token_merges(meta.merges)
    for value, add in (
        (meta.bos_id, writer.add_bos_token_id),
        (meta.eos_id, writer.add_eos_token_id),
        (meta.eot_id, writer.add_eot_token_id),
        (meta.unk_id, writer.add_unk_token_id),
        (meta.pad_id, writer.add_pad_token_id),
    ):
        if value is not None:
            add(int(value))
    writer.add_add_bos_token(meta.add_bos)
    writer.add_add_eos_token(meta.add_eos)
    writer.add_add_space_prefix(meta.add_space_prefix)
    if meta.chat_template:
        writer.add_chat_template(meta.chat_template)


def _tokenizer_kind(spec: dict[str, Any]) -> str:
    """ "gpt2" for byte-level BPE, "llama" for SentencePiece-style BPE with byte fallback."""
    model = spec.get("model") or {}
    decoder = (spec.get("decoder") or {}).get("type")
    if model.get("type") == "BPE" and not model.get("byte_fallback") and decoder == "ByteLevel":
        return "gpt2"
    if model.get("type") == "BPE" and model.get("byte_fallback"):
        return "llama"
    kind = model.get("type", "unknown")
    raise ConfigError(
        f"GGUF export writes byte-level BPE (SmolLM2, Qwen, Llama 3) and SentencePiece-style BPE tokenizers "
        f"(Llama 2, Mistral, Gemma, Phi-3); this one is a {kind} tokenizer, which llama.cpp would not split "
        "the same way. Convert it with llama.cpp's convert_hf_to_gguf.py instead."
    )


def _adds_space_prefix(spec: dict[str, Any]) -> bool:
    """Whether the tokenizer puts "▁" before the text (Metaspace prepend, or a Prepend normalizer)."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    for step in steps:
        if step.get("type") == "Metaspace" and step.get("prepend_scheme", "always") in ("always", "first"):
            return True
    norm = spec.get("normalizer") or {}
    steps = norm.get("normalizers", [norm]) if norm.get("type") == "Sequence" else [norm]
    return any(step.get("type") == "Prepend" and step.get("prepend") == _SPACE for step in steps)


def _piece_scores(tokens: list[str], merges: list[str]) -> list[float]:
    """A score per piece for llama.cpp's SentencePiece merging: minus the rank of the first merge
    producing it (higher merges first, as transformers' lowest rank first); others score lowest."""
    first_rank: dict[str, int] = {}
    for rank, merge in enumerate(merges):
        left, _, right = merge.partition(" ")
        first_rank.setdefault(left + right, rank)
    floor = -float(len(merges) + 1)
    return [-float(first_rank[token]) if token in first_rank else floor for token in tokens]


def pre_tokenizer_name(pre: dict[str, Any] | None) -> str:
    """llama.cpp's name for the split this pre-tokenizer performs (`tokenizer.ggml.pre`).

    - ByteLevel with its built-in regex: GPT-2's split, "gpt-2" (llama.cpp's spelling; "gpt2" is
      the tokenizer *model* name, which llama.cpp rejects as a pre-tokenizer).
    - single digits first, then GPT-2's split: "smollm" (what llama.cpp writes for SmolLM/SmolLM2).
    - a Split regex, then ByteLevel without regex: looked up in transformers' table of the regexes
      llama.cpp names ("qwen2", "llama-bpe" ...), the same table its GGUF reader splits with.
    """
    if pre is None:
        raise ConfigError(
            "The tokenizer has no pre-tokenizer, so llama.cpp could not split text the same way."
        )
    kind = pre.get("type")
    if kind == "ByteLevel" and pre.get("use_regex", True):
        return "gpt-2"
    if kind == "Sequence":
        steps = pre.get("pretokenizers") or []
        kinds = [step.get("type") for step in steps]
        if (
            kinds == ["Digits", "ByteLevel"]
            and steps[0].get("individual_digits")
            and steps[1].get("use_regex", True)
        ):
            return "smollm"
        if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True):
            regex = (steps[0].get("pattern") or {}).get("Regex")
            names = [name for name, split in _known_splits().items() if split == regex]
            if names:
                return "llama-bpe" if "llama-bpe" in names else names[0]
    raise ConfigError(
        f"The tokenizer's pre-tokenizer ({json.dumps(pre)[:200]}) is not one llama.cpp has a name for, so "
        "the GGUF would split text differently. Convert it with llama.cpp's convert_hf_to_gguf.py instead."
    )


def _known_splits() -> dict[str, str]:
    """{llama.cpp pre name: split regex} from transformers' GGUF reader (empty if it moved)."""
    try:
        from transformers.integrations.gguf.gguf_tokenizer_mapping import GGUF_PRE_TOKENIZER_SPLITS
    except ImportError:  # an older or newer transformers layout: only the built-in cases apply
        return {}
    return dict(GGUF_PRE_TOKENIZER_SPLITS)


def _tokens_and_types(tokenizer: Any, vocab_size: int, sentencepiece: bool) -> tuple[list[str], list[int]]:
    """Token strings in id order, with llama.cpp's types; embedding rows no token uses become
    `[PAD<id>]` UNUSED entries, as llama.cpp's converter writes them. SentencePiece byte pieces
    (<0x0A> ...) are BYTE and the unknown piece UNKNOWN, as llama.cpp's tokenizer needs them."""
    vocab = tokenizer.get_vocab()
    if vocab and max(vocab.values()) >= vocab_size:
        raise ConfigError(
            f"The tokenizer has token ids up to {max(vocab.values())}, but the model's embedding has only "
            f"{vocab_size} rows. Resize the model's embeddings to the tokenizer (resize_token_embeddings) first."
        )
    by_id = {index: token for token, index in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens: list[str] = []
    types: list[int] = []
    for index in range(vocab_size):
        if index not in by_id:
            tokens.append(f"[PAD{index}]")
            types.append(UNUSED)
        elif index in added:
            tokens.append(added[index].content)
            types.append(CONTROL if added[index].special else USER_DEFINED)
        else:
            token = by_id[index]
            tokens.append(token)
            if sentencepiece and index == tokenizer.unk_token_id:
                types.append(UNKNOWN)
            elif sentencepiece and len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
                types.append(BYTE)
            else:
                types.append(NORMAL)
    return tokens, types


def _merges(merges: list[Any]) -> list[str]:
    """Merges as "left right" strings; a space inside a part is spelled U+0120 as llama.cpp does."""
    if merges and isinstance(merges[0], str):
        return list(merges)
    space = chr(ord(" ") + 256)
    return [" ".join(part.replace(" ", space) for part in pair) for pair in merges]


def _adds_special_tokens(tokenizer: Any) -> tuple[bool, bool]:
    """(adds bos, adds eos) when encoding plain text, found by encoding a probe both ways."""
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a")["input_ids"]
    for start in range(len(full) - len(plain) + 1):
        if full[start : start + len(plain)] == plain:
            prefix, suffix = full[:start], full[start + len(plain) :]
            add_bos = bool(prefix) and prefix[0] == tokenizer.bos_token_id
            add_eos = bool(suffix) and suffix[-1] == tokenizer.eos_token_id
            return add_bos, add_eos
    return False, False


def _chat_template(tokenizer: Any) -> str | list[dict[str, str]] | None:
    """The template as the writer takes it: a string, or named templates as a list."""
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, dict):
        return [{"name": name, "template": text} for name, text in template.items()]
    return template or None
