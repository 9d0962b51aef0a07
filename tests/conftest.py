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


# parallel workers (pytest-xdist): share the cores instead of each taking all of them ----------------------------------


_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    _THREADS = max(1, len(os.sched_getaffinity(0)) // _WORKERS)
    torch.set_num_threads(_THREADS)
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)  # subprocesses (lm_eval, torchrun, the wheel's commands)


# the plain-install environment (tests/plain_install.py), built in the background while the other tests run ---------------
#
# One build per test run, however many workers: the first process (the only one, or pytest-xdist's controller) makes the
# folder and names it in LINGREG_TEST_PLAIN_DIR, which the workers inherit. The first worker that collects an `install`
# test starts the build (an exclusive create of `started`); the process that made the folder kills the build and removes
# the folder when the run ends.

_PLAIN_ENV = "LINGREG_TEST_PLAIN_DIR"
_OWNER: dict = {}


def pytest_configure(config) -> None:
    import tempfile

    if _PLAIN_ENV not in os.environ:
        root = Path(tempfile.mkdtemp(prefix="lingreg-plain-"))
        os.environ[_PLAIN_ENV] = str(root)
        _OWNER["dir"] = root


def plain_install_dir() -> Path:
    """Where tests/plain_install.py builds the environment; started now if no collection started it."""
    root = Path(os.environ[_PLAIN_ENV])
    _start_plain_install(root)
    return root


def _start_plain_install(root: Path) -> None:
    import subprocess
    import sys

    try:
        fd = os.open(root / "started", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:  # another worker started it
        return
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).parent / "plain_install.py"), str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    os.write(fd, str(proc.pid).encode())
    os.close(fd)


def pytest_collection_modifyitems(config, items) -> None:
    """The longest chains first (the real-model reproductions that several tests read), the wheel tests, which wait
    for the background install, last; collection order otherwise. Every worker sorts the same way."""

    def rank(item) -> int:
        group = item.get_closest_marker("xdist_group")
        if group is not None and str(group.args[0]).startswith("reproduce-"):
            return 0
        reads_reproductions = any(name.startswith("quick_") for name in getattr(item, "fixturenames", ()))
        return 2 if item.get_closest_marker("install") or reads_reproductions else 1  # these wait for others: run them late

    items.sort(key=rank)


def pytest_collection_finish(session) -> None:
    if any(item.get_closest_marker("install") for item in session.items):
        _start_plain_install(Path(os.environ[_PLAIN_ENV]))


def pytest_unconfigure(config) -> None:
    import shutil
    import signal

    root = _OWNER.get("dir")
    if root is None:
        return
    try:
        pid = int((root / "started").read_text() or 0)
    except (FileNotFoundError, ValueError):
        pid = 0
    if pid and not (root / "done").exists():
        try:
            os.killpg(pid, signal.SIGKILL)  # the build and the pip / prepare it runs
        except ProcessLookupError:
            pass
    shutil.rmtree(root, ignore_errors=True)
