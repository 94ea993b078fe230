"""VQA-v2 style answer normalisation (the rules used to build VQA answer vocabularies).

Written from the published description of the VQA-v2 evaluation normaliser:

1. punctuation: each listed punctuation mark is deleted when it touches a space (``"x ,y"``) or the
   text contains a digit-comma-digit group (``"1,000"``); otherwise it becomes a space
   (``"x-ray"`` -> ``"x ray"``);
2. periods that are not followed by a digit are dropped (``"3.5"`` keeps its period);
3. lower-case, split on whitespace, number words ``none, zero .. ten`` -> ``0 .. 10``;
4. the articles ``a, an, the`` are removed;
5. contractions written without apostrophe are restored (``dont`` -> ``don't``);
6. remaining commas are removed and words are joined by single spaces.

The caller lower-cases ``str(answer)`` first (:func:`normalize_answer` does both).
"""

from __future__ import annotations

import functools
import re

__all__ = ["normalize_answer", "normalize_word", "NUMBER_WORDS", "ARTICLES"]

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!")
NUMBER_WORDS = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}
ARTICLES = frozenset({"a", "an", "the"})

_DIGIT_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")


def _build_contractions() -> dict[str, str]:
    """Map apostrophe-less spellings to the contracted form, e.g. ``isnt`` -> ``isn't``. Longer than 80 lines because
    most of it is the table of contractions, written out."""
    forms = [
        "aren't",
        "can't",
        "couldn't",
        "couldn't've",
        "didn't",
        "doesn't",
        "don't",
        "hadn't",
        "hadn't've",
        "hasn't",
        "haven't",
        "he'd",
        "he'd've",
        "he'll",
        "he's",
        "how'd",
        "how'll",
        "how's",
        "i'd",
        "i'd've",
        "i'll",
        "i'm",
        "i've",
        "isn't",
        "it'd",
        "it'd've",
        "it'll",
        "it's",
        "let's",
        "ma'am",
        "mightn't",
        "mightn't've",
        "might've",
        "mustn't",
        "must've",
        "needn't",
        "not've",
        "o'clock",
        "oughtn't",
        "shan't",
        "she'd",
        "she'd've",
        "she'll",
        "she's",
        "should've",
        "shouldn't",
        "shouldn't've",
        "somebody'd",
        "somebody'd've",
        "somebody'll",
        "somebody's",
        "someone'd",
        "someone'd've",
        "someone'll",
        "someone's",
        "something'd",
        "something'd've",
        "something'll",
        "that's",
        "there'd",
        "there'd've",
        "there're",
        "there's",
        "they'd",
        "they'd've",
        "they'll",
        "they're",
        "they've",
        "'twas",
        "wasn't",
        "we'd",
        "we'd've",
        "we'll",
        "we're",
        "we've",
        "weren't",
        "what'll",
        "what're",
        "what's",
        "what've",
        "when's",
        "where'd",
        "where's",
        "where've",
        "who'd",
        "who'd've",
        "who'll",
        "who're",
        "who's",
        "who've",
        "why'll",
        "why're",
        "why's",
        "won't",
        "would've",
        "wouldn't",
        "wouldn't've",
        "y'all",
        "y'all'll",
        "y'all'd've",
        "you'd",
        "you'd've",
        "you'll",
        "you're",
        "you've",
    ]
    # bare spellings that are ordinary words themselves are left alone
    ambiguous = {"its", "lets", "shell", "well", "were", "wed", "ill", "id", "hell", "shed"}
    return {form.replace("'", ""): form for form in forms if form.replace("'", "") not in ambiguous}


CONTRACTIONS = _build_contractions()


def _strip_punctuation(text: str) -> str:
    has_number_comma = _DIGIT_COMMA_DIGIT.search(text) is not None
    out = text
    for mark in PUNCTUATION:
        if mark not in out:
            continue
        # the adjacency test looks at the original text, as the reference normaliser does
        if has_number_comma or (mark + " ") in text or (" " + mark) in text:
            out = out.replace(mark, "")
        else:
            out = out.replace(mark, " ")
    return _PERIOD_NOT_BEFORE_DIGIT.sub("", out)


@functools.lru_cache(maxsize=1 << 16)  # a release repeats its answers ("yes", "no", ...) thousands of times
def normalize_word(text: str) -> str:
    """Normalise an (already lower-cased) answer string."""
    words = []
    for word in _strip_punctuation(text).lower().split():
        word = NUMBER_WORDS.get(word, word)
        if word in ARTICLES:
            continue
        words.append(CONTRACTIONS.get(word, word))
    return " ".join(words).replace(",", "")


def normalize_answer(answer: object) -> str:
    """``str(answer).lower()`` then :func:`normalize_word`."""
    return normalize_word(str(answer).lower())
