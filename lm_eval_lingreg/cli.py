"""`lingreg`: the command-line interface.

    lingreg prepare                       convert the bundled model once; print its path last
    lingreg apply --mask M --out DIR      write an ablated model as a standard HF checkpoint
    lingreg demo                          base vs core and random 1% regions on the 30 languages
    lingreg score --langs ar,es,... --out scores/     per-language importance (torchrun-able)
    lingreg extract core|monolingual ...  regions from score files
    lingreg mask info|compare|convert ... inspect, compare and convert region files
    lingreg params [--filter REGEX]       parameter names, shapes and residual-stream roles
    lingreg dims MASK --top 10            hidden dimensions a region concentrates on
    lingreg scan --layer 1 --op mul --value 4 --dims top:20,random:20   rank dimensions by effect
    lingreg generate --prompt P --compare base,mask=core,...            greedy outputs side by side
    lingreg train --lang ko --freeze core:0.05 --steps 300 --out ckpt/   further pre-training, region frozen
    lingreg forget --lang ko --conditions none,core:0.05,random:0.05 -o forget/   the forgetting experiment
    lingreg table out/ [--ratio-to base] [--format markdown|csv|latex|html|json]  leaderboard tables
    lingreg compare out/ --baseline B     side by side with published or reference values
    lingreg check out/ [--baseline B] [--rules R]   regression gate: exit 0 pass, 1 regression, 2 bad input
    lingreg plot out/ -o heatmap.png      languages x conditions, log ratio to base
    lingreg baseline out/ -o B.json       a reference baseline file from runs of this tool
    lingreg reproduce [--quick]           the paper's experiments on the bundled model, with a report
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

from lm_eval_lingreg import __version__


class UsageError(Exception):
    """Bad command-line input: printed as one `error:` line, exit status 2."""


def _limit(value: str) -> int | None:
    if value == "all":
        return None
    n = int(value)
    if n < 1:
        raise argparse.ArgumentTypeError("must be a positive number of documents or 'all'")
    return n


def _cmd_prepare(args: argparse.Namespace) -> int:
    from lm_eval_lingreg.bundled import prepare

    print(prepare(force=args.force))
    return 0


def _load_model(pretrained: str | None, dtype: str):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lm_eval_lingreg.bundled import resolve_pretrained

    path = resolve_pretrained(pretrained)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
    tokenizer = AutoTokenizer.from_pretrained(path)
    return model, tokenizer


def _cmd_apply(args: argparse.Namespace) -> int:
    from lm_eval_lingreg._atomic import atomic_path
    from lm_eval_lingreg.region_io import file_sha256, load_region, resolve
    from lm_eval_lingreg.regions import apply

    path = resolve(args.mask)
    region = load_region(path)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise UsageError(f"{out} exists and is not empty; pass --overwrite to replace it")
    model, tokenizer = _load_model(args.pretrained, args.dtype)
    apply(region, model, args.mask_value)
    with atomic_path(out, directory=True) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "lingreg_ablation.json").write_text(
            json.dumps(
                {
                    "pretrained": args.pretrained or "gemma-3-270m (bundled)",
                    "mask": str(args.mask),
                    "mask_sha256": file_sha256(path),
                    "mask_value": args.mask_value,
                    "entries_changed": region.num_selected,
                    "mask_metadata": region.metadata,
                    "lm_eval_lingreg": __version__,
                },
                indent=1,
                default=str,
            )
        )
    print(f"wrote {out} ({region.num_selected} entries set to {args.mask_value})")
    print(out.resolve())
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from lm_eval_lingreg.evaluation import evaluate_conditions, per_language
    from lm_eval_lingreg.languages import LANGUAGES, parse_languages
    from lm_eval_lingreg.models import RegionAblatedLM
    from lm_eval_lingreg.region_io import load_region
    from lm_eval_lingreg.regions import scope_shapes, validate
    from lm_eval_lingreg.selection import select_random

    langs = parse_languages(args.langs)
    bundled = args.pretrained in (None, "", "gemma-3-270m")
    masks = [m for m in (args.masks if args.masks is not None else ("core" if bundled else "")).split(",") if m]
    regions = {}
    for m in masks:  # bad mask files fail before the model loads
        label = Path(m).name.removesuffix(".safetensors").removesuffix(".pt") or m
        regions[label if label not in regions else f"{label}-{len(regions)}"] = load_region(m)
    lm = RegionAblatedLM(pretrained=args.pretrained, dtype=args.dtype, batch_size=args.batch_size, device=args.device)
    for region in regions.values():
        validate(region, lm.model)
    label = f"random-{args.ratio:g}"
    regions[label] = select_random(scope_shapes(lm.model), args.ratio, seed=args.seed)
    for name, region in regions.items():
        print(f"{name}: {region.num_selected} entries ({region.density:.2%} of the {region.num_covered} parameters it covers)")
    results = evaluate_conditions(lm, {"base": None, **regions}, langs, limit=args.limit, output_dir=args.output_path)
    bpb = per_language(results["base"], "bits_per_byte")
    ppl = {c: per_language(r, "token_perplexity") for c, r in results.items()}
    rows = [[LANGUAGES[iso].name, iso, bpb[iso], ppl["base"][iso], *(ppl[c][iso] / ppl["base"][iso] for c in regions)] for iso in langs]
    gmean = [math.exp(sum(math.log(r[4 + i]) for r in rows) / len(rows)) for i in range(len(regions))]
    rows.append(["Geometric mean", "", None, None, *gmean])
    headers = ["Language", "ISO", "bpb base", "tok-ppl base", *(f"x ppl {c}" for c in regions)]
    print(f"\n{args.limit or 31} UDHR documents per language; token perplexity of each ablated model divided by the base model's")
    print(tabulate(rows, headers=headers, floatfmt=".3g", tablefmt="github", missingval=""))
    if args.output_path:
        print(f"results JSON per condition under {args.output_path}/")
    return 0


def _cmd_score(args: argparse.Namespace) -> int:
    import os

    import torch

    from lm_eval_lingreg.importance import score_languages
    from lm_eval_lingreg.languages import parse_languages

    langs = parse_languages(args.langs)
    rank = 0
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # launched by torchrun / accelerate
        import torch.distributed as dist

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
        rank = dist.get_rank()
    model, tokenizer = _load_model(args.pretrained, args.dtype)
    if torch.cuda.is_available():
        model.to(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    torch.manual_seed(args.seed)
    score_languages(
        model, tokenizer, langs, args.out, args.samples, data=args.data, unit=args.unit, seq_len=args.seq_len,
        seed=args.seed, batch_size=args.batch_size, scope=args.scope, model_name=args.pretrained or "gemma-3-270m",
        log=(print if rank == 0 else (lambda _msg: None)),
    )
    if rank == 0:
        print(Path(args.out).resolve())
    return 0


def _cmd_extract(args: argparse.Namespace) -> int:
    from lm_eval_lingreg.languages import CORE_LANGUAGES, parse_languages
    from lm_eval_lingreg.region_io import save_region
    from lm_eval_lingreg.scores import ScoreSet
    from lm_eval_lingreg.selection import select_core, select_monolingual

    langs = parse_languages(args.langs) if args.langs else None
    scores = ScoreSet(args.scores, langs or (None if args.kind == "core" and args.all_scored else list(CORE_LANGUAGES)))
    meta = {**scores.provenance(), "lm_eval_lingreg": __version__, "command": "lingreg " + " ".join(sys.argv[1:])}
    if args.kind == "core":
        region = select_core(scores.get, scores.names, scores.langs, args.ratio, which=args.which, seed=args.seed, metadata=meta)
    else:
        if not args.lang:
            raise UsageError("`lingreg extract monolingual` needs --lang (e.g. --lang ar)")
        region = select_monolingual(scores.get, scores.names, parse_languages(args.lang)[0], scores.langs, args.ratio, metadata=meta)
    save_region(region, args.out)
    print(f"wrote {args.out}: {region.metadata['kind']} region, {region.num_selected} entries ({region.density:.3%}) over {len(region.shapes)} tensors")
    return 0


def _cmd_mask_info(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from lm_eval_lingreg.region_io import load_region
    from lm_eval_lingreg.regions import summarize

    region = load_region(args.mask)
    rows = summarize(region)
    if args.json:
        print(json.dumps({"metadata": region.metadata, "selected": region.num_selected, "entries": region.num_covered, "tensors": rows}, indent=1, default=str))
        return 0
    meta = {k: v for k, v in region.metadata.items() if k not in ("samples", "tokens", "calibration")}
    print(json.dumps(meta, indent=1, default=str))
    print(f"{region.num_selected} selected of {region.num_covered} entries ({region.density:.3%}) in {len(region.shapes)} tensors\n")
    by_module: dict[str, list[int]] = {}
    by_layer: dict[object, list[int]] = {}
    for r in rows:
        by_module.setdefault(r["module"], [0, 0])
        by_layer.setdefault(r["layer"], [0, 0])
        for acc in (by_module[r["module"]], by_layer[r["layer"]]):
            acc[0] += r["selected"]
            acc[1] += r["entries"]
    print(tabulate([[m, s, f"{s / max(1, e):.3%}"] for m, (s, e) in by_module.items()], headers=["module", "selected", "share"], tablefmt="github"))
    print()
    layers = sorted(by_layer.items(), key=lambda kv: (kv[0] is None, kv[0] if kv[0] is not None else 0))
    print(tabulate([[layer, s, f"{s / max(1, e):.3%}"] for layer, (s, e) in layers], headers=["layer", "selected", "share"], tablefmt="github"))
    return 0


def _cmd_mask_compare(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from lm_eval_lingreg.region_io import load_region
    from lm_eval_lingreg.regions import jaccard

    a, b = load_region(args.a), load_region(args.b)
    overall, per = jaccard(a, b)
    if args.json:
        print(json.dumps({"jaccard": overall, "per_tensor": per}, indent=1))
        return 0
    print(f"Jaccard overall: {overall:.4f}  ({a.num_selected} vs {b.num_selected} entries)")
    worst = sorted(per.items(), key=lambda kv: (math.isnan(kv[1]), kv[1]))
    print(tabulate([[n, f"{j:.4f}"] for n, j in worst[: args.top]], headers=["tensor (lowest first)", "Jaccard"], tablefmt="github"))
    return 0


def _cmd_mask_convert(args: argparse.Namespace) -> int:
    from lm_eval_lingreg.region_io import load_region, save_region

    region = load_region(args.src)
    out = save_region(region, args.dst, fmt=args.format)
    print(f"wrote {out} ({region.num_selected} entries)")
    return 0


def _write_json(path: str, data: object) -> None:
    from lm_eval_lingreg._atomic import write_json

    write_json(path, data)


def _cmd_params(args: argparse.Namespace) -> int:
    import re

    from tabulate import tabulate

    from lm_eval_lingreg.perturbation import hidden_size, residual_slots
    from lm_eval_lingreg.regions import named_parameters

    model, _ = _load_model(args.pretrained, "float32")
    params = named_parameters(model)
    slots, hidden = residual_slots({n: tuple(p.shape) for n, p in params.items()}, hidden_size(model))
    pattern = re.compile(args.filter) if args.filter else None
    rows = [
        [n, "x".join(map(str, p.shape)), {"norm": "norm entry d", "read": "column d (reads)", "write": "row d (writes)"}.get(slots[n].role, "") if n in slots else ""]
        for n, p in params.items()
        if pattern is None or pattern.search(n)
    ]
    print(tabulate(rows, headers=["parameter", "shape", f"hidden dim d (hidden size {hidden})"], tablefmt="github"))
    return 0


def _cmd_dims(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from lm_eval_lingreg.dimensions import dimension_counts, mean_abs_activations, plot_dimensions
    from lm_eval_lingreg.region_io import load_region

    region = load_region(args.mask)
    dc = dimension_counts(region)
    acts = None
    if args.activations:
        from lm_eval_lingreg.corpora import read_texts
        from lm_eval_lingreg.languages import parse_languages

        model, tokenizer = _load_model(args.pretrained, "float32")
        texts = []
        for iso in parse_languages(args.langs):
            texts += read_texts(iso, args.data)[0][: args.samples]
        acts = mean_abs_activations(model, tokenizer, texts)
    data = dc.to_json(args.top, acts)
    headers = ["rank", "dim", "entries", "share of its entries", "norm", "columns read", "rows written", "top layers (entries)"]
    rows = [
        [i, r["dim"], r["total"], f"{r['share']:.2%}", r["norm"], r["read"], r["write"], ", ".join(f"L{k} ({v})" for k, v in r["top_layers"].items())]
        for i, r in enumerate(data["dims"], 1)
    ]
    if acts:
        headers += ["mean |act|", "act rank"]
        for row, r in zip(rows, data["dims"], strict=True):
            row += [f"{r['mean_abs_activation']:.3g}", r["activation_rank"]]
    print(f"{region.num_selected} region entries over {dc.hidden} hidden dimensions x {data['layers']} layers; "
          f"each dimension has {dc.entries_per_dim} entries; mean {data['mean_per_dim']:.1f} / median {data['median_per_dim']:.0f} region entries per dimension")
    print(tabulate(rows, headers=headers, tablefmt="github"))
    if acts:
        print(f"activations: {acts['tokens']} tokens; largest mean |activation| / median = {acts['max_over_median']:.1f}; top dims {acts['top'][:5]}")
    if args.json:
        _write_json(args.json, data)
        print(f"wrote {args.json}")
    if args.plot:
        plot_dimensions(dc, args.plot, top=args.top)
        print(f"wrote {args.plot}")
    return 0


def _parse_candidates(text: str, ranked: list[int] | None, hidden: int, seed: int) -> list[tuple[str, int]]:
    from lm_eval_lingreg.scan import random_dims

    out: list[tuple[str, int]] = []
    n_random = 0
    for part in (p.strip() for p in text.split(",") if p.strip()):
        kind, _, n = part.partition(":")
        if kind in ("top", "random"):
            if not n.isdigit() or int(n) < 1:
                raise UsageError(f"--dims {part!r}: expected {kind}:<count>, e.g. {kind}:20")
            if kind == "top":
                if ranked is None:
                    raise UsageError("--dims top:N needs a region to rank dimensions (--mask)")
                out += [(f"top{i + 1}", d) for i, d in enumerate(ranked[: int(n)])]
            else:
                n_random = int(n)
        elif part.isdigit():
            if int(part) >= hidden:
                raise UsageError(f"--dims {part}: out of range (hidden size {hidden})")
            out.append(("given", int(part)))
        else:
            raise UsageError(f"--dims {part!r}: use top:N, random:N or dimension numbers, comma-separated")
    if n_random:
        out += [("random", d) for d in random_dims(hidden, n_random, [d for _, d in out] + (ranked[:n_random] if ranked else []), seed)]
    return out


def _cmd_scan(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from lm_eval_lingreg.dimensions import dimension_counts
    from lm_eval_lingreg.languages import parse_languages
    from lm_eval_lingreg.perturbation import Perturbation, hidden_size
    from lm_eval_lingreg.region_io import load_region
    from lm_eval_lingreg.scan import ProbeSet, probe_texts, scan

    langs = parse_languages(args.langs)
    bundled = args.pretrained in (None, "", "gemma-3-270m")
    mask = args.mask if args.mask is not None else ("core" if bundled else None)
    ranked = counts = None
    if mask:
        dc = dimension_counts(load_region(mask))
        ranked, counts = dc.ranked(), dc.total
    model, tokenizer = _load_model(args.pretrained, args.dtype)
    hidden = hidden_size(model) or (counts.numel() if counts is not None else 0)
    cands = _parse_candidates(args.dims, ranked, hidden, args.seed)
    common = {"op": args.op, "value": None if args.op == "zero" else args.value, "on": args.on, "scale": args.scale, "seed": args.seed}
    if args.param:
        built = [(f"{src}:d{d}", [Perturbation(param=args.param, index=d, **common)]) for src, d in cands]
    else:
        layers = Perturbation.from_dict({"layers": args.layer, "dim": 0, "op": "zero"}).layers
        modules = tuple(m for m in args.modules.replace(",", "+").split("+") if m)
        built = [(f"{src}:d{d}", [Perturbation(dims=(d,), layers=layers, modules=modules, **common)]) for src, d in cands]
    probe = ProbeSet.build(tokenizer, probe_texts(langs, args.docs), args.tokens)
    print(f"scanning {len(built)} candidates on {len(langs)} languages x {args.docs} UDHR documents (<= {args.tokens} tokens each)", file=sys.stderr)
    result = scan(model, probe, built)
    if counts is not None:
        for r in result["rows"]:
            r["region_entries_on_dim"] = int(counts[int(r["label"].rsplit(":d", 1)[1])])
    result.update(what=str(built[0][1][0]).replace(f"dims={cands[0][1]}", "dims=<d>").replace(f"index={cands[0][1]}", "index=<d>"), mask=mask, docs=args.docs, tokens=args.tokens)
    rows = [
        [r["rank"], r["label"], r.get("region_entries_on_dim", ""), *(f"{r['ratio'][iso]:.3g}" for iso in langs), f"{r['geomean_ratio']:.3g}"]
        for r in result["rows"]
    ]
    print(f"perturbation: {result['what']}; base token perplexity: " + ", ".join(f"{iso} {v:.3g}" for iso, v in result["base_perplexity"].items()))
    print(tabulate(rows, headers=["rank", "candidate", "region entries", *(f"x ppl {iso}" for iso in langs), "geo-mean"], tablefmt="github"))
    if args.output:
        _write_json(args.output, result)
        print(f"wrote {args.output}")
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from lm_eval_lingreg.scan import generate, parse_condition

    conditions = {}
    for group in args.compare or ["base"]:
        for c in (c.strip() for c in group.split(",")):
            if c:
                conditions[c] = parse_condition(c)
    model, tokenizer = _load_model(args.pretrained, args.dtype)
    rows = generate(model, tokenizer, args.prompt, conditions, max_new_tokens=args.max_new_tokens)
    table = [[r["prompt"], r["condition"], r["continuation"].replace("\n", " ⏎ ")] for r in rows]
    print(tabulate(table, headers=["prompt", "condition", "greedy continuation"], tablefmt="github"))
    if args.output:
        _write_json(args.output, {"max_new_tokens": args.max_new_tokens, "generations": rows, "conditions": {k: [p.to_dict() for p in v] for k, v in conditions.items()}})
        print(f"wrote {args.output}")
    return 0


def _parse_lora(text: str) -> dict:
    out = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "target_modules": "all-linear"}
    keys = {"r": "r", "alpha": "lora_alpha", "dropout": "lora_dropout", "target": "target_modules"}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        k, sep, v = part.partition("=")
        if not sep or k.strip() not in keys:
            raise UsageError(f"--lora {text!r}: expected comma-separated r=16,alpha=32,dropout=0.05,target=q_proj+v_proj (got {part!r})")
        key = keys[k.strip()]
        try:
            out[key] = int(v) if key == "r" else float(v) if key in ("lora_alpha", "lora_dropout") else (v if v == "all-linear" else v.split("+"))
        except ValueError:
            raise UsageError(f"--lora {k}={v!r} is not a number") from None
    return out


def _train_config(args: argparse.Namespace, lang: str):
    from lm_eval_lingreg.languages import parse_languages
    from lm_eval_lingreg.training import TrainConfig

    try:
        return TrainConfig(
            lang=lang, data=args.data, steps=args.steps, lr=args.lr, batch_size=args.batch_size, seq_len=args.seq_len,
            grad_accum=args.grad_accum, warmup=args.warmup, schedule=args.schedule, weight_decay=args.weight_decay,
            seed=args.seed, train_scope=args.train_scope, eval_every=args.eval_every, eval_langs=parse_languages(args.watch_langs),
            eval_blocks=args.eval_blocks,
        )
    except ValueError as e:
        raise UsageError(str(e)) from None


def _cmd_train(args: argparse.Namespace) -> int:
    from lm_eval_lingreg.freeze import FrozenRegion, merge_and_reimpose
    from lm_eval_lingreg.languages import parse_languages
    from lm_eval_lingreg.training import resolve_freeze, save_checkpoint, train

    lang = parse_languages(args.lang)[0]
    cfg = _train_config(args, lang)
    lora = _parse_lora(args.lora) if args.lora else None
    out = Path(args.out)
    if out.exists() and any(out.iterdir()) and not args.overwrite:
        raise UsageError(f"{out} exists and is not empty; pass --overwrite to replace it")
    model, tokenizer = _load_model(args.pretrained, "float32")
    region = resolve_freeze(args.freeze, model, cfg.seed)
    frozen_at_start = FrozenRegion(model, region) if region is not None and lora else None
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **lora))
    record = train(model, tokenizer, cfg, freeze=region if not lora else None)
    if lora:
        model = merge_and_reimpose(model, frozen_at_start) if frozen_at_start else model.merge_and_unload()
        record["lora"] = dict(lora)
        if frozen_at_start:
            record["frozen"] = {"entries": frozen_at_start.num_frozen, "exact": frozen_at_start.verify(), "region": region.metadata,
                                "how": "adapters merged into the base weights, then the frozen entries written back"}
    record["pretrained"] = args.pretrained or "gemma-3-270m (bundled)"
    record["freeze"] = args.freeze
    save_checkpoint(model, tokenizer, out, record)
    last = record["curves"][-1]["perplexity"]
    first = record["curves"][0]["perplexity"]
    print("held-out token perplexity, before -> after: " + ", ".join(f"{k} {first[k]:.3g} -> {last[k]:.3g}" for k in last))
    print(f"{record['tokens']} tokens in {record['seconds']:.0f} s ({record['tokens_per_second']:.0f} tokens/s)")
    print(out.resolve())
    return 0


def _cmd_forget(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from lm_eval_lingreg.languages import LANGUAGES, parse_languages
    from lm_eval_lingreg.models import RegionAblatedLM
    from lm_eval_lingreg.training import condition_label, forget, plot_curves

    lang = parse_languages(args.lang)[0]
    cfg = _train_config(args, lang)
    conditions = [c.strip() for c in args.conditions.split(",") if c.strip()]
    labels = [condition_label(c) for c in conditions]
    if len(set(labels)) != len(labels):
        raise UsageError(f"--conditions {args.conditions!r}: a condition is given twice")
    eval_langs = parse_languages(args.eval_langs)
    out = Path(args.output)
    lm = RegionAblatedLM(pretrained=args.pretrained, dtype="float32", batch_size=1, device="cpu")
    summary = forget(lm, cfg, conditions, eval_langs, args.eval_limit, out, save_checkpoints=args.save_checkpoints)
    plot_curves(summary, out / "curves.png")
    f = summary["forgetting"]
    rows = [
        [c, (summary["frozen"][c] or {}).get("entries", 0), f"{f[c]['target_ratio']:.3g}", f"{f[c]['others_geomean_ratio']:.3g}",
         f"{f[c]['others_max_ratio']:.3g} ({f[c]['others_worst']})"]
        for c in summary["conditions"]
    ]
    print(f"\n{cfg.steps} steps on {LANGUAGES[lang].name}; token perplexity after / before, on {len(eval_langs)} languages x {args.eval_limit or 'all'} UDHR documents")
    print(tabulate(rows, headers=["condition", "frozen entries", f"x ppl {lang} (target)", "x ppl others (geo-mean)", "x ppl others (max)"], tablefmt="github"))
    print(f"results under {out}/ (summary.json, curves.png, <condition>/results.json, <condition>/train.json); {summary['seconds'] / 60:.1f} min")
    return 0


def _emit(text: str, output: str | None) -> None:
    if output:
        from lm_eval_lingreg._atomic import atomic_path

        with atomic_path(output) as tmp:
            tmp.write_text(text if text.endswith("\n") else text + "\n", encoding="utf-8")
        print(f"wrote {output}", file=sys.stderr)
    else:
        print(text)


def _labels(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        where, sep, label = item.partition("=")
        if not sep or not where or not label:
            raise UsageError(f"--label {item!r}: expected PATH=LABEL (e.g. --label out/run1=mul4:L1-N2100)")
        out[where] = label
    return out


def _runs_note(runs) -> None:
    print(f"{len(runs)} run(s): " + ", ".join(f"{r.label} [{r.path}]" for r in runs), file=sys.stderr)


def _cmd_table(args: argparse.Namespace) -> int:
    from lm_eval_lingreg.report import build_table, load_runs, render_table

    runs = load_runs(args.paths, _labels(args.label))
    _runs_note(runs)
    df = build_table(runs, args.metric, args.ratio_to)
    _emit(render_table(df, args.format), args.output)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from tabulate import tabulate

    from lm_eval_lingreg.report import compare, fmt_value, load_baseline, load_runs

    runs = load_runs(args.paths, _labels(args.label))
    rows = compare(runs, load_baseline(args.baseline), rtol=args.rtol, atol=args.atol)
    table = [[r["condition"], r["language"], r["metric"] if r["metric"] == r["compared_metric"] else f"{r['metric']} vs {r['compared_metric']}", fmt_value(r["value"]), fmt_value(r["got"]), (f"{r['rel']:+.1%}" if abs(r["rel"]) < 100 else f"x{r['rel'] + 1:.3g}") if r["rel"] == r["rel"] else "", r["status"],
              f"{r['kind'] or ''} {r['source']}".strip()] for r in rows]
    print(tabulate(table, headers=["condition", "lang", "metric", "baseline", "this run", "rel. change", "status", "baseline source"], tablefmt="github", disable_numparse=True))
    flagged = [r for r in rows if r["status"] not in ("ok",)]
    print(f"\n{len(rows)} baseline values: {sum(r['status'] == 'ok' for r in rows)} agree within rtol={args.rtol:g}, atol={args.atol:g}; {len(flagged)} flagged "
          f"({', '.join(sorted({r['status'] for r in flagged})) or 'none'})")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from lm_eval_lingreg.report import apply_rules, compare, fmt_value, load_baseline, load_rules, load_runs

    if not args.baseline and not args.rules:
        raise UsageError("give --baseline and/or --rules to check against")
    runs = load_runs(args.paths, _labels(args.label))
    failures, checked, skipped = [], 0, 0
    if args.baseline:
        for r in compare(runs, load_baseline(args.baseline), rtol=args.rtol, atol=args.atol):
            if r["status"] == "missing" and not args.strict:
                skipped += 1
                continue
            checked += 1
            if r["status"] in ("worse", "missing") or (args.both_ways and r["status"] == "better"):
                failures.append(f"{r['condition']} {r['language']} {r['metric']}: {fmt_value(r['got'])} vs baseline {fmt_value(r['value'])} ({r['status']}"
                                + (f", {r['rel']:+.1%}" if r["rel"] == r["rel"] else "") + ")")
    if args.rules:
        for r in apply_rules(runs, load_rules(args.rules)):
            checked += 1
            if not r["ok"]:
                failures.append(f"rule '{r['rule']}': {r['run']} {r['language']} = {fmt_value(r['value'])} ({r['why']})")
    note = f" ({skipped} baseline values for conditions or languages not in these runs were skipped; --strict fails on them)" if skipped else ""
    if failures:
        print(f"FAIL: {len(failures)} of {checked} checks failed{note}")
        for f in failures[: args.max_report]:
            print("  - " + f)
        if len(failures) > args.max_report:
            print(f"  ... and {len(failures) - args.max_report} more")
        return 1
    print(f"PASS: {checked} checks{note}")
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    from lm_eval_lingreg.report import load_runs, plot_heatmap, plot_region_density

    if args.mask:
        from lm_eval_lingreg.region_io import load_region

        plot_region_density(load_region(args.mask), args.output)
    else:
        if not args.paths:
            raise UsageError("give results folders/files to plot, or --mask for a region density plot")
        runs = load_runs(args.paths, _labels(args.label))
        _runs_note(runs)
        plot_heatmap(runs, args.output, args.metric, args.ratio_to)
    print(f"wrote {args.output}")
    return 0


def _cmd_baseline(args: argparse.Namespace) -> int:
    from lm_eval_lingreg.report import baseline_from_runs, load_runs

    runs = load_runs(args.paths, _labels(args.label))
    model = args.model or runs[0].model
    data = baseline_from_runs(runs, args.source, model, args.metric, args.note)
    _write_json(args.output, data)
    print(f"wrote {args.output}: {len(data['values'])} values from {len(runs)} runs")
    return 0


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from lm_eval_lingreg.reproduce import FULL, QUICK, run, write_report

    out = Path(args.out)
    doc = Path(args.doc) if args.doc else out / "REPRODUCTION.md"
    if not args.from_results:
        run(out, QUICK if args.quick else FULL)
    elif not (out / "results" / "reproduce.json").is_file():
        raise UsageError(f"--from-results: no {out / 'results' / 'reproduce.json'}; run without --from-results first")
    command = "lingreg reproduce" + (" --quick" if args.quick else "") + (f" --out {args.out}" if args.out != "lingreg-reproduce" else "") + (f" --doc {args.doc}" if args.doc else "")
    write_report(out, doc, command)
    print(f"wrote {doc}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lingreg", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"lm-eval-lingreg {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="more logging")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("prepare", help="convert the bundled model once; print its local path as the last line")
    s.add_argument("--force", action="store_true", help="convert again even if cached")
    s.set_defaults(func=_cmd_prepare)

    s = sub.add_parser("apply", help="write an ablated model as a standard HF checkpoint (safetensors)")
    s.add_argument("--mask", required=True, help="region file, official-layout directory, or shipped mask name")
    s.add_argument("--out", required=True, help="output directory")
    s.add_argument("--pretrained", default=None, help="HF model dir or id (default: bundled gemma-3-270m)")
    s.add_argument("--mask-value", type=float, default=0.0, help="value written to the selected entries (default 0)")
    s.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    s.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    s.set_defaults(func=_cmd_apply)

    s = sub.add_parser("demo", help="main job: base vs the core region and a seeded random control on the 30 languages")
    s.add_argument("--masks", default=None, help="comma-separated masks (paths or shipped names) to evaluate beside the random control (default: 'core' for the bundled model, none otherwise)")
    s.add_argument("--pretrained", default=None, help="HF model dir or id (default: bundled gemma-3-270m)")
    s.add_argument("--langs", default="all", help="comma-separated ISO codes or 'all' (default)")
    s.add_argument("--ratio", type=float, default=0.01, help="share of entries per tensor (default 0.01)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--limit", type=_limit, default=8, help="documents per language, or 'all' for the 31 (default 8; 'all' reads the 31 and takes about 3x longer)")
    s.add_argument("--batch-size", default="1")
    s.add_argument("--dtype", default="float32")
    s.add_argument("--device", default="cpu")
    s.add_argument("--output-path", default="lingreg-demo", help="where results JSON go (default ./lingreg-demo)")
    s.set_defaults(func=_cmd_demo)

    s = sub.add_parser("score", help="per-language importance scores (theta * summed gradient)")
    s.add_argument("--langs", default="ar,es,ru,zh,ko,vi", help="comma-separated ISO codes (default: the paper's six)")
    s.add_argument("--samples", type=int, default=200, help="calibration samples per language (default 200)")
    s.add_argument("--out", required=True, help="directory for <lang>.safetensors score files")
    s.add_argument("--pretrained", default=None, help="HF model dir or id (default: bundled gemma-3-270m)")
    s.add_argument("--data", default=None, help="'eld' (default, offline), a directory of <iso>.txt/.jsonl, a file, or datasets:<path>[:<config>] ({lang} is substituted)")
    s.add_argument("--unit", choices=["sentences", "blocks"], default="sentences", help="a sample is one sentence/line, or a packed block of --seq-len tokens (paper: blocks of 512)")
    s.add_argument("--seq-len", type=int, default=512, help="block length / sentence truncation in tokens (default 512)")
    s.add_argument("--batch-size", type=int, default=4, help="samples per forward+backward (default 4; memory grows with it)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--scope", default=r"layers\.\d+\.", help="regex on parameter names to score (default: transformer blocks)")
    s.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    s.set_defaults(func=_cmd_score)

    s = sub.add_parser("extract", help="extract a region from score files")
    s.add_argument("kind", choices=["core", "monolingual"])
    s.add_argument("--scores", required=True, help="directory written by `lingreg score`")
    s.add_argument("--ratio", type=float, default=0.01, help="share of each tensor (default 0.01)")
    s.add_argument("--which", choices=["top", "bottom", "random"], default="top", help="core only (default top)")
    s.add_argument("--lang", default=None, help="monolingual only: the language whose region to extract")
    s.add_argument("--langs", default=None, help="languages to combine (default: the paper's six: ar,es,ru,zh,ko,vi)")
    s.add_argument("--all-scored", action="store_true", help="core: use every language found in --scores")
    s.add_argument("--seed", type=int, default=0, help="for --which random")
    s.add_argument("--out", required=True, help="output region file (.safetensors, .pt, or a directory)")
    s.set_defaults(func=_cmd_extract)

    mask = sub.add_parser("mask", help="inspect, compare and convert region files").add_subparsers(dest="mask_command", required=True)
    s = mask.add_parser("info", help="entries per layer and module, share of parameters")
    s.add_argument("mask")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_mask_info)
    s = mask.add_parser("compare", help="Jaccard index overall and per tensor")
    s.add_argument("a")
    s.add_argument("b")
    s.add_argument("--top", type=int, default=10, help="tensors to list (lowest Jaccard first)")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_cmd_mask_compare)
    s = mask.add_parser("convert", help="convert between .safetensors, .pt and the official directory layout")
    s.add_argument("src")
    s.add_argument("dst")
    s.add_argument("--format", choices=["safetensors", "pt", "official"], default=None, help="default: from dst's suffix (no suffix = official directory)")
    s.set_defaults(func=_cmd_mask_convert)

    s = sub.add_parser("params", help="parameter names and shapes, and where a hidden dimension sits in each")
    s.add_argument("--pretrained", default=None, help="HF model dir or id (default: bundled gemma-3-270m)")
    s.add_argument("--filter", default=None, help="regex on parameter names, e.g. 'layers\\.1\\.'")
    s.set_defaults(func=_cmd_params)

    s = sub.add_parser("dims", help="hidden dimensions a region concentrates on (norm entries, rows written, columns read)")
    s.add_argument("mask", help="region file or shipped mask name (e.g. core)")
    s.add_argument("--top", type=int, default=10, help="dimensions to list (default 10)")
    s.add_argument("--json", default=None, help="write the ranking (and per-layer counts of the top dims) as JSON")
    s.add_argument("--plot", default=None, help="write a plot (.png or .svg)")
    s.add_argument("--activations", action="store_true", help="also measure mean |hidden state| per dimension on calibration text")
    s.add_argument("--pretrained", default=None, help="model for --activations (default: bundled gemma-3-270m)")
    s.add_argument("--langs", default="ar,es,ru,zh,ko,vi", help="calibration languages for --activations")
    s.add_argument("--data", default=None, help="calibration corpus for --activations (default: eld sentences)")
    s.add_argument("--samples", type=int, default=8, help="calibration sentences per language for --activations (default 8)")
    s.set_defaults(func=_cmd_dims)

    s = sub.add_parser("scan", help="apply one perturbation to each candidate dimension in turn; rank by perplexity change")
    s.add_argument("--dims", default="top:20,random:20", help="candidates: top:N (from --mask), random:N (seeded controls), and/or dimension numbers (default top:20,random:20)")
    s.add_argument("--mask", default=None, help="region whose dimensions rank the candidates (default: core for the bundled model)")
    s.add_argument("--layer", default="1", help="layer(s): 1, 0+1, 0-3 or all (default 1)")
    s.add_argument("--modules", default="all", help="modules at the dimension: all, norms, readers, writers or names joined by + (default all)")
    s.add_argument("--param", default=None, help="perturb one entry of this 1-D parameter instead (index = the dimension), e.g. model.layers.1.post_attention_layernorm.weight")
    s.add_argument("--op", choices=["zero", "set", "mul", "add", "noise"], default="mul")
    s.add_argument("--value", type=float, default=4.0, help="operand of the op (default 4)")
    s.add_argument("--on", choices=["param", "gain"], default="param", help="stored weight (default) or a norm's effective gain")
    s.add_argument("--scale", choices=["relative", "absolute"], default="relative", help="for --op noise")
    s.add_argument("--langs", default="en,zh,ar,ru", help="probe languages (default en,zh,ar,ru)")
    s.add_argument("--docs", type=int, default=2, help="UDHR documents per language (default 2)")
    s.add_argument("--tokens", type=int, default=128, help="tokens per document (default 128)")
    s.add_argument("--seed", type=int, default=0, help="for random:N and op=noise")
    s.add_argument("--pretrained", default=None, help="HF model dir or id (default: bundled gemma-3-270m)")
    s.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    s.add_argument("-o", "--output", default=None, help="write the ranked results as JSON")
    s.set_defaults(func=_cmd_scan)

    s = sub.add_parser("generate", help="greedy continuations under several conditions, side by side")
    s.add_argument("--prompt", action="append", required=True, help="a prompt (repeat for several)")
    s.add_argument("--compare", action="append", default=None, help="conditions, comma-separated: base, mask=<m>, or perturbations like layer=1:dim=639:op=mul:value=4 (';' composes)")
    s.add_argument("--max-new-tokens", type=int, default=24)
    s.add_argument("--pretrained", default=None, help="HF model dir or id (default: bundled gemma-3-270m)")
    s.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    s.add_argument("-o", "--output", default=None, help="write the generations as JSON")
    s.set_defaults(func=_cmd_generate)

    def training_args(s: argparse.ArgumentParser, steps: int, seq_len: int, scope: str, eval_every: int) -> None:
        s.add_argument("--data", default=None, help="training text: 'eld' (default, offline sentences), a directory of <iso>.txt/.jsonl, a file, or datasets:<path>[:<config>]")
        s.add_argument("--pretrained", default=None, help="HF model dir or id (default: bundled gemma-3-270m)")
        s.add_argument("--steps", type=int, default=steps, help=f"optimizer steps (default {steps})")
        s.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (default 5e-5, as in the paper)")
        s.add_argument("--batch-size", type=int, default=4, help="blocks per micro-batch (default 4)")
        s.add_argument("--seq-len", type=int, default=seq_len, help=f"tokens per packed block (default {seq_len})")
        s.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step (default 1)")
        s.add_argument("--warmup", type=int, default=10, help="linear warmup steps (default 10)")
        s.add_argument("--schedule", choices=["cosine", "linear", "constant"], default="cosine")
        s.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay on matrices (default 0.01)")
        s.add_argument("--seed", type=int, default=0)
        s.add_argument("--train-scope", default=scope, help=f"'all' or a regex on parameter names to train (default {scope!r})")
        s.add_argument("--eval-every", type=int, default=eval_every, help=f"held-out evaluation every N steps (default {eval_every})")
        s.add_argument("--watch-langs", default="en,zh,ar", help="languages whose held-out perplexity is tracked besides the target (default en,zh,ar)")
        s.add_argument("--eval-blocks", type=int, default=8, help="held-out blocks per watched language (default 8)")

    s = sub.add_parser("train", help="further pre-train on one language, optionally with a region frozen")
    s.add_argument("--lang", required=True, help="language to train on (ISO code)")
    s.add_argument("--freeze", default=None, help="region kept frozen: core:0.05, bottom:0.05, random:0.05, a mask file or shipped name (default: none)")
    s.add_argument("--lora", default=None, help="train a peft LoRA adapter instead: r=16,alpha=32,dropout=0.05,target=q_proj+v_proj; merged at the end, frozen entries re-imposed")
    s.add_argument("--out", required=True, help="output checkpoint directory (standard HF, safetensors)")
    s.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    training_args(s, 300, 128, "all", 25)
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("forget", help="the catastrophic-forgetting experiment: train under each freezing condition, harness before and after")
    s.add_argument("--lang", default="ko", help="language to train on (default ko)")
    s.add_argument("--conditions", default="none,core:0.05,random:0.05", help="comma-separated: none, core:R, bottom:R, random:R or mask files (default none,core:0.05,random:0.05)")
    s.add_argument("--eval-langs", default="all", help="harness languages before and after (default all 30)")
    s.add_argument("--eval-limit", type=_limit, default=2, help="UDHR documents per language for the harness (default 2, or 'all')")
    s.add_argument("--save-checkpoints", action="store_true", help="also write each trained model under <output>/<condition>/checkpoint")
    s.add_argument("-o", "--output", default="lingreg-forget", help="output directory (default ./lingreg-forget)")
    training_args(s, 80, 64, r"layers\.\d+\.", 20)
    s.set_defaults(func=_cmd_forget)

    metric_help = "bits_per_byte (default), byte_perplexity, word_perplexity or token_perplexity"
    s = sub.add_parser("table", help="leaderboard table: languages x conditions, from lm-eval results")
    s.add_argument("paths", nargs="+", help="results JSON files or folders (searched recursively)")
    s.add_argument("--metric", default="bits_per_byte", help=metric_help)
    s.add_argument("--ratio-to", default=None, help="divide every run by the run with this label (e.g. base)")
    s.add_argument("--format", choices=["markdown", "csv", "latex", "html", "json"], default="markdown")
    s.add_argument("-o", "--output", default=None, help="write the table here (default: print)")
    s.add_argument("--label", action="append", default=None, metavar="PATH=LABEL", help="label the runs under PATH (default: what the run recorded)")
    s.set_defaults(func=_cmd_table)

    s = sub.add_parser("compare", help="runs side by side with a baseline file, with deltas; flags what disagrees")
    s.add_argument("paths", nargs="+")
    s.add_argument("--baseline", required=True, help="baseline file (see baselines/README.md)")
    s.add_argument("--rtol", type=float, default=0.05, help="relative tolerance (default 0.05)")
    s.add_argument("--atol", type=float, default=0.0, help="absolute tolerance (default 0)")
    s.add_argument("--label", action="append", default=None, metavar="PATH=LABEL", help="label the runs under PATH (default: what the run recorded)")
    s.set_defaults(func=_cmd_compare)

    s = sub.add_parser("check", help="regression gate: exit 0 pass, 1 regression, 2 bad input")
    s.add_argument("paths", nargs="+")
    s.add_argument("--baseline", default=None, help="values to match (lower-is-better metrics: worse than tolerance fails)")
    s.add_argument("--rules", default=None, help="YAML expectation rules (see baselines/rules-bundled.yaml)")
    s.add_argument("--rtol", type=float, default=0.05)
    s.add_argument("--atol", type=float, default=0.0)
    s.add_argument("--both-ways", action="store_true", help="also fail when a value is better than the baseline beyond tolerance")
    s.add_argument("--strict", action="store_true", help="fail on baseline values missing from the runs")
    s.add_argument("--max-report", type=int, default=20, help="failures to list (default 20)")
    s.add_argument("--label", action="append", default=None, metavar="PATH=LABEL", help="label the runs under PATH (default: what the run recorded)")
    s.set_defaults(func=_cmd_check)

    s = sub.add_parser("plot", help="heatmap of languages x conditions (log ratio to base), or --mask for region density")
    s.add_argument("paths", nargs="*")
    s.add_argument("-o", "--output", required=True, help=".png or .svg")
    s.add_argument("--metric", default="token_perplexity", help=metric_help.replace("bits_per_byte (default)", "bits_per_byte").replace("token_perplexity", "token_perplexity (default)"))
    s.add_argument("--ratio-to", default="base", help="label of the run to divide by (default base)")
    s.add_argument("--mask", default=None, help="plot a region's density per layer x module instead")
    s.add_argument("--label", action="append", default=None, metavar="PATH=LABEL", help="label the runs under PATH (default: what the run recorded)")
    s.set_defaults(func=_cmd_plot)

    s = sub.add_parser("baseline", help="write a reference baseline file from runs of this tool")
    s.add_argument("paths", nargs="+")
    s.add_argument("-o", "--output", required=True)
    s.add_argument("--source", required=True, help="how the runs were produced (the command)")
    s.add_argument("--model", default=None, help="model name to record (default: from the runs)")
    s.add_argument("--metric", default="token_perplexity", choices=["bits_per_byte", "byte_perplexity", "word_perplexity", "token_perplexity"])
    s.add_argument("--note", default="")
    s.add_argument("--label", action="append", default=None, metavar="PATH=LABEL", help="label the runs under PATH (default: what the run recorded)")
    s.set_defaults(func=_cmd_baseline)

    s = sub.add_parser("reproduce", help="run the paper's experiments on the bundled model and write a report (about 1 h; --quick: a few minutes)")
    s.add_argument("--quick", action="store_true", help="CI-sized: 6 languages x 1 document, 1%% regions, 8 candidate dimensions, 3 training steps")
    s.add_argument("--out", default="lingreg-reproduce", help="results folder (default ./lingreg-reproduce)")
    s.add_argument("--doc", default=None, help="report path (default <out>/REPRODUCTION.md; the project's is docs/REPRODUCTION.md)")
    s.add_argument("--from-results", action="store_true", help="only rewrite the report from <out>/results")
    s.set_defaults(func=_cmd_reproduce)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from lm_eval_lingreg.bundled import BundledModelError
    from lm_eval_lingreg.corpora import CorpusError
    from lm_eval_lingreg.languages import UnknownLanguageError
    from lm_eval_lingreg.regions import RegionError  # PerturbationError is one
    from lm_eval_lingreg.report import ReportError
    from lm_eval_lingreg.scores import ScoreFileError

    try:
        return args.func(args)
    except (UsageError, ReportError, RegionError, UnknownLanguageError, BundledModelError, CorpusError, ScoreFileError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
