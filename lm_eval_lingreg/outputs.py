"""Writing outputs safely: a file or folder appears complete under its final name or not at all.

- `atomic_path(target)` yields a temporary path beside `target` (inside a private folder for a file) and renames it over `target` on success; on
  any error (or Ctrl-C) the temporary is removed and `target` is untouched.
- An existing non-empty folder is never replaced unless the caller passes `overwrite=True`;
  a folder holding the current directory, and a file where a folder is expected (or the
  reverse), are never replaced at all.
- One lingreg process at a time writes a given target: a lock beside it (`.<name>.lingreg-lock`,
  removed afterwards) refuses a second one with a clear error.
- Temporaries left by a killed run (`.<name>.lingreg-tmp-<pid>-*`, `.<name>.lingreg-old-<pid>-*`)
  are removed by the next run on the same target, which holds the lock and so knows nobody else
  is writing them. Only names of this exact form are ever removed: a user's own dot-files stay.
- `check_writable(target)` runs before any long work: a run that cannot save its result stops
  at once instead of after an hour.
"""

from __future__ import annotations

import contextlib
import errno
import importlib.util
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from lm_eval_lingreg.errors import OutputError

_HELD: dict[str, int] = {}  # lock files this process holds, with their nesting depth
#: Whether this platform has flock (every Unix). Where it has not (Windows), the lock is filelock's.
_FLOCK = importlib.util.find_spec("fcntl") is not None
LOCK_SUFFIX = ".lingreg-lock"
#: A temporary or a replaced output of ours: `.<target>.lingreg-tmp-<pid>-<random>` or `.lingreg-old-`.
_TEMPORARY = re.compile(r"^\.(?P<target>.+)\.lingreg-(?:tmp|old)-\d+-[^/]+$")


def _lock_file(target: Path) -> Path:
    return target.parent / f".{target.name}{LOCK_SUFFIX}"


def _holder(lock: Path) -> str:
    try:
        pid = lock.read_text().strip()
    except OSError:
        pid = ""
    return f" (pid {pid})" if pid.isdigit() else ""


@contextlib.contextmanager
def output_lock(target: str | os.PathLike, wait: bool = False) -> Iterator[None]:
    """Hold the write lock of `target` (re-entrant within this process).

    If another process holds it: refuse with an `OutputError`, or with `wait` block until it is done.
    """
    target = Path(target).absolute()
    lock = _lock_file(target)
    key = str(lock)
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    lock.parent.mkdir(parents=True, exist_ok=True)
    if not _FLOCK:
        with _portable_lock(lock, target, wait):
            _HELD[key] = 1
            try:
                yield
            finally:
                del _HELD[key]
        return
    fd = None
    try:  # taken inside the block whose end removes it: a signal or a full disk right after leaves no lock file
        fd = _acquire(lock, target, wait)
        _HELD[key] = 1
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield
    finally:
        if fd is not None:
            _HELD.pop(key, None)
            with contextlib.suppress(OSError):
                lock.unlink()
            os.close(fd)


def _flock(fd: int, wait: bool = False) -> None:
    """flock `fd` exclusively; `BlockingIOError` if another holder has it, unless `wait`."""
    import fcntl  # Unix only: imported here, so that this module (and loading a region) imports everywhere

    fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))


def _refused(lock: Path, target: Path) -> OutputError:
    return OutputError(f"{target} is being written by another lingreg process{_holder(lock)}; wait for it to finish, or choose another output")


@contextlib.contextmanager
def _portable_lock(lock: Path, target: Path, wait: bool) -> Iterator[None]:
    """The lock where flock is missing (Windows): filelock's, its file removed afterwards. The pid is not
    written into it there (the locked file cannot be written through another handle)."""
    from filelock import FileLock, Timeout

    held = FileLock(str(lock), timeout=-1 if wait else 0)
    try:
        held.acquire()
    except Timeout as exc:
        raise _refused(lock, target) from exc
    try:
        yield
    finally:
        held.release()
        with contextlib.suppress(OSError):
            lock.unlink()


