"""Hostile and careless input to every command: exit 2, one `error:` line naming the problem and the fix, no traceback,
and nothing written, wiped or changed (the folder the command ran in is compared byte for byte before and after)."""

from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import REPO, lingreg

RESULTS = Path(__file__).resolve().parent / "data" / "results" / "regions"
NAME = "model.layers.0.mlp.up_proj.weight"
HEADER = {"format": "lm-eval-lingreg/region", "format_version": "1", "encoding": "delta-leb128", "region": "{}"}


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir") for p in sorted(root.rglob("*"))}


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def _pt(path: Path, obj) -> Path:
    torch.save(obj, path)
    return path


def _st(path: Path, shapes, counts, data=b"\x00", **header) -> Path:
    from safetensors.numpy import save_file

    meta = {**HEADER, "shapes": shapes if isinstance(shapes, str) else json.dumps(shapes), "counts": json.dumps(counts), **header}
    save_file({NAME: np.frombuffer(data, dtype=np.uint8)}, str(path), metadata=meta)
    return path


def _results(path: Path, mutate) -> Path:
    data = json.loads((RESULTS / "base" / "results.json").read_text())
    mutate(data)
    path.mkdir(parents=True, exist_ok=True)
    (path / "results.json").write_text(json.dumps(data))
    return path


def _baseline(path: Path, value) -> Path:
    path.write_text(
        json.dumps(
            {
                "schema": "lm-eval-lingreg/baselines/v1",
                "values": [{"source": "s", "model": "m", "condition": "base", "language": "en", "metric": "token_perplexity", "value": value}],
            }
        )
    )
    return path


_ENTRY = {"source": "s", "model": "m", "condition": "base", "language": "en", "metric": "token_perplexity", "value": 5.0}


def _victim(path: Path) -> Path:
    path.mkdir()
    (path / "notes.txt").write_text("mine")
    return path


def _official_dir(path: Path, meta: str | None = None, tensor=None) -> Path:
    path.mkdir()
    torch.save(tensor if tensor is not None else torch.zeros(4, dtype=torch.bool), path / f"{NAME}.pt")
    if meta is not None:
        (path / "region.json").write_text(meta)
    return path


def _nested(path: Path) -> Path:
    path.write_text("[" * 5000 + "]" * 5000)
    return path


# (id, argv builder given (tmp, tiny model dir), expected message) ------------------------------------------------

MASKS = [
    ("pickle-payload", lambda t, m: ["mask", "info", _pt_raw(t / "evil.pt")], "refused to load"),
    ("empty-pt", lambda t, m: ["mask", "info", _pt(t / "e.pt", {})], "holds no masks"),
    ("float-indices", lambda t, m: ["mask", "info", _pt(t / "f.pt", {NAME: torch.tensor([1.0, 2.0])})], "bool mask or a 1-D integer"),
    ("shapes-string", lambda t, m: ["mask", "info", _pt(t / "s.pt", {NAME: torch.tensor([1]), "__shapes__": "12"})], "'__shapes__' must be a dict"),
    ("shapes-list", lambda t, m: ["mask", "info", _pt(t / "l.pt", {NAME: torch.tensor([1]), "__shapes__": [[4, 4]]})], "'__shapes__' must be a dict"),
    (
        "metadata-list",
        lambda t, m: ["mask", "info", _pt(t / "md.pt", {NAME: torch.zeros(2, dtype=torch.bool), "__metadata__": [1]})],
        "'__metadata__' must be a dict",
    ),
    (
        "escaping-name",
        lambda t, m: ["mask", "convert", _pt(t / "x.pt", {"../ESCAPED": torch.zeros(2, dtype=torch.bool)}), t / "out", "--format", "official"],
        "invalid parameter name",
    ),
    (
        "absolute-name",
        lambda t, m: ["mask", "convert", _pt(t / "y.pt", {"/abs/X": torch.zeros(2, dtype=torch.bool)}), t / "out", "--format", "official"],
        "invalid parameter name",
    ),
    ("garbage-safetensors", lambda t, m: ["mask", "info", _bytes(t / "g.safetensors", b"\x00\x01garbage")], "cannot read"),
    ("weights-not-region", lambda t, m: ["mask", "info", _weights(t / "w.safetensors")], "not a region file"),
    ("count-bomb", lambda t, m: ["mask", "info", _st(t / "c.safetensors", {NAME: [4, 4]}, {NAME: 10**9})], "declares 1000000000 entries"),
    ("shape-bomb", lambda t, m: ["mask", "info", _st(t / "h.safetensors", {NAME: [10**12]}, {NAME: 1})], "more than any real parameter"),
    ("shapes-not-json", lambda t, m: ["mask", "info", _st(t / "j.safetensors", "{oops", {NAME: 1})], "not valid JSON"),
    ("shapes-not-object", lambda t, m: ["mask", "info", _st(t / "k.safetensors", "[1]", {NAME: 1})], "must be a JSON object"),
    ("truncated-varint", lambda t, m: ["mask", "info", _st(t / "v.safetensors", {NAME: [4, 4]}, {NAME: 1}, data=b"\x80")], "v.safetensors: truncated"),
    ("index-out-of-range", lambda t, m: ["mask", "info", _pt(t / "r.pt", {NAME: torch.tensor([16]), "__shapes__": {NAME: [4, 4]}})], "out of range"),
    ("unknown-suffix", lambda t, m: ["mask", "info", _bytes(t / "m.npz", b"x")], "unknown region format"),
    ("missing-mask", lambda t, m: ["mask", "info", t / "nope.safetensors"], "not found"),
    ("official-meta-list", lambda t, m: ["mask", "info", _official_dir(t / "off", meta="[1]")], "expected a JSON object"),
    ("official-not-bool", lambda t, m: ["mask", "info", _official_dir(t / "off2", tensor=torch.zeros(4))], "expected a bool tensor"),
    (
        "compare-shapes",
        lambda t, m: [
            "mask",
            "compare",
            _pt(t / "a.pt", {NAME: torch.zeros(4, 4, dtype=torch.bool)}),
            _pt(t / "b.pt", {NAME: torch.zeros(2, 8, dtype=torch.bool)}),
        ],
        "differ in shape",
    ),
    ("convert-onto-folder", lambda t, m: ["mask", "convert", "core", _victim(t / "victim")], "--overwrite"),
    ("convert-onto-dot", lambda t, m: ["mask", "convert", "mono-ar-1", "."], "not a valid output name"),
    ("convert-onto-dotdot", lambda t, m: ["mask", "convert", "mono-ar-1", ".."], "not a valid output name"),
    ("convert-dir-onto-file", lambda t, m: ["mask", "convert", "mono-ar-1", _bytes(t / "plainfile", b"x"), "--format", "official"], "not a folder"),
    ("dense-bomb", lambda t, m: ["mask", "convert", _st(t / "big.safetensors", {NAME: [60000, 60000]}, {NAME: 1}), t / "big.pt"], "dense bool masks needs"),
    ("extract-onto-folder", lambda t, m: ["extract", "core", "--scores", t / "noscores", "--out", _victim(t / "victim2")], "--overwrite"),
    ("extract-no-scores", lambda t, m: ["extract", "core", "--scores", t / "noscores", "--out", t / "r.safetensors"], "not found"),
]

