"""task: preference — DPO family (sigmoid, ipo, hinge), ORPO, SimPO, CPO and KTO through TRL.

On top of the shared Session steps: the records go to TRL in its conversational format
(prompt/chosen/rejected message lists, or prompt/completion/label for KTO), so TRL renders them
with the model's own chat template. Before that, each prompt is measured with that template:
`preference.max_prompt_length` drops its oldest turns (then cuts its oldest text from the left),
and a prompt that leaves no room for an answer within `data.max_length` becomes a reject (TRL
would drop it silently). Reward accuracy/margin and chosen/rejected log-probs on the validation
split are measured before and after training.

The reference model of the DPO losses and KTO: with a PEFT method (LoRA, ...) TRL keeps a frozen
copy of the starting adapter under the name "ref" (the base itself when the adapter is fresh, the
previous run's adapter when `model.name` is a run directory); no second model is loaded. Other
methods (full, freeze, bitfit, adapter) get a frozen copy of the starting model. ORPO, SimPO and
CPO need no reference.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from lmtune.config.schema import RunConfig
from lmtune.data.preference import KtoExample, PreferencePair, pairs_to_kto
from lmtune.data.records import Reject
from lmtune.errors import ConfigError, DataError
from lmtune.train.session import RunResult, Session

REFERENCE_LOSSES = ("sigmoid", "ipo", "hinge", "kto")  # the ones scored against a reference model
LENGTH_REASONS = ("prompt_too_long", "template_error")
# summary["metrics"] name -> the key TRL logs on evaluation (eval_ prefixed).
EVAL_METRICS = {
    "reward_accuracy": "eval_rewards/accuracies",
    "reward_margin": "eval_rewards/margins",
    "chosen_logps": "eval_logps/chosen",
    "rejected_logps": "eval_logps/rejected",
}


def run(cfg: RunConfig, *, resume: bool = False, console: Any = None) -> RunResult:
    from lmtune.tokenize.templates import apply_template_choice

    check_options(cfg)
    s = Session(cfg, resume=resume, console=console)
    data = s.load_data()
    train, val = match_records(data.train, cfg.preference.loss), match_records(data.val, cfg.preference.loss)

    tokenizer = s.load_tokenizer()
    template = apply_template_choice(tokenizer, cfg.data.template)
    fit = {
        "tokenizer": tokenizer,
        "max_length": cfg.data.max_length,
        "max_prompt": cfg.preference.max_prompt_length,
        "system_merge": cfg.data.system_merge,
    }
    train, train_info, train_rej = fit_lengths(train, **fit)
    val, val_info, val_rej = fit_lengths(val, **fit)
    rejects = data.rejects + train_rej + val_rej
    info = {**data.info, "loss": cfg.preference.loss, "train": train_info, "validation": val_info}
    info["template"] = template
    s.finish_data(info, rejects, trainable=len(train), stage_reasons=LENGTH_REASONS)
    kind = "KTO examples" if cfg.preference.loss == "kto" else "pairs"
    s.console.print(
        f"{len(train)} training {kind}, {len(val)} validation {kind}"
        + (f"; {train_info['truncated']} answers cut at data.max_length" if train_info["truncated"] else "")
    )

    model = s.load_model()
    before_checks = s.evaluation(model, tokenizer, when="before")
    model = s.prepare(model)

    trainer = build_trainer(s, model, tokenizer, to_dataset(train), to_dataset(val) if val else None)
    has_val = bool(val)
    before = trainer.evaluate() if has_val and not resume else {}
    output, seconds = s.train(trainer)
    after = trainer.evaluate() if has_val else {}

    drop_reference_adapter(model)
    s.save(model, tokenizer, template=template, preference_loss=cfg.preference.loss)
    after_checks = s.evaluation(model, tokenizer, when="after")
    summary = s.base_summary(output, trainer, seconds)
    summary["data"] = {"train_samples": len(train), "val_samples": len(val), "rejected": len(rejects)}
    summary["preference"] = cfg.preference.model_dump()
    summary["eval_loss"] = {"before": before.get("eval_loss"), "after": after.get("eval_loss")}
    summary["metrics"] = {
        name: {"before": before.get(key), "after": after.get(key)}
        for name, key in EVAL_METRICS.items()
        if key in before or key in after
    }
    summary["eval"] = s.evaluation_summary(before_checks, after_checks)
    return s.finish(summary, model)


# ---------------------------------------------------------------- options and records


def check_options(cfg: RunConfig) -> None:
    """Refuse option combinations TRL would ignore silently."""
    p = cfg.preference
    if p.label_smoothing and p.loss not in ("sigmoid", "simpo", "cpo"):
        raise ConfigError(
            f"preference.label_smoothing applies to the sigmoid, simpo and cpo losses, not {p.loss}. "
            "Remove it, or choose one of those losses."
        )
    if p.sft_weight and p.loss in ("orpo", "kto"):
        why = "ORPO's loss already includes the SFT term" if p.loss == "orpo" else "TRL's KTO has no SFT term"
        raise ConfigError(f"preference.sft_weight does not apply to loss {p.loss}: {why}. Remove it.")
    if p.loss == "kto" and cfg.train.batch_size < 2:
        raise ConfigError(
            "preference.loss: kto needs train.batch_size >= 2: its KL term pairs each prompt with another "
            "example's answer from the same batch. Set train.batch_size: 2 or more."
        )
    if p.loss != "kto" and (p.desirable_weight != 1.0 or p.undesirable_weight != 1.0):
        raise ConfigError("preference.desirable_weight / undesirable_weight apply to loss kto only.")


def match_records(records: list[Any], loss: str) -> list[Any]:
    """The records in the shape the loss trains on: pairs for the pairwise losses; KTO examples for
    kto (pairs are split into a desirable and an undesirable example, as TRL does)."""
    kto = [r for r in records if isinstance(r, KtoExample)]
    pairs = [r for r in records if isinstance(r, PreferencePair)]
    if kto and pairs:
        raise DataError(
            f"the training data mixes {len(pairs)} chosen/rejected pairs with {len(kto)} KTO records "
            f"(e.g. {kto[0].source} and {pairs[0].source}).",
            hint="train pairs and KTO records in separate runs; preference.loss: kto can use both only "
            "if the pairs are written as KTO records.",
        )
    if loss == "kto":
        return kto or pairs_to_kto(pairs)
    if kto:
        raise DataError(
            f"preference.loss {loss} trains on chosen/rejected pairs, but the data holds KTO records "
            f"(one answer with a true/false label, e.g. {kto[0].source}).",
            hint="set preference.loss: kto for this data, or give chosen/rejected pairs.",
        )
    return pairs


def fit_lengths(
    records: list[Any],
    *,
    tokenizer: Any,
    max_length: int,
    max_prompt: int | None,
    system_merge: str = "auto",
) -> tuple[list[Any], dict[str, Any], list[Reject]]:
    """Measure each record with the chat template; shorten prompts over `max_prompt` tokens; reject
    those that leave no room for the answer, and those the template raises on (template_error, with
    its message; a template that fails on every record is one DataError). A system message goes into
    the first user turn for a template without a system role (Gemma), as for SFT (data.system_merge).
    Returns (kept, stats, rejects)."""
    from lmtune.tokenize.dataset import percentiles, raise_if_template_fails_everywhere

    records = merge_system_prompts(records, tokenizer, system_merge)
    kept, rejects, lengths, truncated = [], [], [], 0
    failed: list[Any] = []
    for rec in records:
        try:
            fitted = _fit_one(rec, tokenizer, max_length, max_prompt)
        except Exception as err:  # noqa: BLE001 - anything the model's template raises is about this record
            from lmtune.tokenize.masking import template_error

            failed.append(template_error(err))
            rejects.append(_reject(rec, "template_error", str(failed[-1]), field="prompt"))
            continue
        if isinstance(fitted, Reject):
            rejects.append(fitted)
            continue
        rec, ns = fitted
        lengths += ns
        truncated += sum(n > max_length for n in ns)
        kept.append(rec)
    if failed and len(failed) == len(records):
        raise_if_template_fails_everywhere(records, failed)
    lengths.sort()
    stats = {
        "samples": len(kept),
        "rejected": len(rejects),
        "truncated": truncated,  # answers TRL cuts at data.max_length (the end is dropped)
        "tokens": sum(lengths),
        "length_percentiles": percentiles(lengths),
    }
    return kept, stats, rejects


def merge_system_prompts(records: list[Any], tokenizer: Any, system_merge: str) -> list[Any]:
    """Records whose prompt starts with a system message, rewritten for a template that has no system
    role: the system text opens the first user turn (SFT's data.system_merge: auto); `never` stops."""
    from lmtune.tokenize.templates import has_system_role, merge_system

    with_system = [
        r
        for r in records
        if len(r.prompt) > 1 and r.prompt[0].get("role") == "system" and r.prompt[1].get("role") == "user"
    ]
    if not with_system or has_system_role(tokenizer):
        return records
    if system_merge == "never":
        raise ConfigError(
            f"The chat template has no system role (it rejects or drops system messages) and the data has "
            f"system messages (e.g. {with_system[0].source}). Remove them, or set data.system_merge: auto to "
            "put the system text at the start of the first user turn."
        )
    out = []
    for r in records:
        if r in with_system:
            r = copy.copy(r)
            system, user = r.prompt[0], r.prompt[1]
            merged = {**user, "content": merge_system(system.get("content") or "", user.get("content") or "")}
            r.prompt = [merged, *r.prompt[2:]]
        out.append(r)
    return out


def _reject(rec: Any, reason: str, message: str, *, field: str) -> Reject:
    file, _, num = rec.source.rpartition("#")
    return Reject(
        file=file or rec.source,
        record=int(num) if num.isdigit() else None,
        line=None,
        field=field,
        reason=reason,
        message=message,
        raw=_raw(rec),
    )


def _fit_one(
    rec: Any, tokenizer: Any, max_length: int, max_prompt: int | None
) -> Reject | tuple[Any, list[int]]:
    """One record measured: a prompt_too_long Reject, or (the record, its answers' token counts)."""
    prompt = rec.prompt
    n_prompt = _count(tokenizer, prompt, rec.tools, generation=True)
    if max_prompt is not None and n_prompt > max_prompt:
        prompt = shorten_prompt(prompt, tokenizer, max_prompt, rec.tools)
        n_prompt = _count(tokenizer, prompt, rec.tools, generation=True) if prompt else n_prompt
    if prompt is None or n_prompt >= max_length:
        limit = (
            f"preference.max_prompt_length ({max_prompt})"
            if prompt is None
            else f"data.max_length ({max_length})"
        )
        return _reject(
            rec,
            "prompt_too_long",
            f"the prompt alone is {n_prompt} tokens with the chat template, which leaves no room for the "
            f"answer within {limit}. Fix: raise data.max_length, or set preference.max_prompt_length to "
            "shorten long prompts.",
            field="prompt",
        )
    if prompt is not rec.prompt:
        rec = copy.copy(rec)
        rec.prompt = prompt
    answers = [rec.chosen, rec.rejected] if isinstance(rec, PreferencePair) else [rec.completion]
    return rec, [_count(tokenizer, prompt + answer, rec.tools) for answer in answers]


def shorten_prompt(prompt: list[dict[str, Any]], tokenizer: Any, limit: int, tools: Any) -> list[dict] | None:
    """`prompt` within `limit` tokens: oldest turns dropped first (the system prompt stays), then the
    oldest remaining text cut from the left; None when even that cannot fit."""
    msgs = [dict(m) for m in prompt]
    for _ in range(len(msgs) + 8):
        n = _count(tokenizer, msgs, tools, generation=True)
        if n <= limit:
            return msgs
        first = next(i for i, m in enumerate(msgs) if m["role"] != "system")
        rest = msgs[first + 1 :]
        if any(m["role"] == "user" for m in rest):
            # drop the oldest turn, and any assistant/tool turns left before the next user turn
            del msgs[first]
            while msgs[first]["role"] != "user":
                del msgs[first]
            continue
        ids = tokenizer(msgs[first]["content"], add_special_tokens=False)["input_ids"]
        keep = len(ids) - (n - limit) - 1  # one spare token: the cut may re-merge differently
        if keep <= 0:
            return None
        msgs[first]["content"] = tokenizer.decode(ids[-keep:])
    return None


def _count(tokenizer: Any, messages: list[dict[str, Any]], tools: Any, *, generation: bool = False) -> int:
    out = tokenizer.apply_chat_template(
        messages, tools=tools, add_generation_prompt=generation, tokenize=True, return_dict=True
    )
    return len(out["input_ids"])


def _raw(rec: Any) -> dict[str, Any]:
    if isinstance(rec, PreferencePair):
        return {"prompt": rec.prompt, "chosen": rec.chosen, "rejected": rec.rejected}
    return {"prompt": rec.prompt, "completion": rec.completion, "label": rec.label}


def to_dataset(records: list[Any]) -> Any:
    """A `datasets.Dataset` in TRL's conversational format (tools as a JSON string, when any)."""
    import json

    from datasets import Dataset

    rows: list[dict[str, Any]] = []
    for r in records:
        if isinstance(r, PreferencePair):
            row: dict[str, Any] = {"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected}
        else:
            row = {"prompt": r.prompt, "completion": r.completion, "label": r.label}
        rows.append(row)
    if any(r.tools for r in records):
        for row, r in zip(rows, records):
            row["tools"] = json.dumps(r.tools) if r.tools else None
    return Dataset.from_list(rows)


# ---------------------------------------------------------------- trainer


def build_trainer(s: Session, model: Any, tokenizer: Any, train_ds: Any, val_ds: Any) -> Any:
    """The TRL trainer for the configured loss, with our callbacks, arguments and optimizer."""
    from lmtune.train.checkpoints import atomic
    from lmtune.train.optim import build_optimizer

    cfg, p = s.cfg, s.cfg.preference
    has_val = val_ds is not None
    common: dict[str, Any] = {"beta": p.beta, "max_length": cfg.data.max_length}
    ref_model = reference_copy(model) if p.loss in REFERENCE_LOSSES else None
    if p.loss in ("sigmoid", "ipo", "hinge"):
        from trl import DPOConfig as Args
        from trl import DPOTrainer as Trainer

        losses, weights = dpo_loss_terms(p.loss, p.label_smoothing, p.sft_weight)
        extra: dict[str, Any] = {
            "loss_type": losses,
            "loss_weights": weights,
            "label_smoothing": p.label_smoothing,
        }
    elif p.loss == "kto":
        from trl import KTOConfig as Args
        from trl import KTOTrainer as Trainer

        extra = {"desirable_weight": p.desirable_weight, "undesirable_weight": p.undesirable_weight}
        if cfg.data.shuffle:  # TRL's KTO reads in order (its KL term is built per batch): shuffle up front
            train_ds = train_ds.shuffle(seed=cfg.data.seed)
    elif p.loss == "orpo":
        from trl.experimental.orpo import ORPOConfig as Args
        from trl.experimental.orpo import ORPOTrainer as Trainer

        extra = {}
    else:  # simpo, cpo
        from trl.experimental.cpo import CPOConfig as Args
        from trl.experimental.cpo import CPOTrainer as Trainer

        # CPO is the preference term plus an NLL term on the chosen answers (weight cpo_alpha, TRL's
        # default 1.0, which sft_weight 0 keeps); SimPO has none unless sft_weight asks for it.
        alpha = p.sft_weight if (p.sft_weight or p.loss == "simpo") else 1.0
        extra = {"loss_type": "simpo" if p.loss == "simpo" else "sigmoid", "cpo_alpha": alpha}
        extra.update(label_smoothing=p.label_smoothing, simpo_gamma=p.simpo_gamma)
    args = s.training_args(has_val=has_val, args_class=Args, **common, **extra)
    if p.loss == "kto":
        args.train_sampling_strategy = "sequential"
    if p.loss in ("orpo", "simpo", "cpo"):
        # their batches hold chosen_input_ids/rejected_input_ids, not the input_ids the Trainer counts
        args.include_num_input_tokens_seen = "no"
    kwargs: dict[str, Any] = {"ref_model": ref_model} if p.loss in REFERENCE_LOSSES else {}
    with _quiet_datasets():  # TRL tokenises through datasets.map, which draws a bar per pass
        trainer = atomic(Trainer)(
            model=model,
            args=args,
            train_dataset=train_ds,
            eval_dataset=val_ds,
            processing_class=tokenizer,
            callbacks=s.callbacks(),
            optimizers=(build_optimizer(model, cfg), None),
            **kwargs,
        )
    return s.quiet(trainer)


@contextmanager
def _quiet_datasets() -> Iterator[None]:
    import datasets

    was_on = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if was_on:
            datasets.enable_progress_bars()


def dpo_loss_terms(loss: str, label_smoothing: float, sft_weight: float) -> tuple[list[str], list[float]]:
    """TRL loss_type / loss_weights for a DPO loss, with label smoothing and an SFT term.

    Label smoothing is conservative DPO (cDPO): -(1-e) logsig(bD) - e logsig(-bD), which TRL 1.16's
    sigmoid loss no longer applies. Since logsig(-x) = logsig(x) - x, cDPO = sigmoid + e*bD and TRL's
    "robust" = sigmoid - e/(1-2e)*bD, so cDPO = (2-2e)*sigmoid - (1-2e)*robust exactly.
    """
    terms, weights = [loss], [1.0]
    if label_smoothing:
        e = label_smoothing
        terms, weights = ["sigmoid", "robust"], [2 - 2 * e, -(1 - 2 * e)]
    if sft_weight:
        terms.append("sft")
        weights.append(sft_weight)
    return terms, weights


def reference_copy(model: Any) -> Any:
    """A frozen copy of the starting model for methods PEFT does not wrap; None for PEFT models,
    whose reference TRL takes from the adapter (see the module docstring)."""
    from peft import PeftModel

    if isinstance(model, PeftModel):
        return None
    ref = copy.deepcopy(model)
    ref.requires_grad_(False)
    return ref.eval()


def drop_reference_adapter(model: Any) -> None:
    """TRL's frozen "ref" adapter is a training aid: keep it out of the run directory."""
    config = getattr(model, "peft_config", None)
    if isinstance(config, dict) and "ref" in config and len(config) > 1:
        model.delete_adapter("ref")
