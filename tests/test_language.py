"""Which language comes out: language identification, the metrics on hand-made outputs with known answers, the
generation and translation tasks (documents, YAMLs, lm-eval runs on a tiny model) and their reporting."""

from __future__ import annotations

import json
import math

import pytest
import yaml

from lm_eval_lingreg.confusion import chrf, foreign_words, language_metrics, script_of
from lm_eval_lingreg.errors import LingregError, UnknownLanguageError, UsageError
from lm_eval_lingreg.langid import OTHER, identify
from lm_eval_lingreg.languages import LANGUAGES

from helpers import REPO, bin_path, lingreg, lm_eval_results, run

TASKS = REPO / "tasks"


def _udhr(iso: str, article: int) -> str:
    return json.loads((TASKS / "data" / "udhr" / f"{iso}.jsonl").read_text(encoding="utf-8").splitlines()[article])["text"]


# language identification ---------------------------------------------------------------------------


def test_identify_names_each_of_the_30_languages_on_its_udhr_article():
    wrong = {iso: identify(_udhr(iso, 1))[0] for iso in LANGUAGES}
    wrong = {iso: got for iso, got in wrong.items() if got != iso}
    # Malay and Indonesian are close; the rest must be right on a whole article
    assert set(wrong) <= {"ms", "id"}, wrong


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   \n\t ",
        "12345 67.89 %%% --- !!!",
        "\ufffd\ufffd\ufffd",
        "सभी मनुष्यों को गौरव और अधिकारों के मामले में जन्मजात स्वतन्त्रता और समानता प्राप्त है।",  # Hindi: not one of the 30
        "มนุษย์ทั้งหลายเกิดมามีอิสระและเสมอภาคกันในเกียรติศักด[ศรี]และสิทธิ",  # Thai
    ],
)
def test_text_in_no_language_of_the_30_is_other(text):
    lang, confidence = identify(text)
    assert lang == OTHER
    assert 0.0 <= confidence <= 1.0


def test_empty_and_letterless_text_has_zero_confidence():
    assert identify("") == (OTHER, 0.0)
    assert identify("2024-01-01 12:00") == (OTHER, 0.0)


def test_bytes_are_decoded_and_bad_bytes_dropped():
    text = "Tous les êtres humains naissent libres et égaux en dignité et en droits."
    assert identify(b"\xff\xfe" + text.encode() + b"\x80")[0] == "fr"
    assert identify(b"\xff\xfe\x80") == (OTHER, 0.0)
    assert identify("\ud800" + text)[0] == "fr"  # a lone surrogate (from a broken decode) is dropped


def test_close_varieties_count_as_their_language():
    # the full model calls a repetitive list of Chinese words Wu Chinese; it is Chinese here
    assert identify("宗教、政治立场、年龄、性别、性别、民族、宗教、种族、性别、民族、宗教、种族")[0] == "zh"


def test_a_detector_that_cannot_be_loaded_is_one_clear_error(monkeypatch):
    import sys

    from lm_eval_lingreg import langid

    langid._detectors.cache_clear()
    monkeypatch.setitem(sys.modules, "py3langid.langid", None)
    try:
        with pytest.raises(langid.DetectorError, match=r"py3langid cannot be imported.*pip install"):
            identify("Bonjour tout le monde, comment allez-vous ?")
    finally:
        monkeypatch.undo()
        langid._detectors.cache_clear()
    assert identify("Bonjour tout le monde, comment allez-vous ?")[0] == "fr"


def test_identify_refuses_what_is_not_text():
    with pytest.raises(TypeError, match="str or bytes"):
        identify(42)


# metrics on hand-made outputs ------------------------------------------------------------------------

FR = "Tous les êtres humains naissent libres et égaux en dignité et en droits."
EN = "All human beings are born free and equal in dignity and rights."
RU = "Все люди рождаются свободными и равными в своем достоинстве и правах."


def test_an_output_in_the_prompt_language_passes_every_check():
    m = language_metrics("fr", FR + "\n" + "Ils sont doués de raison et de conscience.")
    assert (m["lang_fidelity"], m["line_pass"], m["word_pass"], m["detected_lang"]) == (1.0, 1.0, 1.0, "fr")
    assert m["detected_confidence"] > 0.9


