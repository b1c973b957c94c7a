"""The one path policy: what a name read from a file may be, and what an output may replace.

Every reader and writer goes through it (bake, unbake, GGUF, push, the index and recipe readers):
- a file name read from a file (an index's ``weight_map``, a recipe's ``shards``) is a plain file
  name inside its folder: a non-empty string with no separator, not ``.`` or ``..``;
- a file bakesteer reads is a regular file (a symlink to one is followed: Hub-cache snapshots are
  symlinks into a blob store); FIFOs, devices, folders and symlink loops are refused;
- an output is never an input, inside one or an ancestor of one, never the current folder (or an
  ancestor of it), never ``/``, never a symlink; ``--force`` replaces only a bakesteer output, or an
  empty folder.
"""
from __future__ import annotations

import ctypes
import errno
import functools
import os
import stat
from pathlib import Path
from typing import Callable, Iterable

from .errors import BakesteerError

_AT_FDCWD, _RENAME_NOREPLACE = -100, 1
BUNDLED = Path(__file__).resolve().parent / "data"  # love.svec, love_hate.jsonl, the text sets


def bundled_or(path: str | os.PathLike) -> Path:
    """A user path, or, when no such file exists and a bare name is given, the bakesteer data file of that name
    (``love.svec``, ``love_hate.jsonl``, ``wedding.txt``): the README's examples run from any folder."""
    p = Path(path)
    if not p.exists() and p.parent == Path(".") and (BUNDLED / p.name).is_file():
        return BUNDLED / p.name
    return p


def plain_name(name: object, where: str) -> str:
    """``name`` if it is a plain file name inside its folder; else a refusal naming ``where`` it came from."""
    if (not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name
            or len(name) > 255):
        raise BakesteerError(f"{where} names the file {name!r}, which is not a plain file name inside its folder; "
                             "the file is damaged or crafted, so get it again from a source you trust.")
    return name


def regular_file(folder: Path, name: str, where: str) -> Path:
    """``folder / name`` checked to be a readable regular file (a symlink to one is followed)."""
    path = Path(folder) / plain_name(name, where)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise BakesteerError(f"{where} names {name} but the file is missing; re-download it.") from None
    except OSError as e:
        raise BakesteerError(f"{path} cannot be opened ({e.strerror}); replace it with the real file.") from e
    if not stat.S_ISREG(st.st_mode):
        raise BakesteerError(f"{path} is not a regular file; replace it with the real file.")
    if not inside(folder, path):
        raise BakesteerError(f"{path} is a symlink to a file outside {folder}; replace it with the real file.")
    return path


def _home(folder: Path) -> Path:
    """Where the files of ``folder`` may live: the folder itself, or for a Hub-cache snapshot
    (``models--org--name/snapshots/REV``) its repository's cache, whose ``blobs/`` the links point into."""
    f = Path(folder).resolve()
    return f.parent.parent if f.parent.name == "snapshots" and f.parent.parent.name.startswith("models--") else f


def inside(folder: Path, path: Path) -> bool:
    """Whether ``path``, symlinks followed, stays inside ``folder`` (or its Hub-cache repository)."""
    return _within(Path(path).resolve(), _home(folder))


def is_regular(path: Path) -> bool:
    """A regular file, or a symlink to one; False for folders, FIFOs, devices, dangling links and loops."""
    try:
        return stat.S_ISREG(path.stat().st_mode)
    except OSError:
        return False


def _within(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def check_output(out: Path, inputs: Iterable[Path] = ()) -> None:
    """Refuse an output that would overwrite or remove an input, the current folder or ``/``."""
    out = Path(out)
    if out.is_symlink():
        what = "a dangling symlink" if not out.exists() else "a symlink"
        raise BakesteerError(f"output {out} is {what}; give a real path with -o.")
    o = out.resolve()
    if o == Path(o.anchor):
        raise BakesteerError(f"output {out} is the file-system root; give a new folder with -o.")
    if _within(Path.cwd().resolve(), o):
        raise BakesteerError(f"output {out} is the current folder or holds it; give a new folder with -o.")
    for src in inputs:
        s = Path(src).resolve()
        if _within(o, s):
            raise BakesteerError(f"output {out} is the input {src} or inside it; write it somewhere else.")
        if _within(s, o):
            raise BakesteerError(f"output {out} holds the input {src}, which replacing it would delete; write it "
                                 "somewhere else.")


def check_replaceable(out: Path, force: bool, is_ours: Callable[[Path], bool], kind: str = "folder") -> None:
    """An existing ``out`` may be replaced only with ``force``, and only when bakesteer wrote it (or it is empty)."""
    out = Path(out)
    if not os.path.lexists(out):
        return
    if not force:
        raise BakesteerError(f"{out} already exists; choose another -o or pass --force to replace it.")
    if kind == "folder":
        if not out.is_dir():
            raise BakesteerError(f"{out} exists and is not a folder; remove it yourself or choose another -o.")
        if not (is_ours(out) or not any(out.iterdir())):
            raise BakesteerError(f"{out} is not a bakesteer output and not empty, and --force replaces only those; "
                                 "remove it yourself or choose another -o.")
    elif not is_regular(out) or out.is_symlink() or not is_ours(out):
        raise BakesteerError(f"{out} is not a file bakesteer wrote, and --force replaces only those; remove it "
                             "yourself or choose another -o.")


def rename_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` atomically, failing with FileExistsError if ``dst`` exists (never replacing it)."""
    fn = getattr(_libc(), "renameat2", None)
    if fn is not None:
        if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.EINVAL, errno.ENOSYS):  # unsupported by this file system: fall back below
            raise (FileExistsError if err in (errno.EEXIST, errno.ENOTEMPTY) else OSError)(err, os.strerror(err),
                                                                                            str(dst))
    if os.path.lexists(dst):  # no atomic primitive here: a narrow race remains
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
    os.rename(src, dst)


@functools.lru_cache(maxsize=1)
def _libc():
    try:
        return ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
