"""Text metrics for `lmtune eval`: exact match, contains, BLEU, ROUGE and mapping answers to labels.

Pure functions (no torch) so the runner can score each record and the whole corpus with the same code.
Chinese, Japanese and Korean get explicit care throughout: punctuation removal covers Unicode
punctuation (。，！), BLEU switches sacrebleu to its "zh" tokenizer, and ROUGE uses its own tokenizer
because rouge-score's default drops every non-ASCII character and so scores Chinese as 0.
"""

from __future__ import annotations

import re
import string
import unicodedata
from functools import lru_cache
from typing import Any

from lmtune.eval.classification import classification_report

NORMALIZE_OPTIONS = ("lower", "punctuation", "articles", "whitespace")
DEFAULT_NORMALIZE = {"lower": True, "punctuation": True, "articles": False, "whitespace": True}
UNMAPPED = "(unmapped)"

_ASCII_PUNCT = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(?:a|an|the)\b", re.IGNORECASE)
_SPACES = re.compile(r"\s+")
# Ideographs (incl. extensions and compatibility forms), kana (incl. half-width) and hangul.
_CJK_RANGES = (
    (0x1100, 0x11FF),  # Hangul Jamo
    (0x2E80, 0x2FDF),  # CJK radicals, Kangxi radicals
    (0x3040, 0x30FF),  # Hiragana, Katakana
    (0x3130, 0x318F),  # Hangul compatibility Jamo
    (0x31F0, 0x31FF),  # Katakana phonetic extensions
    (0x3400, 0x4DBF),  # CJK Unified Ideographs Extension A
    (0x4E00, 0x9FFF),  # CJK Unified Ideographs
    (0xA960, 0xA97F),  # Hangul Jamo Extended-A
    (0xAC00, 0xD7AF),  # Hangul syllables
    (0xD7B0, 0xD7FF),  # Hangul Jamo Extended-B
    (0xF900, 0xFAFF),  # CJK Compatibility Ideographs
    (0xFF66, 0xFFDC),  # Half-width katakana and hangul
    (0x20000, 0x3134F),  # CJK Unified Ideographs Extensions B-G, compatibility supplement
)


def _is_punct(ch: str) -> bool:
    # string.punctuation also holds ASCII symbols ($+<=>^`|~, category S*), which SQuAD removes too.
    return ch in _ASCII_PUNCT or unicodedata.category(ch).startswith("P")


def _is_cjk(ch: str) -> bool:
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def normalize(
    text: str,
    *,
    lower: bool = True,
    punctuation: bool = True,
    articles: bool = False,
    whitespace: bool = True,
) -> str:
    """SQuAD-style answer normalisation (with articles=True), each step switchable.

    Punctuation is deleted rather than replaced by a space, as SQuAD does ("don't" -> "dont"), and the
    articles are matched case-insensitively so that lower=False still drops "The".
    """
    if lower:
        text = text.lower()
    if punctuation:
        text = "".join(ch for ch in text if not _is_punct(ch))
    if articles:
        text = _ARTICLES.sub(" ", text)
    if whitespace:
        text = _SPACES.sub(" ", text).strip()
    return text


def exact_match(prediction: str, reference: str, **normalize_options: bool) -> bool:
    """Equal after `normalize`; options not given keep DEFAULT_NORMALIZE."""
    unknown = set(normalize_options) - set(NORMALIZE_OPTIONS)
    if unknown:
        raise ValueError(f"unknown normalize option(s) {sorted(unknown)}; choose from {NORMALIZE_OPTIONS}")
    options = {**DEFAULT_NORMALIZE, **normalize_options}
    return normalize(prediction, **options) == normalize(reference, **options)


def contains(prediction: str, needles: list[str]) -> bool | None:
    """Every needle is in the prediction (case-insensitive); None for no needles, i.e. not scored."""
    if not needles:
        return None
    text = prediction.casefold()
    return all(needle.casefold() in text for needle in needles)


def has_cjk(text: str) -> bool:
    """Any Chinese/Japanese ideograph, kana or hangul: decides the BLEU tokenizer."""
    return any(_is_cjk(ch) for ch in text)


# --------------------------------------------------------------------------------------------- BLEU


@lru_cache(maxsize=4)
def _bleu_metric(tokenize: str, effective_order: bool) -> Any:
    from sacrebleu.metrics import BLEU

    return BLEU(tokenize=tokenize, effective_order=effective_order)


def _bleu_tokenize(references: list[str]) -> str:
    # "zh" splits Han characters one per token and runs 13a on the rest; unsegmented Chinese under
    # 13a would be one token per sentence and BLEU would be all-or-nothing.
    return "zh" if any(has_cjk(r) for r in references) else "13a"


