"""Outputs written under a temporary name and moved into place only when complete, never over another's.

``Staging`` checks the path policy before any work (``paths.check_output`` and
``check_replaceable``), writes into ``.NAME.bakesteer-tmp-PID`` beside the target, and at the end
renames it into place with RENAME_NOREPLACE, so that of two runs writing one output exactly one
wins and the other fails without replacing anything. Leftovers of killed runs (their PID gone)
are removed by the next run on the same target, files and folders alike.
"""
from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from .errors import BakesteerError
from .paths import check_output, check_replaceable, is_regular, rename_noreplace

RECIPE_FILE = "bakesteer.json"
_REASONS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "the disk quota is used up",
            errno.EFBIG: "a file grew past the file system's size limit", errno.EACCES: "permission denied",
            errno.EPERM: "permission denied", errno.EROFS: "the file system is read-only"}


def is_bake_folder(path: Path) -> bool:
    """A folder ``bakesteer bake`` wrote: it holds a bakesteer.json recipe."""
    return is_regular(Path(path) / RECIPE_FILE)


def write_failed(target: Path, e: OSError) -> BakesteerError:
    reason = _REASONS.get(e.errno, e.strerror or type(e).__name__)
    return BakesteerError(f"writing {target} failed ({reason}); nothing was written, so fix that and run again.")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@dataclass
class Staging:
    """Write ``target`` (a folder, or with ``kind="file"`` a single file) atomically and exclusively.

    ``inputs``: paths the output must not overwrite or hold. ``is_ours``: what ``force`` may replace.
    """

    target: Path
    force: bool = False
    inputs: Iterable[Path] = ()
    kind: str = "folder"
    is_ours: Callable[[Path], bool] = field(default=is_bake_folder)

    def __post_init__(self):
        self.target = Path(self.target)
        check_output(self.target, self.inputs)
        check_replaceable(self.target, self.force, self.is_ours, self.kind)
        self.tmp = self._sibling("tmp")

    def _sibling(self, what: str) -> Path:
        name = f".{self.target.name}.bakesteer-{what}-{os.getpid()}"
        return self.target.parent / (name + self.target.suffix if self.kind == "file" else name)

    def _clean_leftovers(self) -> None:
        for p in self.target.parent.glob(f".{self.target.name}.bakesteer-*-*"):
            pid = p.name.rsplit("-", 1)[1].removesuffix(self.target.suffix if self.kind == "file" else "")
            if not pid.isdigit() or int(pid) == os.getpid():
                continue
            if _alive(int(pid)):
                raise BakesteerError(f"another bakesteer process (pid {pid}) is writing {self.target}; wait for it.")
            _remove(p)

    def __enter__(self) -> Path:
        try:
            self.target.parent.mkdir(parents=True, exist_ok=True)
            self._clean_leftovers()
            _remove(self.tmp)
            if self.kind == "folder":
                self.tmp.mkdir()
        except OSError as e:
            raise write_failed(self.target, e) from None
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            _remove(self.tmp)
            if isinstance(exc, OSError):
                raise write_failed(self.target, exc) from None
            return
        try:
            self._move_into_place()
        except OSError as e:
            _remove(self.tmp)
            raise write_failed(self.target, e) from None

    def _move_into_place(self) -> None:
        old = None
        if os.path.lexists(self.target):
            if not self.force:
                _remove(self.tmp)
                raise BakesteerError(f"{self.target} was created by another process while this one ran; nothing "
                                     "was replaced, so choose another -o or pass --force.")
            check_replaceable(self.target, True, self.is_ours, self.kind)
            old = self._sibling("old")
            os.replace(self.target, old)
        try:
            rename_noreplace(self.tmp, self.target)
        except FileExistsError:
            _remove(self.tmp)
            raise BakesteerError(f"{self.target} was created by another process while this one ran; nothing was "
                                 "replaced, so choose another -o.") from None
        if old is not None:
            _remove(old)
