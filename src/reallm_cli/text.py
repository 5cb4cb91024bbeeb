"""The one text normalisation used for training targets, references and hypotheses.

A transcript and a reference are only comparable once both are in spoken form, so
``normalize_text`` turns written text into the words a speaker says: lowercase,
numbers/ordinals/years/currency/percent/times as words (American style, no "and"
inside numbers: "one hundred five", matching the LJ Speech text the model is trained
on), common abbreviations expanded, punctuation dropped except apostrophes inside a
word, whitespace collapsed. Numbers are spelled with the maintained ``num2words``
library; the rules around it are ours.
"""

from __future__ import annotations

import re
import unicodedata

from num2words import num2words

__all__ = ["normalize_text", "number_to_words", "year_to_words", "ordinal_to_words"]

# Typographic characters folded to ASCII before anything else looks at the text.
_UNICODE_FOLD = {
    "\u2018": "'", "\u2019": "'", "\u02bc": "'", "\u2032": "'", "`": "'", "\u00b4": "'",
    "\u201c": '"', "\u201d": '"', "\u201e": '"', "\u00ab": '"', "\u00bb": '"',
    "\u2010": "-", "\u2011": "-", "\u2012": " - ", "\u2013": " - ", "\u2014": " - ", "\u2015": " - ",
    "\u2212": "-", "\u2026": " ", "\u00a0": " ", "\u200b": "",
}

# Abbreviations that end in a period when written; matched case-insensitively as whole words.
_ABBREVIATIONS = {
    "mr": "mister", "mrs": "missus", "ms": "miss", "dr": "doctor", "prof": "professor",
    "jr": "junior", "sr": "senior", "capt": "captain", "col": "colonel", "gen": "general",
    "lt": "lieutenant", "sgt": "sergeant", "rev": "reverend", "hon": "honorable", "gov": "governor",
    "sen": "senator", "rep": "representative", "pres": "president", "mt": "mount", "ave": "avenue",
    "rd": "road", "blvd": "boulevard", "vs": "versus", "etc": "et cetera", "esq": "esquire",
    "dept": "department", "govt": "government", "approx": "approximately", "co": "company",
    "corp": "corporation", "inc": "incorporated", "ltd": "limited", "bros": "brothers",
    "jan": "january", "feb": "february", "mar": "march", "apr": "april", "aug": "august",
    "sept": "september", "oct": "october", "nov": "november", "dec": "december",
}
# Ambiguous without a period ("co", "mar", "rev", ...), so only expanded when written with one;
# these few are unambiguous enough to expand bare as well.
_BARE_OK = {"mr", "mrs", "dr", "jr", "sr", "vs", "etc", "st", "prof", "capt", "sgt", "lt", "govt", "dept"}

_SYMBOLS = {"&": " and ", "%": " percent ", "+": " plus ", "@": " at ", "=": " equals ", "#": " number "}

_CURRENCY = {"$": ("dollar", "dollars", "cent", "cents"), "£": ("pound", "pounds", "penny", "pence"),
             "€": ("euro", "euros", "cent", "cents"), "¥": ("yen", "yen", "sen", "sen")}
_SCALES = ("thousand", "million", "billion", "trillion")


def _clean_number_words(words: str) -> str:
    """num2words output to our spoken style: no 'and' inside numbers, no commas or hyphens."""
    words = words.replace(",", " ").replace("-", " ")
    return " ".join(w for w in words.split() if w != "and")


def number_to_words(n: int | float | str) -> str:
    """Cardinal in words: 105 -> 'one hundred five', 3.14 -> 'three point one four', -2 -> 'minus two'."""
    s = str(n).replace(",", "")
    if re.fullmatch(r"-?\d+", s):
        return _clean_number_words(num2words(int(s)))
    if re.fullmatch(r"-?\d*\.\d+", s):
        neg = s.startswith("-")
        whole, frac = s.lstrip("-").split(".")
        head = _clean_number_words(num2words(int(whole or "0")))
        digits = " ".join(_clean_number_words(num2words(int(d))) for d in frac)
        return ("minus " if neg else "") + f"{head} point {digits}"
    raise ValueError(f"not a number: {n!r}")


def year_to_words(y: int) -> str:
    """Year reading: 1984 -> 'nineteen eighty four', 1905 -> 'nineteen oh five', 2005 -> 'two thousand five'."""
    return _clean_number_words(num2words(int(y), to="year"))


def ordinal_to_words(n: int) -> str:
    """21 -> 'twenty first'."""
    return _clean_number_words(num2words(int(n), to="ordinal"))


def _plural_number(words: str) -> str:
    """'nineteen eighty' -> 'nineteen eighties' (for '1980s', '80s')."""
    head, _, last = words.rpartition(" ")
    last = last[:-1] + "ies" if last.endswith("y") else last + ("es" if last.endswith("x") else "s")
    return f"{head} {last}".strip()


def _is_year(n: int) -> bool:
    return 1100 <= n <= 2099


