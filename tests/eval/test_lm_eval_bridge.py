"""lmtune's lm-eval bridge: lm-eval's accuracy against the same scores computed with torch directly.

The model is the tiny random Llama of tests/conftest.py (its large output head makes its answers
depend on the text), on the offline SST-2 example task and on YAMLs written here.
"""

from __future__ import annotations

import copy
import csv
import sys
from pathlib import Path

import pytest
import torch

from lmtune.errors import ConfigError, DataError
from lmtune.eval.lm_eval_bridge import flatten_results, run_lm_eval

pytest.importorskip("lm_eval")

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lm_eval" / "sst2_local.yaml"
CHOICES = ["negative", "positive"]
N = 16


def sst2_dev(shared_data: Path) -> list[dict[str, str]]:
    with (shared_data / "cls_sst2" / "dev.tsv").open(newline="") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def choice_logprob(model, tokenizer, context: str, continuation: str) -> float:
    """log P(continuation | context): both encoded together, the continuation is what follows the context's tokens."""
    whole = tokenizer(context + continuation).input_ids
    n_context = len(tokenizer(context).input_ids)
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), dim=-1)
    return sum(logprobs[i - 1, whole[i]].item() for i in range(n_context, len(whole)))


def predictions(model, tokenizer, rows: list[dict[str, str]]) -> list[int]:
    """The example task by hand: prompt, target_delimiter " " before each choice, the likelier choice wins."""
    preds = []
    for row in rows:
        context = f"Review: {row['content']}\nSentiment:"
        scores = [choice_logprob(model, tokenizer, context, " " + choice) for choice in CHOICES]
        preds.append(max(range(len(CHOICES)), key=scores.__getitem__))
    return preds


def accuracy(preds: list[int], rows: list[dict[str, str]]) -> float:
    return sum(p == int(r["label"]) for p, r in zip(preds, rows)) / len(rows)


@pytest.fixture(scope="module")
def model_and_tokenizer(tiny_model_and_tokenizer, one_torch_thread):
    return tiny_model_and_tokenizer


@pytest.fixture(scope="module")
def first_rows(shared_data) -> list[dict[str, str]]:
    return sst2_dev(shared_data)[:N]


@pytest.fixture(scope="module")
def base_preds(model_and_tokenizer, first_rows) -> list[int]:
    model, tokenizer = model_and_tokenizer
    return predictions(model.eval(), tokenizer, first_rows)


def test_example_accuracy_equals_direct_computation(
    model_and_tokenizer, first_rows, base_preds, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)  # data_files are found from the YAML's folder, not from here
    model, tokenizer = model_and_tokenizer
    assert 0 < sum(base_preds) < N, (
        "the tiny model should answer both ways, or any constant answer would pass"
    )
    out = run_lm_eval(model, tokenizer, [str(EXAMPLE)], limit=N, batch_size=4)
    expected = accuracy(base_preds, first_rows)
    assert set(out) == {"sst2_local"}
    got = out["sst2_local"]
    assert got["acc"] == pytest.approx(expected)
    assert got["acc_norm"] == pytest.approx(expected)  # both choices have 8 characters
    assert got["acc_stderr"] == pytest.approx((expected * (1 - expected) / (N - 1)) ** 0.5)