def test_a_wrong_language_line_fails_the_line_check_but_not_the_word_check_in_the_same_script():
    m = language_metrics("fr", FR + "\n" + EN)
    assert m["line_pass"] == 0.0
    assert m["word_pass"] == 1.0  # English words in French are the same script: the word check cannot see them


def test_a_foreign_script_word_fails_the_word_check():
    assert foreign_words("ru", RU + " and rights") == ["and", "rights"]
    m = language_metrics("ru", RU + " rights")
    assert m["word_pass"] == 0.0 and m["lang_fidelity"] == 1.0
    assert foreign_words("en", EN + " достоинстве") == ["достоинстве"]
    assert foreign_words("zh", "人人生而自由ですね") == ["人人生而自由ですね"]  # kana are not Chinese...
    assert foreign_words("ja", "人人生而自由ですね") == []  # ...but are Japanese
    assert foreign_words("ko", "모든 인간은 태어날 때부터 自由") == ["自由"]
    assert foreign_words("vi", "Tất cả mọi người sinh ra đều được tự do") == []  # Latin with diacritics is Latin
    assert foreign_words("en", "ＡＢＣ full-width 123 !") == []  # full-width Latin is Latin; digits are no word


def test_a_mixed_line_is_judged_as_a_whole():
    # one line, mostly English with a French clause: the line check sees one line in one language
    m = language_metrics("en", EN + " Tous les êtres humains.")
    assert m["line_pass"] == 1.0 and m["lang_fidelity"] == 1.0


def test_an_empty_output_fails_everything():
    for out in ("", "   ", "\n\n", "123 456"):
        m = language_metrics("en", out)
        assert (m["lang_fidelity"], m["line_pass"], m["word_pass"], m["detected_lang"], m["detected_confidence"]) == (0.0, 0.0, 0.0, OTHER, 0.0), out
    assert chrf("", "reference") == 0.0


def test_lines_too_short_to_identify_are_not_judged():
    m = language_metrics("fr", FR + "\nOK\n2.")
    assert m["line_pass"] == 1.0
    m = language_metrics("fr", "OK")
    assert m["line_pass"] == 0.0  # nothing to judge is no pass


def test_non_utf8_bytes_in_an_output_are_dropped_before_judging():
    m = language_metrics("fr", (b"\xff" + FR.encode() + b"\xc3").decode("utf-8", errors="surrogateescape"))
    assert m["lang_fidelity"] == 1.0 and m["word_pass"] == 1.0


def test_chrf_is_100_for_the_reference_and_low_for_unrelated_text():
    assert chrf(FR, FR) == pytest.approx(100.0)
    assert chrf("xyz qqq", FR) < 5
    assert 0 < chrf(FR[:40], FR) < 100


def test_script_names():
    assert [script_of(c) for c in "aé日ひカ한яαமമ"] == ["LATIN", "LATIN", "HAN", "HIRAGANA", "KATAKANA", "HANGUL", "CYRILLIC", "GREEK", "TAMIL", "MALAYALAM"]


def test_process_results_of_the_tasks(monkeypatch):
    import importlib.util  # the tasks' module is loaded as lm-eval loads it, from its file

    spec = importlib.util.spec_from_file_location("language", TASKS / "language.py")
    tasks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tasks)
    doc = {"lang": "fr", "reference": "raison et de conscience et doivent agir les uns envers les autres"}
    got = tasks.process_generation(doc, [" raison et de conscience"])
    assert got["lang_fidelity"] == 1.0 and got["chrf"] > 90  # the reference is cut to the output's length
    doc = {"tgt": "fr", "reference": FR}
    got = tasks.process_translation(doc, [" " + FR + "\nEnglish: something else"])
    assert got["mt_chrf"] == pytest.approx(100.0) and got["mt_fidelity"] == 1.0  # only the first line is the translation
    assert tasks.most_common(["fr", "en", "fr"]) == "fr" and tasks.most_common([]) == ""
    doc = {"tgt": "fr", "reference": "raison et de conscience et doivent agir les uns envers les autres"}
    got = tasks.process_steering(doc, [" raison et de conscience"])
    assert got["steer_success"] == 1.0 and got["steer_chrf"] > 90 and got["steer_score"] == got["steer_chrf"]
    # fluent text of the wrong language scores 0 together, whatever its chrF; noise in the right one has a low chrF
    got = tasks.process_steering(doc, [" reason and conscience and should act towards one another"])
    assert got["steer_success"] == 0.0 and got["steer_score"] == 0.0 and got["detected_lang"] == "en"
    got = tasks.process_steering(doc, [" le chat mange une pomme verte dans le jardin du voisin"])
    assert got["steer_success"] == 1.0 and got["steer_score"] == got["steer_chrf"] < 30


