"""Recognising a checkpoint's format and renaming its tensors to hiera_det's names.

hiera_det's names are the official hiera-transformer names (``blocks.N.attn.qkv``, ``pos_embed`` ...),
with SAM2's ``pos_embed`` / ``pos_embed_window`` pair for the windowed layout. Each format below is one
rename onto those names plus the keys it leaves out on purpose (a decoder, other parts of a detector),
which the loader reports as dropped.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from .reading import RawCheckpoint
from .report import CheckpointError

FORMATS = {
    "official": "official Hiera (hiera-transformer)",
    "official_mae": "official Hiera MAE pre-training (hiera-transformer mae_hiera_*)",
    "huggingface": "Hugging Face transformers Hiera",
    "timm": "timm Hiera",
    "sam2": "SAM2 image-encoder trunk",
    "hiera_det": "hiera_det / Detectron2",
}

FORMAT_HELP = (
    "official hiera-transformer ({'model_state': ...} or a bare state dict, image, video and mae_hiera_*); "
    "Hugging Face transformers Hiera (a save_pretrained directory, model.safetensors or pytorch_model.bin); "
    "timm hiera_* state dicts; SAM2 checkpoints ({'model': {'image_encoder.trunk.*': ...}} or a bare trunk); "
    "hiera_det / Detectron2 checkpoints ({'model': ...} with a backbone.bottom_up.trunk., backbone.trunk. "
    "or trunk. prefix)"
)

# Prefixes under which a Detectron2 model (ours or another's) keeps the Hiera trunk, most specific first.
TRUNK_PREFIXES = ("backbone.bottom_up.trunk.", "backbone.trunk.", "trunk.", "mae.")
SAM2_TRUNK_PREFIX = "image_encoder.trunk."
_MAE_PARTS = ("decoder_", "mask_token", "encoder_mask_token", "encoder_norm.", "multi_scale_fusion_heads.")
MAE_DROP_REASON = "MAE decoder, mask token, fusion heads and encoder_norm"
_HF_PRETRAINING_PARTS = ("encoder_norm.", "multiscale_fusion.", "decoder.")


@dataclass
class CanonicalCheckpoint:
    """A checkpoint renamed to hiera_det's names."""

    format: str
    state: dict[str, torch.Tensor]
    dropped: dict[str, list[str]] = field(default_factory=dict)
    hf_config: dict | None = None
    mae_state: dict[str, torch.Tensor] = field(default_factory=dict)  # the MAE parts, for a MAE model


