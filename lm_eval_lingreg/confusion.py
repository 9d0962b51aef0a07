"""Which language an output is written in, judged three ways, and how close it is to a reference.

- `lang_fidelity`: the whole output is identified (`langid.identify`) as the expected language.
- `line_pass`: every line of the output with at least `MIN_LINE_LETTERS` letters is identified as the
  expected language, in the manner of the Language Confusion Benchmark's line-level pass rate
  (arXiv 2406.20052). An output with no such line fails.
- `word_pass`: no word of the output has a letter in a script the expected language is not written in
  (`SCRIPTS`; Latin for the other 20). The benchmark's word-level check looks only for English words in
  non-Latin-script responses; this one judges every script for all 30 languages, and so cannot see
  English words inside French (same script). An output with no word fails.
- `chrf`: sentence chrF (sacrebleu's defaults), 0-100.
"""

from __future__ import annotations

import unicodedata

__all__ = ["language_metrics", "chrf", "foreign_words", "script_of", "SCRIPTS"]

#: Lines of an output with fewer letters than this are too short to identify and are not judged by line_pass.
MIN_LINE_LETTERS = 10

#: Scripts each language is written in (the first word of a letter's Unicode name, Han for CJK ideographs).
SCRIPTS: dict[str, frozenset[str]] = {
    "ar": frozenset({"ARABIC"}),
    "fa": frozenset({"ARABIC"}),
    "zh": frozenset({"HAN"}),
    "ja": frozenset({"HAN", "HIRAGANA", "KATAKANA"}),
    "ko": frozenset({"HANGUL"}),
    "el": frozenset({"GREEK"}),
    "ru": frozenset({"CYRILLIC"}),
    "uk": frozenset({"CYRILLIC"}),
    "ml": frozenset({"MALAYALAM"}),
    "ta": frozenset({"TAMIL"}),
}
LATIN = frozenset({"LATIN"})


#: Words of a character name that qualify its script rather than name it (FULLWIDTH LATIN ..., SUPERSCRIPT LATIN ...).
_QUALIFIERS = {"FULLWIDTH", "HALFWIDTH", "SUPERSCRIPT", "SUBSCRIPT", "MODIFIER", "CIRCLED", "PARENTHESIZED", "MATHEMATICAL"}
#: Letters whose name starts with no script: the ordinal indicators of Spanish, Portuguese, Italian.
_NAMED = {"FEMININE": "LATIN", "MASCULINE": "LATIN", "CJK": "HAN", "IDEOGRAPHIC": "HAN"}


def script_of(ch: str) -> str:
    """The script of one letter: the first word of its Unicode name that names a script (HAN for CJK ideographs;
    the prolonged sound mark of kana counts as KATAKANA)."""
    words_ = unicodedata.name(ch, "").split()
    while words_ and words_[0] in _QUALIFIERS:
        words_ = words_[1:]
    if not words_:
        return "UNKNOWN"
    first = words_[0].split("-")[0]  # KATAKANA-HIRAGANA PROLONGED SOUND MARK
    return _NAMED.get(first, first)


def _check_lang(lang: str) -> str:
    from lm_eval_lingreg.errors import UnknownLanguageError
    from lm_eval_lingreg.languages import LANGUAGES

    if not isinstance(lang, str) or lang not in LANGUAGES:
        raise UnknownLanguageError(f"unknown language {lang!r}; expected one of {','.join(LANGUAGES)}")
    return lang


def _text(value: object, what: str) -> str:
    from lm_eval_lingreg.langid import clean

    if not isinstance(value, (str, bytes, bytearray, memoryview)):
        raise TypeError(f"{what} must be text (str or bytes), got {type(value).__name__}")
    return clean(value)


def words(text: str) -> list[str]:
    """Maximal runs of letters and marks: what the word-level check judges."""
    out, cur = [], []
    for ch in text:
        cat = unicodedata.category(ch)
        if cat.startswith("L") or (cat.startswith("M") and cur):
            cur.append(ch)
        elif cur:
            out.append("".join(cur))
            cur = []
    if cur:
        out.append("".join(cur))
    return out


def foreign_words(lang: str, text: str | bytes) -> list[str]:
    """Words with a letter in a script the language is not written in. Modifier letters (the kana
    prolonged sound mark, the Ukrainian apostrophe ʼ) belong to no script and are not judged."""
    allowed = SCRIPTS.get(_check_lang(lang), LATIN)
    judged = ("Lu", "Ll", "Lt", "Lo")
    return [w for w in words(_text(text, "text")) if any(unicodedata.category(ch) in judged and script_of(ch) not in allowed for ch in w)]


def judged_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if sum(unicodedata.category(ch).startswith("L") for ch in line) >= MIN_LINE_LETTERS]


def language_metrics(lang: str, output: str) -> dict:
    """Per-output: the detected language and confidence, fidelity, line and word pass."""
    from lm_eval_lingreg.langid import identify

    _check_lang(lang)
    output = _text(output, "output")
    detected, confidence = identify(output)
    lines = judged_lines(output)
    return {
        "lang_fidelity": float(detected == lang),
        "line_pass": float(bool(lines) and all(identify(line)[0] == lang for line in lines)),
        "word_pass": float(bool(words(output)) and not foreign_words(lang, output)),
        "detected_lang": detected,
        "detected_confidence": confidence,
    }


def chrf(hypothesis: str, reference: str) -> float:
    """Sentence chrF (sacrebleu's defaults: character 6-grams, beta 2), 0-100; 0 for an empty hypothesis."""
    from sacrebleu.metrics import CHRF

    hypothesis, reference = _text(hypothesis, "hypothesis"), _text(reference, "reference")
    if not hypothesis.strip() or not reference.strip():
        return 0.0
    return float(CHRF().sentence_score(hypothesis, [reference]).score)
