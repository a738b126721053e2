"""task: preference on a tiny random Llama: every loss trains and logs its metrics, the DPO
margin matches an independent log-prob computation, the reference is no second model under LoRA,
and the saved run reloads to the same logits."""

from __future__ import annotations

import io
import json

import pytest
import torch
import torch.nn.functional as F
from rich.console import Console
from tests.train.support import write_sum_pairs

from lmtune.config.loader import validate_config
from lmtune.data.preference import KtoExample, PreferencePair
from lmtune.errors import ConfigError, DataError
from lmtune.run.load import load_target
from lmtune.train.preference import dpo_loss_terms, fit_lengths, match_records
from lmtune.train.runner import train

PAIR_METRICS = ("rewards/accuracies", "rewards/margins", "logps/chosen", "logps/rejected")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    """8 short pairs: the right sum is chosen, a wrong one rejected."""
    return write_sum_pairs(tmp_path_factory.mktemp("pairs") / "pairs.jsonl", 8)


def config(
    model_dir, data, out, *, loss="sigmoid", method="lora", preference=None, data_extra=None, **train_opts
):
    return validate_config(
        {
            "task": "preference",
            "model": {"name": str(model_dir)},
            "data": {"path": str(data), "max_length": 64, **(data_extra or {})},
            "method": {"name": "lora", "r": 8} if method == "lora" else {"name": method},
            "preference": {"loss": loss, **(preference or {})},
            "train": {
                "max_steps": 4,
                "lr": 1e-2,
                "batch_size": 4,
                "log_steps": 1,
                "bf16": False,
                **train_opts,
            },
            "output": {"dir": str(out)},
        }
    )


def quiet() -> Console:
    return Console(file=io.StringIO(), width=200)


def rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "hinge", "orpo", "simpo", "cpo", "kto"])
def test_each_loss_trains_and_logs_its_metrics(tiny_model_dir, pairs_file, tmp_path, loss):
    # KTO's batch margins compare different examples step to step: judge it on a fixed set instead
    extra = {"val_path": str(pairs_file)} if loss == "kto" else None
    result = train(
        config(tiny_model_dir, pairs_file, tmp_path / loss, loss=loss, data_extra=extra), console=quiet()
    )
    train_rows = [r for r in rows(result.run_dir) if "loss" in r]
    assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
    keys = PAIR_METRICS if loss != "kto" else PAIR_METRICS[1:]  # KTO has no pairs to rank
    assert all(k in r for r in train_rows for k in keys)
    first, last = train_rows[0], train_rows[-1]
    if loss == "kto":
        margin = result.summary["metrics"]["reward_margin"]
        assert margin["before"] == pytest.approx(0.0, abs=1e-6) and margin["after"] > 0.1
        assert "reward_accuracy" not in result.summary["metrics"]
    elif loss in ("sigmoid", "ipo", "hinge"):
        # the policy starts equal to its reference: margin 0, then the trained policy separates them
        assert first["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
        assert last["rewards/margins"] > 0.1
    else:  # reference-free: rewards are the policy's own (average) log-probs
        assert last["loss"] < first["loss"] or last["rewards/margins"] > first["rewards/margins"]
    marker = json.loads((result.run_dir / "lmtune_run.json").read_text())
    assert marker["task"] == "preference" and marker["preference_loss"] == loss
    assert not (result.run_dir / "ref").exists()  # TRL's reference adapter is not saved


def answer_logp(model, tokenizer, prompt, answer) -> float:
    """Sum of the answer tokens' log-probs, the answer starting where prompt and prompt+answer part."""
    p_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
    ids = tokenizer.apply_chat_template(prompt + answer, tokenize=True, return_dict=True)["input_ids"]
    start = next(i for i, (a, b) in enumerate(zip(p_ids["input_ids"] + [None], ids)) if a != b)
    with torch.no_grad():
        logps = F.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), dim=-1)
    return sum(logps[t - 1, ids[t]].item() for t in range(start, len(ids)))


