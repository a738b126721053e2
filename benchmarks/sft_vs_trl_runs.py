"""The child processes of benchmarks/sft_vs_trl.py, and the measurements both tools share.

Why a module of its own: each run (lmtune, TRL defaults, TRL tuned) and the held-out evaluation
happen in a fresh interpreter started by `sft_vs_trl.py --child NAME --spec FILE`, so its peak RSS
and its end-to-end time are its own. What is measured the same way for both tools lives here once:
the conversation built from an alpaca record, the tokens of a (truncated) sample, the held-out
answer loss, and the steady-state window of a list of step times.

Every child reads its spec (json) and writes one json result; an exception becomes an `error`
field of that result (and a traceback in the child's log), so one failing run does not stop the
benchmark.
"""

from __future__ import annotations

import json
import math
import os
import time
import traceback
from pathlib import Path
from typing import Any

LORA = {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}
LEARNING_RATE = 2e-4
# FLOPs per token and base parameter of a LoRA step: 2 forward + 2 for the input gradients; the frozen
# weights get no gradient (the dense 6N convention counts one), the adapters' r/h of it is left out
LORA_FLOPS_PER_PARAMETER = 4
LOG_STEPS = 5  # lmtune's default train.log_steps; TRL is given the same so both "last loss" windows match


# -- data ---------------------------------------------------------------------------------------
def conversation(record: dict[str, Any]) -> list[dict[str, str]]:
    """An alpaca record as one user turn (instruction, a blank line, input if any) and one answer."""
    user = record["instruction"].strip()
    if str(record.get("input") or "").strip():
        user += "\n\n" + record["input"].strip()
    return [{"role": "user", "content": user}, {"role": "assistant", "content": record["output"]}]


