"""Detectron2 checkpoints: crash-safe saving, loading that never unpickles objects, the one way every tool
loads a trained model's weights (:func:`load_model_weights`), and Hiera weights converted for Detectron2.

fvcore's ``Checkpointer.save`` streams ``torch.save`` straight into ``model_XXXXXXX.pth`` and then rewrites
``last_checkpoint`` in place. A job killed (pre-emption, OOM killer, ``kill -9``) while either write is in
flight leaves a truncated model file, or a ``last_checkpoint`` that is empty or names that truncated file, and
``--resume`` then dies with an unpickling error that mentions neither file. Here every file is written to a
temporary name in the same directory, flushed and fsynced, and moved into place with ``os.replace`` (atomic on
POSIX and Windows within one filesystem); ``last_checkpoint`` is switched only after the model file is
complete. A reader therefore always sees either the previous complete state or the new one.

Loading reads with ``torch.load(weights_only=True)`` only: a file that holds Python objects is refused with a
message naming the file and how to re-save its weights. Detectron2's model-zoo ``.pkl`` files are plain
pickles, which run code when read; they load only with ``allow_pickle=True`` (``--allow-pickle``).
"""

from __future__ import annotations

import glob
import logging
import os
import pickle
import re
import tempfile
from dataclasses import dataclass, field
from typing import Callable, IO

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from fvcore.common.checkpoint import _IncompatibleKeys

from ..checkpoint import CheckpointError, load_checkpoint
from ..checkpoint.reading import python_objects_message, refuses_python_objects
from ..modeling import Hiera, build_hiera

__all__ = [
    "DETECTRON2_TRUNK_PREFIX",
    "AtomicDetectionCheckpointer",
    "CheckpointFileError",
    "WeightsReport",
    "atomic_write",
    "convert_for_detectron2",
    "load_model_weights",
]

# Where the Hiera trunk sits in hiera_det's FPN detectors.
DETECTRON2_TRUNK_PREFIX = "backbone.bottom_up.trunk."

logger = logging.getLogger(__name__)

_TEMP_PREFIX = ".tmp-"
# A temp file's name records the writing process, so a crashed writer's leftovers can be told from a live
# writer's file: ".tmp-<pid>-<random>-<final name>.partial"; the suffix keeps it out of every "*.pth" listing
# (fvcore's get_all_checkpoint_files, PeriodicCheckpointer's max_to_keep).
_TEMP_PATTERN = re.compile(r"^\.tmp-(\d+)-[^-]+-(.+)\.partial$")


class CheckpointFileError(CheckpointError, RuntimeError):
    """A checkpoint file that exists but cannot be read back: truncated, corrupt, holding Python objects, or
    a pickle loaded without opt-in. A ``CheckpointError``: one ``except`` catches any checkpoint problem."""


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
        # mkstemp creates the file readable by its owner only; give it the mode open() would (0666 less the
        # umask), so that checkpoints and results are as readable as every other file of a run
        os.fchmod(fd, 0o666 & ~_umask())
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