def _acquire(lock: Path, target: Path, wait: bool) -> int:
    """The descriptor of the live lock file, flocked. A signal (Ctrl-C, SIGTERM) while acquiring leaves no lock file
    behind unless another process holds it."""
    fd = None
    try:
        while True:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                _flock(fd, wait)
            except BlockingIOError as exc:
                os.close(fd)
                fd = None
                raise _refused(lock, target) from exc
            try:  # the file we locked may have been unlinked by its previous holder: lock the live one
                same = os.fstat(fd).st_ino == os.stat(lock).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)
            fd = None
    except BaseException:
        if fd is not None:
            with contextlib.suppress(OSError):
                _flock(fd)  # ours (or free): safe to remove
                lock.unlink()
            os.close(fd)
        raise


def _stale(target: Path) -> list[Path]:
    if not target.parent.is_dir():
        return []
    return [p for p in target.parent.iterdir() if (m := _TEMPORARY.match(p.name)) and m["target"] == target.name]


def clean_stale(target: str | os.PathLike) -> list[Path]:
    """Remove temporaries a killed run left beside `target`; call with its lock held."""
    removed = _stale(Path(target))
    for p in removed:
        _remove(p)
    return removed


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


#: Written into a folder a command produced as a whole: the same command may replace it on a rerun.
OWNER_FILE = ".lingreg-output.json"


def owner(folder: Path) -> str | None:
    """The command that wrote `folder` as a whole, if one did."""
    from lm_eval_lingreg.errors import LingregError
    from lm_eval_lingreg.strict import loads_json, read_text

    path = folder / OWNER_FILE
    if path.is_symlink():  # a link can point at another folder's record
        return None
    try:  # strictly, and never a blocking read: a FIFO, a folder or a repeated key there is no claim of ours
        data = loads_json(read_text(path, OutputError, "output record", max_bytes=2**16), OutputError, str(path), finite=True)
    except LingregError:
        return None
    return data.get("command") if isinstance(data, dict) else None


def _held(lock: Path) -> bool:
    """Whether some process (this one included) holds the lock file right now."""
    if str(lock.absolute()) in _HELD:
        return True
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        return False
    if not _FLOCK:
        os.close(fd)
        from filelock import FileLock, Timeout

        probe = FileLock(str(lock), timeout=0)
        try:
            probe.acquire()
        except Timeout:
            return True
        probe.release()
        return False
    try:
        _flock(fd)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def clean_folder(folder: str | os.PathLike) -> list[Path]:
    """Remove what killed runs left in `folder`: temporaries and lock files of outputs nobody is writing now."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.iterdir():
        m = _TEMPORARY.match(p.name)
        ours = (
            not _held(folder / f".{m['target']}{LOCK_SUFFIX}")
            if m
            else p.name.startswith(".") and p.name.endswith(LOCK_SUFFIX) and p.is_file() and not p.is_symlink() and not _held(p)
        )
        if ours:
            _remove(p)
            removed.append(p)
    return removed


def check_not_input(output: str | os.PathLike, inputs: Sequence[str | os.PathLike]) -> None:
    """Refuse an output that is one of the command's inputs, or a folder holding one: writing it would destroy what is being read."""
    out = Path(output).resolve()
    for p in inputs:
        resolved = Path(p).resolve()
        if resolved == out:
            raise OutputError(f"{output} is one of the inputs ({p}); writing there would destroy it: name another output")
        if out in resolved.parents:
            raise OutputError(f"{output} holds one of the inputs ({p}); replacing it would destroy that: name another output")


