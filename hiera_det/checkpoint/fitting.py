"""Fitting a renamed checkpoint to a model: architecture check, position embeddings, classification head."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..modeling import ARCHITECTURES, Hiera
from ..modeling.pos_embed import INTERPOLATION, resize_tokens, tokens_to_grid
from .report import CheckpointError, LoadReport


@dataclass(frozen=True)
class Architecture:
    """What a trunk's weights fix about it: width, blocks per stage, image or video, and heads if known."""

    embed_dim: int
    stages: tuple[int, ...]
    video: bool
    num_heads: int | None = None

    @property
    def name(self) -> str | None:
        for name, spec in ARCHITECTURES.items():
            if (
                spec["embed_dim"] == self.embed_dim
                and tuple(spec["stages"]) == self.stages
                and (len(spec["input_size"]) == 3) == self.video
                and self.num_heads in (None, spec["num_heads"])
            ):
                return name
        return None

    def spec(self) -> str:
        heads = f", num_heads {self.num_heads}" if self.num_heads is not None else ""
        kind = "video" if self.video else "image"
        return f"embed_dim {self.embed_dim}, stages {self.stages}{heads}, {kind}"

    def describe(self) -> str:
        return f"{self.name} ({self.spec()})" if self.name else f"an unnamed Hiera ({self.spec()})"


def checkpoint_architecture(state: dict[str, torch.Tensor], hf_config: dict | None) -> Architecture:
    patch = state.get("patch_embed.proj.weight")
    blocks = {int(k.split(".")[1]) for k in state if k.startswith("blocks.")}
    if patch is None or not blocks:
        raise CheckpointError(
            "the checkpoint has no patch embedding or no blocks (patch_embed.proj.weight, blocks.N.*): it is "
            "not a complete Hiera trunk"
        )
    depth = max(blocks) + 1
    # A stage's first block widens the channels, which is the only block with a `proj` shortcut.
    starts = [0] + [i for i in range(1, depth) if f"blocks.{i}.proj.weight" in state]
    stages = tuple(b - a for a, b in zip(starts, starts[1:] + [depth]))
    heads = None
    if hf_config and "num_heads" in hf_config:
        heads = hf_config["num_heads"]
        heads = heads[0] if isinstance(heads, list) else heads
    return Architecture(int(patch.shape[0]), stages, patch.dim() == 5, heads)


def model_architecture(model: Hiera) -> Architecture:
    ends = model.stage_ends
    stages = tuple(b - a for a, b in zip([-1] + ends[:-1], ends))
    embed_dim = model.patch_embed.proj.out_channels
    return Architecture(embed_dim, stages, model.ndim == 3, model.blocks[0].attn.heads)


def check_architecture(found: Architecture, model: Hiera) -> None:
    expected = model_architecture(model)
    if found.video != expected.video:
        found_kind, model_kind = ("video", "image") if found.video else ("image", "video")
        article = "an" if model_kind == "image" else "a"
        raise CheckpointError(
            f"the checkpoint holds {found_kind} weights ({found.describe()}) but {model.name} is {article} "
            f"{model_kind} model ({expected.spec()}); build the model as "
            f"{found.name or 'the matching ' + found_kind + ' architecture'} or load {model_kind} weights"
        )
    same_heads = found.num_heads is None or found.num_heads == expected.num_heads
    if (found.embed_dim, found.stages) != (expected.embed_dim, expected.stages) or not same_heads:
        if found.name == model.name:
            # the model is the checkpoint's architecture with its stages, width or heads overridden
            fix = (f"build the model as build_hiera({found.name!r}) without stages / embed_dim / num_heads "
                   f"overrides (in a config: MODEL.HIERA.STAGES [], EMBED_DIM 0, NUM_HEADS 0)")
        else:
            build = f"build the model with build_hiera({found.name!r}, ...)"
            fix = f"{build if found.name else 'build one to match'} or load a {model.name} checkpoint"
        raise CheckpointError(
            f"checkpoint/model architecture mismatch: the checkpoint is {found.describe()}, the model is "
            f"{model.name} ({expected.spec()}); {fix}"
        )


def _square_grid(n: int, what: str) -> tuple[int, int]:
    side = math.isqrt(n)
    if side * side != n:
        raise CheckpointError(
            f"{what} has {n} positions, which is not a square grid, and the checkpoint does not say its "
            f"input size; build the model at the checkpoint's input size so that no resizing is needed"
        )
    return side, side