SPECS = [
    ("deep-spec", lambda t, m: ["generate", "--pretrained", m, "--prompt", "x", "--compare", _nested(t / "spec.json")], "nested too deeply"),
    ("unknown-op", lambda t, m: ["generate", "--pretrained", m, "--prompt", "x", "--compare", "layer=0:dim=1:op=explode"], "unknown op"),
    ("nan-value", lambda t, m: ["generate", "--pretrained", m, "--prompt", "x", "--compare", "layer=0:dim=1:op=mul:value=nan"], "finite"),
    ("typo-key", lambda t, m: ["generate", "--pretrained", m, "--prompt", "x", "--compare", "layer=0:dim=1:op=mul:vaule=2"], "did you mean 'value'"),
    ("missing-spec-file", lambda t, m: ["generate", "--pretrained", m, "--prompt", "x", "--compare", t / "nope.yaml"], "not found"),
    ("layer-out-of-range", lambda t, m: ["generate", "--pretrained", m, "--prompt", "x", "--compare", "layer=7:dim=1:op=zero"], "layer 7 out of range"),
    ("dim-out-of-range", lambda t, m: ["scan", "--pretrained", m, "--dims", "99", "--langs", "en"], "out of range"),
    ("unknown-param", lambda t, m: ["scan", "--pretrained", m, "--dims", "3", "--param", "model.layers.0.nope.weight", "--langs", "en"], "no such parameter"),
    ("top-without-mask", lambda t, m: ["scan", "--pretrained", m, "--dims", "top:3", "--langs", "en"], "needs a region"),
    (
        "overflowing-mask-value",
        lambda t, m: ["apply", "--pretrained", m, "--mask", _tiny_mask(t, m), "--out", t / "abl", "--mask-value", "1e39"],
        "overflows float32",
    ),
    ("empty-prompt", lambda t, m: ["generate", "--pretrained", m, "--prompt", ""], "--prompt is empty"),
    ("negative-new-tokens", lambda t, m: ["generate", "--pretrained", m, "--prompt", "x", "--max-new-tokens", "-1"], "must be at least 1"),
    ("zero-docs", lambda t, m: ["scan", "--pretrained", m, "--docs", "0"], "must be at least 1"),
    ("mean-with-value", lambda t, m: ["scan", "--pretrained", m, "--on", "activation", "--op", "mean", "--value", "5"], "--op mean takes no --value"),
    ("ci-level-1", lambda t, m: ["check", RESULTS, "--rules", REPO / "baselines" / "rules-bundled.yaml", "--ci", "1"], "confidence level 1: give a fraction"),
    ("bad-filter", lambda t, m: ["params", "--pretrained", m, "--filter", "("], "not a valid regular expression"),
    ("filter-matching-nothing", lambda t, m: ["params", "--pretrained", m, "--filter", "zzz"], "matches no parameter"),
]