def _check_lengths(predictions: list[str], references: list[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions but {len(references)} references")


def bleu(predictions: list[str], references: list[str]) -> float:
    """Corpus BLEU (0..100, sacrebleu defaults), one reference per prediction; 0.0 for no records."""
    _check_lengths(predictions, references)
    if not predictions:
        return 0.0
    metric = _bleu_metric(_bleu_tokenize(references), False)
    return float(metric.corpus_score(list(predictions), [list(references)]).score)


def sentence_bleu(prediction: str, reference: str) -> float:
    """One record's BLEU; effective order so that a short exact answer is 100, not 0."""
    metric = _bleu_metric(_bleu_tokenize([reference]), True)
    return float(metric.sentence_score(prediction, [reference]).score)


# -------------------------------------------------------------------------------------------- ROUGE

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


class CJKTokenizer:
    """rouge-score tokenizer: each CJK character is a token, other text lowercase alphanumeric words.

    Letters of any script count (so "café" stays one word); combining marks stay inside their word.
    """

    def tokenize(self, text: str) -> list[str]:
        tokens: list[str] = []
        word: list[str] = []
        for ch in text.lower():
            if _is_cjk(ch):
                if word:
                    tokens.append("".join(word))
                    word = []
                tokens.append(ch)
            elif ch.isalnum() or (word and unicodedata.category(ch).startswith("M")):
                word.append(ch)
            elif word:
                tokens.append("".join(word))
                word = []
        if word:
            tokens.append("".join(word))
        return tokens


@lru_cache(maxsize=1)
def _rouge_scorer() -> Any:
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(list(ROUGE_TYPES), use_stemmer=False, tokenizer=CJKTokenizer())


def sentence_rouge(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L F-measures (0..1) of one record; no stemming, to stay language-neutral."""
    scores = _rouge_scorer().score(reference, prediction)  # rouge-score takes (target, prediction)
    return {name: float(scores[name].fmeasure) for name in ROUGE_TYPES}


def rouge(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Mean per-record ROUGE F-measures (as the HF `evaluate` rouge does); zeros for no records."""
    _check_lengths(predictions, references)
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for prediction, reference in zip(predictions, references):
        for name, value in sentence_rouge(prediction, reference).items():
            totals[name] += value
    n = len(predictions)
    return {name: (total / n if n else 0.0) for name, total in totals.items()}


# ------------------------------------------------------------------------------------------- labels


def _label_form(text: str) -> str:
    # Punctuation becomes a space (not deleted as in `normalize`) so "not_entailment" and
    # "not entailment" meet, and "positive." still ends at a word boundary.
    text = "".join(" " if _is_punct(ch) else ch for ch in text.lower())
    return _SPACES.sub(" ", text).strip()


def _first_position(label: str, answer: str) -> int:
    if has_cjk(label):  # no spaces between CJK words: any substring counts
        return answer.find(label)
    match = re.search(rf"(?<!\S){re.escape(label)}(?!\S)", answer)
    return match.start() if match else -1


def map_to_label(text: str, labels: list[str]) -> str | None:
    """Map a generated answer to one of `labels`, or None when no label is recognisable.

    1. the whole answer equals a label (case, punctuation and spacing ignored);
    2. else the label found as a whole word/phrase in the answer (a substring for CJK labels) that
       starts first; a tie (one label a phrase-prefix of another) goes to the longer label.
    Negation is not understood: "not positive" maps to positive.
    """
    answer = _label_form(text)
    forms = [(label, _label_form(label)) for label in labels]
    for label, form in forms:
        if form and form == answer:
            return label
    best: tuple[int, int] | None = None
    found: str | None = None
    for label, form in forms:
        if not form:
            continue
        pos = _first_position(form, answer)
        if pos >= 0 and (best is None or (pos, -len(form)) < best):
            best, found = (pos, -len(form)), label
    return found


def label_scores(predicted: list[str | None], true: list[str], labels: list[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class scores and confusion of mapped answers against the true labels.

    An unmapped answer (None) is always wrong. When any occurs, the report runs over
    labels + ["(unmapped)"], so the confusion matrix shows where answers went unmapped, and each
    unmapped record counts against the recall of its true label. macro_f1 is then re-averaged over
    the real labels only (same rule: labels present in true or predicted): the pseudo-label's F1 is
    always 0, and counting it would cut the average by a factor k/(k+1) for a single unmapped answer.
    "unmapped" gives the count.
    """
    if len(predicted) != len(true):
        raise ValueError(f"{len(predicted)} predictions but {len(true)} true labels")
    index = {label: i for i, label in enumerate(labels)}
    for value in (*true, *(p for p in predicted if p is not None)):
        if value not in index:
            raise ValueError(f"label {value!r} is not one of {labels}")
    unmapped = sum(p is None for p in predicted)
    report_labels = list(labels)
    if unmapped:
        if UNMAPPED in index:
            raise ValueError(f"{UNMAPPED!r} is reserved for unmapped answers and cannot be a label")
        report_labels.append(UNMAPPED)
    y_true = [index[t] for t in true]
    y_pred = [len(labels) if p is None else index[p] for p in predicted]
    report = classification_report(y_true, y_pred, report_labels)
    if unmapped:
        present = [
            c for c in (report["per_class"][label] for label in labels) if c["support"] + c["predicted"]
        ]
        report["macro_f1"] = sum(c["f1"] for c in present) / len(present) if present else 0.0
    report["unmapped"] = unmapped
    return report