def read_conversations(path: str | Path) -> list[list[dict[str, str]]]:
    """The `messages` of every line of a jsonl the parent wrote."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["messages"] for line in lines if line.strip()]


def answer_tokens(tokenizer: Any, messages: list[dict[str, str]], max_length: int) -> tuple[list[int], int]:
    """Token ids of the conversation rendered with the chat template and cut at `max_length`, and the
    index where the answer starts (the length of the rendered prompt with the generation prompt).

    The answer is everything after the prompt, end-of-turn token included: what both tools train on.
    """
    prompt = tokenizer.apply_chat_template(messages[:-1], add_generation_prompt=True, tokenize=False)
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    full_ids = tokenizer(full, add_special_tokens=False)["input_ids"][:max_length]
    start = 0
    while start < min(len(prompt_ids), len(full_ids)) and prompt_ids[start] == full_ids[start]:
        start += 1
    return full_ids, start


def held_out_loss(model: Any, tokenizer: Any, conversations: list[Any], max_length: int) -> dict[str, Any]:
    """Mean cross-entropy over the answer tokens of `conversations` (token-weighted), float32, batch 1.

    The one loss every trained model is judged by, independent of either tool's own evaluation.
    A conversation whose prompt alone fills max_length has no answer token left and is counted as
    skipped, not scored.
    """
    import torch

    model.eval()
    total, count, skipped = 0.0, 0, 0
    with torch.no_grad():
        for messages in conversations:
            ids, start = answer_tokens(tokenizer, messages, max_length)
            if start >= len(ids) or start == 0:
                skipped += 1
                continue
            x = torch.tensor([ids])
            logits = model(input_ids=x).logits[0, start - 1 : -1].float()
            total += torch.nn.functional.cross_entropy(logits, x[0, start:], reduction="sum").item()
            count += len(ids) - start
    return {"loss": total / count if count else None, "answer_tokens": count, "skipped": skipped}


# -- speed --------------------------------------------------------------------------------------
def steady_rate(begin: float, ends: list[float], tokens: list[int]) -> dict[str, Any]:
    """Real tokens per second of training once warm-up and one-off stalls are left out.

    A step's time runs from the end of the one before (the start of training for the first) to its
    own end, so data loading, collation and logging count, as they do for the user. Warm-up is the
    first max(2, 25%) optimizer steps (first-batch allocation, lazy init). A later step slower than
    3x the median of the post-warm-up steps is a one-off stall (torch.compile switched on mid-run)
    and is left out too, tokens and time. With too few steps for any of that (a smoke run) the
    whole loop is used and `steady` is False, so nobody mistakes it for a steady-state number.
    """
    steps = len(ends)
    out: dict[str, Any] = {"tokens_per_second": None, "steady": False, "warmup_steps": 0, "stalls": 0}
    out["steps"] = steps
    if not steps:
        return out
    seconds = [t - prev for prev, t in zip([begin, *ends[:-1]], ends)]
    warmup = max(2, math.ceil(steps / 4))
    if steps <= warmup:
        total = ends[-1] - begin
        return out | {"tokens_per_second": sum(tokens) / total if total > 0 else None}
    later = list(zip(seconds[warmup:], tokens[warmup:]))
    typical = sorted(s for s, _ in later)[len(later) // 2]
    kept = [(s, n) for s, n in later if s <= 3 * typical]
    total = sum(s for s, _ in kept)
    return out | {
        "tokens_per_second": sum(n for _, n in kept) / total if total > 0 else None,
        "steady": True,
        "warmup_steps": warmup,
        "stalls": len(later) - len(kept),
    }


def step_clock(count_from_state: bool) -> tuple[Any, dict[str, Any]]:
    """A TrainerCallback that notes when each optimizer step ended and the real tokens it trained on,
    and the dict it fills: {"begin", "ends", "tokens", "pending"}.

    Tokens come either from `pending` (added by whoever sees the batches, see CountingSFTTrainer) or,
    with `count_from_state`, from the Trainer's own non-padding count (state.num_input_tokens_seen).
    """
    from transformers import TrainerCallback

    clock: dict[str, Any] = {"begin": None, "ends": [], "tokens": [], "pending": 0, "seen": 0}

    class StepClock(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            clock["begin"] = time.perf_counter()
            clock["seen"] = state.num_input_tokens_seen

        def on_step_end(self, args, state, control, **kwargs):
            clock["ends"].append(time.perf_counter())
            if count_from_state:
                clock["pending"] = state.num_input_tokens_seen - clock["seen"]
                clock["seen"] = state.num_input_tokens_seen
            clock["tokens"].append(clock["pending"])
            clock["pending"] = 0

    return StepClock(), clock


def clock_numbers(clock: dict[str, Any]) -> dict[str, Any]:
    """The speed fields of a run's result from its step clock."""
    rate = steady_rate(clock["begin"], clock["ends"], clock["tokens"])
    loop = clock["ends"][-1] - clock["begin"] if clock["ends"] else 0
    return {
        "real_tokens": sum(clock["tokens"]),
        "tokens_per_second": sum(clock["tokens"]) / loop if loop > 0 else None,
        "steady_tokens_per_second": rate["tokens_per_second"],
        "steady": rate["steady"],
        "warmup_steps": rate["warmup_steps"],
        "stalls": rate["stalls"],
    }


def count_real_tokens(inputs: dict[str, Any], pad_token_id: int | None) -> int:
    """Non-padding tokens of one batch as TRL's collator builds it.

    Padded batches carry an attention_mask (1 on every real token). Padding-free (packed) batches
    carry none: all samples are one row with position_ids restarting at 0 per sample, and padding,
    only present with pad_to_multiple_of, sits at the right end as pad tokens at position 0. A real
    sample ends at a position > 0 (no chat sample is one token long), so that trailing run is padding.
    """
    if "attention_mask" in inputs:
        return int(inputs["attention_mask"].sum())
    ids = inputs["input_ids"]
    if "position_ids" not in inputs or ids.shape[0] != 1:
        return int(ids.numel())
    pos, row = inputs["position_ids"][0].tolist(), ids[0].tolist()
    n = len(row)
    while n > 0 and pos[n - 1] == 0 and row[n - 1] == pad_token_id:
        n -= 1
    return n