SCORING = [
    ("zero-samples", lambda t, m: ["score", "--pretrained", m, "--langs", "ar", "--samples", "0", "--out", t / "s"], "must be at least 1"),
    ("negative-samples", lambda t, m: ["score", "--pretrained", m, "--langs", "ar", "--samples", "-5", "--out", t / "s"], "must be at least 1"),
    ("zero-seq-len", lambda t, m: ["score", "--pretrained", m, "--langs", "ar", "--seq-len", "0", "--out", t / "s"], "must be at least 1"),
    (
        "one-token-blocks",
        lambda t, m: ["score", "--pretrained", m, "--langs", "ar", "--unit", "blocks", "--seq-len", "1", "--samples", "2", "--out", t / "s"],
        "at least 2",
    ),
    ("zero-batch", lambda t, m: ["score", "--pretrained", m, "--langs", "ar", "--batch-size", "0", "--out", t / "s"], "must be at least 1"),
    ("bad-scope", lambda t, m: ["score", "--pretrained", m, "--langs", "ar", "--scope", "(", "--out", t / "s"], "not a valid regular expression"),
    (
        "empty-scope",
        lambda t, m: ["score", "--pretrained", m, "--langs", "ar", "--samples", "2", "--scope", "^nothing$", "--out", t / "s"],
        "matches the scope",
    ),
    ("latin1-corpus", lambda t, m: ["score", "--pretrained", m, "--langs", "sw", "--samples", "2", "--data", _latin1(t), "--out", t / "s"], "not UTF-8"),
    ("missing-corpus", lambda t, m: ["score", "--pretrained", m, "--langs", "ar", "--samples", "2", "--data", t / "nowhere", "--out", t / "s"], "not found"),
    ("jsonl-without-text", lambda t, m: ["score", "--pretrained", m, "--langs", "sw", "--samples", "1", "--data", _jsonl(t), "--out", t / "s"], "'text' field"),
    ("missing-model", lambda t, m: ["score", "--pretrained", t / "no-model", "--langs", "ar", "--samples", "2", "--out", t / "s"], "cannot load model"),
    ("unknown-language", lambda t, m: ["score", "--pretrained", m, "--langs", "xx", "--out", t / "s"], "unknown language code"),
    ("unwritable-out", lambda t, m: ["score", "--pretrained", m, "--langs", "ar", "--samples", "2", "--out", "/sys/lingreg-scores"], "not writable"),
    ("out-is-a-file", lambda t, m: ["score", "--pretrained", m, "--langs", "ar", "--samples", "2", "--out", _bytes(t / "afile", b"x")], "not a folder"),
    ("zero-logits-budget", lambda t, m: ["score", "--pretrained", m, "--langs", "ar", "--max-logits-mb", "0", "--out", t / "s"], "must be more than 0"),
    ("unknown-backend", lambda t, m: ["score", "--pretrained", m, "--langs", "ar", "--backend", "mpi", "--out", t / "s"], "invalid choice"),
    (
        "checkpoints-folder-is-a-link",
        lambda t, m: ["score", "--pretrained", m, "--langs", "ar", "--samples", "4", "--checkpoints", "2", "--out", _linked_checkpoints(t)],
        "is a link",
    ),
    (
        "checkpoint-past-the-end",
        lambda t, m: ["score", "--pretrained", m, "--langs", "ar", "--samples", "4", "--checkpoints", "2,9", "--out", t / "s"],
        "between 1 and --samples",
    ),
    (
        "checkpoints-not-numbers",
        lambda t, m: ["score", "--pretrained", m, "--langs", "ar", "--checkpoints", "10,x", "--out", t / "s"],
        "comma-separated counts",
    ),
    (
        "documents-all-too-long",
        lambda t, m: ["score", "--pretrained", m, "--langs", "ar", "--samples", "2", "--unit", "documents", "--seq-len", "3", "--out", t / "s"],
        "raise --seq-len",
    ),
    ("official-dump-pickle", lambda t, m: ["import-scores", _dump(t, _Payload()), "--lang", "ar", "--out", t / "imp"], "refused to load"),
    (
        "official-dump-expanded",
        lambda t, m: ["import-scores", _dump(t, torch.zeros(1).expand(10**9)), "--lang", "ar", "--out", t / "imp"],
        "holds",
    ),
    (
        "official-dump-not-scores",
        lambda t, m: ["import-scores", _dump(t, torch.zeros(4, dtype=torch.bool)), "--lang", "ar", "--out", t / "imp"],
        "floating-point",
    ),
    ("official-dump-no-files", lambda t, m: ["import-scores", _victim(t / "empty-dump"), "--lang", "ar", "--out", t / "imp"], "official scorer's layout"),
    ("official-dump-unknown-lang", lambda t, m: ["import-scores", _dump(t, torch.zeros(4)), "--lang", "xx", "--out", t / "imp"], "unknown language"),
    (
        "monolingual-random",
        lambda t, m: ["extract", "monolingual", "--scores", t, "--lang", "ar", "--which", "random", "--out", t / "x.safetensors"],
        "top or bottom",
    ),
]