def test_peft_model_is_scored_with_its_adapter(model_and_tokenizer, first_rows, base_preds):
    from peft import LoraConfig, get_peft_model

    model, tokenizer = model_and_tokenizer
    torch.manual_seed(3)
    config = LoraConfig(r=8, lora_alpha=32, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(copy.deepcopy(model), config).eval()
    expected_preds = predictions(peft_model, tokenizer, first_rows)
    assert accuracy(expected_preds, first_rows) != accuracy(base_preds, first_rows), "the adapter must matter"
    out = run_lm_eval(peft_model, tokenizer, [str(EXAMPLE)], limit=N, batch_size=4)
    assert out["sst2_local"]["acc"] == pytest.approx(accuracy(expected_preds, first_rows))


def test_yaml_with_function_tag_and_relative_data_file(
    model_and_tokenizer, shared_data, tmp_path, monkeypatch
):
    """A `!function` (lm-eval imports it from next to the YAML) and a data file next to the YAML."""
    model, tokenizer = model_and_tokenizer
    rows = sst2_dev(shared_data)[:24]
    task_dir = tmp_path / "task"
    (task_dir / "data").mkdir(parents=True)
    lines = (shared_data / "cls_sst2" / "dev.tsv").read_text().splitlines(keepends=True)
    (task_dir / "data" / "few.tsv").write_text("".join(lines[: 1 + len(rows)]))  # header + the same rows
    (task_dir / "helpers.py").write_text(
        "def positives(dataset):\n    return dataset.filter(lambda doc: doc['label'] == 1)\n"
    )
    yaml_text = EXAMPLE.read_text().replace("../../../shared/data/cls_sst2/dev.tsv", "data/few.tsv")
    yaml_text = yaml_text.replace(
        "task: sst2_local", "task: sst2_positives\nprocess_docs: !function helpers.positives"
    )
    (task_dir / "positives.yaml").write_text(yaml_text)
    monkeypatch.chdir(tmp_path)

    out = run_lm_eval(model, tokenizer, ["task/positives.yaml"], batch_size=8)
    positives = [r for r in rows if r["label"] == "1"]
    assert len(positives) not in (0, len(rows))
    expected = accuracy(predictions(model, tokenizer, positives), positives)
    assert out["sst2_positives"]["acc"] == pytest.approx(expected)


def test_missing_lm_eval_says_how_to_install(model_and_tokenizer, monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # what `import lm_eval` meets when it is not installed
    with pytest.raises(ConfigError, match=r"needs the lm-eval package .*pip install 'lmtune\[lm-eval\]'"):
        run_lm_eval(*model_and_tokenizer, [str(EXAMPLE)])


def test_unknown_task_lists_close_names(model_and_tokenizer):
    with pytest.raises(ConfigError, match=r"no task named 'hellaswagg'\. Close matches: hellaswag"):
        run_lm_eval(*model_and_tokenizer, ["hellaswagg"], limit=1)


def test_task_with_hub_data_points_to_a_local_yaml(model_and_tokenizer, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the same failure as an unreachable hub, minus the retries
    with pytest.raises(ConfigError, match=r"hellaswag downloads its data .* cannot reach .*docs/lm_eval\.md"):
        run_lm_eval(*model_and_tokenizer, ["hellaswag"], limit=1)


def test_missing_data_file_names_yaml_and_file(model_and_tokenizer, tmp_path):
    yaml_file = tmp_path / "mine.yaml"
    yaml_file.write_text(
        EXAMPLE.read_text().replace("../../../shared/data/cls_sst2/dev.tsv", "nowhere/dev.tsv")
    )
    with pytest.raises(DataError) as err:
        run_lm_eval(*model_and_tokenizer, [str(yaml_file)])
    assert str(yaml_file) in str(err.value) and "'nowhere/dev.tsv' does not exist" in str(err.value)
    assert str(tmp_path / "nowhere" / "dev.tsv") in str(err.value)


def test_function_from_missing_module_is_a_config_error(model_and_tokenizer, tmp_path):
    yaml_file = tmp_path / "mine.yaml"
    yaml_file.write_text(EXAMPLE.read_text() + "process_docs: !function nomodule.positives\n")
    with pytest.raises(
        ConfigError, match=r"needs the module 'nomodule', which is neither .*nomodule\.py nor"
    ):
        run_lm_eval(*model_and_tokenizer, [str(yaml_file)])


def test_flatten_keeps_numbers_and_names_filters():
    out = {
        "results": {
            "gsm8k": {
                "alias": "gsm8k",
                "exact_match,strict-match": 0.25,
                "exact_match_stderr,strict-match": 0.1,
                "exact_match,none": 0.5,
                "bleu_stderr,none": "N/A",
                "sample_len": 4,
            }
        }
    }
    assert flatten_results(out) == {
        "gsm8k": {
            "exact_match/strict-match": 0.25,
            "exact_match/strict-match_stderr": 0.1,
            "exact_match": 0.5,
        }
    }