# -- children -----------------------------------------------------------------------------------
def child_main(name: str, spec_path: str) -> None:
    """Entry of `sft_vs_trl.py --child NAME --spec FILE`: run, then write the result json."""
    spec = json.loads(Path(spec_path).read_text(encoding="utf-8"))
    import torch

    torch.set_num_threads(spec["threads"])
    runner = {"lmtune": run_lmtune, "trl-defaults": run_trl, "trl-tuned": run_trl, "eval": run_eval}[name]
    try:
        result = runner(spec)
    except Exception as err:  # the error is this run's result; the benchmark goes on
        traceback.print_exc()
        result = {"error": f"{type(err).__name__}: {err}"}
    import resource

    result["peak_rss_kib_self"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    Path(spec["result"]).write_text(json.dumps(result, indent=2), encoding="utf-8")


def run_lmtune(spec: dict[str, Any]) -> dict[str, Any]:
    """lmtune's own runner on the config the parent wrote.

    Speed is timed by the same step clock as TRL's (added to the callbacks lmtune's Session gives
    its Trainer), so both tools are measured over the same window; lmtune's own `speed` report from
    summary.json is kept beside it (`own_speed`), and used when the clock could not be attached.
    """
    from lmtune.config.loader import load_config
    from lmtune.run.layout import RunDir
    from lmtune.train import session
    from lmtune.train.runner import train

    callback, clock = step_clock(count_from_state=True)
    own_callbacks = getattr(session.Session, "callbacks", None)
    if own_callbacks is not None:

        def callbacks_with_clock(self: Any, *args: Any, **kwargs: Any) -> list[Any]:
            return [*own_callbacks(self, *args, **kwargs), callback]

        session.Session.callbacks = callbacks_with_clock  # type: ignore[method-assign]
    cfg = load_config(spec["config"], spec["overrides"])
    run_dir = train(cfg).run_dir
    t_end = time.time()
    summary = json.loads((Path(run_dir) / "summary.json").read_text(encoding="utf-8"))
    speed = summary.get("speed") or {}
    tokens, seconds = summary.get("tokens_seen"), summary.get("train_seconds")
    if clock["ends"]:
        numbers = clock_numbers(clock) | {"timed_by": "harness"}
    else:  # no clock attached: lmtune's own report, or tokens_seen / train_seconds without one
        steady = speed.get("steady_tokens_per_second")
        numbers = {
            "real_tokens": speed.get("real_tokens", tokens),
            "tokens_per_second": speed.get("tokens_per_second") or (tokens / seconds if seconds else None),
            "steady_tokens_per_second": steady,
            "steady": steady is not None,
            "timed_by": "lmtune summary" if speed else "lmtune summary (tokens_seen / train_seconds)",
        }
    return {
        "t_end": t_end,
        "adapter": str(run_dir),
        "steps": summary.get("steps"),
        **numbers,
        "train_seconds": seconds,
        "train_loss": (summary.get("train_loss") or {}).get("last"),
        "own_eval_loss": summary.get("eval_loss"),
        "own_speed": speed,
        "settings": {"bf16": json.loads(RunDir(Path(run_dir)).marker.read_text(encoding="utf-8"))["bf16"]},
    }


def run_trl(spec: dict[str, Any]) -> dict[str, Any]:
    """TRL's SFTTrainer + PEFT LoRA: its defaults, or the tuned settings, on the same records.

    It does the same work as lmtune's run inside the end-to-end time: load, tokenise the training
    and held-out records, held-out loss before and after training, train one epoch, save the adapter.
    """
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTConfig, SFTTrainer

    def prompt_completion(path: str) -> Any:
        rows = [{"prompt": m[:-1], "completion": m[-1:]} for m in read_conversations(path)]
        return Dataset.from_list(rows)

    callback, clock = step_clock(count_from_state=False)

    class CountingSFTTrainer(SFTTrainer):
        """SFTTrainer that counts the non-padding tokens of every batch it trains on (nothing else)."""

        def training_step(self, model, inputs, num_items_in_batch=None):
            clock["pending"] += count_real_tokens(inputs, self._tokenizer.pad_token_id)
            return super().training_step(model, inputs, num_items_in_batch)

    fixed = {
        "output_dir": spec["out_dir"],
        "per_device_train_batch_size": spec["batch_size"],
        "num_train_epochs": 1,
        "max_length": spec["max_length"],
        "seed": spec["seed"],
        "learning_rate": LEARNING_RATE,
        "logging_steps": LOG_STEPS,
        "logging_first_step": True,
        "report_to": "none",
    }
    if not torch.cuda.is_available():  # transformers refuses bf16 (TRL's default) on CPU without use_cpu
        fixed["use_cpu"] = True
    if spec["mode"] == "tuned":  # packing bfd turns on padding-free (position_ids per sample) in TRL 1.16
        # bf16 only where the CPU multiplies bf16 natively (AVX512-BF16 / AMX): emulated bf16 on an
        # AVX2-only CPU is several times slower than float32, and no TRL user would choose it there.
        fixed |= {"bf16": spec["native_bf16"], "gradient_checkpointing": False, "packing": True}
        fixed["packing_strategy"] = "bfd"
    args = SFTConfig(**fixed)
    peft_config = LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=LORA["dropout"],
        target_modules=LORA["target_modules"],
        task_type="CAUSAL_LM",
    )
    trainer = CountingSFTTrainer(
        model=spec["model"],
        args=args,
        train_dataset=prompt_completion(spec["train"]),
        eval_dataset=prompt_completion(spec["val"]),
        peft_config=peft_config,
        callbacks=[callback],
    )
    before = trainer.evaluate()["eval_loss"]
    output = trainer.train()
    after = trainer.evaluate()["eval_loss"]
    trainer.save_model(spec["adapter"])
    t_end = time.time()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "t_end": t_end,
        "adapter": spec["adapter"],
        "steps": output.global_step,
        **clock_numbers(clock),
        "timed_by": "harness",
        "train_seconds": output.metrics.get("train_runtime"),
        "train_loss": losses[-1] if losses else output.training_loss,
        "own_eval_loss": {"before": before, "after": after},
        "settings": {
            "bf16": args.bf16,
            "gradient_checkpointing": args.gradient_checkpointing,
            "packing": args.packing,
            "packing_strategy": args.packing_strategy if args.packing else None,
            "padding_free": trainer.padding_free,
        },
    }