def _money(m: re.Match) -> str:
    sym, amount, scale = m.group("sym"), m.group("amt").replace(",", ""), (m.group("scale") or "").lower()
    one, many, sub_one, sub_many = _CURRENCY[sym]
    if scale:
        return f" {number_to_words(amount)} {scale} {many} "
    whole, _, frac = amount.partition(".")
    whole_n = int(whole or "0")
    parts = []
    if whole_n or not frac:
        parts.append(f"{number_to_words(whole_n)} {one if whole_n == 1 else many}")
    if frac:
        cents = int((frac + "0")[:2])
        if cents:
            parts.append(f"{number_to_words(cents)} {sub_one if cents == 1 else sub_many}")
    return " " + " and ".join(parts) + " "


def _time(m: re.Match) -> str:
    h, mins, ampm = int(m.group(1)), int(m.group(2)), m.group(3)
    if mins == 0:
        spoken = f"{number_to_words(h)} o'clock" if not ampm else number_to_words(h)
    elif mins < 10:
        spoken = f"{number_to_words(h)} oh {number_to_words(mins)}"
    else:
        spoken = f"{number_to_words(h)} {number_to_words(mins)}"
    if ampm:
        spoken += " " + " ".join(ampm.lower().replace(".", ""))
    return f" {spoken} "


def _ordinal(m: re.Match) -> str:
    return f" {ordinal_to_words(int(m.group(1).replace(',', '')))} "


def _decade(m: re.Match) -> str:
    n = int(m.group(1))
    words = year_to_words(n) if n >= 100 else number_to_words(n)
    return f" {_plural_number(words)} "


def _bare_number(m: re.Match) -> str:
    s = m.group(0)
    plain = s.replace(",", "")
    if re.fullmatch(r"\d{4}", s) and _is_year(int(s)) and not (s.startswith("0")):
        return f" {year_to_words(int(s))} "
    if re.fullmatch(r"0\d+", plain):  # leading zero: read digit by digit ("007", zip codes)
        return " " + " ".join(number_to_words(int(d)) for d in plain) + " "
    return f" {number_to_words(plain)} "


def _abbreviation(m: re.Match) -> str:
    word, dot = m.group(1), m.group(2)
    key = word.lower()
    if key == "st":
        # "St. Paul" is a saint, "Baker St." a street
        nxt = m.string[m.end():].lstrip()
        return " saint " if nxt[:1].isupper() else " street "
    if key in _ABBREVIATIONS and (dot or key in _BARE_OK):
        return f" {_ABBREVIATIONS[key]} "
    return m.group(0)


_ABBR_RE = re.compile(r"\b([A-Za-z]+)(\.)?(?=[\s,;:!?)\"']|$)")
_MONEY_RE = re.compile(r"(?P<sym>[$£€¥])\s?(?P<amt>\d[\d,]*(?:\.\d+)?)(?:\s?(?P<scale>thousand|million|billion|trillion)\b)?",
                       re.IGNORECASE)
_TIME_RE = re.compile(r"\b(\d{1,2}):(\d{2})\s*([ap]\.?m\.?)?(?=\W|$)", re.IGNORECASE)
_ORDINAL_RE = re.compile(r"\b(\d[\d,]*)(?:st|nd|rd|th)\b", re.IGNORECASE)
_DECADE_RE = re.compile(r"(?:\b|')(\d{2}|\d{4})'?s\b")
_NUMBER_RE = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d*\.\d+|\d+")
_NEGATIVE_RE = re.compile(r"(?<![\w.])-(?=\d)")


def normalize_text(s: str) -> str:
    """Written English -> lowercase spoken words separated by single spaces (see module docstring)."""
    if not isinstance(s, str):
        raise TypeError(f"normalize_text expects str, got {type(s).__name__}")
    s = unicodedata.normalize("NFKC", s)
    s = "".join(_UNICODE_FOLD.get(c, c) for c in s)
    s = re.sub(r"\b[Nn]o\.\s*(?=\d)", " number ", s)  # before numbers become words: "No. 5"
    s = _MONEY_RE.sub(_money, s)
    s = _TIME_RE.sub(_time, s)
    s = _ORDINAL_RE.sub(_ordinal, s)
    s = _DECADE_RE.sub(_decade, s)
    s = re.sub(r"(\d)\s*%", r"\1 percent", s)
    s = _NEGATIVE_RE.sub(" minus ", s)
    s = re.sub(r"(?<=\d)-(?=\d)", " to ", s)  # ranges: 1914-1918
    s = _NUMBER_RE.sub(_bare_number, s)
    s = _ABBR_RE.sub(_abbreviation, s)
    for sym, word in _SYMBOLS.items():
        s = s.replace(sym, word)
    s = s.lower()
    # keep letters, digits and apostrophes; everything else (incl. hyphens) separates words
    s = re.sub(r"[^a-z0-9']+", " ", unicodedata.normalize("NFKD", s).encode("ascii", "ignore").decode())
    # an apostrophe survives only between two letters/digits (don't, o'clock, '90s was handled above)
    s = re.sub(r"(?<![a-z0-9])'|'(?![a-z0-9])", " ", s)
    return " ".join(s.split())
