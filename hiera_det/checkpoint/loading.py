"""``load_checkpoint``: read, recognise, rename, fit and load, then report."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch
import torch.nn as nn

from ..modeling import Hiera, MaskedAutoencoderHiera
from .download import resolve_weights
from .fitting import (
    check_architecture,
    checkpoint_architecture,
    fit_head,
    fit_position_embedding,
    model_architecture,
)
from .formats import FORMATS, MAE_DROP_REASON, to_canonical
from .reading import RawCheckpoint, read_checkpoint
from .report import CheckpointError, LoadReport
from .zoo import check_entry_fits, find_entry

# Used only to turn pooled tokens into logits, so a features-only trunk (num_classes=0) never reads it.
_HEAD_ONLY_KEYS = ("norm.weight", "norm.bias")


def _trunk_of(model: nn.Module) -> Hiera:
    if isinstance(model, Hiera):
        return model
    trunk = getattr(model, "trunk", None)
    if isinstance(trunk, Hiera):
        return trunk
    raise TypeError(
        f"load_checkpoint expects a hiera_det Hiera (or a module whose .trunk is one), "
        f"got {type(model).__name__}"
    )


def _check_shapes(state: dict, model_state: dict, reshaped: dict) -> None:
    bad = [
        f"{k}: checkpoint {list(v.shape)} vs model {list(reshaped.get(k, model_state[k].shape))}"
        for k, v in state.items()
        if k in model_state and tuple(v.shape) != tuple(reshaped.get(k, model_state[k].shape))
    ]
    if bad:
        listed = "; ".join(bad[:5]) + (f"; ... (+{len(bad) - 5} more)" if len(bad) > 5 else "")
        cause = ("the checkpoint was made for a differently configured Hiera (mlp_ratio, in_chans, patch size, "
                 "window sizes)")
        fix = "build the model with the checkpoint's settings"
        if "patch_embed.stem.0.weight" in model_state and "patch_embed.stem.0.weight" not in state:
            cause = ("the model has a conv stem (MODEL.HIERA.STEM conv, for training from random init) and the "
                     "checkpoint a patch embedding")
            fix = "build the model with stem='patch' (MODEL.HIERA.STEM patch) to load it"
        raise CheckpointError(f"{len(bad)} checkpoint tensors do not fit the model ({listed}); {cause}: {fix}")


def _read_named(path_or_name: str | os.PathLike, trunk: Hiera) -> RawCheckpoint:
    """Read a file, or the weights a name refers to, refusing before any download a model they cannot fit."""
    entry = find_entry(path_or_name)
    if entry is not None:
        found = model_architecture(trunk)
        check_entry_fits(entry, architecture=found.name, attention=trunk.attention, video=found.video)
    path = resolve_weights(path_or_name)
    raw = read_checkpoint(path)
    if path != os.fspath(path_or_name):
        raw.source = f"{os.fspath(path_or_name)} [{raw.source}]"
    return raw


def load_checkpoint(
    model: nn.Module, path_or_state_dict: str | os.PathLike | Mapping, *, strict: bool = False
) -> LoadReport:
    """Load Hiera weights in any supported format into ``model`` and report what happened.

    ``path_or_state_dict`` is a file, a directory (Hugging Face ``save_pretrained`` or a Detectron2 output
    directory), a weights name (``python -m hiera_det.checkpoint --list``; downloaded into the cache the
    first time, see ``hiera_det.checkpoint.download``), or an in-memory state dict or checkpoint dict.
    ``model`` is a ``Hiera`` or a module whose ``trunk`` is one. With ``strict=True`` any missing tensor the
    model uses, or any unexpected one, raises ``CheckpointError``; keys dropped on purpose (see
    ``LoadReport.dropped``) never do, nor does a head left at its initialization because the checkpoint's
    has another class count. A ``MaskedAutoencoderHiera`` model also takes a MAE checkpoint's decoder, mask
    token, fusion heads and ``encoder_norm`` (pre-training continues); any other model drops and reports them.
    """
    trunk = _trunk_of(model)
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        raw = _read_named(path_or_state_dict, trunk)
    elif isinstance(path_or_state_dict, Mapping):
        raw = RawCheckpoint(dict(path_or_state_dict), "<in-memory state dict>")
    else:
        raise TypeError(
            f"path_or_state_dict must be a path or a state dict, got {type(path_or_state_dict).__name__}"
        )

    canonical = to_canonical(raw)
    state = dict(canonical.state)
    found = checkpoint_architecture(state, canonical.hf_config)
    report = LoadReport(
        format=FORMATS[canonical.format],
        source=raw.source,
        model_name=trunk.name,
        checkpoint_architecture=found.name,
    )
    if isinstance(trunk, MaskedAutoencoderHiera):  # MAE pre-training continues: keep the decoder too
        state.update(canonical.mae_state)
        canonical.dropped.pop(MAE_DROP_REASON, None)
    for reason, keys in canonical.dropped.items():
        report.drop(reason, keys)
    check_architecture(found, trunk)
    reshaped = fit_position_embedding(state, trunk, canonical.hf_config, report)
    new_head = fit_head(state, trunk, report)

    model_state = trunk.state_dict()
    _check_shapes(state, model_state, reshaped)
    report.loaded_keys = [k for k in state if k in model_state]
    report.missing_keys = [k for k in model_state if k not in state]
    report.unexpected_keys = [k for k in state if k not in model_state]
    report.ignored_missing_keys = [
        k for k in report.missing_keys if (trunk.head is None and k in _HEAD_ONLY_KEYS) or k in new_head
    ]
    if strict and (report.unexpected_keys or len(report.missing_keys) > len(report.ignored_missing_keys)):
        raise CheckpointError(
            f"strict load failed, nothing was loaded: the checkpoint does not match the model exactly "
            f"(load with strict=False to accept this):\n{report}"
        )

    for key, shape in reshaped.items():
        # Change the shape in place so that the Parameter object, and any optimizer holding it, stays valid.
        param = getattr(trunk, key)
        param.data = param.data.new_empty(shape)
    trunk.load_state_dict({k: state[k] for k in report.loaded_keys}, strict=False)
    return report
