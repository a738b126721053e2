"""Session.train_lm's body: a causal LM trained on tokenised samples with LMTrainer (sft, pretrain).

Kept apart from session.py, which holds the steps every task shares.
"""

from __future__ import annotations

from typing import Any


def train_lm(s: Any, model: Any, tokenizer: Any, train: Any, val: Any) -> dict[str, Any]:
    import torch

    from lmtune.tokenize.dataset import PadCollator
    from lmtune.tokenize.packing import PackedCollator
    from lmtune.train.lm_trainer import LMTrainer, SpeedCallback, lm_rows, lm_samples
    from lmtune.train.lora_fast import restore_lora, speed_up_lora
    from lmtune.train.optim import build_optimizer
    from lmtune.train.plan import cast_frozen

    plan = s.plan
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    pad = pad if pad is not None else 0
    if plan.packing:
        width = s.cfg.data.max_length
        train_set, val_set = (lm_rows(x, width) for x in (train, val))
        s.packing = train_set.stats()
        per_step = s.cfg.train.batch_size * len(train) / max(1, len(train_set))
        s.console.print(
            f"Packed {len(train)} samples into {len(train_set)} rows of {width} tokens "
            f"({100 * s.packing['fill']:.1f}% real tokens); train.batch_size counts rows, so a "
            f"step now trains ~{per_step:.0f} samples"
        )
        collator: Any = PackedCollator(pad, pad_to=width if plan.compile is not False else None)
    else:
        train_set, val_set, collator = lm_samples(train), lm_samples(val), PadCollator(pad)
    if plan.bf16_frozen:
        cast_frozen(model, torch.bfloat16, source=torch.float32)
    cpu = s.device == "cpu"
    sped = speed_up_lora(
        model,
        autocast=s.bf16,
        fast_dropout=s.cfg.train.fast_dropout and cpu,
        fused=s.cfg.train.fused_lora and cpu,
    )
    said = {
        "dropout": "dropouts draw 16-bit masks (train.fast_dropout)",
        "input_cast": "layers without PEFT's float32 input cast (bf16 autocast casts back anyway)",
        "fused": "layers compute their update in one function (train.fused_lora)",
    }
    if any(sped.values()):
        s.console.print("LoRA: " + "; ".join(f"{sped[k]} {text}" for k, text in said.items() if sped[k]))
    has_val = bool(val)
    speed = SpeedCallback(compile_mode=plan.compile, device=s.device, console=s.console)
    overrides: dict[str, Any] = {"prediction_loss_only": True, "use_liger_kernel": plan.liger}
    if not plan.packing and s.cfg.data.group_by_length and s.cfg.data.shuffle:
        overrides["train_sampling_strategy"] = "group_by_length"
    trainer = s.quiet(
        LMTrainer(
            model=model,
            args=s.training_args(has_val=has_val, **overrides),
            train_dataset=train_set,
            eval_dataset=val_set if has_val else None,
            data_collator=collator,
            processing_class=tokenizer,
            callbacks=[*s.callbacks(), speed],
            optimizers=(build_optimizer(model, s.cfg), None),
            loss_chunk=0 if s.strategy.distributed else s.cfg.train.loss_chunk,
        )
    )
    if trainer.chunked_loss_off_because and s.cfg.train.loss_chunk and not s.strategy.distributed:
        s.console.print(f"Loss over full logits: {trainer.chunked_loss_off_because}")
    before = trainer.evaluate()["eval_loss"] if has_val and not s.resume else None
    output, seconds = s.train(trainer)
    after = trainer.evaluate()["eval_loss"] if has_val else None
    if plan.bf16_frozen:
        cast_frozen(model, torch.float32, source=torch.bfloat16)
    if any(sped.values()):
        restore_lora(model)
    return {
        "trainer": trainer,
        "output": output,
        "seconds": seconds,
        "eval_loss": {"before": before, "after": after},
        "speed": speed.summary(),
    }