def _absolute_grid(pe: torch.Tensor, model: Hiera, hf_config: dict | None) -> tuple[int, ...]:
    n = pe.shape[1]
    if hf_config and "image_size" in hf_config and "patch_stride" in hf_config:
        size, stride = hf_config["image_size"], hf_config["patch_stride"]
        size = [size, size] if isinstance(size, int) else size
        stride = [stride, stride] if isinstance(stride, int) else stride
        grid = tuple(i // s for i, s in zip(size, stride))
        if math.prod(grid) == n:
            return grid
    if n == math.prod(model.token_grid):
        return model.token_grid
    if model.ndim == 3:
        raise CheckpointError(
            f"the checkpoint's video pos_embed has {n} positions and the model's "
            f"{math.prod(model.token_grid)}; its (T, H, W) grid cannot be inferred, so build the model at "
            f"the checkpoint's input size"
        )
    return _square_grid(n, "the checkpoint's pos_embed")


def _fmt(shape) -> str:
    return "[" + ", ".join(map(str, shape)) + "]"


def fit_position_embedding(
    state: dict[str, torch.Tensor], model: Hiera, hf_config: dict | None, report: LoadReport
) -> dict[str, tuple[int, ...]]:
    """Resample or convert the checkpoint's position embedding to the model's, in place in ``state``.

    Returns the model parameters whose shape must change to take the checkpoint's tensors (the window
    layout's background embedding, kept at the checkpoint's own grid).
    """
    mode = model.pos_embed_mode
    if "pos_embed_spatial" in state:
        found = "separate"
    elif "pos_embed" in state:
        found = "absolute_win" if state["pos_embed"].dim() == 4 else "absolute"
    else:
        return {}

    if found == "absolute" and mode == "absolute":
        pe = state["pos_embed"]
        grid = _absolute_grid(pe, model, hf_config)
        if grid != model.token_grid:
            state["pos_embed"] = resize_tokens(pe, grid, model.token_grid)
            report.resized["pos_embed"] = (
                f"{_fmt(pe.shape)} -> {_fmt(state['pos_embed'].shape)} "
                f"(grid {'x'.join(map(str, grid))} -> {'x'.join(map(str, model.token_grid))}, "
                f"{INTERPOLATION[len(grid)]})"
            )
        return {}

    if found == "absolute" and mode == "absolute_win":
        # The absolute embedding becomes the background at the checkpoint's own grid and the window
        # embedding is zero: at the checkpoint's input size the model then adds exactly the same
        # embedding, while other sizes interpolate the background, as SAM2 does.
        pe = state["pos_embed"]
        grid = _absolute_grid(pe, model, hf_config)
        state["pos_embed"] = tokens_to_grid(pe, grid).contiguous()
        state["pos_embed_window"] = torch.zeros_like(model.pos_embed_window, dtype=pe.dtype, device="cpu")
        report.resized["pos_embed"] = (
            f"{_fmt(pe.shape)} -> {_fmt(state['pos_embed'].shape)} (absolute embedding as the absolute-win "
            f"background at the checkpoint's {'x'.join(map(str, grid))} grid)"
        )
        report.resized["pos_embed_window"] = f"set to zeros {_fmt(model.pos_embed_window.shape)}"
        return _new_shape(model, "pos_embed", state["pos_embed"])

    if found == "absolute_win" and mode == "absolute_win":
        window = state.get("pos_embed_window")
        if window is not None and window.shape != model.pos_embed_window.shape:
            raise CheckpointError(
                f"the checkpoint's window position embedding is {_fmt(window.shape)} but the model's is "
                f"{_fmt(model.pos_embed_window.shape)} (window_spec[0] = "
                f"{model.pos_embed_window.shape[-1]}); "
                f"build the model with window_spec starting at {window.shape[-1]}"
            )
        changed = _new_shape(model, "pos_embed", state["pos_embed"])
        if changed:
            report.resized["pos_embed"] = (
                f"model background embedding {_fmt(model.pos_embed.shape)} -> "
                f"{_fmt(state['pos_embed'].shape)} "
                f"(kept at the checkpoint's size; it is interpolated to each input's grid anyway)"
            )
        return changed

    if found == "separate" and mode == "separate":
        spatial, temporal = state["pos_embed_spatial"], state["pos_embed_temporal"]
        t, h, w = model.token_grid
        src_hw = _square_grid(spatial.shape[1], "the checkpoint's pos_embed_spatial")
        if src_hw != (h, w):
            state["pos_embed_spatial"] = resize_tokens(spatial, src_hw, (h, w))
            report.resized["pos_embed_spatial"] = (
                f"{_fmt(spatial.shape)} -> {_fmt(state['pos_embed_spatial'].shape)} "
                f"(grid {src_hw[0]}x{src_hw[1]} -> {h}x{w}, {INTERPOLATION[2]})"
            )
        if temporal.shape[1] != t:
            state["pos_embed_temporal"] = resize_tokens(temporal, (temporal.shape[1],), (t,))
            report.resized["pos_embed_temporal"] = (
                f"{_fmt(temporal.shape)} -> {_fmt(state['pos_embed_temporal'].shape)} "
                f"({temporal.shape[1]} -> {t} temporal positions, {INTERPOLATION[1]})"
            )
        return {}

    fixes = {
        "absolute_win": "build the model with attention='window' (SAM2 / HieraDet layout)",
        "absolute": "build the model with the default mask-unit attention and absolute position embedding",
        "separate": "build the video model with pos_embed='separate' (the default for hiera_*_16x224)",
    }
    raise CheckpointError(
        f"the checkpoint has {found} position embeddings and {model.name} was built with pos_embed={mode!r}; "
        f"there is no exact conversion from {found} to {mode}: {fixes[found]}"
    )


def _new_shape(model: Hiera, key: str, value: torch.Tensor) -> dict[str, tuple[int, ...]]:
    current = getattr(model, key).shape
    return {} if tuple(current) == tuple(value.shape) else {key: tuple(value.shape)}


def fit_head(state: dict[str, torch.Tensor], model: Hiera, report: LoadReport) -> list[str]:
    """Keep the classification head only where the model has one of the same size.

    Returns the model's head keys left at their initialization because the class counts differ.
    """
    head_keys = [k for k in state if k.startswith("head.projection.")]
    if not head_keys:
        return []
    new_head = []
    if model.head is None:
        reason = "the model has no classification head (num_classes=0)"
    else:
        classes = state["head.projection.weight"].shape[0]
        if classes == model.head.projection.out_features:
            return []
        new_head = head_keys
        reason = (
            f"the checkpoint's head has {classes} classes and the model's "
            f"{model.head.projection.out_features}; "
            f"the model's head stays at its initialization, for fine-tuning"
        )
    for k in head_keys:
        del state[k]
    report.drop(reason, head_keys)
    return new_head
