"""Text metrics against values worked out by hand (arithmetic in the comments)."""

from __future__ import annotations

import math

import pytest
from rouge_score.rouge_scorer import RougeScorer
from sacrebleu.metrics import BLEU

from lmtune.eval.classification import classification_report
from lmtune.eval.metrics import (
    DEFAULT_NORMALIZE,
    NORMALIZE_OPTIONS,
    CJKTokenizer,
    bleu,
    contains,
    exact_match,
    has_cjk,
    label_scores,
    map_to_label,
    normalize,
    rouge,
    sentence_bleu,
    sentence_rouge,
)

# ------------------------------------------------------------------------------------------ normalize


def test_normalize_defaults_lower_strip_punctuation_collapse_spaces():
    assert normalize("  The  Cat,\tsat!  ") == "the cat sat"
    assert tuple(DEFAULT_NORMALIZE) == NORMALIZE_OPTIONS


def test_normalize_each_option_off():
    text = " The Cat's  hat. "
    assert normalize(text, lower=False) == "The Cats hat"
    assert normalize(text, punctuation=False) == "the cat's hat."
    assert normalize(text, whitespace=False) == " the cats  hat "
    assert normalize(text) == "the cats hat"  # articles off by default: "the" stays


def test_normalize_articles_whole_words_only_and_any_case():
    assert normalize("The answer is an apple, a theory", articles=True) == "answer is apple theory"
    # "another", "theory", "ant": articles inside words stay
    assert normalize("another theory ant", articles=True) == "another theory ant"
    assert normalize("The Cat", lower=False, articles=True) == "Cat"


def test_normalize_removes_unicode_and_ascii_punctuation():
    assert normalize("你好，世界！这是。") == "你好世界这是"
    assert normalize("«quoted» — dash… ¿sí?") == "quoted dash sí"
    assert normalize("a+b=c $5 ~x") == "abc 5 x"  # ASCII symbols in string.punctuation go too


def test_exact_match_uses_defaults_and_options():
    assert exact_match("Paris.", "paris")
    assert not exact_match("Paris.", "paris", punctuation=False)
    assert not exact_match("Paris", "paris", lower=False)
    assert not exact_match("the Eiffel Tower", "Eiffel Tower")
    assert exact_match("the Eiffel Tower", "Eiffel Tower", articles=True)
    assert exact_match("北京。", "北京")
    with pytest.raises(ValueError, match="unknown normalize option"):
        exact_match("a", "a", stem=True)


def test_contains_none_true_false():
    assert contains("anything", []) is None
    assert contains("My name is Lmtune-Bot, hello", ["lmtune-bot", "HELLO"]) is True
    assert contains("My name is Bot", ["lmtune", "bot"]) is False


def test_has_cjk():
    assert has_cjk("hello 世界")
    assert has_cjk("ひらがな") and has_cjk("カタカナ") and has_cjk("한국어")
    assert not has_cjk("hello, café — naïve")
    assert not has_cjk("。，！")  # CJK punctuation alone is not CJK text


# ----------------------------------------------------------------------------------------------- BLEU


def test_bleu_identical_is_100_and_empty_is_0():
    assert bleu(["the quick brown fox jumps"], ["the quick brown fox jumps"]) == pytest.approx(100.0)
    assert bleu([], []) == 0.0
    with pytest.raises(ValueError):
        bleu(["a"], [])


def test_bleu_by_hand_precisions_and_brevity_penalty():
    # hyp "the cat sat on the mat" (6 tokens), ref "the cat sat on the red mat" (7 tokens)
    # 1-grams: the the cat sat on mat all in ref (ref has "the" twice)      -> 6/6
    # 2-grams: the-cat cat-sat sat-on on-the | the-mat not in ref           -> 4/5
    # 3-grams: the-cat-sat cat-sat-on sat-on-the | on-the-mat               -> 3/4
    # 4-grams: the-cat-sat-on cat-sat-on-the | sat-on-the-mat               -> 2/3
    # BP = exp(1 - 7/6) = exp(-1/6); BLEU = 100 * BP * (1 * 4/5 * 3/4 * 2/3) ** (1/4) = 100 * BP * 0.4 ** 0.25
    expected = 100 * math.exp(-1 / 6) * 0.4**0.25  # = 67.318...
    assert bleu(["the cat sat on the mat"], ["the cat sat on the red mat"]) == pytest.approx(
        expected, abs=1e-6
    )


def test_bleu_is_corpus_level_counts_not_mean_of_sentences():
    # add an identical pair "a b c d e" (5 tokens): 1..4-gram matches 5/5 4/4 3/3 2/2
    # pooled: 1-grams 11/11, 2-grams 8/9, 3-grams 6/7, 4-grams 4/5; lengths hyp 6+5=11, ref 7+5=12
    expected = 100 * math.exp(1 - 12 / 11) * (1 * 8 / 9 * 6 / 7 * 4 / 5) ** 0.25
    got = bleu(["the cat sat on the mat", "a b c d e"], ["the cat sat on the red mat", "a b c d e"])
    assert got == pytest.approx(expected, abs=1e-6)