# documents and task files ----------------------------------------------------------------------------


def test_generation_prompts_are_article_openings_and_the_reference_is_the_rest():
    from lm_eval_lingreg.udhr import generation_docs

    for iso in LANGUAGES:
        docs = generation_docs(iso)
        assert len(docs) == 30, iso
        for i, d in enumerate(docs, 1):
            text = _udhr(iso, i)
            assert d["prompt"] and d["reference"], (iso, i)
            assert text.startswith(d["prompt"]) and text.endswith(d["reference"]), (iso, i)
            assert len(d["prompt"]) <= 200


def test_translation_docs_use_other_articles_as_shots():
    from lm_eval_lingreg.language_tasks import SHIPPED_PAIRS
    from lm_eval_lingreg.udhr import SHOTS, translation_docs, translation_split

    assert len(SHIPPED_PAIRS) == 58
    for src, tgt in SHIPPED_PAIRS:
        shots, tests = translation_split(src, tgt)
        assert len(shots) == SHOTS and len(tests) >= 10 and not set(shots) & set(tests), (src, tgt)
    docs = translation_docs("en", "fr")
    assert docs[0]["prompt"].startswith("Translate from English to French.")
    assert docs[0]["prompt"].endswith(f"English: {docs[0]['source']}\nFrench:")
    assert docs[0]["reference"] not in docs[0]["prompt"]


def test_steering_docs_pair_an_opening_with_the_wanted_languages_rest_of_the_same_article():
    from lm_eval_lingreg.language_tasks import STEER_PAIRS, task_kind, task_row
    from lm_eval_lingreg.udhr import generation_docs, steering_docs

    assert len(STEER_PAIRS) == 29 and all(src == "en" for src, _ in STEER_PAIRS)
    for _, tgt in STEER_PAIRS:
        docs, en, wanted = steering_docs("en", tgt), generation_docs("en"), generation_docs(tgt)
        assert len(docs) == 30, tgt
        for d, e, w in zip(docs, en, wanted, strict=True):
            assert d["section"] == e["section"] == w["section"]
            assert d["prompt"] == e["prompt"] and d["reference"] == w["reference"] and d["tgt"] == tgt
    assert task_kind("lingreg_steer_en_zh") == "steer" and task_row("lingreg_steer_en_zh") == "en-zh"
    assert task_kind("lingreg_steer_en_en") is None and task_kind("lingreg_steer_en_xx") is None
    with pytest.raises(UsageError, match="two different languages"):
        steering_docs("fr", "fr")


def test_a_pair_without_enough_shots_is_one_clear_error(monkeypatch):
    from lm_eval_lingreg import udhr

    real = udhr._sections
    monkeypatch.setattr(udhr, "_sections", lambda lang: [{**s, "text": s["text"] + "\nmore"} if lang == "sw" else s for s in real(lang)])
    with pytest.raises(UsageError, match=r"en->sw: only 0 UDHR articles are one paragraph in both languages"):
        udhr.translation_split("en", "sw")
    with pytest.raises(UsageError, match="two different languages"):
        udhr.translation_split("fr", "fr")
    with pytest.raises(UnknownLanguageError):
        udhr.generation_docs("xx")


def test_the_shipped_task_files_are_current():
    from lm_eval_lingreg.language_tasks import shipped_files

    stale = [name for name, text in shipped_files().items() if not (TASKS / name).is_file() or (TASKS / name).read_text(encoding="utf-8") != text]
    assert not stale, f"run python scripts/build_language_tasks.py: {stale[:5]}"
    ours = {p.name for kind in ("gen", "mt", "steer") for p in TASKS.glob(f"lingreg_{kind}*.yaml")}
    assert ours == set(shipped_files()), ours ^ set(shipped_files())
    group = yaml.safe_load((TASKS / "lingreg_gen.yaml").read_text())
    assert group["task"] == [f"lingreg_gen_{iso}" for iso in LANGUAGES]