def test_dpo_margin_matches_an_independent_computation_and_reloads(tiny_model_dir, pairs_file, tmp_path):
    cfg = config(tiny_model_dir, pairs_file, tmp_path / "dpo", data_extra={"val_path": str(pairs_file)})
    result = train(cfg, console=quiet())
    m = result.summary["metrics"]
    assert m["reward_accuracy"]["before"] == 0.0 and m["reward_margin"]["before"] == pytest.approx(
        0, abs=1e-6
    )
    loaded = load_target(str(result.run_dir), quiet=True)
    model, tok = result.model.eval(), loaded.tokenizer
    margins, logps = [], []
    for line in pairs_file.read_text().splitlines():
        r = json.loads(line)
        prompt = [{"role": "user", "content": r["prompt"]}]
        answers = [[{"role": "assistant", "content": r[k]}] for k in ("chosen", "rejected")]
        policy = [answer_logp(model, tok, prompt, a) for a in answers]
        with model.disable_adapter():  # a fresh LoRA's reference is the base
            ref = [answer_logp(model, tok, prompt, a) for a in answers]
        margins.append(0.1 * ((policy[0] - ref[0]) - (policy[1] - ref[1])))
        logps.append(policy[0])
    assert m["reward_margin"]["after"] == pytest.approx(sum(margins) / len(margins), rel=1e-3, abs=1e-4)
    assert m["chosen_logps"]["after"] == pytest.approx(sum(logps) / len(logps), rel=1e-3)
    assert m["reward_accuracy"]["after"] == sum(x > 0 for x in margins) / len(margins) > 0.5
    ids = tok.apply_chat_template(
        [{"role": "user", "content": "What is 2 plus 4?"}], add_generation_prompt=True, return_tensors="pt",
        return_dict=True,
    )  # fmt: skip
    with torch.no_grad():
        assert torch.equal(model(**ids).logits, loaded.model(**ids).logits)
    assert loaded.run["task"] == "preference"


def test_reference_is_an_adapter_copy_under_lora_and_a_frozen_copy_for_full(
    tiny_model_dir, pairs_file, tmp_path
):
    from lmtune.train.preference import build_trainer, to_dataset
    from lmtune.train.session import Session

    pairs = match_records(
        [PreferencePair([{"role": "user", "content": "Q"}], [{"role": "assistant", "content": "A"}],
                        [{"role": "assistant", "content": "B"}], source="x#1")] * 4, "sigmoid")  # fmt: skip
    for method in ("lora", "full"):
        s = Session(config(tiny_model_dir, pairs_file, tmp_path / method, method=method), console=quiet())
        model = s.prepare(s.load_model())
        base_numel = sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n)
        trainer = build_trainer(s, model, s.load_tokenizer(), to_dataset(pairs), None)
        if method == "lora":
            assert trainer.ref_model is None and set(model.peft_config) == {"default", "ref"}
            params = dict(model.named_parameters())
            refs = [n for n in params if ".ref." in n]
            assert refs and all(not params[n].requires_grad for n in refs)
            assert all(torch.equal(params[n], params[n.replace(".ref.", ".default.")]) for n in refs)
            # every non-adapter weight exists once: no second model was built
            assert sum(p.numel() for n, p in model.named_parameters() if "lora_" not in n) == base_numel
        else:
            ref = trainer.ref_model
            assert ref is not None and ref is not model and not any(p.requires_grad for p in ref.parameters())
            pairs_ = zip(model.state_dict().items(), ref.state_dict().items())
            assert all(torch.equal(a, b) and a.data_ptr() != b.data_ptr() for (_, a), (_, b) in pairs_)


def test_full_finetuning_with_sigmoid(tiny_model_dir, pairs_file, tmp_path):
    result = train(
        config(tiny_model_dir, pairs_file, tmp_path / "full", method="full", lr=1e-3), console=quiet()
    )
    train_rows = [r for r in rows(result.run_dir) if "loss" in r]
    assert (
        train_rows[0]["rewards/margins"] == pytest.approx(0, abs=1e-6)
        and train_rows[-1]["rewards/margins"] > 0
    )
    assert (result.run_dir / "model.safetensors").is_file()
    loaded = load_target(str(result.run_dir), quiet=True)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.equal(result.model.eval()(ids).logits, loaded.model(ids).logits)


# ---------------------------------------------------------------- options, records, lengths