def test_bleu_chinese_scored_per_character():
    # hyp 我爱北京天安门 (7 chars), ref 我爱北京故宫 (6 chars): hyp longer, BP = 1
    # 1-grams: 我 爱 北 京 | 天 安 门                     -> 4/7
    # 2-grams: 我爱 爱北 北京 | 京天 天安 安门             -> 3/6
    # 3-grams: 我爱北 爱北京 | 北京天 京天安 天安门        -> 2/5
    # 4-grams: 我爱北京 | 爱北京天 北京天安 京天安门       -> 1/4
    expected = 100 * (4 / 7 * 3 / 6 * 2 / 5 * 1 / 4) ** 0.25  # = 41.113...
    assert bleu(["我爱北京天安门"], ["我爱北京故宫"]) == pytest.approx(expected, abs=1e-6)
    # with 13a the unsegmented sentence is one token each side: no match at all
    assert BLEU(tokenize="13a").corpus_score(["我爱北京天安门"], [["我爱北京故宫"]]).score == 0.0


def test_sentence_bleu_effective_order():
    assert sentence_bleu("Paris", "Paris") == pytest.approx(100.0)
    # hyp "the cat sat" (3), ref "the cat sat down" (4): 1-gram 3/3, 2-gram 2/2, 3-gram 1/1, no 4-grams
    # effective order 3: precisions all 1; BP = exp(1 - 4/3) -> 100 * exp(-1/3) = 71.653...
    assert sentence_bleu("the cat sat", "the cat sat down") == pytest.approx(100 * math.exp(-1 / 3), abs=1e-6)
    # Chinese: 我爱北京 vs 我爱北京: per character 4 tokens, all match
    assert sentence_bleu("我爱北京", "我爱北京") == pytest.approx(100.0)
    assert sentence_bleu("", "something") == 0.0


# ---------------------------------------------------------------------------------------------- ROUGE


def test_tokenizer_cjk_per_character_other_text_lowercase_words():
    tokens = CJKTokenizer().tokenize("Hello, 世界! It's GPT-4 café ひらがな 한국")
    assert tokens == ["hello", "世", "界", "it", "s", "gpt", "4", "café", "ひ", "ら", "が", "な", "한", "국"]
    assert CJKTokenizer().tokenize("我爱Python3") == ["我", "爱", "python3"]


def test_rouge_english_by_hand():
    pred, ref = "the cat was found under the bed", "the cat was under the bed"
    # pred 7 tokens, ref 6. ROUGE-1 overlap (clipped): the x2, cat, was, under, bed = 6
    #   P = 6/7, R = 6/6 -> F = 2 * (6/7) * 1 / (6/7 + 1) = 12/13
    # ROUGE-2: pred bigrams the-cat cat-was was-found found-under under-the the-bed (6)
    #          ref  bigrams the-cat cat-was was-under under-the the-bed (5); overlap 4
    #   P = 4/6, R = 4/5 -> F = 2 * (2/3) * (4/5) / (2/3 + 4/5) = (16/15) / (22/15) = 8/11
    # ROUGE-L: LCS = the cat was under the bed = 6 -> same as ROUGE-1: 12/13
    got = sentence_rouge(pred, ref)
    assert got["rouge1"] == pytest.approx(12 / 13)
    assert got["rouge2"] == pytest.approx(8 / 11)
    assert got["rougeL"] == pytest.approx(12 / 13)


def test_rouge_l_follows_order():
    # pred "cat the sat", ref "the cat sat": all unigrams match -> R1 = 1
    # bigrams pred cat-the the-sat vs ref the-cat cat-sat: none -> R2 = 0
    # LCS: "the sat" or "cat sat" = 2 -> P = R = 2/3 -> F = 2/3
    assert sentence_rouge("cat the sat", "the cat sat") == pytest.approx(
        {"rouge1": 1.0, "rouge2": 0.0, "rougeL": 2 / 3}
    )


def test_rouge_chinese_per_character_and_default_tokenizer_gives_zero():
    # pred 我爱北京, ref 我爱上海: 4 tokens each
    # R1: 我 爱 shared = 2 -> P = R = 2/4 -> F = 0.5
    # R2: 我爱 爱北 北京 vs 我爱 爱上 上海: 1 shared of 3 -> F = 1/3
    # RL: LCS 我爱 = 2 -> F = 0.5
    assert sentence_rouge("我爱北京", "我爱上海") == pytest.approx(
        {"rouge1": 0.5, "rouge2": 1 / 3, "rougeL": 0.5}
    )
    # rouge-score's default tokenizer drops non-ASCII: even an identical Chinese pair scores 0
    default = RougeScorer(["rouge1"]).score("我爱上海", "我爱上海")["rouge1"].fmeasure
    assert default == 0.0
    assert sentence_rouge("我爱上海", "我爱上海")["rouge1"] == pytest.approx(1.0)


