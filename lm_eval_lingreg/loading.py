"""Loading a model for a command: one device story everywhere.

`--device auto` (the default) means CUDA when available, else the CPU; `--dtype` picks the
weights' precision; `--device-map auto` spreads a model that does not fit on one device
over the GPUs and the CPU with accelerate (edits then refuse offloaded weights with one
clear error). Under `torchrun`, `init_distributed` binds each rank to its own GPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from lm_eval_lingreg.errors import ModelLoadError, UsageError

DTYPES = ("auto", "float32", "bfloat16", "float16")
BACKENDS = ("auto", "nccl", "gloo")


def resolve_device(device: str | None = "auto") -> str:
    """`auto` -> `cuda` when available else `cpu`; checks that a named CUDA device exists."""
    import torch

    device = (device or "auto").strip().lower()
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return "cpu"
    if device == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ModelLoadError("--device mps: MPS is not available on this machine; use --device cpu")
        return "mps"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ModelLoadError(
                f"--device {device}: no CUDA GPU is visible (torch {torch.__version__}, CUDA build: {torch.version.cuda is not None}); use --device cpu"
            )
        _, _, index = device.partition(":")
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise ModelLoadError(f"--device {device}: this machine has {torch.cuda.device_count()} GPU(s) (cuda:0..cuda:{torch.cuda.device_count() - 1})")
        return device
    raise UsageError(f"--device {device!r}: use auto, cpu, cuda, cuda:<n> or mps")


def native_bf16(device: str) -> bool:
    """Whether `device` computes bfloat16 matrix products in hardware (else bfloat16 is emulated, and slower than float32)."""
    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device == "cpu":
        cpu = torch.cpu
        return any(bool(getattr(cpu, probe, lambda: False)()) for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return False


def resolve_dtype(dtype: str, device: str = "cpu") -> str:
    """`auto` -> bfloat16 where the device computes it natively, float32 elsewhere; other names as given."""
    if dtype not in DTYPES:
        raise UsageError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    if dtype == "auto":
        return "bfloat16" if native_bf16(resolve_device(device)) else "float32"
    return dtype


def torch_dtype(dtype: str, device: str = "cpu"):
    import torch

    return getattr(torch, resolve_dtype(dtype, device))


#: Suffixes of the files a model folder holds: a folder with one of these names stands where a file is expected.
_FILE_SUFFIXES = (".json", ".safetensors", ".bin", ".model", ".txt", ".py", ".jinja", ".pt", ".pth", ".gguf", ".msgpack", ".h5", ".tiktoken")


def check_model_folder(path: str | os.PathLike) -> None:
    """Refuse a local model folder with an entry that is not a regular file or a folder: a FIFO (reading it
    blocks), a socket or device, a broken or looping link. One error names the entry; a hub id (no such
    folder) passes through."""
    import stat
    from pathlib import Path

    folder = Path(path)
    if not folder.is_dir():
        return
    try:
        entries = sorted(folder.iterdir())
    except OSError as e:
        raise ModelLoadError(f"model folder {folder} cannot be listed ({e.strerror or e})") from e
    for entry in entries:
        try:
            mode = entry.stat().st_mode  # follows links: a broken or looping one fails here
        except OSError as e:
            kind = "a broken or looping link" if entry.is_symlink() else f"unreadable ({e.strerror or e})"
            raise ModelLoadError(f"model folder {folder}: {entry.name} is {kind}; replace it with the file itself or remove it") from e
        if stat.S_ISDIR(mode) and entry.suffix.lower() in _FILE_SUFFIXES:
            raise ModelLoadError(f"model folder {folder}: {entry.name} is a folder where a file is expected; replace it with the file itself or remove it")
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise ModelLoadError(
                f"model folder {folder}: {entry.name} is not a regular file (a pipe, socket or device); replace it with the file itself or remove it"
            )


def load_model(pretrained: str | None = None, *, device: str = "auto", dtype: str = "float32", device_map: str | None = None) -> tuple[Any, Any]:
    """(model, tokenizer) on the chosen device; `pretrained` None = the bundled model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from lm_eval_lingreg.bundled import resolve_pretrained

    path = resolve_pretrained(pretrained)
    kwargs: dict[str, Any] = {"dtype": torch_dtype(dtype, device if not device_map else "cuda")}
    if device_map:
        kwargs["device_map"] = device_map
    else:
        device = resolve_device(device)
    try:
        check_model_folder(path)
    except ModelLoadError as e:
        from lm_eval_lingreg.bundled import DEFAULT_MODEL, bundled_cache_error

        if pretrained in (None, "", DEFAULT_MODEL):
            raise bundled_cache_error(path, str(e)) from e
        raise
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as e:  # noqa: BLE001 - transformers, safetensors and torch raise many types for a bad model folder
        offline = os.environ.get("HF_HUB_OFFLINE") in ("1", "true", "True")
        reason = f"{type(e).__name__}: " + (str(e).strip().splitlines()[0][:300] if str(e).strip() else "")
        from lm_eval_lingreg.bundled import DEFAULT_MODEL, bundled_cache_error

        if pretrained in (None, "", DEFAULT_MODEL):
            raise bundled_cache_error(path, reason) from e
        raise ModelLoadError(
            f"cannot load model {pretrained!r}: {reason}. Give a local Hugging Face model directory"
            + (" (the hub is offline here: HF_HUB_OFFLINE=1)" if offline else " or a hub id")
            + ", or omit --pretrained for the bundled model"
        ) from e
    if not device_map:
        model.to(device)
    model.eval()
    return model, tokenizer


@dataclass(frozen=True)
class Distributed:
    """This process's place in a torch.distributed job (world size 1 when not launched by torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"
    backend: str | None = None

    @property
    def active(self) -> bool:
        return self.backend is not None


def init_distributed(backend: str = "auto", device: str = "auto") -> Distributed:
    """Join the process group when launched by torchrun/accelerate (WORLD_SIZE > 1), else stay single.

    Each rank uses GPU `LOCAL_RANK` (set as its current device); nccl needs CUDA, gloo works on
    the CPU. More ranks on a machine than GPUs is one clear error.
    """
    import torch

    if backend not in BACKENDS:
        raise UsageError(f"--backend {backend!r}: use auto, nccl or gloo")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed(device=resolve_device(device))
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device)
    if device.startswith("cuda"):
        n = torch.cuda.device_count()
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        if local_rank >= n:
            raise ModelLoadError(
                f"{local_world} processes were started on this machine but it has {n} GPU(s): one GPU per process. "
                f"Use `torchrun --nproc_per_node {n}`, or score on the CPU with --device cpu --backend gloo"
            )
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    chosen = backend if backend != "auto" else ("nccl" if device.startswith("cuda") else "gloo")
    if chosen == "nccl" and not device.startswith("cuda"):
        raise UsageError("--backend nccl needs CUDA devices; use --backend gloo with --device cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend=chosen)
    return Distributed(dist.get_rank(), dist.get_world_size(), local_rank, device, chosen)


def collective_device(backend: str | None) -> str:
    """Where tensors must be for a collective: the current GPU for nccl, the CPU otherwise."""
    import torch

    return f"cuda:{torch.cuda.current_device()}" if backend == "nccl" else "cpu"