def test_pairs_parse_and_bad_pairs_are_named():
    from lm_eval_lingreg.language_tasks import parse_pairs

    assert parse_pairs("en-fr,fr<>de") == [("en", "fr"), ("fr", "de"), ("de", "fr")]
    assert len(parse_pairs("all<>all")) == 870
    assert len(parse_pairs("en<>all")) == 58
    for bad, msg in (("en", "write SRC-TGT"), ("en-en", "the same language"), ("en-xx", "unknown language"), (",", "no translation pair")):
        with pytest.raises(LingregError, match=msg):
            parse_pairs(bad)


def test_lingreg_tasks_writes_pairs_for_lm_eval(tmp_path):
    proc = lingreg("tasks", "--pairs", "fr<>de,en-fr", "-o", tmp_path / "t")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == ["lingreg_mt_de_fr.yaml", "lingreg_mt_fr_de.yaml"]
    assert "left out 1 that ship" in proc.stdout
    again = lingreg("tasks", "--pairs", "fr-de", "-o", tmp_path / "t")
    assert again.returncode == 2 and "pass --overwrite" in again.stderr
    into_shipped = lingreg("tasks", "--pairs", "fr-de", "-o", TASKS)
    assert into_shipped.returncode == 2 and "one of the inputs" in into_shipped.stderr


# through the harness on a tiny model -----------------------------------------------------------------


def test_generation_and_translation_run_in_process_and_report_with_intervals(tiny_lm, tmp_path):
    from lm_eval_lingreg.anatomy import scope_shapes
    from lm_eval_lingreg.evaluation import evaluate_conditions
    from lm_eval_lingreg.report import build_table
    from lm_eval_lingreg.results import ITEMS, load_runs
    from lm_eval_lingreg.selection import select_random

    region = select_random(scope_shapes(tiny_lm.model), 0.5, seed=0)
    tasks = ["lingreg_gen_en", "lingreg_gen_zh", "lingreg_mt_en_fr", "lingreg_steer_en_fr"]
    res = evaluate_conditions(tiny_lm, {"base": None, "half": region}, tasks=tasks, limit=2, output_dir=tmp_path, gen_kwargs={"max_gen_toks": 4}, batch_size=2)
    assert tiny_lm.batch_size_per_gpu == 1  # the batch size is restored
    items = res["base"][ITEMS]
    assert set(items) == {"lingreg_gen_en", "lingreg_gen_zh", "lingreg_mt_en_fr", "lingreg_steer_en_fr"}
    assert len(items["lingreg_gen_en"]["output"]) == 2 and len(items["lingreg_gen_en"]["detected_lang"]) == 2
    info = res["base"]["config"]["lingreg"]
    assert info["tokens_generated"] > 0 and info["generated_per_second"] > 0
    runs = load_runs([tmp_path])
    assert {r.label for r in runs} == {"base", "half"}
    df = build_table(runs, "lang_fidelity", ratio_to="base", ci=0.95)
    assert list(df.index) == ["Chinese (zh)", "English (en)", "Mean difference"]
    assert df.loc["English (en)", "base"].value == 0.0  # base - base
    df = build_table(runs, "mt_chrf", ci=0.95)
    cell = df.loc["English to French (en-fr)", "base"]
    assert cell.lo <= cell.value <= cell.hi and 0 <= cell.value <= 100
    df = build_table(runs, "steer_score", ratio_to="base", ci=0.95)
    assert df.loc["English to French (en-fr)", "base"].value == 0.0
    assert len(items["lingreg_steer_en_fr"]["steer_success"]) == 2


def test_bad_requests_for_the_new_tasks_are_one_clear_error(tiny_lm):
    from lm_eval_lingreg.evaluation import evaluate_conditions

    for kwargs, msg in (
        ({"tasks": ["lingreg_gen_xx"]}, "unknown task 'lingreg_gen_xx'"),
        ({"tasks": ["lingreg_mt_en_en"]}, "unknown task"),
        ({"tasks": ["lingreg_gen_en"], "limit": 0}, "limit must be a whole number >= 1"),
        ({"tasks": ["lingreg_gen_en"], "limit": 31}, "lingreg_gen_en: documents 0..30 do not exist: it has 30 UDHR documents"),
        ({"tasks": ["lingreg_mt_en_fr"], "first": 14, "limit": 1}, "it has 14 UDHR documents"),
        ({"tasks": ["lingreg_steer_en_fr"], "first": 30, "limit": 1}, "it has 30 UDHR documents"),
        ({"tasks": ["lingreg_steer_fr_zh"]}, "unknown task"),
        ({"tasks": []}, "no task to run"),
        ({"tasks": ["lingreg_gen_en"], "batch_size": 0}, "batch size must be a whole number"),
    ):
        with pytest.raises(UsageError, match=msg):
            evaluate_conditions(tiny_lm, {"base": None}, limit=kwargs.pop("limit", 1), **kwargs)


