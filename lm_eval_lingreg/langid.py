"""Offline language identification for the 30 languages: which language a text is written in.

The detector is py3langid 0.4 (BSD-3-Clause; its model ships inside the wheel, so nothing is
downloaded). It was chosen by measuring five candidates on software-interface translations that
are neither UDHR nor calibration text (bench/langid/RESULTS.md). Restricted to the 30 languages it
is the most accurate of them: 96.1% of ~50-character texts and 98.4% of ~200-character texts (macro
average), about 8,000 texts per second on one core. The two stages below, which can also answer
'other', measured 94.2% and 97.9% on the same texts (about 2,900 texts per second), and called
96-100% of Hindi, Thai, Hebrew, Catalan and Slovak texts 'other'.

`identify` works in two stages. The full model (140 languages) first decides whether the text is
in one of the 30 at all (close varieties such as Cantonese or Nynorsk count as their language,
see `VARIETIES`); if its best guess is outside them, the answer is `'other'`. Otherwise the
model restricted to the 30 picks the language, and its probability (normalised over the 30) is the
confidence. Text with no letters (empty, digits, punctuation, unreadable bytes) is `'other'` with
confidence 0.

Weak spots measured there: Malay is often taken for Indonesian (59% right at 50 characters),
Indonesian for Malay (78%), and Norwegian/Danish are 90-92% at 50 characters.
"""

from __future__ import annotations

import functools
import unicodedata
from typing import Any

from lm_eval_lingreg.errors import LingregError
from lm_eval_lingreg.languages import LANGUAGES

__all__ = ["OTHER", "identify", "DetectorError"]

#: What `identify` returns for text in none of the 30 languages (or in no language at all).
OTHER = "other"
#: Varieties the full model tells apart that count as one of the 30: Wu and Cantonese are written Chinese,
#: Nynorsk is Norwegian, Moroccan and Egyptian Arabic are Arabic. The restricted model then decides.
VARIETIES = {"wuu": "zh", "yue": "zh", "nn": "no", "ary": "ar", "arz": "ar"}
#: Characters considered per text; longer texts are identified by their first this many.
MAX_CHARS = 20_000


class DetectorError(LingregError):
    """The language detector cannot be loaded."""


@functools.cache
def _detectors() -> tuple[Any, Any]:
    try:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier
    except ImportError as e:
        raise DetectorError(f"the language detector py3langid cannot be imported ({e}); install it with: pip install 'py3langid>=0.4,<0.5'") from e
    try:
        full = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        ours = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        ours.set_languages(list(LANGUAGES))
    except (OSError, ValueError, EOFError, KeyError) as e:
        raise DetectorError(
            f"the py3langid model at {MODEL_FILE} cannot be read ({type(e).__name__}: {e}); reinstall it: pip install --force-reinstall 'py3langid>=0.4,<0.5'"
        ) from e
    return full, ours


def clean(text: str | bytes) -> str:
    """Text as it is judged: bytes decoded as UTF-8 (bad bytes dropped); replacement characters, lone
    surrogates, control and unassigned characters removed."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        text = bytes(text).decode("utf-8", errors="replace")
    if not isinstance(text, str):
        raise TypeError(f"expected text (str or bytes), got {type(text).__name__}")
    return "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cs", "Co", "Cn") and ch != "\ufffd")


def _for_detector(text: str) -> str:
    """What the detector reads: compatibility forms folded (full-width Latin is Latin), invisible format
    characters (zero-width spaces, soft hyphens, direction marks) removed, at most `MAX_CHARS` characters."""
    text = unicodedata.normalize("NFKC", text[: 2 * MAX_CHARS])
    return "".join(ch for ch in text if unicodedata.category(ch) != "Cf")[:MAX_CHARS]


def has_letters(text: str) -> bool:
    return any(unicodedata.category(ch).startswith("L") for ch in text)


def identify(text: str | bytes) -> tuple[str, float]:
    """The language `text` is written in: (ISO code of one of the 30, or 'other'; confidence 0-1).

    >>> identify("Tous les êtres humains naissent libres et égaux en dignité et en droits.")[0]
    'fr'
    """
    text = _for_detector(clean(text))
    if not has_letters(text):
        return OTHER, 0.0
    full, ours = _detectors()
    guess, confidence = full.classify(text)
    if guess not in LANGUAGES and guess not in VARIETIES:
        return OTHER, float(confidence)
    lang, confidence = ours.classify(text)
    return str(lang), float(confidence)
