"""Output locations: checked writable before any expensive work, written atomically with the usual permissions
(``0666 & ~umask`` for files, ``0777 & ~umask`` for folders: 0644 / 0755 under the usual umask 022), and checked
to exist after they are written."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from vkvtrain.errors import OutputError


def current_umask() -> int:
    """The process umask (read from /proc where the kernel shows it; else set and restored at once)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """The mode ``open()``/``mkdir()`` would give a new file (or folder) under the current umask."""
    return (0o777 if directory else 0o666) & ~current_umask()


def check_writable_dir(path: str | Path, what: str) -> Path:
    """Fail with one line naming ``what`` unless ``path`` is a folder this process can write to, or can be
    created as one. Creates nothing: the nearest existing ancestor is tested with a temporary file.

    Returns the absolute path.
    """
    target = Path(path).expanduser().absolute()
    _check_ancestor(target, target, what)
    return target


def check_writable_file(path: str | Path, what: str) -> Path:
    """Like :func:`check_writable_dir` for a file about to be written (its folder is checked; a folder in the
    file's place is refused)."""
    target = Path(path).expanduser().absolute()
    if target.is_dir():
        raise OutputError(f"{what} {str(target)!r} is a folder; give a file name (e.g. {target / 'out'}).")
    _check_ancestor(target.parent, target, what)
    return target


def _check_ancestor(folder: Path, target: Path, what: str) -> None:
    ancestor = folder
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"{what} {str(target)!r} cannot be written: {str(ancestor)!r} is a file, not a folder; "
                          f"choose another {what}.")
    try:
        with tempfile.TemporaryFile(dir=ancestor):
            pass
    except OSError as error:
        raise OutputError(f"{what} {str(target)!r} is not writable ({error.strerror} in {str(ancestor)!r}); "
                          f"choose a folder you can write to, or fix its permissions.") from None


def make_dirs(path: str | Path, what: str) -> Path:
    """``mkdir -p`` with a one-line error naming ``what`` when it fails."""
    target = Path(path).expanduser()
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create {what} {str(target)!r} ({error.strerror}); choose a writable folder.") from None
    return target


@contextmanager
def staged_file(target: str | Path, what: str) -> Iterator[Path]:
    """A temporary path beside ``target``: write it inside the ``with``; on success it gets the usual file mode
    and atomically replaces ``target``, on failure it is removed (``target`` is then untouched)."""
    target = Path(target)
    make_dirs(target.parent, f"the folder of {what}")
    try:
        handle, name = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    except OSError as error:
        raise OutputError(f"cannot write {what} {str(target)!r} ({error.strerror}); choose a writable folder.") from None
    os.close(handle)
    staging = Path(name)
    try:
        yield staging
        os.chmod(staging, default_mode())  # mkstemp creates 0600
        os.replace(staging, target)
    except OSError as error:
        raise OutputError(f"cannot write {what} {str(target)!r} ({error.strerror}); choose a writable folder.") from None
    finally:
        staging.unlink(missing_ok=True)


def staging_dir(parent: str | Path, prefix: str) -> Path:
    """A fresh folder in ``parent`` with the usual folder mode (``tempfile.mkdtemp`` alone gives 0700)."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(folder, default_mode(directory=True))
    return folder


def apply_default_modes(folder: str | Path) -> Path:
    """Give ``folder`` and everything in it the usual modes (some writers, e.g. transformers' save_pretrained of
    safetensors shards, create files 0600 through temporary files)."""
    root = Path(folder)
    file_mode, dir_mode = default_mode(), default_mode(directory=True)
    os.chmod(root, dir_mode)
    for path in root.rglob("*"):
        if not path.is_symlink():
            os.chmod(path, dir_mode if path.is_dir() else file_mode)
    return root


def verify_written(path: str | Path, what: str, size: int | None = None) -> Path:
    """Fail with one line unless ``path`` exists as a file (of ``size`` bytes when given) after a save."""
    target = Path(path)
    if not target.is_file():
        raise OutputError(f"{what} {str(target)!r} was not written (nothing is there after the save); check that "
                          "the folder is writable and the disk is not full.")
    if size is not None and target.stat().st_size != size:
        raise OutputError(f"{what} {str(target)!r} is {target.stat().st_size} bytes after the save, expected {size}; "
                          "check the disk (full or failing?).")
    return target


def build_in_place(target: Path, marker: str, build: Callable[[Path], object], prefix: str) -> Path:
    """Run ``build`` on a fresh staging folder beside ``target`` and rename it into place once complete, so an
    interrupted build leaves nothing at ``target``; what it installs has the usual modes, whatever the writers
    used. A concurrent build that got there first (its ``marker`` file present) is kept; any other failure to move
    is an error. The staging folder is always removed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(target.parent, prefix)
    try:
        build(staging)
        apply_default_modes(staging)
        try:
            staging.rename(target)
        except OSError as error:
            if not (target / marker).is_file():
                raise OutputError(f"cannot move the finished build into {target}: {error}") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
