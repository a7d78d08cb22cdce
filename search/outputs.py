"""Output paths checked before anything trains.

A path that cannot be written is otherwise found when the result is saved, after the training that
made it, and the result is lost. These checks probe the file system the way the save will use it
(a temporary file beside the target, then a rename) and leave nothing behind: folders they had to
create for the probe are removed again.
"""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from search.errors import SearchError


def check_writable_file(path: str | os.PathLike[str], option: str) -> Path:
    """``path`` as a Path, or a SearchError naming ``option``, the path and the OS reason.

    The parent folder must exist or be creatable, ``path`` must be a regular file if it exists (the save
    renames a new file over it), and a temporary file named as :func:`search.checkpoint.atomic_save`
    names its own must be creatable beside it.
    """
    text = os.fspath(path)
    if not text:
        raise SearchError(f"{option} is empty: expected a file path")
    target = Path(text)
    try:
        if target.is_dir() or text.endswith(os.sep):
            raise _os_error(errno.EISDIR, target)
        if target.exists() and not target.is_file():  # the save renames over it: never over a device or a pipe
            raise OSError(errno.EEXIST, "exists and is not a regular file", text)
        _probe(target.parent, f".{target.name}.")
    except (OSError, ValueError) as err:
        raise SearchError(f"cannot write {option} {text}: {_reason(err)}") from None
    return target


def check_writable_dir(path: str | os.PathLike[str], option: str) -> Path:
    """``path`` as a Path, or a SearchError: the folder must exist or be creatable, and hold new files."""
    text = os.fspath(path)
    if not text:
        raise SearchError(f"{option} is empty: expected a folder")
    folder = Path(text)
    try:
        if folder.exists() and not folder.is_dir():
            raise _os_error(errno.ENOTDIR, folder)
        _probe(folder, ".write-test.")
    except (OSError, ValueError) as err:
        raise SearchError(f"cannot write {option} {text}: {_reason(err)}") from None
    return folder


PROBE_ATTEMPTS = 3  # two commands started together probe the same missing folder: one may see the other's


def _probe(folder: Path, prefix: str) -> None:
    """Create and remove a temporary file in ``folder`` (made for the probe where missing). Where another
    process makes or removes a folder of the path meanwhile (two runs started together), probe again."""
    for attempts_left in reversed(range(PROBE_ATTEMPTS)):
        try:
            with _probe_folder(folder) as existing:
                fd, tmp = tempfile.mkstemp(dir=existing, prefix=prefix, suffix=".tmp")
                os.close(fd)
                os.unlink(tmp)
            return
        except (FileExistsError, FileNotFoundError):
            if not attempts_left:
                raise


def cache_option(given: str | None) -> str:
    """How an error names the teacher cache: the option, or the variable or default it came from."""
    if given is not None:
        return "--cache-dir"
    return "$SEARCH_CACHE_DIR" if os.environ.get("SEARCH_CACHE_DIR") else "the teacher cache (--cache-dir)"


@contextmanager
def _probe_folder(folder: Path) -> Iterator[Path]:
    """``folder``, created for the duration of the block if missing; what was created is removed after."""
    missing = []
    current = folder
    while not current.exists() and not current.is_symlink() and current != current.parent:
        missing.append(current)
        current = current.parent
    created: list[Path] = []
    try:
        for step in reversed(missing):
            step.mkdir()  # made meanwhile by another process: FileExistsError, and the caller probes again
            created.append(step)
        yield folder
    finally:
        for step in reversed(created):
            try:
                step.rmdir()
            except OSError:
                pass  # something else put a file there meanwhile: not ours to delete


def _os_error(code: int, path: Path) -> OSError:
    return OSError(code, os.strerror(code), str(path))


def _reason(err: BaseException) -> str:
    """The OS's reason without the path (the message names the path already)."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__
