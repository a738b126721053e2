"""Prompt learning through PEFT: prefix tuning, prompt tuning and P-tuning. The base stays frozen.

prefix learns key/value vectors that every attention layer sees before the input; prompt learns
input embeddings of virtual tokens put before it; ptuning computes those embeddings with a small
MLP or LSTM. The run directory gets PEFT's standard layout (adapter_config.json +
adapter_model.safetensors), so `PeftModel.from_pretrained(base, run_dir)` loads it anywhere.
"""

from __future__ import annotations

import math
import types
import warnings
from typing import Any

from lmtune.errors import ConfigError
from lmtune.methods.base import PeftMethod, peft_task_type, register

# We give prompt/P-tuning their position ids back in generation (`_keep_positions`), so PEFT's warning
# that it drops them would mislead every chat user.
warnings.filterwarnings("ignore", message="Position ids are not supported for parameter efficient tuning")


def _hidden_size(model: Any) -> int:
    return model.config.get_text_config().hidden_size


class _PromptLearning(PeftMethod):
    mergeable = False


@register
class PrefixTuning(_PromptLearning):
    name = "prefix"
    not_mergeable_because = (
        "prefix tuning learns extra key/value vectors fed to every attention layer, "
        "not a change to any weight."
    )

    def peft_config(self, model: Any, opts: Any, task: str = "sft") -> Any:
        from peft import PrefixTuningConfig

        return PrefixTuningConfig(
            task_type=peft_task_type(task),
            num_virtual_tokens=opts.num_virtual_tokens,
            prefix_projection=opts.prefix_projection,
            encoder_hidden_size=opts.encoder_hidden_size or _hidden_size(model),
        )


def _keep_positions(model: Any) -> Any:
    """Make `generate` give left-padded rows the right positions.

    PEFT drops the position ids `generate` computes from the attention mask (for prompt and
    P-tuning), so the model numbers the tokens 0, 1, 2 ... along the padded row: a row with p pads
    sees its text p positions further from the virtual tokens than it would alone, and batched
    replies differ from one-at-a-time ones. We recompute them from the mask PEFT has extended with
    the virtual tokens, as `generate` does for a plain model.
    """
    model.prepare_inputs_for_generation = types.MethodType(_prepare_with_positions, model)
    return model


def _prepare_with_positions(self: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
    import torch

    inputs = type(self).prepare_inputs_for_generation(self, *args, **kwargs)
    mask = inputs.get("attention_mask")
    if isinstance(mask, torch.Tensor) and mask.dim() == 2:  # (a 4-D mask already holds the positions)
        embeds = inputs.get("inputs_embeds")
        new = (embeds if embeds is not None else inputs["input_ids"]).shape[1]
        positions = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
        inputs["position_ids"] = positions[:, -new:]
    return inputs


@register
class PromptTuning(_PromptLearning):
    name = "prompt"
    not_mergeable_because = (
        "prompt tuning learns the embeddings of virtual tokens put before every input, "
        "not a change to any weight."
    )

    def check(self, model: Any, opts: Any) -> None:
        if opts.prompt_init == "text":
            _text_token_ids(model, opts.prompt_init_text, opts.num_virtual_tokens)

    def peft_config(self, model: Any, opts: Any, task: str = "sft") -> Any:
        from peft import PromptTuningConfig, PromptTuningInit

        # Text init is done by `prepare` from the base's own tokenizer: PEFT's would load a tokenizer
        # by path again on every trainable reload, and add special tokens (a BOS) to the text.
        return PromptTuningConfig(
            task_type=peft_task_type(task),
            num_virtual_tokens=opts.num_virtual_tokens,
            prompt_tuning_init=PromptTuningInit.RANDOM,
        )

    def prepare(self, model: Any, opts: Any, *, task: str = "sft") -> Any:
        import torch

        peft_model = super().prepare(model, opts, task=task)
        if opts.prompt_init == "text":
            ids = torch.tensor(_text_token_ids(model, opts.prompt_init_text, opts.num_virtual_tokens))
            words = model.get_input_embeddings().weight
            prompt = peft_model.prompt_encoder[peft_model.active_adapter].embedding.weight
            with torch.no_grad():
                prompt.copy_(words[ids.to(words.device)])
        return peft_model

    def fix(self, model: Any) -> Any:
        return _keep_positions(model)


def _text_token_ids(model: Any, text: str | None, count: int) -> list[int]:
    """The text's token ids (no special tokens), repeated or cut to `count`, as PEFT's TEXT init does.

    The tokenizer is the one saved with the base model (its folder, as lmtune loads it).
    """
    from transformers import AutoTokenizer

    where = getattr(model, "name_or_path", "") or ""
    try:
        tokenizer = AutoTokenizer.from_pretrained(where)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"method.prompt_init: text needs the base model's tokenizer, which could not be loaded from "
            f"'{where}' ({err}). Use a model folder that holds its tokenizer (lmtune models import-gguf "
            "makes one from a .gguf), or set method.prompt_init: random."
        ) from err
    ids = tokenizer(text or "", add_special_tokens=False)["input_ids"]
    if not ids:
        raise ConfigError(f"method.prompt_init_text {text!r} has no tokens; give a non-empty text.")
    return (ids * math.ceil(count / len(ids)))[:count]


@register
class PTuning(_PromptLearning):
    name = "ptuning"
    not_mergeable_because = (
        "P-tuning learns virtual-token embeddings (made by a small prompt encoder) put before every input, "
        "not a change to any weight."
    )

    def peft_config(self, model: Any, opts: Any, task: str = "sft") -> Any:
        from peft import PromptEncoderConfig, PromptEncoderReparameterizationType

        return PromptEncoderConfig(
            task_type=peft_task_type(task),
            num_virtual_tokens=opts.num_virtual_tokens,
            encoder_reparameterization_type=PromptEncoderReparameterizationType[opts.encoder.upper()],
            encoder_hidden_size=opts.encoder_hidden_size or _hidden_size(model),
        )

    def fix(self, model: Any) -> Any:
        return _keep_positions(model)
