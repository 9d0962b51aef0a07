"""Calibration text: the offline default, the user's files, packed blocks, and clear errors."""

from __future__ import annotations

import json

import pytest

from lm_eval_lingreg.corpora import make_samples
from lm_eval_lingreg.errors import CorpusError


def test_corpus_errors_name_the_fix(tok, tmp_path):
    with pytest.raises(CorpusError, match="no Swahili"):
        make_samples(tok, "sw", 5)
    with pytest.raises(CorpusError, match="only 1000 sentences"):
        make_samples(tok, "en", 5000)
    with pytest.raises(CorpusError, match="blocks"):
        make_samples(tok, "en", 10**5, unit="blocks", seq_len=512)
    with pytest.raises(CorpusError, match="not found"):
        make_samples(tok, "en", 5, data=str(tmp_path / "nope"))


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"n": 0}, ">= 1"),
        ({"n": -5}, ">= 1"),
        ({"n": 3, "seq_len": 1}, "at least 2"),
        ({"n": 3, "unit": "blocks", "seq_len": 1}, "at least 2"),
        ({"n": 3, "unit": "pages"}, "unit"),
    ],
)
def test_nonsense_counts_are_refused(tok, kw, message):
    n = kw.pop("n")
    with pytest.raises(CorpusError, match=message):
        make_samples(tok, "en", n, **kw)


def test_non_utf8_text_is_one_clear_error(tok, tmp_path):
    (tmp_path / "sw.txt").write_bytes("Habari ya asubuhi, caf\xe9 na chai.\n".encode("latin-1") * 5)
    with pytest.raises(CorpusError, match="not UTF-8.*iconv"):
        make_samples(tok, "sw", 2, data=str(tmp_path))


def test_user_files_and_packed_blocks(tok, tmp_path):
    (tmp_path / "sw.txt").write_text("Habari ya asubuhi rafiki yangu.\n\nNinapenda kusoma vitabu.\n" * 30, encoding="utf-8")
    (tmp_path / "id.jsonl").write_text("\n".join(json.dumps({"text": f"Saya suka membaca buku nomor {i}."}) for i in range(40)), encoding="utf-8")
    s = make_samples(tok, "sw", 10, data=str(tmp_path))
    assert len(s.input_ids) == 10 and s.source.endswith("sw.txt")
    blocks = make_samples(tok, "id", 4, data=str(tmp_path), unit="blocks", seq_len=32)
    assert [len(b) for b in blocks.input_ids] == [32] * 4 and all(b[0] == tok.bos_token_id for b in blocks.input_ids)
    assert blocks.ids_sha256 != s.ids_sha256 and len(blocks.ids_sha256) == 64
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "id.jsonl").write_text('{"txt": "x"}\n')
    with pytest.raises(CorpusError, match="'text' field"):
        make_samples(tok, "id", 1, data=str(tmp_path / "bad"))


def test_documents_have_bos_and_eos_and_over_long_ones_are_dropped_not_cut(tok, tmp_path):
    (tmp_path / "en.txt").write_text("short one\n" + "a much longer line " * 40 + "\nanother short one\nthird\n", encoding="utf-8")
    docs = make_samples(tok, "en", 3, data=str(tmp_path), unit="documents", seq_len=24)
    assert len(docs.input_ids) == 3
    for ids in docs.input_ids:
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and len(ids) <= 24
        assert tok.decode(ids[1:-1]) in {"short one", "another short one", "third"}
    with pytest.raises(CorpusError, match=r"only 3 en documents fit in 24 tokens.*1 longer ones dropped"):
        make_samples(tok, "en", 4, data=str(tmp_path), unit="documents", seq_len=24)


@pytest.mark.parametrize("unit", ["sentences", "documents", "blocks"])
def test_a_smaller_draw_is_the_start_of_a_larger_one(tok, unit):
    """What cumulative checkpoints rely on: the first n of N samples are the n samples of a draw of n."""
    big = make_samples(tok, "es", 12, unit=unit, seq_len=32, seed=3)
    small = make_samples(tok, "es", 5, unit=unit, seq_len=32, seed=3)
    assert big.input_ids[:5] == small.input_ids


def test_unknown_unit_names_the_choices(tok):
    with pytest.raises(CorpusError, match="sentences, documents, blocks"):
        make_samples(tok, "es", 2, unit="paragraphs")