def run_eval(spec: dict[str, Any]) -> dict[str, Any]:
    """The held-out loss of the base model and of every trained adapter; also what MFU and the
    token cross-check need: the base model's parameter count and the real tokens of the training set."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    held_out = read_conversations(spec["val"])
    samples = [answer_tokens(tokenizer, m, spec["max_length"]) for m in read_conversations(spec["train"])]

    def base() -> Any:
        return AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)

    model = base()
    result: dict[str, Any] = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "matmul_parameters": matmul_parameters(model),
        "train_real_tokens": sum(len(ids) for ids, _ in samples),
        # a sample whose prompt fills max_length has nothing to train on; a tool may drop it
        "train_real_tokens_with_answer": sum(len(ids) for ids, start in samples if 0 < start < len(ids)),
        "losses": {"base": held_out_loss(model, tokenizer, held_out, spec["max_length"])},
    }
    for name, adapter in spec["adapters"].items():
        try:
            tuned = PeftModel.from_pretrained(base(), adapter)
            result["losses"][name] = held_out_loss(tuned, tokenizer, held_out, spec["max_length"])
        except Exception as err:  # one unreadable adapter leaves the others' losses standing
            traceback.print_exc()
            result["losses"][name] = {"loss": None, "error": f"{type(err).__name__}: {err}"}
    return result


def matmul_parameters(model: Any) -> int:
    """Parameters that multiply activations: all of them but an input embedding table, which is a
    lookup, unless the output head shares it (SmolLM2 does, so there it counts once, as the head)."""
    total = sum(p.numel() for p in model.parameters())
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    tied = head is not None and head.weight.data_ptr() == embed.weight.data_ptr()
    return total if tied else total - embed.weight.numel()


def child_env(threads: int) -> dict[str, str]:
    """The environment of every child: offline, and the same thread count for all of them."""
    env = dict(os.environ)
    env |= {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    return env
