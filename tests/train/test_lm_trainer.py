"""LMTrainer: the loss is normalised over every accumulated micro-batch; SpeedCallback's accounting."""

from __future__ import annotations

import random

import pytest
import torch
from tests.conftest import tiny_llama
from transformers import TrainerCallback, TrainingArguments

from lmtune.tokenize.masking import IGNORE, Tokenized
from lmtune.tokenize.packing import PackedCollator, PackedDataset, pack_samples
from lmtune.train.lm_trainer import LMTrainer, SpeedCallback


def tiny():
    return tiny_llama(211)


def rows(n: int = 8):
    """n packed rows whose trained-token counts differ a lot, so a per-micro-batch mean would differ."""
    rng = random.Random(3)
    out = []
    for i in range(n):
        length = rng.randint(16, 30)
        ids = [rng.randrange(3, 211) for _ in range(length)]
        prompt = 2 if i % 2 else length - 3
        out.append(Tokenized(ids, [IGNORE] * prompt + ids[prompt:]))
    return pack_samples(out, 30)


class Grads(TrainerCallback):
    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


def grads_of_one_step(tmp_path, batch_size: int, accum: int, chunk: int):
    model = tiny()
    packed = rows()
    assert len(packed) == 8
    catch = Grads()
    args = TrainingArguments(
        output_dir=str(tmp_path / f"b{batch_size}"),
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accum,
        max_steps=1,
        learning_rate=1e-3,
        max_grad_norm=0,
        train_sampling_strategy="sequential",
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        remove_unused_columns=False,
        disable_tqdm=True,
        logging_strategy="no",
    )
    trainer = LMTrainer(
        model=model,
        args=args,
        train_dataset=PackedDataset(packed),
        data_collator=PackedCollator(0),
        callbacks=[catch],
        loss_chunk=chunk,
    )
    trainer.train()
    return catch.grads


@pytest.mark.parametrize("chunk", [16, 0])  # ours, and the model's own loss (fallback path)
def test_one_batch_of_8_equals_4_accumulated_batches_of_2(tmp_path, chunk):
    one = grads_of_one_step(tmp_path, 8, 1, chunk)
    accumulated = grads_of_one_step(tmp_path, 2, 4, chunk)
    assert one.keys() == accumulated.keys() and one
    for k in one:
        torch.testing.assert_close(accumulated[k], one[k], rtol=1e-4, atol=1e-7, msg=k)


def test_speed_summary_counts_real_tokens_and_leaves_out_the_first_step():
    speed = SpeedCallback(compile_mode=False, device="cpu")
    speed.steps = [(10.0, 100), (1.0, 200), (1.0, 300)]
    s = speed.summary()
    assert s["real_tokens"] == 600
    assert s["tokens_per_second"] == pytest.approx(600 / 12, abs=0.1)
    assert s["steady_tokens_per_second"] == pytest.approx(250.0)
    assert s["first_step_seconds"] == 10.0 and s["compile_seconds"] is None
    speed.compiled_at = 1  # compiled from step 2 on: step 2 paid the compile, steady = step 3 only
    s = speed.summary()
    assert s["steady_tokens_per_second"] == pytest.approx(300.0)
    assert s["compile_seconds"] == pytest.approx(0.0)


def losses_of_a_short_run(tmp_path, compile_mode):
    model = tiny()
    speed = SpeedCallback(compile_mode=compile_mode, device="cpu")
    args = TrainingArguments(
        output_dir=str(tmp_path / str(compile_mode)),
        per_device_train_batch_size=2,
        max_steps=4,
        learning_rate=1e-3,
        train_sampling_strategy="sequential",
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        remove_unused_columns=False,
        disable_tqdm=True,
        logging_steps=1,
        include_num_input_tokens_seen="non_padding",
    )
    packed = rows()
    trainer = LMTrainer(
        model=model,
        args=args,
        train_dataset=PackedDataset(packed),
        data_collator=PackedCollator(0, pad_to=30),
        callbacks=[speed],
        loss_chunk=16,
    )
    trainer.train()
    return [h["loss"] for h in trainer.state.log_history if "loss" in h], speed.summary(), packed


def test_torch_compile_trains_the_same_and_reports_its_cost(tmp_path):
    eager, eager_speed, packed = losses_of_a_short_run(tmp_path, False)
    compiled, compiled_speed, _ = losses_of_a_short_run(tmp_path, True)
    assert compiled == pytest.approx(eager, rel=1e-4)
    # Real tokens are the rows' tokens, never the padding up to the row width.
    assert eager_speed["real_tokens"] == sum(r.real_tokens for r in packed) < 8 * 30
    assert eager_speed["compile_seconds"] is None
    assert compiled_speed["compile"] is True and compiled_speed["compile_seconds"] is not None


def test_the_decoder_runs_under_bf16_autocast_when_bf16_is_on(tmp_path):
    """compute_loss calls the decoder itself, outside accelerate's autocast wrapper of forward."""
    model = tiny()
    seen = []
    model.model.layers[0].mlp.register_forward_hook(lambda mod, inp, out: seen.append(out.dtype))
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=2,
        max_steps=1,
        use_cpu=True,
        bf16=True,
        report_to=[],
        save_strategy="no",
        remove_unused_columns=False,
        disable_tqdm=True,
    )
    LMTrainer(
        model=model,
        args=args,
        train_dataset=PackedDataset(rows()),
        data_collator=PackedCollator(0),
        loss_chunk=16,
    ).train()
    assert seen and set(seen) == {torch.bfloat16}
