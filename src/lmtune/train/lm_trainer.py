"""The Trainer for causal-LM tasks (sft, pretrain): trained-position loss, speed accounting, compile.

Built on the public extension points of `transformers.Trainer`: `compute_loss` (the loss), a
callback (timing, and torch.compile switched on mid-run when it pays back); checkpoints are saved
atomically (train/checkpoints.py).
"""

from __future__ import annotations

from typing import Any

from transformers import Trainer, TrainerCallback

from lmtune.tokenize.masking import IGNORE
from lmtune.train.checkpoints import AtomicCheckpoints
from lmtune.train.lm_loss import chunked_lm_loss_sum, decoder_and_head, supports_chunked_loss


class LMTrainer(AtomicCheckpoints, Trainer):
    """`compute_loss` runs the decoder, then the head and cross-entropy at trained positions only.

    The loss is divided by the trained tokens of all micro-batches of the optimizer step (the Trainer
    counts them up front as `num_items_in_batch`), so gradient accumulation changes nothing.
    """

    def __init__(self, *args: Any, loss_chunk: int = 256, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.loss_chunk = loss_chunk
        self.chunked_loss_off_because = (
            supports_chunked_loss(self.model) if loss_chunk else "train.loss_chunk: 0"
        )
        # Have the Trainer count trained tokens across accumulated micro-batches for every model, and
        # treat the loss as normalised by that count (the model's own loss gets it as a kwarg too).
        self.model_accepts_loss_kwargs = True
        self.loss_is_scaled_for_ga = True

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        if "position_ids" in inputs:
            # Packed rows: the mask only marks real tokens for the Trainer's token count; position ids
            # restarting at 0 are what isolates the samples, which transformers does only when there is
            # no attention mask and no key/value cache.
            inputs.pop("attention_mask", None)
        inputs["use_cache"] = False
        gathered = num_items_in_batch is not None  # counted by the Trainer, across devices
        if not gathered:
            num_items_in_batch = (inputs["labels"][:, 1:] != IGNORE).sum()
        wrapped = model is not self.accelerator.unwrap_model(model)  # DDP/FSDP: forward must go through it
        if self.chunked_loss_off_because or wrapped:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        labels = inputs.pop("labels")
        decoder, head = decoder_and_head(model)
        # Calling the decoder directly skips the mixed-precision autocast accelerate wraps around
        # model.forward, so it is entered here.
        with self.accelerator.autocast():
            hidden = decoder(**inputs).last_hidden_state
            total = chunked_lm_loss_sum(hidden, head, labels, self.loss_chunk)
        loss = total / num_items_in_batch
        if self.args.average_tokens_across_devices and gathered:
            loss = loss * self.accelerator.num_processes
        return (loss, {"loss": loss}) if return_outputs else loss

    def _get_train_sampler(self, train_dataset: Any = None) -> Any:
        """group_by_length over a store view takes the stored lengths; the Trainer's own sampler
        would read every sample once, on every rank, to measure them."""
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        lengths = getattr(dataset, "lengths", None)
        if self.args.train_sampling_strategy == "group_by_length" and lengths is not None:
            from transformers.trainer_pt_utils import LengthGroupedSampler

            batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
            return LengthGroupedSampler(batch, lengths=[int(n) for n in lengths])
        return super()._get_train_sampler(train_dataset)


def lm_samples(samples: Any) -> Any:
    """The map-style dataset of unpacked samples: a store view is one already; a list gets wrapped."""
    if isinstance(samples, list):
        from lmtune.tokenize.dataset import SampleDataset

        return SampleDataset(samples)
    return samples


def lm_rows(samples: Any, width: int) -> Any:
    """Samples packed into rows of `width` tokens (both datasets have `.stats()`): a store view's
    plan comes from its lengths and is cached beside the store; a list is packed in memory."""
    if isinstance(samples, list):
        from lmtune.tokenize.packing import PackedDataset, pack_samples

        return PackedDataset(pack_samples(samples, width), width)
    from lmtune.datastore.packing import StorePackedDataset

    return StorePackedDataset(samples, width, cache=samples.path)


class SpeedCallback(TrainerCallback):
    """Step times and real tokens; switches torch.compile on after 2 eager steps when it pays back.

    Steady-state speed is measured over the steps after the first (warm-up) step, and after the
    compiled step when compile was switched on.
    """

    def __init__(self, *, compile_mode: bool | str, device: str, console: Any = None):
        self.compile_mode = compile_mode
        self.device = device
        self.console = console
        self.steps: list[tuple[float, int]] = []  # (seconds, real tokens) per optimizer step
        self.compiled_at: int | None = None  # index of the first step run compiled
        self.decision: str | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from lmtune.train.plan import compile_decoder

        if self.compile_mode is True:
            compile_decoder(model)
            self.compiled_at = 0

    def on_step_begin(self, args, state, control, **kwargs):
        from time import perf_counter as time_now

        self._t0, self._tokens0 = time_now(), state.num_input_tokens_seen

    def on_step_end(self, args, state, control, model=None, **kwargs):
        from time import perf_counter as time_now

        from lmtune.train.plan import compile_decoder, compile_pays_back

        self.steps.append((time_now() - self._t0, state.num_input_tokens_seen - self._tokens0))
        if self.compile_mode == "auto" and len(self.steps) == 2 and self.compiled_at is None:
            layers = getattr(getattr(model, "config", None), "num_hidden_layers", 1) or 1
            left = state.max_steps - state.global_step
            worth, saved, cost = compile_pays_back(self.steps[1][0], left, layers, self.device)
            self.decision = (
                f"{'on' if worth else 'off'}: {left} steps left at {self.steps[1][0]:.2f} s would save "
                f"~{saved:.0f} s against ~{cost:.0f} s of compiling"
            )
            if self.console is not None:
                self.console.print(f"torch.compile {self.decision}")
            if worth:
                compile_decoder(model)
                self.compiled_at = len(self.steps)

    def summary(self) -> dict[str, Any]:
        if not self.steps:
            return {}
        seconds = sum(s for s, _ in self.steps)
        tokens = sum(n for _, n in self.steps)
        start = 1 if self.compiled_at is None else self.compiled_at + 1
        steady = self.steps[start:] or self.steps[-1:]
        steady_s = sum(s for s, _ in steady)
        out: dict[str, Any] = {
            "real_tokens": tokens,
            "tokens_per_second": round(tokens / seconds, 1) if seconds else None,
            "steady_tokens_per_second": round(sum(n for _, n in steady) / steady_s, 1) if steady_s else None,
            "first_step_seconds": round(self.steps[0][0], 2),
            "compile_seconds": None,
            "compile": self.decision or self.compile_mode,
        }
        if self.compiled_at is not None and self.compiled_at < len(self.steps):
            typical = steady_s / len(steady)
            out["compile_seconds"] = round(self.steps[self.compiled_at][0] - typical, 1)
        return out