def test_lm_eval_cli_runs_a_generation_task_with_a_mask_and_logs_each_sample(tiny_model_dir, tmp_path):
    from lm_eval_lingreg.anatomy import scope_shapes
    from lm_eval_lingreg.region_io import save_region
    from lm_eval_lingreg.selection import select_random

    from helpers import make_tiny

    save_region(select_random(scope_shapes(make_tiny("llama")), 0.01, seed=0), tmp_path / "m.safetensors")
    cmd = [bin_path("lm_eval"), "--model", "hf-region-ablated", "--model_args", f"pretrained={tiny_model_dir},mask={tmp_path / 'm.safetensors'}"]
    cmd += [
        "--tasks",
        "lingreg_gen_zh",
        "--limit",
        "2",
        "--gen_kwargs",
        "max_gen_toks=4",
        "--device",
        "cpu",
        "--log_samples",
        "--output_path",
        str(tmp_path / "o"),
    ]
    proc = run(cmd)
    assert proc.returncode == 0, proc.stderr[-2000:]
    res = lm_eval_results(tmp_path / "o")
    assert set(res["results"]["lingreg_gen_zh"]) >= {"lang_fidelity,none", "line_pass,none", "word_pass,none", "chrf,none", "detected_lang,none"}
    assert res["config"]["lingreg"]["mask_sha256"]
    (samples,) = (tmp_path / "o").rglob("samples_lingreg_gen_zh_*.jsonl")
    rows = [json.loads(line) for line in samples.read_text().splitlines()]
    assert all({"detected_lang", "detected_confidence", "resps", "lang_fidelity"} <= set(r) for r in rows)
    table = lingreg("table", tmp_path / "o", "--ci", "95")
    assert table.returncode == 0 and "Chinese (zh)" in table.stdout, table.stderr


def test_results_with_impossible_generation_values_are_refused(tmp_path):
    from lm_eval_lingreg.errors import ReportError
    from lm_eval_lingreg.results import read_run

    path = tmp_path / "results.json"
    path.write_text(json.dumps({"results": {"lingreg_gen_en": {"lang_fidelity,none": 1.5}}, "config": {}}))
    with pytest.raises(ReportError, match=r"lang_fidelity 1.5, outside 0-1"):
        read_run(path)
    path.write_text(
        json.dumps({"results": {"lingreg_gen_en": {"chrf,none": 50.0}}, "config": {}, "lingreg_items": {"lingreg_gen_en": {"doc_id": [0, 1], "chrf": [1.0]}}})
    )
    with pytest.raises(ReportError, match="malformed per-output values"):
        read_run(path)
    path.write_text(json.dumps({"results": {"lingreg_gen_en": {"chrf,none": 50.0}}, "config": {}}))
    assert math.isclose(read_run(path).value("en", "chrf"), 50.0)
    steer = {"steer_success,none": 0.0, "steer_chrf,none": 0.0, "steer_score,none": 50.0}  # a score without an output in the language
    for forged in (steer, {**steer, "steer_success,none": 1.0, "steer_chrf,none": 20.0}):  # a score above its chrF
        path.write_text(json.dumps({"results": {"lingreg_steer_en_fr": forged}, "config": {}}))
        with pytest.raises(ReportError, match="never above steer_chrf"):
            read_run(path)
    path.write_text(json.dumps({"results": {"lingreg_steer_en_fr": {**steer, "steer_success,none": 0.5, "steer_chrf,none": 60.0}}, "config": {}}))
    assert read_run(path).value("en-fr", "steer_score") == 50.0


