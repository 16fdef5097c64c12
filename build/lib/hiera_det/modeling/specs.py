"""The official Hiera architectures, by their official names, and the SAM2 (HieraDet) window presets."""

from __future__ import annotations

from .hiera import Hiera

_SIZES = {
    "tiny": dict(embed_dim=96, num_heads=1, stages=(1, 2, 7, 2)),
    "small": dict(embed_dim=96, num_heads=1, stages=(1, 2, 11, 2)),
    "base": dict(embed_dim=96, num_heads=1, stages=(2, 3, 16, 3)),
    "base_plus": dict(embed_dim=112, num_heads=2, stages=(2, 3, 16, 3)),
    "large": dict(embed_dim=144, num_heads=2, stages=(2, 6, 36, 4)),
    "huge": dict(embed_dim=256, num_heads=4, stages=(2, 6, 36, 4)),
}

_VIDEO = dict(
    input_size=(16, 224, 224),
    q_stride=(1, 2, 2),
    mask_unit_size=(1, 8, 8),
    patch_kernel=(3, 7, 7),
    patch_stride=(2, 4, 4),
    patch_padding=(1, 3, 3),
    pos_embed="separate",
    num_classes=400,
)

ARCHITECTURES: dict[str, dict] = {}
for _size, _dims in _SIZES.items():
    ARCHITECTURES[f"hiera_{_size}_224"] = dict(_dims, input_size=(224, 224), num_classes=1000)
for _size in ("base", "base_plus", "large", "huge"):
    ARCHITECTURES[f"hiera_{_size}_16x224"] = dict(_SIZES[_size], **_VIDEO)

# SAM2 image-encoder trunks (sam2/configs/sam2.1/*.yaml): window per stage, blocks with full attention,
# and the size of the interpolated background position embedding. Base and huge have no SAM2 release;
# they take the preset of the model with the same depth.
WINDOW_PRESETS: dict[str, dict] = {
    "tiny": dict(window_spec=(8, 4, 14, 7), global_blocks=(5, 7, 9), pos_embed_bkg_size=(7, 7)),
    "small": dict(window_spec=(8, 4, 14, 7), global_blocks=(7, 10, 13), pos_embed_bkg_size=(7, 7)),
    "base": dict(window_spec=(8, 4, 14, 7), global_blocks=(12, 16, 20), pos_embed_bkg_size=(14, 14)),
    "base_plus": dict(window_spec=(8, 4, 14, 7), global_blocks=(12, 16, 20), pos_embed_bkg_size=(14, 14)),
    "large": dict(window_spec=(8, 4, 16, 8), global_blocks=(23, 33, 43), pos_embed_bkg_size=(7, 7)),
    "huge": dict(window_spec=(8, 4, 16, 8), global_blocks=(23, 33, 43), pos_embed_bkg_size=(7, 7)),
}


def architecture_size(name: str) -> str:
    """'hiera_base_plus_224' -> 'base_plus'."""
    return name.removeprefix("hiera_").rsplit("_", 1)[0]


def hiera_kwargs(name: str, **overrides) -> dict:
    """Constructor arguments of an official architecture, with overrides applied."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown Hiera architecture {name!r}; choose one of: {', '.join(ARCHITECTURES)}")
    kwargs = dict(ARCHITECTURES[name])
    if overrides.get("attention") == "window":
        if name.endswith("16x224"):
            raise ValueError(f"{name} is a video model; window (HieraDet) attention is for image models")
        for key, value in WINDOW_PRESETS[architecture_size(name)].items():
            if overrides.get(key) is None:
                overrides[key] = value
    kwargs.update({k: v for k, v in overrides.items() if v is not None})
    for key in ("input_size", "q_stride", "mask_unit_size", "patch_kernel", "patch_stride", "patch_padding"):
        if key in kwargs and isinstance(kwargs[key], int):
            kwargs[key] = (kwargs[key],) * (3 if name.endswith("16x224") else 2)
    return kwargs


def build_hiera(name: str, **overrides) -> Hiera:
    """Build an official Hiera architecture by name, e.g. ``build_hiera("hiera_base_224", num_classes=0)``.

    Overrides are ``Hiera`` constructor arguments: ``input_size``, ``drop_path_rate``, ``num_classes``
    (0 = features only), ``attention`` ("mask_unit" or "window"), ``window_spec``, ``global_blocks``,
    ``pos_embed``, ``activation_checkpointing`` and the rest. ``None`` values keep the default.
    """
    return Hiera(**hiera_kwargs(name, **overrides), name=name)