def _linked_checkpoints(t: Path) -> Path:
    (t / "s").mkdir()
    (t / "elsewhere").mkdir()
    (t / "s" / "checkpoints").symlink_to(t / "elsewhere")
    return t / "s"


def _dump(t: Path, obj) -> Path:
    d = t / "dump" / "grad-mul-param_checkpoint_100"
    d.mkdir(parents=True)
    torch.save(obj, d / f"{NAME}.pt")
    return t / "dump"


REPORTS = [
    ("config-is-a-list", lambda t, m: ["table", _results(t / "r1", lambda d: d.__setitem__("config", [1]))], "'config' must be a JSON object"),
    ("truncated-results", lambda t, m: ["table", _bytes(t / "results.json", (RESULTS / "base" / "results.json").read_bytes()[:500])], "not valid JSON"),
    (
        "negative-perplexity",
        lambda t, m: ["table", _results(t / "r2", lambda d: d["results"]["lingreg_ppl_en"].__setitem__("token_perplexity,none", -2.0))],
        "perplexities are >= 1",
    ),
    (
        "zero-perplexity",
        lambda t, m: [
            "check",
            _results(t / "r2z", lambda d: d["results"]["lingreg_ppl_en"].__setitem__("token_perplexity,none", 0)),
            "--baseline",
            _baseline(t / "b.json", 5.0),
        ],
        "token_perplexity 0; perplexities are >= 1",
    ),
    ("rule-min-abc", lambda t, m: ["check", RESULTS, "--rules", _text(t / "r.yaml", "rules:\n  - {condition: base, min: abc}\n")], "is not a number"),
    (
        "rule-min-above-max",
        lambda t, m: ["check", RESULTS, "--rules", _text(t / "r.yaml", "rules:\n  - {condition: base, min: 5, max: 1}\n")],
        "no value can pass",
    ),
    ("rule-unknown-key", lambda t, m: ["check", RESULTS, "--rules", _text(t / "r.yaml", "rules:\n  - {condition: base, mni: 3}\n")], "unknown rule key"),
    ("rule-bad-yaml", lambda t, m: ["check", RESULTS, "--rules", _text(t / "r.yaml", "rules: [\n")], "not valid"),
    (
        "rule-unknown-language",
        lambda t, m: ["check", RESULTS, "--rules", _text(t / "r.yaml", "rules:\n  - {condition: base, max: 3, languages: [xx]}\n")],
        "unknown language code",
    ),
    ("baseline-list-value", lambda t, m: ["check", RESULTS, "--baseline", _baseline(t / "b.json", [1])], "not a number"),
    ("baseline-nan-value", lambda t, m: ["check", RESULTS, "--baseline", _baseline(t / "b.json", "nan")], "NaN"),
    ("baseline-no-schema", lambda t, m: ["check", RESULTS, "--baseline", _text(t / "b.json", '{"values": []}')], "schema"),
    (
        "baseline-conflicting-duplicates",
        lambda t, m: [
            "check",
            RESULTS,
            "--baseline",
            _text(t / "b.json", json.dumps({"schema": "lm-eval-lingreg/baselines/v1", "values": [_ENTRY, {**_ENTRY, "value": 7.0}]})),
        ],
        "from the same source two values",
    ),
    (
        "baseline-of-nan-runs",
        lambda t, m: [
            "baseline",
            _results(t / "rn", lambda d: [r.__setitem__("token_perplexity,none", "nan") for r in d["results"].values()]),
            "-o",
            t / "b.json",
            "--source",
            "x",
        ],
        "nothing to record",
    ),
    ("ci-level-100", lambda t, m: ["check", RESULTS, "--rules", REPO / "baselines" / "rules-bundled.yaml", "--ci", "100"], "confidence level 100: give"),
    ("region-unknown-suffix", lambda t, m: ["mask", "convert", "core", t / "m.txt"], "names no region format"),
    ("rtol-nan", lambda t, m: ["check", RESULTS, "--rules", REPO / "baselines" / "rules-bundled.yaml", "--rtol", "nan"], "finite number >= 0"),
    ("rtol-negative", lambda t, m: ["check", RESULTS, "--rules", REPO / "baselines" / "rules-bundled.yaml", "--rtol", "-1"], "finite number >= 0"),
    ("nothing-checked", lambda t, m: ["check", RESULTS, "--baseline", _baseline_other(t / "b.json")], "nothing was checked"),
    ("unknown-metric", lambda t, m: ["table", RESULTS, "--metric", "accuracy"], "invalid choice"),
    ("missing-results", lambda t, m: ["table", t / "nowhere"], "no such file or directory"),
    ("bad-label", lambda t, m: ["table", RESULTS, "--label", "nolabel"], "expected PATH=LABEL"),
]