def test_a_rule_on_a_generation_metric_compares_by_difference(tmp_path):
    from lm_eval_lingreg.results import load_runs
    from lm_eval_lingreg.rules import apply_rules, load_rules

    for label, v in (("base", 0.9), ("cut", 0.2)):
        (tmp_path / label).mkdir()
        (tmp_path / label / "results.json").write_text(
            json.dumps({"results": {"lingreg_gen_en": {"lang_fidelity,none": v}}, "config": {"lingreg": {"condition": label}}})
        )
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - {condition: cut, metric: lang_fidelity, ratio_to: base, max: -0.5}\n  - {condition: cut, metric: lang_fidelity, min: 0.5}\n")
    rows = apply_rules(load_runs([tmp_path]), load_rules(rules))
    assert [r["ok"] for r in rows] == [True, False]
    assert rows[0]["value"] == pytest.approx(-0.7)


def test_lingreg_tasks_refuses_outputs_it_must_not_write(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    (tmp_path / "o" / "lingreg_mt_fr_it.yaml").mkdir(parents=True)
    for out, msg in (
        (TASKS / "sub", f"lies inside {TASKS}, which this command reads as a whole"),  # the shipped tasks are an input of every command
        (TASKS / "data", "is one of the inputs"),
        (tmp_path / "link", "is a symbolic link"),
        ("", "not a folder name"),
        ("a\nb", "not a folder name"),
    ):
        proc = lingreg("tasks", "--pairs", "fr-de", "-o", out)
        assert proc.returncode == 2 and msg in proc.stderr, (out, proc.stderr)
    proc = lingreg("tasks", "--pairs", "fr-de,fr-it", "-o", tmp_path / "o", "--overwrite")
    assert proc.returncode == 2 and "is a folder, link or special file" in proc.stderr
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["lingreg_mt_fr_it.yaml"]  # nothing written before the refusal
    assert not (TASKS / "sub").exists() and not list((tmp_path / "real").iterdir())
    proc = lingreg("tasks", "--pairs", "f" * 5000 + "-de", "-o", tmp_path / "p")
    assert proc.returncode == 2 and len(proc.stderr) < 300


def test_metric_functions_name_bad_arguments():
    for call, err in (
        (lambda: language_metrics("xx", "text"), UnknownLanguageError),
        (lambda: language_metrics("other", "text"), UnknownLanguageError),
        (lambda: foreign_words("EN", "text"), UnknownLanguageError),
        (lambda: chrf(None, "x"), TypeError),
        (lambda: chrf(["a"], "a"), TypeError),
    ):
        with pytest.raises(err):
            call()
    assert foreign_words("ru", b"hello") == ["hello"]
    from lm_eval_lingreg.language_tasks import parse_pairs

    for bad in (None, 3, b"en-fr"):
        with pytest.raises(UsageError, match="must be text"):
            parse_pairs(bad)


def test_modifier_letters_and_ordinals_are_not_foreign_words():
    assert foreign_words("ja", "コーヒーを飲みます") == []  # ー is the kana prolonged sound mark
    assert foreign_words("ja", "ｺｰﾋｰ") == []  # half-width kana
    assert foreign_words("uk", "мʼясо") == []  # the Ukrainian apostrophe is a modifier letter
    assert foreign_words("pt", "o 1º e a 2ª") == [] and foreign_words("en", "xⁿ") == []


def test_the_whole_output_is_judged_and_invisible_characters_do_not_hide_the_language():
    long = "Hello world, this is fine.\n" * 1000 + "Привет всем, как ваши дела сегодня\n"
    m = language_metrics("en", long)
    assert m["line_pass"] == 0.0 and m["word_pass"] == 0.0  # the Russian line at the end, past 20,000 characters
    assert identify("\u200b".join("Bonjour le monde, comment allez-vous aujourd'hui"))[0] == "fr"
    assert identify("Ｔｏｕｓ ｌｅｓ ｅｔｒｅｓ ｈｕｍａｉｎｓ ｎａｉｓｓｅｎｔ ｌｉｂｒｅｓ")[0] == "fr"


def test_per_output_values_must_agree_with_the_results(tmp_path):
    from lm_eval_lingreg.errors import ReportError
    from lm_eval_lingreg.results import read_run

    path = tmp_path / "results.json"

    def write(items: dict, value: float = 0.5) -> None:
        path.write_text(json.dumps({"results": {"lingreg_gen_en": {"lang_fidelity,none": value}}, "config": {}, "lingreg_items": {"lingreg_gen_en": items}}))

    write({"doc_id": [0, 1], "lang_fidelity": [1.0, 1.0]})
    with pytest.raises(ReportError, match="average 1, but the results say 0.5"):
        read_run(path)
    for items, msg in (
        ({"doc_id": [], "lang_fidelity": []}, "no outputs"),
        ({"doc_id": [0, 0], "lang_fidelity": [1.0, 0.0]}, "appears twice"),
        ({"doc_id": [0, 1], "lang_fidelity": ["1.0", 0.0]}, "not a number in 0-1"),
        ({"doc_id": [0, 1], "lang_fidelity": [True, 0.0]}, "not a number in 0-1"),
        ({"doc_id": [0.5, 1], "lang_fidelity": [1.0, 0.0]}, "not a whole number"),
    ):
        write(items)
        with pytest.raises(ReportError, match=msg):
            read_run(path)
    write({"doc_id": [0, 1], "lang_fidelity": [1.0, 0.0]})
    assert read_run(path).items["en"].values["lang_fidelity"] == [1.0, 0.0]
    path.write_text(json.dumps({"results": {"lingreg_gen_en": {"lang_fidelity,none": None}}, "config": {}}))
    assert math.isnan(read_run(path).value("en", "lang_fidelity"))  # not computed: kept as missing, not called out of range


def test_rules_and_baselines_that_no_run_could_meet_are_bad_input(tmp_path):
    from lm_eval_lingreg.errors import ReportError
    from lm_eval_lingreg.report import load_baseline
    from lm_eval_lingreg.rules import load_rules

    rules = tmp_path / "rules.yaml"
    for body, msg in (
        ("{condition: c, metric: lang_fidelity, languages: [en-fr], min: 0.5}", "reported per language codes"),
        ("{condition: c, metric: mt_chrf, languages: [fr], min: 5}", "reported per translation pairs"),
        ("{condition: c, metric: lang_fidelity, min: 2}", "outside 0..1"),
        ("{condition: c, metric: lang_fidelity, ratio_to: base, max: -1.5}", "outside -1..1"),
        ("{condition: c, metric: chrf, min: 1e400}", "beyond the range of a float"),
        ("{condition: c, metric: chrf, max: '1e400'}", "beyond the range of a float"),
        ("{condition: c, metric: bits_per_byte, max: 1:30}", "is not a number"),
        ("{condition: c, metric: bits_per_byte, max: 4_0}", "is not a number"),
    ):
        rules.write_text(f"rules:\n  - {body}\n")
        with pytest.raises(ReportError, match=msg):
            load_rules(rules)
    b = tmp_path / "b.json"
    for value, msg in ((5, "outside 0-1"), ("1e400", "beyond the range"), ("4_0", "not a number as written")):
        entry = {"source": "s", "model": "m", "condition": "c", "language": "en", "metric": "lang_fidelity", "value": value}
        b.write_text(json.dumps({"schema": "lm-eval-lingreg/baselines/v1", "values": [entry]}))
        with pytest.raises(ReportError, match=msg):
            load_baseline(b)
    b.write_text(
        '{"schema": "lm-eval-lingreg/baselines/v1", "values": [{"source": "s", "model": "m", "condition": "c", "language": "en", "metric": "token_perplexity", "value": 1e400}]}'
    )
    with pytest.raises(ReportError, match="beyond the range of a float"):
        load_baseline(b)


def test_a_rule_with_nothing_to_check_fails(tmp_path):
    from lm_eval_lingreg.results import load_runs
    from lm_eval_lingreg.rules import apply_rules, load_rules

    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "results.json").write_text(
        json.dumps({"results": {"lingreg_mt_en_fr": {"mt_chrf,none": 50.0}}, "config": {"lingreg": {"condition": "base"}}})
    )
    rules = tmp_path / "rules.yaml"
    rules.write_text("rules:\n  - {condition: base, metric: chrf, min: 99}\n  - {condition: base, metric: mt_chrf, min: 0}\n")
    rows = apply_rules(load_runs([tmp_path / "r"]), load_rules(rules))
    assert [r["ok"] for r in rows] == [False, True] and "has no chrf" in rows[0]["why"]