def check_target(target: str | os.PathLike, *, directory: bool = False, overwrite: bool = False, owned_by: str | None = None) -> Path:
    """Refuse a target this write must not replace; return it as a Path.

    A folder that holds the current directory (`.`, `..`, `/`) is never replaced. A non-empty
    folder is replaced only with `overwrite`, or when the same command (`owned_by`) wrote it.
    A file is not replaced by a folder nor the reverse.
    """
    target = Path(target)
    if not target.name or target.name in (".", ".."):
        raise OutputError(f"{str(target)!r} is not a valid output name; name a new file or folder")
    resolved = target.resolve()
    cwd = Path.cwd().resolve()
    if target.exists() or target.is_symlink():
        if resolved == cwd or resolved in cwd.parents:
            raise OutputError(f"refusing to replace {target}: it holds the current directory; name a new folder")
        if directory and not target.is_dir():
            raise OutputError(f"{target} exists and is not a folder; name a new folder, or remove it first")
        if not directory and target.is_dir():
            raise OutputError(f"{target} is a folder; name a file (e.g. {target / 'out'}{target.suffix or ''})")
        if directory and any(target.iterdir()) and not overwrite and not (owned_by and owner(target) == owned_by):
            raise OutputError(f"{target} exists and is not empty; pass --overwrite to replace it, or name a new folder")
    return target


def check_writable(
    target: str | os.PathLike, *, directory: bool = False, overwrite: bool = False, into: bool = False, owned_by: str | None = None, figure: bool = False
) -> Path:
    """`check_target`, then make sure the target can be created and written; before any work.

    With `into`, `target` is a folder that files are written into (it is never replaced as a
    whole): it may exist and hold other files.
    """
    if into:
        target = Path(target)
        if target.exists() and not target.is_dir():
            raise OutputError(f"{target} exists and is not a folder; name a folder for the output")
    else:
        target = check_target(target, directory=directory, overwrite=overwrite, owned_by=owned_by)
    if figure:
        check_figure_format(target)
    existing = target.absolute() if into else target.absolute().parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"cannot write {target}: {existing} is a file, not a folder")
    try:  # the real test (permissions, read-only mounts, root): create and remove a file there
        fd, probe = tempfile.mkstemp(prefix=".lingreg-write-test-", dir=existing)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"cannot write {target}: {existing} is not writable ({e.strerror or e}); choose another output") from e
    return target


def check_figure_format(path: Path) -> None:
    """A figure's file name must end in a format matplotlib writes (png, svg, pdf, ...)."""
    from matplotlib.backend_bases import FigureCanvasBase

    formats = FigureCanvasBase.get_supported_filetypes()
    suffix = path.suffix.lower().lstrip(".")
    if suffix and suffix not in formats:
        raise OutputError(f"{path}: cannot draw a .{suffix} figure; use one of {', '.join(sorted(formats))} (e.g. .png or .svg)")


def _missing_parents(folder: Path) -> list[Path]:
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    return missing


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, directory: bool = False, overwrite: bool = False, owned_by: str | None = None) -> Iterator[Path]:
    """Yield a temporary sibling of `target`; on success rename it over `target`.

    On any exception the temporary (and any folder created for it) is removed and `target` is
    untouched. A non-empty folder is replaced only with `overwrite`, or when `owned_by` names the
    command that wrote it (a folder written with `owned_by` records it); an existing file is always replaceable.
    """
    target = check_target(target, directory=directory, overwrite=overwrite, owned_by=owned_by)
    created = _missing_parents(target.absolute().parent)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the folder of {target}: {e.strerror or e}") from e
    try:
        with output_lock(target):
            yield from _swap(target, directory, owned_by)
    except BaseException:
        for folder in created:  # innermost first; only the ones this write created, and only if left empty
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise


