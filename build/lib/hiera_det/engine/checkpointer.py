"""A Detectron2 checkpointer whose files are never half-written.

fvcore's ``Checkpointer.save`` streams ``torch.save`` straight into ``model_XXXXXXX.pth`` and then rewrites
``last_checkpoint`` in place. A job killed (pre-emption, OOM killer, ``kill -9``) while either write is in
flight leaves a truncated model file, or a ``last_checkpoint`` that is empty or names that truncated file, and
``--resume`` then dies with an unpickling error that mentions neither file. Here every file is written to a
temporary name in the same directory, flushed and fsynced, and moved into place with ``os.replace`` (atomic on
POSIX and Windows within one filesystem); ``last_checkpoint`` is switched only after the model file is
complete. A reader therefore always sees either the previous complete state or the new one.
"""

from __future__ import annotations

import glob
import os
import re
import tempfile
from typing import Callable, IO

import torch
from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["AtomicDetectionCheckpointer", "CheckpointFileError", "atomic_write"]

_TEMP_PREFIX = ".tmp-"
# A temp file's name records the writing process, so a crashed writer's leftovers can be told from a live
# writer's file: ".tmp-<pid>-<random>-<final name>.partial"; the suffix keeps it out of every "*.pth" listing
# (fvcore's get_all_checkpoint_files, PeriodicCheckpointer's max_to_keep).
_TEMP_PATTERN = re.compile(r"^\.tmp-(\d+)-[^-]+-(.+)\.partial$")


class CheckpointFileError(RuntimeError):
    """A checkpoint file that exists but cannot be read back (truncated, corrupt, or not a checkpoint)."""


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Write ``path`` through ``write(binary_file)`` so that ``path`` is either untouched or complete.

    The data goes to a temporary file in the same directory (``os.replace`` is atomic only within one
    filesystem), is fsynced, then renamed over ``path``; the directory is fsynced so the rename survives a
    power loss. On any error the temporary file is removed and the error propagates.
    """
    directory, name = os.path.split(os.path.abspath(path))
    fd, temp_path = tempfile.mkstemp(
        prefix=f"{_TEMP_PREFIX}{os.getpid()}-", suffix=f"-{name}.partial", dir=directory
    )
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp_path, path)
    except BaseException:
        try:
            os.unlink(temp_path)
        except FileNotFoundError:
            pass
        raise
    _fsync_directory(directory)


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with crash-safe saving and clear errors for unreadable checkpoint files.

    Same constructor and behaviour as ``DetectionCheckpointer``; ``save_dir`` must be a local directory
    (atomic rename needs one filesystem). Temporary files left by a crashed save are deleted by the next
    ``save`` in that directory; the loader never looks at them.
    """

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)

        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        if os.path.basename(save_file) != basename:
            raise ValueError(f"Checkpoint name {name!r} must not contain a directory part")
        os.makedirs(self.save_dir, exist_ok=True)
        self._remove_stale_temp_files()
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        tag_file = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(tag_file, lambda f: f.write(last_filename_basename.encode()))

    def get_checkpoint_file(self) -> str:
        # fvcore returns save_dir itself for an empty last_checkpoint, which then fails as "not found"
        # with no hint; an empty tag can only come from a non-atomic writer, so say so.
        path = super().get_checkpoint_file()
        if path and os.path.normpath(path) == os.path.normpath(self.save_dir):
            raise CheckpointFileError(
                f"{os.path.join(self.save_dir, 'last_checkpoint')} is empty, so there is nothing to resume "
                f"from. {self._previous_checkpoint_hint(exclude=None)}"
            )
        return path

    def load(self, path: str, *args, **kwargs):
        if path and "://" not in path and not os.path.isfile(path):
            tagged = os.path.join(self.save_dir, "last_checkpoint") if self.save_dir else None
            came_from_tag = tagged and os.path.normpath(path) == os.path.normpath(self.get_checkpoint_file())
            where = f" (named by {tagged})" if came_from_tag else ""
            raise FileNotFoundError(
                f"Checkpoint {path}{where} does not exist. "
                + (self._previous_checkpoint_hint(exclude=path) if came_from_tag else "Check MODEL.WEIGHTS.")
            )
        return super().load(path, *args, **kwargs)

    def _torch_load(self, f: str):
        try:
            return super()._torch_load(f)
        except MemoryError:
            raise
        except Exception as e:
            if "Weights only load failed" in str(e):
                raise  # a complete file holding objects that torch.load refuses by default: torch says why
            # A damaged file fails anywhere in torch's zip reader or unpickler, with many exception types.
            size = os.path.getsize(f) if os.path.isfile(f) else 0
            raise CheckpointFileError(
                f"Checkpoint {f} ({size} bytes) cannot be read: it is truncated or corrupt "
                f"({type(e).__name__}: {_first_line(e)}). It was probably cut short by a crash while it was "
                "being written or copied. " + self._previous_checkpoint_hint(exclude=f, delete_bad=True)
            ) from e

    def _previous_checkpoint_hint(self, exclude: str | None, delete_bad: bool = False) -> str:
        directory = self.save_dir or (os.path.dirname(exclude) if exclude else "")
        candidates = [
            p
            for p in sorted(glob.glob(os.path.join(directory, "*.pth")), key=os.path.getmtime, reverse=True)
            if exclude is None or os.path.abspath(p) != os.path.abspath(exclude)
        ]
        if not candidates:
            return "No other checkpoint exists in that directory; restart the run without --resume."
        previous = os.path.basename(candidates[0])
        return (
            f"The newest other checkpoint is {candidates[0]}: "
            + (f"delete {exclude} and " if delete_bad else "")
            + f"resume from it with `echo {previous} > {os.path.join(directory, 'last_checkpoint')}`, "
            "or pass it as MODEL.WEIGHTS."
        )

    def _remove_stale_temp_files(self) -> None:
        for path in glob.glob(os.path.join(self.save_dir, f"{_TEMP_PREFIX}*")):
            match = _TEMP_PATTERN.match(os.path.basename(path))
            if match is None:
                continue
            pid = int(match.group(1))
            if pid == os.getpid() or not _process_alive(pid):
                self.logger.info(f"Removing {path}, left over from an interrupted checkpoint save")
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else "no message"


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _fsync_directory(directory: str) -> None:
    if os.name != "posix":
        return  # directories cannot be opened for fsync on Windows; the rename is durable there already
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