def _umask() -> int:
    # the process's umask can only be read by setting it; set it straight back
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class AtomicDetectionCheckpointer(DetectionCheckpointer):
    """``DetectionCheckpointer`` with crash-safe saving and clear errors for unreadable checkpoint files.

    Same constructor and behaviour as ``DetectionCheckpointer``, plus ``allow_pickle`` (see the module
    docstring); ``save_dir`` must be a local directory (atomic rename needs one filesystem). Temporary files
    left by a crashed save are deleted by the next ``save`` in that directory; the loader never looks at them.
    """

    def __init__(self, model, save_dir: str = "", *, allow_pickle: bool = False, **kwargs):
        super().__init__(model, save_dir, **kwargs)
        self.allow_pickle = allow_pickle

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

    def _load_file(self, filename: str):
        if filename.endswith(".pkl"):
            if not self.allow_pickle:
                raise CheckpointFileError(
                    f"{filename} is a pickle (Detectron2 / Detectron model-zoo format), and unpickling runs "
                    "any code the file contains, so it is loaded only on request: if you trust its source "
                    "(e.g. the official Detectron2 model zoo), pass --allow-pickle (allow_pickle=True from "
                    "Python)"
                )
            self.logger.warning(f"Unpickling {filename} (allowed by --allow-pickle / allow_pickle=True)")
            return super()._load_file(filename)
        if filename.endswith(".pyth"):  # pycls; Detectron2 reads these with a torch.load that may unpickle
            data = self._torch_load(filename)
            state = data.get("model_state") if isinstance(data, dict) else None
            if not isinstance(state, dict):
                raise CheckpointFileError(f"{filename} is not a pycls checkpoint: it has no 'model_state'")
            state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
            return {"model": state, "__author__": "pycls", "matching_heuristics": True}
        return super()._load_file(filename)  # reads through _torch_load

    def _load_model(self, checkpoint):
        # MODEL.WEIGHTS may name Hiera trunk weights (an official, timm, Hugging Face or SAM2 file, or a weights
        # name): none of their keys is a model key, so they go through load_checkpoint into the model's trunk.
        state = checkpoint.get("model")
        prefix, trunk = next(((n, m) for n, m in self.model.named_modules() if isinstance(m, Hiera)), ("", None))
        if isinstance(state, dict) and state and trunk is not None and not state.keys() & self.model.state_dict().keys():
            try:
                report = load_checkpoint(trunk, state)
            except CheckpointError:
                if all(isinstance(v, (torch.Tensor, np.ndarray)) for v in state.values()):
                    return super()._load_model(checkpoint)  # a flat state dict of another model: reported below
                raise  # a Hiera checkpoint that does not fit this trunk: its message names both
            self.logger.info(f"The checkpoint holds Hiera trunk weights; loaded into the backbone:\n{report}")
            missing = [k for k in self.model.state_dict() if not k.startswith(prefix + ".")]
            missing += [f"{prefix}.{k}" for k in report.missing_keys if k not in report.ignored_missing_keys]
            return _IncompatibleKeys(missing_keys=missing, unexpected_keys=[], incorrect_shapes=[])
        if isinstance(state, dict):
            self._take_background_grid(state)
        return super()._load_model(checkpoint)

    def _take_background_grid(self, state: dict) -> None:
        """Give each windowed trunk's background position embedding the checkpoint's grid, as
        ``load_checkpoint`` does: it is interpolated to every input's grid anyway, so any grid is the same
        model, and Detectron2's loader would otherwise skip the tensor and leave it at initialization (a
        checkpoint converted with ``tools/convert_checkpoint.py --attention window`` keeps the source's grid)."""
        for name, trunk in self.model.named_modules():
            value = state.get(f"{name}.pos_embed" if name else "pos_embed")
            if not isinstance(trunk, Hiera) or trunk.pos_embed_mode != "absolute_win" or value is None:
                continue
            param = trunk.pos_embed
            if value.dim() == 4 and value.shape[:2] == param.shape[:2] and value.shape != param.shape:
                self.logger.info(f"{name}.pos_embed: the model's {tuple(param.shape)} background takes the "
                                 f"checkpoint's {tuple(value.shape)} grid")  # fmt: skip
                param.data = param.data.new_empty(value.shape)  # in place: optimizers keep the Parameter

    def _torch_load(self, f: str):
        try:
            return torch.load(f, map_location="cpu", weights_only=True)
        except MemoryError:
            raise
        except pickle.UnpicklingError as e:
            if refuses_python_objects(e):
                raise CheckpointFileError(python_objects_message(f, e)) from e
            raise self._damaged(f, e) from e
        except Exception as e:
            # A damaged file fails anywhere in torch's zip reader or unpickler, with many exception types.
            raise self._damaged(f, e) from e

    def _damaged(self, f: str, e: Exception) -> CheckpointFileError:
        size = os.path.getsize(f) if os.path.isfile(f) else 0
        return CheckpointFileError(
            f"Checkpoint {f} ({size} bytes) cannot be read: it is truncated or corrupt "
            f"({type(e).__name__}: {_first_line(e)}). It was probably cut short by a crash while it was "
            "being written or copied. " + self._previous_checkpoint_hint(exclude=f, delete_bad=True)
        )

    def _previous_checkpoint_hint(self, exclude: str | None, delete_bad: bool = False) -> str:
        directory = self.save_dir or (os.path.dirname(exclude) if exclude else "")
        if not os.path.isfile(os.path.join(directory, "last_checkpoint")):
            # not a training run's folder: its other files are not this run's checkpoints
            return "Copy or download the file again."
        # only the checkpoints a run writes (model_0004999.pth, model_final.pth), newest first
        candidates = [
            p
            for p in sorted(glob.glob(os.path.join(directory, "model_*.pth")), key=os.path.getmtime, reverse=True)
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


@dataclass
class WeightsReport:
    """What :func:`load_model_weights` set: counts over the model's state dict and what did not fit."""

    source: str
    model_tensors: int
    checkpoint_tensors: int
    missing_keys: list[str] = field(default_factory=list)
    unexpected_keys: list[str] = field(default_factory=list)
    incorrect_shapes: list[tuple[str, tuple, tuple]] = field(default_factory=list)

    @property
    def loaded(self) -> int:
        """Model tensors set from the checkpoint (a tensor of another shape counts as missing)."""
        return self.model_tensors - len(self.missing_keys)

    @property
    def complete(self) -> bool:
        return not (self.missing_keys or self.unexpected_keys or self.incorrect_shapes)

    def __str__(self) -> str:
        parts = [f"{self.source}: {self.loaded} of {self.model_tensors} model tensors loaded"]
        if self.incorrect_shapes:
            key, got, expected = self.incorrect_shapes[0]
            parts.append(
                f"{len(self.incorrect_shapes)} with another shape, left at initialization "
                f"(e.g. {key}: checkpoint {tuple(got)}, model {tuple(expected)})"
            )
        others = [k for k in self.missing_keys if k not in {s[0] for s in self.incorrect_shapes}]
        if others:
            parts.append(f"{len(others)} not in the checkpoint, left at initialization "
                         f"(e.g. {_some(others)})")  # fmt: skip
        if self.unexpected_keys:
            parts.append(f"{len(self.unexpected_keys)} checkpoint tensors not in the model, ignored "
                         f"(e.g. {_some(self.unexpected_keys)})")  # fmt: skip
        return "; ".join(parts)


class _ModelWeightsLoader(AtomicDetectionCheckpointer):
    """Loads the model's tensors only and leaves reporting the fit to :func:`load_model_weights`."""

    report: WeightsReport | None = None

    def _load_model(self, checkpoint):
        checkpoint_tensors = len(checkpoint.get("model", {}))
        incompatible = super()._load_model(checkpoint)
        self.report = WeightsReport(
            source="",
            model_tensors=len(self.model.state_dict()),
            checkpoint_tensors=checkpoint_tensors,
            missing_keys=list(incompatible.missing_keys),
            unexpected_keys=list(incompatible.unexpected_keys),
            incorrect_shapes=list(incompatible.incorrect_shapes),
        )
        return incompatible

    def _log_incompatible_keys(self, incompatible) -> None:
        pass  # load_model_weights says it once, with counts


def load_model_weights(
    model: torch.nn.Module, path: str, *, allow_pickle: bool = False, require_complete: bool = False
) -> WeightsReport:
    """Load a whole-model checkpoint (``MODEL.WEIGHTS``: a file written by ``tools/train_net.py`` or any
    ``DetectionCheckpointer``) into ``model``: the one way the tools load trained weights.

    The file is read once, with ``torch.load(weights_only=True)``; a file holding Python objects raises
    :class:`CheckpointFileError` saying how to re-save its weights, and a Detectron2 ``.pkl`` needs
    ``allow_pickle=True``. A checkpoint none of whose tensors fits the model raises ``CheckpointError``
    (it belongs to another config); one that fits in part loads what fits and logs a warning with counts
    (fine-tuning from another model), unless ``require_complete`` (inference: the demos, ``--eval-only``),
    where a model tensor left at initialization would make the outputs meaningless, so it raises
    ``CheckpointError`` with the counts. Checkpoint tensors the model lacks are ignored either way.
    """
    if not path:
        raise CheckpointError("no checkpoint given: set MODEL.WEIGHTS to a trained model's .pth file "
                              "(e.g. OUTPUT_DIR/model_final.pth written by tools/train_net.py)")  # fmt: skip
    loader = _ModelWeightsLoader(model, allow_pickle=allow_pickle)
    loader.load(path, checkpointables=[])
    report = loader.report
    report.source = path
    if report.loaded == 0:
        theirs = _some(report.unexpected_keys or [key for key, _, _ in report.incorrect_shapes])
        raise CheckpointError(
            f"checkpoint {path} does not fit the model of this config: none of its "
            f"{report.checkpoint_tensors} tensors matches a model tensor in name and shape (its keys "
            f"look like {theirs}; the model's like {_some(list(model.state_dict()))}). It was trained "
            "with another config: use the config it was trained with (the config.yaml in its "
            "OUTPUT_DIR). To start from Hiera trunk weights instead, set MODEL.HIERA.WEIGHTS "
            "(image and video trunks alike), or convert them for MODEL.WEIGHTS with "
            "tools/convert_checkpoint.py"
        )
    if require_complete and report.missing_keys:
        raise CheckpointError(
            f"checkpoint {path} fits the model of this config only in part ({report}), and inference with "
            "tensors left at initialization gives meaningless outputs. It was trained with another config: "
            "use the config it was trained with (the config.yaml in its OUTPUT_DIR)"
        )
    if report.complete:
        logger.info("Loaded %s", report)
    else:
        logger.warning("Checkpoint fits the model only in part: %s", report)
    return report


def convert_for_detectron2(
    source: str, output: str, model_name: str, *, attention: str = "mask_unit",
    prefix: str = DETECTRON2_TRUNK_PREFIX,
) -> str:  # fmt: skip
    """Write the Hiera weights of ``source`` (any format ``load_checkpoint`` reads) as a Detectron2 file,
    ``{"model": {prefix + key: tensor}, "__author__": "hiera_det", "matching_heuristics": False}``, that
    ``MODEL.WEIGHTS`` can name. Returns the load report as text. Raises ``CheckpointError`` (and writes
    nothing) when the checkpoint does not fill ``build_hiera(model_name, num_classes=0, attention=...)``.
    """
    model = build_hiera(model_name, num_classes=0, attention=attention)
    default_bkg = tuple(model.pos_embed.shape[2:]) if attention == "window" else None
    # strict: a converted file must not carry silently initialized tensors
    report = load_checkpoint(model, source, strict=True)
    state = {prefix + k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    converted = {"model": state, "__author__": "hiera_det", "matching_heuristics": False}
    atomic_write(output, lambda f: torch.save(converted, f))  # never a truncated file, even if killed
    text = str(report)
    if default_bkg is not None and tuple(model.pos_embed.shape[2:]) != default_bkg:
        bkg = tuple(model.pos_embed.shape[2:])
        text += (
            f"\nnote: the background position embedding is {bkg[0]}x{bkg[1]}, not the preset "
            f"{default_bkg[0]}x{default_bkg[1]}; MODEL.WEIGHTS and hiera_det.checkpoint.load_checkpoint give "
            f"the model's background this grid when they load the file (same model: it is interpolated to "
            f"every input's grid)"
        )
    return text


def _some(keys: list[str], limit: int = 3) -> str:
    return ", ".join(keys[:limit]) + (", ..." if len(keys) > limit else "") if keys else "none"


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
