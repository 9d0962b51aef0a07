"""Test helpers: tiny random models built from configs, a tiny tokenizer, the CLI in process, subprocess runs."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
VOCAB = 320
SENTENCES = [
    "All human beings are born free and equal in dignity and rights.",
    "Tous les êtres humains naissent libres et égaux en dignité et en droits.",
    "人人生而自由,在尊严和权利上一律平等。",
    "Все люди рождаются свободными и равными в своем достоинстве и правах.",
]


def tiny_tokenizer(add_bos: bool = True):
    """A byte-level BPE tokenizer; like Llama's and Gemma's it adds BOS unless told not to."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<pad>", "<bos>", "<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(SENTENCES * 4, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", add_bos_token=add_bos)


#: The families `make_tiny` builds: dense, then mixture-of-experts (experts fused as 3-D tensors).
FAMILIES = ("llama", "gemma3", "qwen3", "mistral", "phi3", "olmo2", "qwen3_moe", "olmoe", "mixtral")
MOE_FAMILIES = ("qwen3_moe", "olmoe", "mixtral")
#: Experts per MoE layer and experts each token is routed to, in the tiny MoE configs.
EXPERTS, TOP_K = 4, 2


def make_tiny(arch: str, seed: int = 0) -> torch.nn.Module:
    """A 2-layer random model of the given family (one of `FAMILIES`), small enough for unit tests."""
    import transformers

    torch.manual_seed(seed)
    common = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    moe = dict(num_experts_per_tok=TOP_K)
    configs = {
        "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
        "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(head_dim=8, sliding_window=64, layer_types=["sliding_attention", "full_attention"])),
        "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=8)),
        "mistral": ("MistralConfig", "MistralForCausalLM", dict(head_dim=8, sliding_window=64)),
        "phi3": ("Phi3Config", "Phi3ForCausalLM", {}),  # fused qkv_proj and gate_up_proj
        "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {}),  # norms after attention and MLP, q_norm/k_norm over all heads
        "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM", dict(head_dim=8, num_experts=EXPERTS, moe_intermediate_size=16, **moe)),
        "olmoe": ("OlmoeConfig", "OlmoeForCausalLM", dict(num_experts=EXPERTS, intermediate_size=16, **moe)),
        "mixtral": ("MixtralConfig", "MixtralForCausalLM", dict(head_dim=8, num_local_experts=EXPERTS, intermediate_size=16, **moe)),
    }
    if arch not in configs:
        raise ValueError(arch)
    cfg_cls, model_cls, extra = configs[arch]
    cfg = getattr(transformers, cfg_cls)(**{**common, **extra})
    model = getattr(transformers, model_cls)(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if arch == "gemma3" and "norm" in name:  # random norm weights, so "x * (1 + w)" is not trivially 1
                p.normal_(0, 0.1)
            elif name.endswith("mlp.gate.weight"):  # a router that prefers some experts per token, as a trained one does
                p.normal_(0, 0.5)
    return model


def snapshot(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    from lm_eval_lingreg.anatomy import named_parameters

    return {n: p.detach().clone() for n, p in named_parameters(model).items()}


def assert_unchanged(model: torch.nn.Module, before: dict[str, torch.Tensor]) -> None:
    from lm_eval_lingreg.anatomy import named_parameters

    for n, p in named_parameters(model).items():
        assert torch.equal(p.detach().cpu(), before[n].cpu()), f"{n} changed"


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


def lingreg(*args: str) -> Result:
    """`lingreg ARGS` in this process (the same `main` the console script runs)."""
    from lm_eval_lingreg.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as e:  # argparse
            rc = e.code if isinstance(e.code, int) else 2
    result = Result(rc, out.getvalue(), err.getvalue())
    print(result.stdout[-4000:], result.stderr[-6000:], sep="\n")
    return result


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    """Run a command, capturing output; show it if the test fails."""
    env = {**os.environ, **kwargs.pop("env", {})}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, **kwargs)
    print(proc.stdout[-4000:], proc.stderr[-8000:], sep="\n")
    return proc


def bin_path(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def lm_eval_results(out_dir: Path) -> dict:
    import json

    files = sorted(out_dir.rglob("results*.json"))
    assert files, f"no results JSON under {out_dir}"
    return json.loads(files[-1].read_text())


def region_on_dims(model: torch.nn.Module):
    """Norm entry 7 (layer 0), column 7 of q_proj (layer 1, 2 of its 32 rows), row 7 of o_proj (layer 0, 5 entries), row 3 of down_proj."""
    from lm_eval_lingreg.anatomy import scope_shapes
    from lm_eval_lingreg.regions import Region

    shapes = scope_shapes(model)
    q = shapes["model.layers.1.self_attn.q_proj.weight"]
    o = shapes["model.layers.0.self_attn.o_proj.weight"]
    d = shapes["model.layers.1.mlp.down_proj.weight"]
    idx = {
        "model.layers.0.input_layernorm.weight": [7],
        "model.layers.1.self_attn.q_proj.weight": [0 * q[1] + 7, 5 * q[1] + 7],
        "model.layers.0.self_attn.o_proj.weight": [7 * o[1] + c for c in range(5)],
        "model.layers.1.mlp.down_proj.weight": [3 * d[1] + 1],
        "model.layers.1.self_attn.k_proj.weight": [],
    }
    return Region.from_indices(idx, shapes, {"kind": "test"})


def random_region(model: torch.nn.Module, ratio: float = 0.05, seed: int = 0):
    """A random region over the model's scope."""
    from lm_eval_lingreg.anatomy import scope_shapes
    from lm_eval_lingreg.selection import select_random

    return select_random(scope_shapes(model), ratio, seed=seed)


def check_frozen_exact_and_rest_moved(model: torch.nn.Module, before: dict[str, torch.Tensor], region, min_moved: float = 0.9) -> None:
    """The region's entries are bit-identical to `before`; at least `min_moved` of the other in-scope entries changed."""
    from lm_eval_lingreg.anatomy import named_parameters

    params = named_parameters(model)
    moved = total = 0
    for name, p in params.items():
        if name not in region.indices:
            continue
        m = region.mask(name)
        assert torch.equal(p[m], before[name][m]), f"{name}: frozen entries changed"
        moved += int((p[~m] != before[name][~m]).sum())
        total += int((~m).sum())
    assert moved / total >= min_moved, f"only {moved}/{total} trainable in-scope entries changed"


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str):
    """A real tmpfs of `size` mounted at `path` (a new folder) while the block runs: a disk that fills up.
    Needs mount rights; the test is skipped without them."""
    import pytest

    path.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()[:80]})")
    try:
        yield path
    finally:
        subprocess.run(["umount", str(path)], capture_output=True)


def train_frozen(model: torch.nn.Module, region, ids: torch.Tensor, steps: int, **adamw):
    """`steps` AdamW steps (`adamw` options) on the LM loss of `ids` with `region` frozen, in train mode; the frozen
    entries are checked after every step. Returns (the FrozenRegion, the optimizer)."""
    from lm_eval_lingreg.freeze import FrozenRegion

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], **adamw)
    frozen = FrozenRegion(model, region).attach(opt)
    model.train()
    for _ in range(steps):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
        assert frozen.verify()
    return frozen, opt