def _unwrap(obj: object, source: str) -> dict[str, torch.Tensor]:
    """The state dict inside a training checkpoint (``model_state``, ``model`` or ``state_dict``)."""
    if not isinstance(obj, dict):
        raise CheckpointError(
            f"{source} holds a {type(obj).__name__}, not a state dict; expected one of: {FORMAT_HELP}"
        )
    for container in ("model_state", "model", "state_dict"):
        inner = obj.get(container)
        if isinstance(inner, dict):
            obj = inner
            break
    state = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not state:
        raise CheckpointError(
            f"{source} holds no tensors (top-level keys: {list(obj)[:8]}); expected one of: {FORMAT_HELP}"
        )
    if all(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _split(state: dict, keep) -> tuple[dict, list[str]]:
    kept = {k: v for k, v in state.items() if keep(k)}
    return kept, [k for k in state if k not in kept]


def _from_official(state: dict) -> CanonicalCheckpoint:
    if any(k.startswith(_MAE_PARTS) for k in state):
        encoder, rest = _split(state, lambda k: not k.startswith(_MAE_PARTS))
        mae_state = {k: state[k] for k in rest}
        return CanonicalCheckpoint("official_mae", encoder, {MAE_DROP_REASON: rest}, mae_state=mae_state)
    return CanonicalCheckpoint("official", state)


def _from_timm(state: dict) -> CanonicalCheckpoint:
    if "pos_embed_win" in state or any(".ls1." in k or ".ls2." in k for k in state):
        raise CheckpointError(
            "this is a timm hiera_*_abswin_* checkpoint (layer scale blocks.N.ls1 / ls2 and a mask-unit "
            "window position embedding), which hiera_det's Hiera does not implement; use an official, "
            "Hugging Face or timm hiera_{tiny,small,base,base_plus,large,huge}_224 checkpoint"
        )
    out = {}
    for k, v in state.items():
        k = k.replace("head.fc.", "head.projection.")
        out["norm." + k.removeprefix("head.norm.") if k.startswith("head.norm.") else k] = v
    return CanonicalCheckpoint("timm", out)


def _from_sam2(state: dict) -> CanonicalCheckpoint:
    dropped = {}
    if any(k.startswith(SAM2_TRUNK_PREFIX) for k in state):
        trunk, rest = _split(state, lambda k: k.startswith(SAM2_TRUNK_PREFIX))
        state = {k.removeprefix(SAM2_TRUNK_PREFIX): v for k, v in trunk.items()}
        dropped = {"SAM2 parts outside the image-encoder trunk": rest}
    out = {
        k.replace(".mlp.layers.0.", ".mlp.fc1.").replace(".mlp.layers.1.", ".mlp.fc2."): v
        for k, v in state.items()
    }
    return CanonicalCheckpoint("sam2", out, dropped)


def _from_hiera_det(state: dict, prefix: str) -> CanonicalCheckpoint:
    trunk, rest = _split(state, lambda k: k.startswith(prefix))
    state = {k.removeprefix(prefix): v for k, v in trunk.items()}
    mae = _from_official(state)  # a hiera_det MAE pre-training checkpoint keeps the official MAE names
    dropped = {f"model parts outside {prefix}*": rest, **mae.dropped}
    return CanonicalCheckpoint("hiera_det", mae.state, dropped, mae_state=mae.mae_state)


_HF_LAYER = re.compile(r"^encoder\.stages\.(\d+)\.layers\.(\d+)\.(.+)$")
_HF_LAYER_NAMES = {"layernorm_before.": "norm1.", "layernorm_after.": "norm2."}
_HF_TOP_NAMES = {
    "embeddings.position_embeddings": "pos_embed",
    "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
    "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
    "pooler.layernorm.weight": "norm.weight",
    "pooler.layernorm.bias": "norm.bias",
    "classifier.weight": "head.projection.weight",
    "classifier.bias": "head.projection.bias",
}


def _from_huggingface(state: dict, config: dict | None) -> CanonicalCheckpoint:
    if config is not None and config["model_type"] != "hiera":
        raise CheckpointError(
            f"config.json says model_type={config.get('model_type')!r}; only Hugging Face Hiera "
            f"(model_type 'hiera') checkpoints are supported"
        )
    dropped = {}
    rest, pretraining = _split(state, lambda k: not k.startswith(_HF_PRETRAINING_PARTS))
    if pretraining:
        dropped["HieraForPreTraining decoder, fusion heads and encoder_norm"] = pretraining
    rest, norms = _split(rest, lambda k: not k.startswith("hidden_states_norms."))
    if norms:
        dropped["HieraBackbone per-stage output norms"] = norms
    rest = {k.removeprefix("hiera."): v for k, v in rest.items()}

    # HF numbers layers within a stage; hiera_det numbers blocks through the whole trunk.
    stage_sizes: dict[int, int] = {}
    for k in rest:
        if m := _HF_LAYER.match(k):
            s, layer = int(m[1]), int(m[2])
            stage_sizes[s] = max(stage_sizes.get(s, 0), layer + 1)
    offsets = {s: sum(n for t, n in stage_sizes.items() if t < s) for s in stage_sizes}

    out = {}
    for k, v in rest.items():
        if m := _HF_LAYER.match(k):
            name = m[3]
            for hf, ours in _HF_LAYER_NAMES.items():
                name = name.replace(hf, ours)
            out[f"blocks.{offsets[int(m[1])] + int(m[2])}.{name}"] = v
        else:
            out[_HF_TOP_NAMES.get(k, k)] = v
    return CanonicalCheckpoint("huggingface", out, dropped, config)


def to_canonical(raw: RawCheckpoint) -> CanonicalCheckpoint:
    """Detect the format of a checkpoint and rename it to hiera_det's names."""
    state = _unwrap(raw.obj, raw.source)
    keys = list(state)
    # timm's hub repositories also hold a config.json, without transformers' model_type
    hf_config = raw.hf_config if raw.hf_config is not None and "model_type" in raw.hf_config else None
    if any(k.startswith(SAM2_TRUNK_PREFIX) for k in keys):
        return _from_sam2(state)
    for prefix in TRUNK_PREFIXES:
        if f"{prefix}patch_embed.proj.weight" in state:
            return _from_hiera_det(state, prefix)
    if hf_config is not None or any(
        k.startswith(("embeddings.patch_embeddings.", "hiera.embeddings.")) or ".stages." in k for k in keys
    ):
        return _from_huggingface(state, hf_config)
    if "patch_embed.proj.weight" in state:
        if any(".mlp.layers." in k for k in keys):
            return _from_sam2(state)
        if "pos_embed_window" in state:
            return CanonicalCheckpoint("hiera_det", state)
        timm_only = ("head.fc.", "head.norm.", "pos_embed_win")
        if any(k.startswith(timm_only) or ".ls1." in k for k in keys):
            return _from_timm(state)
        return _from_official(state)
    raise CheckpointError(
        f"{raw.source} is not a Hiera checkpoint in a known format (first keys: {keys[:5]}); "
        f"expected one of: {FORMAT_HELP}"
    )
