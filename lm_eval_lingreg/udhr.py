"""The UDHR documents the generation and translation tasks read: openings to continue, and few-shot
translation prompts between two of the 30 languages.

The text is the one the perplexity tasks read (tasks/data/udhr, one line per section), so nothing is
downloaded. `lingreg_gen_<iso>` has one document per article (1-30); `lingreg_mt_<src>_<tgt>` translates
the articles that are one paragraph in both languages, with the shortest `SHOTS` of them as shots.
"""

from __future__ import annotations

import json

from lm_eval_lingreg.errors import UnknownLanguageError, UsageError
from lm_eval_lingreg.languages import LANGUAGES

__all__ = ["generation_docs", "translation_docs", "translation_split", "split_opening", "steering_docs"]

#: Prompt of a generation document: the opening of the article's first paragraph, about this share of it...
PROMPT_SHARE = 0.5
#: ...and at most this many characters.
PROMPT_MAX_CHARS = 200
#: Languages written without spaces between words: prompts are cut between characters.
UNSPACED = frozenset({"zh", "ja"})
#: Translation shots per prompt, taken from articles that are not translated.
SHOTS = 2


def _sections(lang: str) -> list[dict]:
    from lm_eval_lingreg.resources import tasks_dir

    if lang not in LANGUAGES:
        raise UnknownLanguageError(f"unknown language {lang!r}; the tasks cover {','.join(LANGUAGES)}")
    path = tasks_dir() / "data" / "udhr" / f"{lang}.jsonl"
    if not path.is_file():
        raise UsageError(f"no UDHR data for language {lang!r} at {path}; reinstall lm-eval-lingreg")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def split_opening(lang: str, text: str) -> tuple[str, str]:
    """(prompt, reference): the opening of the first paragraph, cut between words (between characters in
    Chinese and Japanese), and everything after it."""
    first = text.split("\n", 1)[0]
    want = min(PROMPT_MAX_CHARS, max(1, round(len(first) * PROMPT_SHARE)))
    if lang in UNSPACED:
        cut = want  # between characters
    else:
        spaces = [i for i, ch in enumerate(first) if ch == " " and i <= PROMPT_MAX_CHARS]
        if not spaces:
            cut = want
        else:
            cut = min(spaces, key=lambda i: (abs(i - want), i))
    return first[:cut].rstrip(), text[cut:].lstrip(" ")


def generation_docs(lang: str) -> list[dict]:
    """One document per UDHR article (1-30): its opening as the prompt, the rest as the reference."""
    rows = []
    for s in _sections(lang):
        if s["section"] == "preamble":
            continue
        prompt, reference = split_opening(lang, s["text"])
        rows.append({"lang": lang, "section": s["section"], "prompt": prompt, "reference": reference})
    return rows


def steering_docs(src: str, tgt: str) -> list[dict]:
    """One document per UDHR article (1-30): the opening in `src` as the prompt, and as the reference the rest
    of the article in `tgt` (what follows `tgt`'s own opening), which a continuation steered into `tgt` should
    resemble if it keeps the meaning."""
    if src == tgt:
        raise UsageError(f"a steering task needs two different languages, got {src}->{tgt}")
    wanted = {s["section"]: s["text"] for s in _sections(tgt) if s["section"] != "preamble"}
    rows = []
    for s in _sections(src):
        if s["section"] == "preamble" or s["section"] not in wanted:
            continue
        prompt, _ = split_opening(src, s["text"])
        _, reference = split_opening(tgt, wanted[s["section"]])
        rows.append({"src": src, "tgt": tgt, "section": s["section"], "prompt": prompt, "reference": reference})
    return rows


def _single_paragraph(lang: str) -> dict[str, str]:
    return {s["section"]: s["text"] for s in _sections(lang) if s["section"] != "preamble" and "\n" not in s["text"]}


def translation_split(src: str, tgt: str) -> tuple[list[str], list[str]]:
    """(shot articles, test articles) of a pair: articles of one paragraph in both languages; the `SHOTS`
    shortest (in the two languages together) are the shots, the rest are translated."""
    if src == tgt:
        raise UsageError(f"a translation pair needs two different languages, got {src}->{tgt}")
    a, b = _single_paragraph(src), _single_paragraph(tgt)
    common = [s for s in a if s in b]
    if len(common) <= SHOTS:
        raise UsageError(
            f"{src}->{tgt}: only {len(common)} UDHR articles are one paragraph in both languages; "
            f"a translation task needs {SHOTS} as shots and at least one to translate"
        )
    shots = sorted(sorted(common, key=lambda s: (len(a[s]) + len(b[s]), s))[:SHOTS], key=common.index)
    return shots, [s for s in common if s not in shots]


def translation_docs(src: str, tgt: str) -> list[dict]:
    """Few-shot translation prompts of one pair: the shots, then the article to translate."""
    shots, tests = translation_split(src, tgt)
    a, b = _single_paragraph(src), _single_paragraph(tgt)
    s_name, t_name = LANGUAGES[src].name, LANGUAGES[tgt].name
    head = f"Translate from {s_name} to {t_name}.\n\n" + "".join(f"{s_name}: {a[s]}\n{t_name}: {b[s]}\n\n" for s in shots)
    return [
        {"src": src, "tgt": tgt, "section": s, "prompt": f"{head}{s_name}: {a[s]}\n{t_name}:", "source": a[s], "reference": b[s], "shots": shots} for s in tests
    ]
