"""`lmtune eval` end to end on tiny models: the JSON and report, every number recomputed from the
written predictions, a baseline on a different model, determinism, labelled data on a generative
model and on a classification run."""

from __future__ import annotations

import json

import pytest
import sacrebleu
from tests.classification_helpers import cls_config, save_tiny_bert, sentiment_rows, write_jsonl

from lmtune.errors import ConfigError
from lmtune.eval import metrics as m
from lmtune.eval.evaluate import EvalOptions
from lmtune.eval.runner import EvalRequest, run_eval
from lmtune.infer.generate import GenerationOptions, generate_replies
from lmtune.run.load import load_target

CHECKS = [
    {"prompt": "What is 2 plus 3?", "reference": "2 plus 3 is 5.", "contains": ["5"]},
    {"prompt": "Who are you?", "reference": "I am Quill.", "contains": ["Quill"]},
    {"prompt": "Say hi", "reference": "Hi!"},
    {"prompt": "说一句中文", "reference": "我爱北京天安门。"},
]


def options(**generation) -> EvalOptions:
    return EvalOptions(generation=GenerationOptions(max_new_tokens=12, **{"seed": 0, **generation}))


@pytest.fixture(scope="module")
def checks_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("eval_data") / "checks.jsonl", CHECKS)


@pytest.fixture(scope="module")
def compared(tiny_model_dir, tiny_qwen2_dir, checks_file, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval_out")
    req = EvalRequest(
        str(tiny_model_dir), str(checks_file), baseline=str(tiny_qwen2_dir), options=options(),
        out_dir=str(out), formats=("md", "html"),
    )  # fmt: skip
    return run_eval(req), out


def test_outputs_written(compared):
    outcome, out = compared
    names = sorted(p.name for p in out.iterdir())
    assert names == ["checks.html", "checks.json", "checks.md"]
    assert json.loads((out / "checks.json").read_text()) == json.loads(json.dumps(outcome.doc))
    md = (out / "checks.md").read_text()
    assert "| metric | target | baseline | delta |" in md and "Biggest" in md


def test_predictions_are_the_greedy_replies(compared, tiny_model_dir):
    doc = compared[0].doc
    loaded = load_target(str(tiny_model_dir), quiet=True)
    convs = [[{"role": "user", "content": c["prompt"]}] for c in CHECKS]
    one_by_one = [
        generate_replies(loaded.model, loaded.tokenizer, [c], GenerationOptions(max_new_tokens=12))[0]
        for c in convs
    ]
    assert [p["prediction"] for p in doc["target"]["predictions"]] == one_by_one
    assert any(one_by_one)  # the tiny model does write text, so the scores below mean something


def test_metrics_recomputed_from_predictions(compared):
    doc = compared[0].doc
    for role in ("target", "baseline"):
        result = doc[role]
        preds = [p["prediction"] for p in result["predictions"]]
        refs = [c["reference"] for c in CHECKS]
        got = result["metrics"]
        assert got["exact_match"] == pytest.approx(sum(m.exact_match(p, r) for p, r in zip(preds, refs)) / 4)
        assert got["contains"] == pytest.approx(
            sum(m.contains(p, c["contains"]) for p, c in zip(preds, CHECKS[:2])) / 2
        )
        # BLEU with Chinese among the references is scored per character (sacrebleu's zh tokenizer).
        assert got["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, [refs], tokenize="zh").score)
        assert got["rougeL"] == pytest.approx(
            sum(m.sentence_rouge(p, r)["rougeL"] for p, r in zip(preds, refs)) / 4
        )
        assert got["generated_tokens"] == sum(p["tokens"] for p in result["predictions"]) > 0
        assert got["tokens_per_second"] == pytest.approx(
            got["generated_tokens"] / got["generation_seconds"], rel=1e-2
        )
        assert got["loss"] > 0 and got["perplexity"] == pytest.approx(2.718281828 ** got["loss"], rel=1e-6)


def test_comparison_with_baseline(compared):
    doc = compared[0].doc
    deltas = doc["comparison"]["metrics"]
    for key, d in deltas.items():
        assert d["delta"] == pytest.approx(doc["target"]["metrics"][key] - doc["baseline"]["metrics"][key])
    assert deltas["loss"]["better"] == ("target" if deltas["loss"]["delta"] < 0 else "baseline")
    r = doc["comparison"]["records"]
    assert r["wins"] + r["losses"] + r["ties"] == len(CHECKS)
    # Two random models differ in their per-record losses, so nothing ties.
    assert r["ties"] == 0 and len(doc["comparison"]["wins"]) == r["wins"]


def test_sampling_is_deterministic_for_a_seed(tiny_model_dir, checks_file, tmp_path):
    def run(seed):
        req = EvalRequest(
            str(tiny_model_dir), str(checks_file), options=options(temperature=1.0, seed=seed),
            out_dir=str(tmp_path / str(seed)),
        )  # fmt: skip
        return [p["prediction"] for p in run_eval(req).doc["target"]["predictions"]]

    first = run(3)
    assert run(3) == first
    assert run(4) != first


def test_labelled_data_on_a_generative_model(tiny_model_dir, tmp_path):
    rows = [
        {"text": f"review {k}", "label": lab} for k, lab in enumerate(["pos", "neg", "pos", "neg", "pos"])
    ]
    data = write_jsonl(tmp_path / "labelled.jsonl", rows)
    req = EvalRequest(str(tiny_model_dir), str(data), options=options(), out_dir=str(tmp_path / "out"))
    doc = run_eval(req).doc
    assert doc["data"]["labels"] == ["neg", "pos"]
    preds = [p["prediction"] for p in doc["target"]["predictions"]]
    mapped = [m.map_to_label(p, ["neg", "pos"]) for p in preds]
    correct = sum(x == r["label"] for x, r in zip(mapped, rows))
    assert doc["target"]["metrics"]["accuracy"] == pytest.approx(correct / len(rows))
    assert doc["target"]["metrics"]["unmapped"] == sum(x is None for x in mapped)
    assert set(doc["target"]["metrics"]) >= {"accuracy", "f1", "exact_match", "tokens_per_second"}


def test_classification_run_matches_predict(tmp_path):
    from lmtune.cli.predict_cmd import predict_file
    from lmtune.train.runner import train

    rows = sentiment_rows(40, seed=3)
    train_file, held_out = (
        write_jsonl(tmp_path / "train.jsonl", rows[:32]),
        write_jsonl(tmp_path / "held.jsonl", rows[32:]),
    )
    cfg = cls_config(
        save_tiny_bert(tmp_path / "bert"), train_file, None, tmp_path / "run", {"name": "lora", "r": 4}
    )
    run_dir = train(cfg).run_dir
    doc = run_eval(EvalRequest(str(run_dir), str(held_out), options=EvalOptions())).doc
    assert (run_dir / "eval" / "held.json").is_file()  # a run directory's results go inside it
    predicted = predict_file(run_dir, held_out, out=tmp_path / "p.jsonl")
    assert doc["target"]["metrics"]["accuracy"] == pytest.approx(predicted.metrics["accuracy"])
    assert doc["target"]["metrics"]["f1"] == pytest.approx(predicted.metrics["macro_f1"])
    assert [p["prediction"] for p in doc["target"]["predictions"]] == [r["label"] for r in predicted.rows]
    with pytest.raises(ConfigError, match="not bleu|scored with loss, accuracy and f1"):
        run_eval(EvalRequest(str(run_dir), str(held_out), options=EvalOptions(metrics=["bleu"])))


def test_metric_the_data_cannot_support(tiny_model_dir, checks_file, tmp_path):
    req = EvalRequest(
        str(tiny_model_dir),
        str(checks_file),
        options=EvalOptions(metrics=["accuracy"]),
        out_dir=str(tmp_path),
    )
    with pytest.raises(ConfigError, match="fixed label set"):
        run_eval(req)
    with pytest.raises(ConfigError, match="unknown metric"):
        run_eval(EvalRequest(str(tiny_model_dir), str(checks_file), options=EvalOptions(metrics=["blue"])))
    with pytest.raises(ConfigError, match="nothing to evaluate"):
        run_eval(EvalRequest(str(tiny_model_dir)))
