"""Shared fixtures: tiny random Llama / Gemma-3 models built from configs, and the real bundled model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402

from helpers import make_tiny, tiny_tokenizer  # noqa: E402


@pytest.fixture(params=["llama", "gemma3"])
def tiny_model(request) -> torch.nn.Module:
    return make_tiny(request.param)


@pytest.fixture(scope="session")
def tok():
    return tiny_tokenizer()


def _save_tiny(out: Path, arch: str) -> Path:
    make_tiny(arch).save_pretrained(out)
    tiny_tokenizer().save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A tiny Llama saved as a normal HF directory (with tokenizer): fast for lm-eval runs."""
    return _save_tiny(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_gemma_dir(tmp_path_factory) -> Path:
    """A tiny Gemma-3 saved as a normal HF directory (its tokenizer adds no BOS: HFLM adds one for gemma)."""
    return _save_tiny(tmp_path_factory.mktemp("tiny-gemma3"), "gemma3")


@pytest.fixture(scope="session")
def tiny_lm(tiny_model_dir):
    """The lm-eval wrapper on the tiny Llama (unchanged model), shared by the in-process harness tests."""
    from lm_eval_lingreg.models import LingregLM

    return LingregLM(pretrained=str(tiny_model_dir), device="cpu", dtype="float32", batch_size=1)


@pytest.fixture(scope="session")
def bundled_model_dir() -> Path:
    """The real bundled Gemma-3-270M (converted once, then cached)."""
    from lm_eval_lingreg.bundled import prepare

    return prepare()


@pytest.fixture(scope="session")
def bundled_lm(bundled_model_dir):
    """The lm-eval wrapper on the bundled model, loaded once for every real-model test."""
    from lm_eval_lingreg.models import LingregLM

    return LingregLM(pretrained=str(bundled_model_dir), device="cpu", dtype="float32", batch_size=1)


# the plain-install environment (tests/test_wheel.py), built in the background while the other tests run ---------------

_PLAIN: dict = {}


def plain_install_dir(config) -> Path:
    """Where tests/plain_install.py builds the environment; started now if the collection did not start it."""
    if "dir" not in _PLAIN:
        _start_plain_install(config)
    return _PLAIN["dir"]


def _start_plain_install(config) -> None:
    import subprocess
    import sys
    import tempfile

    root = Path(tempfile.mkdtemp(prefix="lingreg-plain-"))
    _PLAIN["dir"] = root
    _PLAIN["proc"] = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "plain_install.py"), str(root)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def pytest_collection_finish(session) -> None:
    if any(item.get_closest_marker("install") for item in session.items):
        _start_plain_install(session.config)


def pytest_sessionfinish(session, exitstatus) -> None:
    import shutil

    proc = _PLAIN.get("proc")
    if proc is not None and proc.poll() is None:
        proc.kill()
    if "dir" in _PLAIN:
        shutil.rmtree(_PLAIN["dir"], ignore_errors=True)