OUTPUTS = [
    ("train-onto-folder", lambda t, m: ["train", "--pretrained", m, "--lang", "en", "--steps", "1", "--out", _victim(t / "ckpt")], "--overwrite"),
    ("apply-onto-dot", lambda t, m: ["apply", "--pretrained", m, "--mask", _tiny_mask(t, m), "--out", "."], "not a valid output name"),
    (
        "apply-onto-its-model",
        lambda t, m: ["apply", "--pretrained", m, "--mask", _tiny_mask(t, m), "--out", m, "--overwrite"],
        "is one of the inputs",
    ),
    ("train-onto-its-model", lambda t, m: ["train", "--pretrained", m, "--lang", "en", "--steps", "1", "--out", m, "--overwrite"], "is one of the inputs"),
    ("table-unwritable", lambda t, m: ["table", RESULTS, "-o", "/sys/lingreg-table.md"], "not writable"),
    ("dims-json-is-folder", lambda t, m: ["dims", "mono-ar-1", "--json", _victim(t / "jsondir")], "is a folder"),
    ("demo-output-is-file", lambda t, m: ["demo", "--pretrained", m, "--langs", "en", "--output-path", _bytes(t / "demo.txt", b"x")], "not a folder"),
    ("forget-same-condition-twice", lambda t, m: ["forget", "--pretrained", m, "--conditions", "none,none", "-o", t / "f"], "distinct conditions"),
    ("plot-into-sys", lambda t, m: ["plot", "--mask", "mono-ar-1", "-o", "/sys/x.png"], "not writable"),
    ("baseline-into-sys", lambda t, m: ["baseline", RESULTS, "-o", "/sys/b.json", "--source", "x"], "not writable"),
    ("reproduce-unknown-experiment", lambda t, m: ["reproduce", "--only", "nothing", "--out", t / "r"], "unknown experiment"),
    ("train-bad-lr", lambda t, m: ["train", "--pretrained", m, "--lang", "en", "--lr", "nan", "--out", t / "c"], "finite number"),
]


def _pt_raw(path: Path) -> Path:
    with open(path, "wb") as f:
        pickle.dump({NAME: _Payload()}, f)
    return path


