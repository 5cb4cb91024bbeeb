"""Emission delays matched word to word, also where a word normalises to several words or to none."""

from reallm_cli.evaluate import _matched_delays
from reallm_cli.results import Word


def ref(word: str, end: float) -> dict:
    return {"word": word, "start_s": end - 0.3, "end_s": end}


def hyp(text: str, emit: float) -> Word:
    return Word(text, emit - 0.5, emit - 0.2, emit)


def test_delays_pair_matching_words():
    refs = [ref("ask", 1.0), ref("not", 1.5), ref("what", 2.0)]
    hyps = [hyp("ask", 2.0), hyp("north", 2.5), hyp("what", 3.5)]
    assert _matched_delays(refs, hyps) == [1.0, 1.5]


def test_a_word_that_normalises_to_several_counts_once_and_keeps_the_rest_aligned():
    refs = [ref("in", 0.5), ref("1990", 1.2), ref("--", 1.3), ref("twenty-one", 2.0), ref("men", 2.5)]
    hyps = [hyp("in", 1.0), hyp("nineteen", 1.8), hyp("ninety", 2.0), hyp("twenty", 2.6), hyp("one", 2.9),
            hyp("men", 3.0)]
    got = _matched_delays(refs, hyps)
    assert [round(d, 6) for d in got] == [0.5, 0.8, 0.9, 0.5]  # 1990 and twenty-one: shown with their last word