def test_rouge_corpus_is_mean_of_records_and_empty_is_zero():
    got = rouge(
        ["the cat was found under the bed", "cat the sat"], ["the cat was under the bed", "the cat sat"]
    )
    # means of the two hand-computed records above
    assert got == pytest.approx(
        {"rouge1": (12 / 13 + 1) / 2, "rouge2": (8 / 11 + 0) / 2, "rougeL": (12 / 13 + 2 / 3) / 2}
    )
    assert rouge([], []) == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    with pytest.raises(ValueError):
        rouge(["a", "b"], ["a"])


# --------------------------------------------------------------------------------------------- labels

SENTIMENT = ["positive", "negative"]


@pytest.mark.parametrize(
    ("text", "labels", "expected"),
    [
        ("Positive.", SENTIMENT, "positive"),
        ("  NEGATIVE  ", SENTIMENT, "negative"),
        ("The answer is negative", SENTIMENT, "negative"),
        ("not sure", SENTIMENT, None),
        ("", SENTIMENT, None),
        ("negatively", SENTIMENT, None),  # whole words only
        ("negative, not positive", SENTIMENT, "negative"),  # first occurrence wins
        ("It is positive; some say negative", SENTIMENT, "positive"),
        ("1", ["1", "0"], "1"),
        ("0.", ["1", "0"], "0"),
        ("Label: 0", ["1", "0"], "0"),
        ("10", ["1", "0"], None),
        # labels that are prefixes of each other
        ("pos", ["pos", "positive"], "pos"),
        ("positive", ["pos", "positive"], "positive"),
        ("I think positive", ["pos", "positive"], "positive"),
        ("I think pos", ["positive", "pos"], "pos"),
        # a label that is a phrase-prefix of another at the same place: the longer one
        ("it is not entailment", ["entailment", "not entailment"], "not entailment"),
        ("not_entailment", ["entailment", "not_entailment"], "not_entailment"),
        ("it is entailment", ["entailment", "not_entailment"], "entailment"),
        # CJK labels match as substrings
        ("这条评论是正面的。", ["正面", "负面"], "正面"),
        ("负面", ["正面", "负面"], "负面"),
        ("中性", ["正面", "负面"], None),
    ],
)
def test_map_to_label(text, labels, expected):
    assert map_to_label(text, labels) == expected


def test_label_scores_by_hand_with_unmapped():
    true = ["positive", "positive", "positive", "negative", "negative"]
    pred = ["positive", None, "negative", "negative", "positive"]
    r = label_scores(pred, true, SENTIMENT)
    # correct: records 0 and 3 -> accuracy 2/5
    assert r["accuracy"] == pytest.approx(0.4)
    # positive: tp 1, predicted 2 (rec 0, 4), support 3 -> P 1/2, R 1/3, F = 2 * (1/6) / (5/6) = 2/5
    # negative: tp 1, predicted 2 (rec 2, 3), support 2 -> P 1/2, R 1/2, F 1/2
    assert r["per_class"]["positive"]["f1"] == pytest.approx(0.4)
    assert r["per_class"]["negative"]["f1"] == pytest.approx(0.5)
    # macro over the real labels: (2/5 + 1/2) / 2 = 0.45 (with "(unmapped)" it would be 0.9 / 3 = 0.3)
    assert r["macro_f1"] == pytest.approx(0.45)
    # rows true, columns predicted [positive, negative, (unmapped)]
    assert r["confusion"] == [[1, 1, 1], [1, 1, 0], [0, 0, 0]]
    assert r["labels"] == ["positive", "negative", "(unmapped)"]
    assert r["unmapped"] == 1
    assert r["count"] == 5


def test_label_scores_without_unmapped_is_the_plain_report():
    true = ["positive", "negative", "negative"]
    pred = ["positive", "positive", "negative"]
    r = label_scores(pred, true, SENTIMENT)
    # positive: P 1/2 R 1 F 2/3; negative: P 1 R 1/2 F 2/3 -> macro 2/3; accuracy 2/3
    assert r["macro_f1"] == pytest.approx(2 / 3)
    assert r["accuracy"] == pytest.approx(2 / 3)
    assert r["labels"] == SENTIMENT and r["unmapped"] == 0
    assert {k: v for k, v in r.items() if k != "unmapped"} == classification_report(
        [0, 1, 1], [0, 0, 1], SENTIMENT
    )


def test_label_scores_rejects_unknown_labels():
    with pytest.raises(ValueError, match="not one of"):
        label_scores(["neutral"], ["positive"], SENTIMENT)
    with pytest.raises(ValueError, match="not one of"):
        label_scores(["positive"], ["neutral"], SENTIMENT)
    with pytest.raises(ValueError):
        label_scores(["positive"], [], SENTIMENT)