def _bytes(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _text(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _weights(path: Path) -> Path:
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(path))
    return path


def _latin1(t: Path) -> Path:
    d = t / "latin1"
    d.mkdir()
    (d / "sw.txt").write_bytes("Habari ya asubuhi caf\xe9.\n".encode("latin-1") * 20)
    return d


def _jsonl(t: Path) -> Path:
    d = t / "jsonl"
    d.mkdir()
    (d / "sw.jsonl").write_text('{"txt": "x"}\n')
    return d


def _baseline_other(path: Path) -> Path:
    path.write_text(
        json.dumps(
            {
                "schema": "lm-eval-lingreg/baselines/v1",
                "values": [{"source": "s", "model": "m", "condition": "some-other-run", "language": "en", "metric": "token_perplexity", "value": 3}],
            }
        )
    )
    return path


def _tiny_mask(t: Path, model_dir: str) -> Path:
    from transformers import AutoConfig

    from lm_eval_lingreg.region_io import save_region
    from lm_eval_lingreg.regions import Region

    cfg = AutoConfig.from_pretrained(model_dir)
    name = "model.layers.0.mlp.up_proj.weight"
    return save_region(Region.from_indices({name: [0, 5]}, {name: (cfg.intermediate_size, cfg.hidden_size)}), t / "tiny.safetensors")


def _fifo(path: Path) -> Path:
    os.mkfifo(path)
    return path


def _stride0(path: Path) -> Path:
    return _pt(path, {NAME: torch.ones(1, 1, dtype=torch.bool).expand(60000, 60000)})


def _score_dir(t: Path, model_dir: str) -> Path:
    out = t / "scores"
    assert lingreg("score", "--pretrained", model_dir, "--langs", "ar,es", "--samples", "2", "--out", out, "--device", "cpu").returncode == 0
    return out


def _bad_scores(t: Path, kind: str) -> Path:
    from lm_eval_lingreg.scores import save_scores

    out = t / f"scores-{kind}"
    cfg = {"model": "m"}
    if kind == "shapes":
        save_scores(out, "ar", {NAME: torch.ones(4, 4)}, {}, cfg)
        save_scores(out, "es", {NAME: torch.ones(2, 8)}, {}, cfg)
    else:
        save_scores(out, "ar", {NAME: torch.full((4, 4), float("nan"))}, {}, cfg)
        save_scores(out, "es", {NAME: torch.ones(4, 4)}, {}, cfg)
    return out


def _model_copy(t: Path, model_dir: str, truncate: bool) -> Path:
    import shutil

    out = t / "model-copy"
    shutil.copytree(model_dir, out)
    data = (out / "model.safetensors").read_bytes()
    (out / "model.safetensors").write_bytes(data[: len(data) // 2])
    return out


def _experiment(t: Path, content: str) -> Path:
    (t / "r" / "regions").mkdir(parents=True)
    (t / "r" / "regions" / "experiment.json").write_text(content)
    return t / "r"


SECOND = [
    ("stride0-pt-bomb", lambda t, m: ["mask", "info", _stride0(t / "e.pt")], "bytes of data"),
    ("stride0-official-bomb", lambda t, m: ["mask", "info", _official_dir(t / "off3", tensor=torch.ones(1, dtype=torch.bool).expand(10**9))], "bytes of data"),
    ("range-bomb", lambda t, m: ["generate", "--pretrained", m, "--prompt", "x", "--compare", "layer=0:dims=0-150000000:op=zero"], "a range of"),
    ("layer-range-bomb", lambda t, m: ["scan", "--pretrained", m, "--layer", "0-999999999999", "--dims", "1", "--langs", "en"], "a range of"),
    (
        "dims-layer-bomb",
        lambda t, m: ["dims", _pt(t / "d.pt", {"model.layers.999999999.input_layernorm.weight": torch.zeros(4096, dtype=torch.bool)})],
        "more than any real model",
    ),
    ("fifo-mask", lambda t, m: ["mask", "info", _fifo(t / "x.safetensors")], "not a regular file"),
    ("fifo-results", lambda t, m: ["table", _fifo_results(t)], "not a regular file"),
    (
        "endless-generation",
        lambda t, m: ["generate", "--pretrained", m, "--prompt", "All", "--max-new-tokens", "1000000000000"],
        "more than the model's context",
    ),
    (
        "forget-into-a-user-folder",
        lambda t, m: ["forget", "--pretrained", m, "--lang", "en", "--conditions", "none", "--steps", "1", "-o", _victim(t / "victim3")],
        "--overwrite",
    ),
    (
        "demo-into-a-user-folder",
        lambda t, m: ["demo", "--pretrained", m, "--langs", "en", "--limit", "1", "--output-path", _victim(t / "victim4")],
        "--overwrite",
    ),
    ("table-onto-its-input", lambda t, m: ["table", _results(t / "runs", lambda d: None), "-o", t / "runs" / "results.json"], "is one of the inputs"),
    (
        "baseline-onto-its-input",
        lambda t, m: ["baseline", _results(t / "runs2", lambda d: None), "-o", t / "runs2" / "results.json", "--source", "x"],
        "is one of the inputs",
    ),
    (
        "extract-onto-a-score-file",
        lambda t, m: ["extract", "core", "--scores", _score_dir(t, m), "--langs", "ar,es", "--out", t / "scores" / "ar.safetensors"],
        "is one of the inputs",
    ),
    ("json-and-plot-same-file", lambda t, m: ["dims", "mono-ar-1", "--json", t / "same.png", "--plot", t / "same.png"], "same file"),
    ("unknown-figure-format", lambda t, m: ["plot", "--mask", "mono-ar-1", "-o", t / "new" / "deeper" / "p.xyz"], "cannot draw a .xyz"),
    (
        "metric-is-text",
        lambda t, m: [
            "check",
            _results(t / "r3", lambda d: d["results"]["lingreg_ppl_en"].__setitem__("token_perplexity,none", "abc")),
            "--baseline",
            REPO / "baselines" / "gemma-3-270m-regions.json",
        ],
        "not a number",
    ),
    (
        "metric-row-is-a-list",
        lambda t, m: [
            "check",
            _results(t / "r4", lambda d: d["results"].__setitem__("lingreg_ppl_en", [1, 2])),
            "--rules",
            REPO / "baselines" / "rules-bundled.yaml",
        ],
        "must be a JSON object",
    ),
    (
        "metric-400-digits",
        lambda t, m: ["table", _results(t / "r5", lambda d: d["results"]["lingreg_ppl_en"].__setitem__("token_perplexity,none", 10**400))],
        "not a number",
    ),
    ("rule-condition-null", lambda t, m: ["check", RESULTS, "--rules", _text(t / "r.yaml", "rules:\n  - {condition: null, max: 3}\n")], "needs `condition`"),
    ("baseline-unknown-language", lambda t, m: ["check", RESULTS, "--strict", "--baseline", _baseline_lang(t / "b.json")], "unknown language code"),
    ("baseline-huge-value", lambda t, m: ["check", RESULTS, "--baseline", _baseline(t / "b.json", 10**400)], "not a number"),
    ("huge-seed", lambda t, m: ["demo", "--pretrained", m, "--seed", "9" * 30], "must be below 2**63"),
    (
        "spec-integer-key",
        lambda t, m: ["generate", "--pretrained", m, "--prompt", "x", "--compare", _text(t / "s.yaml", "- {1: 2, layer: 0, dim: 1, op: zero}\n")],
        "keys are names",
    ),
    (
        "spec-boolean-value",
        lambda t, m: ["generate", "--pretrained", m, "--prompt", "x", "--compare", _text(t / "s2.yaml", "- {layer: 0, dim: 1, op: mul, value: true}\n")],
        "not a number",
    ),
    (
        "spec-huge-seed",
        lambda t, m: ["generate", "--pretrained", m, "--prompt", "x", "--compare", "layer=0:dim=1:op=noise:value=0.1:seed=" + "9" * 25],
        "out of range",
    ),
    (
        "scores-of-different-shapes",
        lambda t, m: ["extract", "core", "--scores", _bad_scores(t, "shapes"), "--langs", "ar,es", "--out", t / "o.safetensors"],
        "has shape",
    ),
    ("nan-scores", lambda t, m: ["extract", "core", "--scores", _bad_scores(t, "nan"), "--langs", "ar,es", "--out", t / "o.safetensors"], "not all finite"),
    (
        "all-scored-empty-folder",
        lambda t, m: ["extract", "core", "--all-scored", "--scores", _victim(t / "emptyish"), "--out", t / "o.safetensors"],
        "holds no score files",
    ),
    ("absurd-lr", lambda t, m: ["train", "--pretrained", m, "--lang", "en", "--lr", "1e300", "--out", t / "c"], "up to 10"),
    ("absurd-weight-decay", lambda t, m: ["train", "--pretrained", m, "--lang", "en", "--weight-decay", "1e300", "--out", t / "c"], "between 0 and 1"),
    ("absurd-lora-rank", lambda t, m: ["train", "--pretrained", m, "--lang", "en", "--steps", "1", "--lora", "r=99999999999", "--out", t / "c"], "hidden size"),
    (
        "lora-target-missing",
        lambda t, m: ["train", "--pretrained", m, "--lang", "en", "--steps", "1", "--lora", "r=4,target=nothing_here", "--out", t / "c"],
        "peft refused",
    ),
    (
        "corrupt-experiment-record",
        lambda t, m: ["reproduce", "--only", "regions", "--from-results", "--out", _experiment(t, "{oops")],
        "experiment.json: not valid JSON",
    ),
    (
        "shape-with-a-huge-dimension",
        lambda t, m: ["mask", "info", _st(t / "z.safetensors", {NAME: [10**30, 0]}, {NAME: 0}, data=b"")],
        "more than any real parameter",
    ),
    ("truncated-model", lambda t, m: ["params", "--pretrained", _model_copy(t, m, True)], "cannot load model"),
    (
        "jsonl-text-null",
        lambda t, m: ["score", "--pretrained", m, "--langs", "sw", "--samples", "1", "--data", _jsonl_null(t), "--out", t / "s"],
        "'text' field",
    ),
    ("float-index-data", lambda t, m: ["mask", "info", _st_float(t / "f.safetensors")], "expected uint8"),
    (
        "duplicate-shape-keys",
        lambda t, m: ["mask", "info", _st(t / "dup.safetensors", f'{{"{NAME}": [4, 4], "{NAME}": [2, 2]}}', {NAME: 1})],
        f"the key '{NAME}' appears twice in one object",
    ),
    ("mask-value-boolean", lambda t, m: ["apply", "--pretrained", m, "--mask", _tiny_mask(t, m), "--out", t / "abl", "--mask-value", "True"], "not a number"),
]


def _fifo_results(t: Path) -> Path:
    (t / "runs-fifo" / "q").mkdir(parents=True)
    os.mkfifo(t / "runs-fifo" / "q" / "results.json")
    return t / "runs-fifo"


def _baseline_lang(path: Path) -> Path:
    path.write_text(
        json.dumps(
            {
                "schema": "lm-eval-lingreg/baselines/v1",
                "values": [{"source": "s", "model": "m", "condition": "base", "language": "xx", "metric": "token_perplexity", "value": 3}],
            }
        )
    )
    return path


def _jsonl_null(t: Path) -> Path:
    d = t / "jsonl-null"
    d.mkdir()
    (d / "sw.jsonl").write_text('{"text": null}\n')
    return d


def _st_float(path: Path) -> Path:
    from safetensors.numpy import save_file

    meta = {**HEADER, "shapes": json.dumps({NAME: [4, 4]}), "counts": json.dumps({NAME: 1})}
    save_file({NAME: np.zeros(1, dtype=np.float32)}, str(path), metadata=meta)
    return path


CASES = MASKS + SPECS + SCORING + REPORTS + OUTPUTS + SECOND


@pytest.mark.parametrize(("build", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_clear_error_and_changes_nothing(build, message, tiny_model_dir, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    argv = build(work, str(tiny_model_dir))
    before = _tree(work)
    proc = lingreg(*argv)
    assert proc.returncode == 2, (argv, proc.stdout[-500:], proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr and message in proc.stderr, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith(("error:", "lingreg: error:", "lingreg ")) and "error:" in line]
    assert len(errors) == 1, proc.stderr
    assert _tree(work) == before, "the command changed files it was not asked to write"
    assert not (work.parent / "ESCAPED.pt").exists() and not Path("/abs/X.pt").exists() and not (work / "PWNED").exists()


# kill -9 at the worst moment, then run again --------------------------------------------------------------------


def _kill_when(cmd: list[str], ready, timeout: float = 120.0) -> None:
    """Start `cmd`, SIGKILL it as soon as `ready()` is true (or when it ends by itself)."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "lm_eval_lingreg.cli", *map(str, cmd)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        if ready():
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    proc.wait()


def _leftovers(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root)) for p in root.rglob(".*") if ".lingreg-tmp-" in p.name or ".lingreg-old-" in p.name or p.name.endswith(".lingreg-lock")
    )


@pytest.mark.parametrize("moment", ["mid-language", "while-writing"])
def test_score_killed_then_rerun_resumes_and_leaves_nothing(tiny_model_dir, tmp_path, moment):
    out = tmp_path / "scores"
    cmd = ["score", "--pretrained", tiny_model_dir, "--langs", "ar,zh,ko", "--samples", "40", "--batch-size", "1", "--out", out, "--device", "cpu"]
    if moment == "mid-language":
        _kill_when(cmd, lambda: (out / "ar.safetensors").exists())
    else:
        _kill_when(cmd, lambda: any(p.name.startswith(".zh.safetensors.lingreg-tmp-") for p in out.glob(".*")) if out.exists() else False)
    done_before = sorted(p.name for p in out.glob("*.safetensors")) if out.exists() else []
    proc = lingreg(*cmd)
    assert proc.returncode == 0
    assert sorted(p.name for p in out.iterdir()) == ["ar.safetensors", "ko.safetensors", "zh.safetensors"] and _leftovers(tmp_path) == []
    assert proc.stderr.count("reusing it") == len(done_before)


@pytest.mark.parametrize("command", ["apply", "train"])
def test_apply_and_train_killed_then_rerun_complete_and_leave_nothing(tiny_model_dir, tmp_path, command):
    out = tmp_path / "ckpt"
    if command == "apply":
        cmd = ["apply", "--pretrained", tiny_model_dir, "--mask", _tiny_mask(tmp_path, str(tiny_model_dir)), "--out", out, "--device", "cpu"]
    else:
        cmd = [
            "train",
            "--pretrained",
            tiny_model_dir,
            "--lang",
            "en",
            "--steps",
            "30",
            "--seq-len",
            "32",
            "--batch-size",
            "2",
            "--watch-langs",
            "en",
            "--eval-blocks",
            "1",
            "--out",
            out,
            "--device",
            "cpu",
        ]
    _kill_when(cmd, lambda: any(".ckpt.lingreg-tmp-" in p.name for p in tmp_path.iterdir()))
    assert not out.exists() or (out / "model.safetensors").is_file()  # never a half-written checkpoint under the final name
    proc = lingreg(*cmd, "--overwrite")
    assert proc.returncode == 0 and (out / "model.safetensors").is_file() and _leftovers(tmp_path) == []


def test_sigterm_mid_write_leaves_nothing(tiny_model_dir, tmp_path):
    """`kill`, `timeout` and CI cancelling send SIGTERM: it unwinds like Ctrl-C, removing the temporary and the lock.

    The signal comes at the worst moment every time: the checkpoint is written in full in its temporary and the lock
    is held, but the rename has not happened (the command is held there until the signal comes)."""
    import signal
    import subprocess
    import sys
    import tempfile

    cmd = ["apply", "--pretrained", tiny_model_dir, "--mask", _tiny_mask(tmp_path, str(tiny_model_dir)), "--out", tmp_path / "abl", "--device", "cpu"]
    held = (
        "import contextlib, sys, time\n"
        "from lm_eval_lingreg import outputs\n"
        "from lm_eval_lingreg.cli import main\n"
        "real = outputs.atomic_path\n"
        "@contextlib.contextmanager\n"
        "def held(*args, **kwargs):\n"
        "    with real(*args, **kwargs) as tmp:\n"
        "        yield tmp\n"
        "        print('WRITTEN', flush=True)\n"
        "        time.sleep(600)\n"
        "outputs.atomic_path = held\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-c", held, *map(str, cmd)], stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            if "WRITTEN\n" not in iter(proc.stdout.readline, ""):
                err.seek(0)
                pytest.fail(f"the command ended (exit {proc.wait()}) before writing its output: {err.read()[-2000:]}")
            names = {p.name for p in tmp_path.iterdir()}
            assert ".abl.lingreg-lock" in names and any(n.startswith(".abl.lingreg-tmp-") for n in names) and "abl" not in names, names
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        err.seek(0)
        stderr = err.read()
    assert proc.returncode == 143, stderr[-2000:]
    assert _leftovers(tmp_path) == [] and not (tmp_path / "abl").exists()


def test_a_failing_rerun_still_cleans_what_a_killed_run_left(tiny_model_dir, tmp_path):
    out = tmp_path / "scores"
    cmd = ["score", "--pretrained", tiny_model_dir, "--langs", "ar,zh", "--samples", "40", "--batch-size", "1", "--out", out, "--device", "cpu"]
    _kill_when(cmd, lambda: out.exists() and any(p.name.startswith(".zh.safetensors.lingreg-tmp-") for p in out.glob(".*")))
    assert (out / "ar.safetensors").is_file()  # ar was done before zh began, whether or not the kill came in time
    proc = lingreg(*[c if c != "40" else "30" for c in map(str, cmd)])  # another sample count: refused for ar, which comes first
    assert proc.returncode == 2 and "ar.safetensors holds scores made differently (" in proc.stderr and "samples: 40 -> 30" in proc.stderr, proc.stderr[-2000:]
    assert _leftovers(tmp_path) == []
