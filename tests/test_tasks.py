"""The 30-language UDHR perplexity tasks and their vendored data."""

from __future__ import annotations

import json

import yaml

from lm_eval_lingreg.languages import LANGUAGES

from helpers import REPO

TASKS = REPO / "tasks"


def _docs(iso: str) -> list[dict]:
    return [json.loads(line) for line in (TASKS / "data" / "udhr" / f"{iso}.jsonl").read_text(encoding="utf-8").splitlines()]


def test_every_language_has_the_same_31_parallel_sections():
    expected = ["preamble"] + [f"article-{i}" for i in range(1, 31)]
    for iso in LANGUAGES:
        docs = _docs(iso)
        assert [d["section"] for d in docs] == expected, iso
        assert all(d["text"].strip() and d["lang"] == iso for d in docs), iso


def test_data_is_in_the_declared_script():
    # a cheap check that files were not mixed up: each sample is mostly in its own script
    scripts = {"zh": (0x4E00, 0x9FFF), "ar": (0x0600, 0x06FF), "ru": (0x0400, 0x04FF), "ko": (0xAC00, 0xD7AF), "ta": (0x0B80, 0x0BFF)}
    for iso, (lo, hi) in scripts.items():
        text = _docs(iso)[1]["text"]
        share = sum(lo <= ord(c) <= hi for c in text) / len(text)
        assert share > 0.5, (iso, share)


def test_group_lists_all_thirty_tasks_and_each_yaml_points_at_its_language():
    group = yaml.safe_load((TASKS / "lingreg_ppl.yaml").read_text())
    assert group["task"] == [f"lingreg_ppl_{iso}" for iso in LANGUAGES]
    for iso, lang in LANGUAGES.items():
        # parsed as YAML: an unquoted `lang: no` would be the boolean False
        config = yaml.safe_load((TASKS / f"lingreg_ppl_{iso}.yaml").read_text())
        assert config["task"] == f"lingreg_ppl_{iso}" and config["task_alias"] == lang.name
        assert config["dataset_kwargs"] == {"lang": iso}


def test_every_task_builds_through_lm_eval():
    from lm_eval.tasks import TaskManager, get_task_dict

    tasks = get_task_dict([f"lingreg_ppl_{iso}" for iso in LANGUAGES], TaskManager())  # the API of every supported lm-eval
    assert len(tasks) == 30
    for name, task in tasks.items():
        docs = list(task.test_docs())
        assert len(docs) == 31 and docs[0]["lang"] == name.rsplit("_", 1)[1], name


def test_manifest_hashes_match_the_vendored_files():
    import hashlib

    manifest = json.loads((TASKS / "data" / "udhr" / "MANIFEST.json").read_text())
    for iso in LANGUAGES:
        body = (TASKS / "data" / "udhr" / f"{iso}.jsonl").read_bytes()
        assert hashlib.sha256(body).hexdigest() == manifest[iso]["sha256"], iso


def test_extractor_reads_paragraphs_and_list_items():
    import importlib.util

    spec = importlib.util.spec_from_file_location("build", REPO / "scripts" / "build_udhr_data.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    html = (
        "<header><h2>P</h2><p>Whereas  one,</p><p>two</p></header>"
        '<article data-number="1"><h2>A1</h2><p>Lead:</p><ol><li>first</li><li><p>second</p></li></ol></article>'
    )
    assert build.extract(html) == [
        {"section": "preamble", "text": "Whereas one,\ntwo"},
        {"section": "article-1", "text": "Lead:\nfirst\nsecond"},
    ]


def test_token_perplexity_needs_a_token_count():
    import importlib.util

    spec = importlib.util.spec_from_file_location("task_utils", TASKS / "utils.py")
    utils = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(utils)
    from lm_eval_lingreg.models import TokenCountedLoglik

    doc = {"text": "a b c"}
    plain = utils.process_results(doc, [-6.0])
    assert "token_perplexity" not in plain and plain["bits_per_byte"] == (-6.0, 5)
    counted = utils.process_results(doc, [TokenCountedLoglik(-6.0, 3)])
    assert counted["token_perplexity"] == (-6.0, 3) and counted["word_perplexity"] == (-6.0, 3)