def _swap(target: Path, directory: bool, owned_by: str | None) -> Iterator[Path]:
    """Create the temporary, hand it out, then rename it over `target` (the caller holds the lock)."""
    clean_stale(target)
    prefix = f".{target.name}.lingreg-tmp-{os.getpid()}-"
    umask = os.umask(0)
    os.umask(umask)
    # A file is written inside a private folder: whatever a library writes beside it (safetensors' own `.tmpXXXXXX`)
    # stays inside, and a killed run leaves one temporary that the next run removes. The folder is named first and
    # made inside the block that removes it, so a signal at any moment leaves nothing.
    box = target.parent / f"{prefix}{secrets.token_hex(6)}"
    tmp = box if directory else box / target.name
    try:
        try:
            box.mkdir(mode=0o700)
        except OSError as e:
            raise OutputError(f"cannot write {target}: {e.strerror or e}") from e
        yield tmp
        if not directory and (tmp.is_symlink() or not tmp.is_file()):
            raise OutputError(f"cannot write {target}: the writer left no file")
        if owned_by:
            (tmp / OWNER_FILE).write_text(json.dumps({"command": owned_by}) + "\n", encoding="utf-8")
        # mkstemp/mkdtemp (and some writers) make 0600/0700; the result is meant to be shared
        os.chmod(tmp, (0o777 if directory else 0o666) & ~umask)
        if directory and target.is_dir():
            old = target.parent / f".{target.name}.lingreg-old-{os.getpid()}-{secrets.token_hex(6)}"
            try:
                old.mkdir(mode=0o700)
                os.replace(target, old / "x")
                try:
                    os.replace(tmp, target)
                except BaseException:
                    os.replace(old / "x", target)  # the previous folder goes back: the target is never missing
                    raise
            finally:
                shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
            shutil.rmtree(box, ignore_errors=True)
    except BaseException as e:
        shutil.rmtree(box, ignore_errors=True)
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT):
            full = e.errno in (errno.ENOSPC, errno.EDQUOT)
            raise OutputError(f"cannot write {target}: {e.strerror}" + ("; free some space, or write elsewhere" if full else "")) from e
        if isinstance(e, Exception) and _full_disk(e):  # safetensors and torch report a full disk in their own types
            raise OutputError(f"cannot write {target}: No space left on device; free some space, or write elsewhere") from e
        raise


def _full_disk(e: BaseException) -> bool:
    text = str(e)
    return "No space left on device" in text or "os error 28" in text or "Disk quota exceeded" in text


def sort_safetensors_header(path: str | os.PathLike) -> None:
    """Put a safetensors file's metadata keys in sorted order, in place.

    safetensors writes metadata from a hash map, so the same content gives different bytes from
    run to run; sorted, identical content gives identical files. The header keeps its length.
    """
    with open(path, "r+b") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        if "__metadata__" not in header:
            return
        header = {"__metadata__": dict(sorted(header["__metadata__"].items())), **{k: v for k, v in header.items() if k != "__metadata__"}}
        raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        if len(raw) > n:  # cannot happen for a reordering; leave the file as safetensors wrote it
            return
        f.seek(8)
        f.write(raw + b" " * (n - len(raw)))


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | os.PathLike, data: object, default=str) -> Path:
    """Write `data` as indented UTF-8 JSON, atomically."""
    return write_text(path, json.dumps(data, indent=1, ensure_ascii=False, default=default) + "\n")


def save_figure(fig, path: str | os.PathLike, dpi: int = 110) -> Path:
    """Save a matplotlib figure atomically; the format follows the suffix (.png default, .svg, .pdf, ...)."""
    import matplotlib.pyplot as plt

    suffix = Path(path).suffix.lower().lstrip(".")
    fmt = {"": "png", "jpg": "jpeg"}.get(suffix, suffix)
    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=fmt, dpi=dpi)
    finally:
        plt.close(fig)
    return Path(path)


def save_model(model, tokenizer, out: str | os.PathLike, records: dict[str, object], overwrite: bool = False) -> Path:
    """A standard Hugging Face directory (safetensors) with JSON records beside it, written atomically."""
    out = Path(out)
    with atomic_path(out, directory=True, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        for name, data in records.items():
            (tmp / name).write_text(json.dumps(data, indent=1, default=str, ensure_ascii=False), encoding="utf-8")
    return out
