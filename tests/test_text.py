"""normalize_text: the one normalisation shared by training targets, references and hypotheses."""

import pytest

from reallm_cli.text import normalize_text, number_to_words, ordinal_to_words, year_to_words


@pytest.mark.parametrize(
    "written, spoken",
    [
        ("Hello, World!", "hello world"),
        ("  many   spaces\tand\nlines ", "many spaces and lines"),
        # numbers: American style, no "and" inside a number, no hyphens
        ("105", "one hundred five"),
        ("1,250 people", "one thousand two hundred fifty people"),
        ("3.14", "three point one four"),
        ("-3 degrees", "minus three degrees"),
        ("007", "zero zero seven"),
        # ordinals, years, decades, ranges
        ("the 3rd of March", "the third of march"),
        ("the 21st century", "the twenty first century"),
        ("in 1984", "in nineteen eighty four"),
        ("in 1905", "in nineteen oh five"),
        ("in 2005", "in two thousand five"),
        ("the 1990s", "the nineteen nineties"),
        ("the '80s", "the eighties"),
        ("1914-1918", "nineteen fourteen to nineteen eighteen"),
        # currency and percent
        ("$12.50", "twelve dollars and fifty cents"),
        ("$1", "one dollar"),
        ("$0.01", "one cent"),
        ("$1.5 million", "one point five million dollars"),
        ("£100", "one hundred pounds"),
        ("50%", "fifty percent"),
        # times
        ("7:30 p.m.", "seven thirty p m"),
        ("at 10:00", "at ten o'clock"),
        ("9:05", "nine oh five"),
        # abbreviations
        ("Mr. Smith and Mrs. Jones", "mister smith and missus jones"),
        ("Dr. Who vs. the Daleks", "doctor who versus the daleks"),
        ("St. Paul lives on Baker St.", "saint paul lives on baker street"),
        ("No. 5", "number five"),
        ("I said no.", "i said no"),
        ("apples, pears, etc.", "apples pears et cetera"),
        # unicode quotes, dashes, apostrophes
        ("\u201cDon\u2019t,\u201d she said\u2014twice.", "don't she said twice"),
        ("it\u2019s o\u2019clock", "it's o'clock"),
        ("'quoted' words", "quoted words"),
        ("well-known co-op", "well known co op"),
        ("rock & roll", "rock and roll"),
        ("caf\u00e9 na\u00efve", "cafe naive"),
        ("", ""),
    ],
)
def test_normalize_text(written, spoken):
    assert normalize_text(written) == spoken


def test_idempotent_on_its_own_output():
    # a reference normalised twice (e.g. by the data script and again by the scorer) must not change
    for s in ["Mr. Smith paid $12.50 on the 3rd of March, 1984.", "It's 7:30 p.m. \u2014 time to go!",
              "In the 1990s, 50% of 1,250 people..."]:
        once = normalize_text(s)
        assert normalize_text(once) == once


def test_output_alphabet():
    out = normalize_text("Weird: \u00a7 \u00b6 * / \\ | ~ ^ {x} [y] <z> \u00bd 2\u00b2 \u2116 \u2122 1st!")
    assert set(out) <= set("abcdefghijklmnopqrstuvwxyz' ")
    assert "  " not in out and out == out.strip()


def test_number_helpers():
    assert number_to_words(0) == "zero"
    assert number_to_words("1,000,000") == "one million"
    assert year_to_words(1800) == "eighteen hundred"
    assert ordinal_to_words(12) == "twelfth"
    with pytest.raises(ValueError):
        number_to_words("12a")


def test_rejects_non_string():
    with pytest.raises(TypeError):
        normalize_text(None)  # type: ignore[arg-type]