def test_cdpo_label_smoothing_is_exact():
    """(2-2e)*sigmoid - (1-2e)*robust, TRL's terms, equals conservative DPO's loss."""
    e, beta = 0.2, 0.1
    terms, weights = dpo_loss_terms("sigmoid", e, 0.5)
    assert terms == ["sigmoid", "robust", "sft"] and weights[2] == 0.5
    delta = torch.linspace(-30, 30, 13)
    trl = {
        "sigmoid": -F.logsigmoid(beta * delta),
        "robust": (-(1 - e) * F.logsigmoid(beta * delta) + e * F.logsigmoid(-beta * delta)) / (1 - 2 * e),
    }
    combined = weights[0] * trl["sigmoid"] + weights[1] * trl["robust"]
    cdpo = -(1 - e) * F.logsigmoid(beta * delta) - e * F.logsigmoid(-beta * delta)
    assert torch.allclose(combined, cdpo, atol=1e-6)


@pytest.mark.parametrize(
    ("preference", "train_opts", "match"),
    [
        ({"loss": "ipo", "label_smoothing": 0.1}, {}, "label_smoothing applies"),
        ({"loss": "orpo", "sft_weight": 0.5}, {}, "already includes the SFT term"),
        ({"loss": "kto"}, {"batch_size": 1}, "batch_size >= 2"),
        ({"loss": "sigmoid", "desirable_weight": 2.0}, {}, "kto only"),
    ],
)
def test_inapplicable_options_are_config_errors(
    tiny_model_dir, pairs_file, tmp_path, preference, train_opts, match
):
    cfg = config(tiny_model_dir, pairs_file, tmp_path / "x", preference=preference, **train_opts)
    with pytest.raises(ConfigError, match=match):
        train(cfg, console=quiet())


def test_match_records_pairs_kto_and_mixtures():
    prompt, a, b = [{"role": "user", "content": "Q"}], [{"role": "assistant", "content": "A"}], [
        {"role": "assistant", "content": "B"}]  # fmt: skip
    pair, kto = PreferencePair(prompt, a, b, source="p#1"), KtoExample(prompt, a, True, source="k#1")
    assert [(x.completion, x.label) for x in match_records([pair], "kto")] == [(a, True), (b, False)]
    assert match_records([kto], "kto") == [kto]
    with pytest.raises(DataError, match="set preference.loss: kto"):
        match_records([kto], "sigmoid")
    with pytest.raises(DataError, match="mixes 1 chosen/rejected pairs with 1 KTO"):
        match_records([pair, kto], "sigmoid")


def test_long_prompts_are_shortened_or_rejected(smollm2_tokenizer):
    tok = smollm2_tokenizer
    system = {"role": "system", "content": "Be brief."}
    old = [{"role": "user", "content": "word " * 40}, {"role": "assistant", "content": "ok " * 40}]
    last = {"role": "user", "content": "What is 2 plus 2?"}
    rec = PreferencePair([system, *old, last], [{"role": "assistant", "content": "4"}],
                         [{"role": "assistant", "content": "5"}], source="f.jsonl#3")  # fmt: skip

    def count(msgs):
        return len(
            tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True, return_dict=True)[
                "input_ids"
            ]
        )

    short = count([system, last])
    kept, stats, rejects = fit_lengths([rec], tokenizer=tok, max_length=512, max_prompt=short + 5)
    assert (
        kept[0].prompt == [system, last] and rec.prompt[1] == old[0]
    )  # oldest turns dropped, record untouched
    kept, _, _ = fit_lengths([rec], tokenizer=tok, max_length=512, max_prompt=short - 3)
    cut = kept[0].prompt
    assert cut[0] == system and len(cut) == 2 and count(cut) <= short - 3 and "2?" in cut[1]["content"]
    kept, stats, rejects = fit_lengths([rec], tokenizer=tok, max_length=count(rec.prompt), max_prompt=None)
    assert not kept and stats["rejected"] == 1
    (r,) = rejects
    assert (r.file, r.record, r.field, r.reason) == ("f.jsonl", 3, "prompt", "prompt_too_long")
    kept, stats, _ = fit_lengths([rec], tokenizer=tok, max_length=count(rec.prompt) + 2, max_prompt=None)
    assert stats["truncated"] == 2  # both answers are cut at max_length by TRL; counted, not hidden
