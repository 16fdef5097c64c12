"""The catalog of public Hiera weights by name: what each one is, its licence, and where it is published.

Names follow timm's ``ARCH.TAG`` form. The official image and video weights keep the architecture names and
checkpoint tags of hiera-transformer (``hiera_base_224.mae_in1k_ft_in1k``, ``hiera_base_16x224.mae_k400``);
the SAM 2 and SAM 2.1 image-encoder trunks are ``sam2_hiera_{size}.sam2`` and ``.sam2_1``; weights published
on the Hugging Face hub are named by their hub id (``facebook/hiera-base-224-hf``,
``timm/hiera_base_224.mae_in1k_ft_in1k``). Any name may carry the ``hiera://`` prefix, which is how
Detectron2's ``PathManager`` (and so ``MODEL.WEIGHTS``) sees them.
"""

from __future__ import annotations

import difflib
import os
import re
from dataclasses import dataclass

from .report import CheckpointError

PREFIX = "hiera://"
OFFICIAL_HOST = "https://dl.fbaipublicfiles.com"
HUB_HOST = "https://huggingface.co"

CC_BY_NC = "CC BY-NC 4.0"
APACHE = "Apache 2.0"
LICENCE_NOTES = {
    CC_BY_NC: "non-commercial use only (https://creativecommons.org/licenses/by-nc/4.0/)",
    APACHE: "commercial use allowed (https://www.apache.org/licenses/LICENSE-2.0)",
}

_BYTES_PER_PARAM = 4  # every published Hiera file stores float32


@dataclass(frozen=True)
class WeightsEntry:
    """One published checkpoint.

    ``architecture`` is the ``hiera_det.modeling`` architecture to build for it and ``attention`` its layout
    (``window`` for SAM 2 trunks, which need ``build_hiera(architecture, attention="window")``). ``params``
    counts the parameters stored in the file (decoders and, for SAM 2, the whole SAM 2 model included), so
    ``size_mb`` is an estimate of the download, not the exact file size. ``url`` is the official download
    location; ``hub_repo`` the Hugging Face repository instead.
    """

    name: str
    architecture: str
    description: str
    format: str
    params: int
    licence: str
    attention: str = "mask_unit"
    url: str | None = None
    hub_repo: str | None = None

    @property
    def modality(self) -> str:
        return "video" if "16x" in self.architecture else "image"

    @property
    def size_mb(self) -> int:
        return round(self.params * _BYTES_PER_PARAM / 1e6)

    @property
    def build(self) -> str:
        """How to build a model this checkpoint loads into."""
        attention = ", attention='window'" if self.attention == "window" else ""
        return f"build_hiera({self.architecture!r}{attention})"

    @property
    def config(self) -> str:
        """The Detectron2 config keys that build that model."""
        if self.modality == "video":
            return f"MODEL.HIERA.NAME {self.architecture}"
        return f"MODEL.HIERA.NAME {self.architecture} MODEL.HIERA.ATTENTION {self.attention}"

    @property
    def source(self) -> str:
        return self.url or f"{HUB_HOST}/{self.hub_repo}"


# Parameters in each file, counted from the official constructors (hiera-transformer, transformers, timm) and
# the SAM 2 model card: (classifier model, encoder without head, MAE encoder + decoder).
_IMAGE_PARAMS = {
    "tiny": (27_910_216, 27_141_216, 55_020_896),
    "small": (35_008_072, 34_239_072, 62_118_752),
    "base": (51_524_968, 50_755_968, 78_635_648),
    "base_plus": (69_896_616, 68_999_616, 97_584_064),
    "large": (213_739_912, 212_586_912, 242_875_808),
    "huge": (672_779_752, 670_730_752, 710_081_792),
}
_VIDEO_PARAMS = {  # (classifier model, MAE encoder + decoder)
    "base": (51_092_560, 79_367_104),
    "base_plus": (69_392_240, 98_320_352),
    "large": (213_091_600, 243_621_760),
    "huge": (671_627_664, 710_861_568),
}
_SAM2_PARAMS = {"tiny": 38_900_000, "small": 46_000_000, "base_plus": 80_800_000, "large": 224_400_000}
# From SAM 2's checkpoint script (facebookresearch/sam2 checkpoints/download_ckpts.sh):
# release tag -> (directory, file prefix, title)
_SAM2_RELEASES = {
    "sam2": ("072824", "sam2", "SAM 2 (July 2024)"),
    "sam2_1": ("092824", "sam2.1", "SAM 2.1 (Sept. 2024)"),
}


def _official(size: str, video: bool) -> list[WeightsEntry]:
    arch = f"hiera_{size}_16x224" if video else f"hiera_{size}_224"
    data, short, classes = ("Kinetics-400", "k400", 400) if video else ("ImageNet-1K", "in1k", 1000)
    if video:
        tuned, mae = _VIDEO_PARAMS[size]
    else:
        tuned, _, mae = _IMAGE_PARAMS[size]
    return [
        WeightsEntry(
            f"{arch}.mae_{short}_ft_{short}", arch,
            f"MAE on {data}, fine-tuned on {data} ({classes}-class head)",
            "official", tuned, CC_BY_NC, url=f"{OFFICIAL_HOST}/hiera/{arch}.pth",
        ),
        WeightsEntry(
            f"{arch}.mae_{short}", arch, f"MAE pre-training on {data} (encoder and decoder)",
            "official_mae", mae, CC_BY_NC, url=f"{OFFICIAL_HOST}/hiera/mae_{arch}.pth",
        ),
    ]


def _sam2(size: str, release: str) -> WeightsEntry:
    directory, prefix, title = _SAM2_RELEASES[release]
    return WeightsEntry(
        f"sam2_hiera_{size}.{release}", f"hiera_{size}_224",
        f"{title} image-encoder trunk, from the whole SAM 2 model file", "sam2", _SAM2_PARAMS[size], APACHE,
        attention="window", url=f"{OFFICIAL_HOST}/segment_anything_2/{directory}/{prefix}_hiera_{size}.pt",
    )


def _hub(size: str) -> list[WeightsEntry]:
    arch = f"hiera_{size}_224"
    tuned, encoder, mae = _IMAGE_PARAMS[size]
    repo = f"facebook/hiera-{size.replace('_', '-')}-224"
    return [
        WeightsEntry(f"{repo}-hf", arch, "transformers HieraModel: MAE on ImageNet-1K, fine-tuned, no head",
                     "huggingface", encoder, CC_BY_NC, hub_repo=f"{repo}-hf"),
        WeightsEntry(f"{repo}-in1k-hf", arch,
                     "transformers HieraForImageClassification: MAE on ImageNet-1K, fine-tuned "
                     "(1000-class head)",
                     "huggingface", tuned, CC_BY_NC, hub_repo=f"{repo}-in1k-hf"),
        WeightsEntry(f"{repo}-mae-hf", arch,
                     "transformers HieraForPreTraining: MAE pre-training on ImageNet-1K (with decoder)",
                     "huggingface", mae, CC_BY_NC, hub_repo=f"{repo}-mae-hf"),
        WeightsEntry(f"timm/{arch}.mae_in1k_ft_in1k", arch,
                     "timm: MAE on ImageNet-1K, fine-tuned on ImageNet-1K (1000-class head)",
                     "timm", tuned, CC_BY_NC, hub_repo=f"timm/{arch}.mae_in1k_ft_in1k"),
        WeightsEntry(f"timm/{arch}.mae", arch, "timm: MAE pre-trained encoder on ImageNet-1K (no head)",
                     "timm", encoder, CC_BY_NC, hub_repo=f"timm/{arch}.mae"),
    ]


def _catalog() -> dict[str, WeightsEntry]:
    entries = [e for size in _IMAGE_PARAMS for e in _official(size, video=False)]
    entries += [e for size in _VIDEO_PARAMS for e in _official(size, video=True)]
    entries += [_sam2(size, release) for release in _SAM2_RELEASES for size in _SAM2_PARAMS]
    entries += [e for size in _IMAGE_PARAMS for e in _hub(size)]
    return {e.name: e for e in entries}


CATALOG: dict[str, WeightsEntry] = _catalog()

# A Hugging Face repository id, "owner/name", as the hub allows them.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
WEIGHT_SUFFIXES = (".pth", ".pt", ".pkl", ".pyth", ".bin", ".safetensors", ".ckpt", ".npz", ".json")


def strip_prefix(path_or_name: str | os.PathLike) -> str:
    return os.fspath(path_or_name).removeprefix(PREFIX)


def is_hub_id(name: str) -> bool:
    """Whether ``name`` reads as a Hugging Face repository id rather than a relative file path."""
    return bool(_HUB_ID.match(name)) and not name.lower().endswith(WEIGHT_SUFFIXES) and ".." not in name


def _looks_like_name(text: str) -> bool:
    """A string with no directory part and no file suffix is meant as a weights name, not a path."""
    return "/" not in text and os.sep not in text and not text.lower().endswith(WEIGHT_SUFFIXES)


def classify(path_or_name: str | os.PathLike) -> tuple[str, object]:
    """What ``path_or_name`` refers to: ``("path", text)`` (an existing path, or a missing one for the reader
    to report), ``("entry", WeightsEntry)``, ``("hub", repo_id)`` for a hub id outside the catalog, or
    ``("unknown", text)`` for something meant as a name that is not one. An existing path always wins."""
    text = os.fspath(path_or_name)
    if not text.startswith(PREFIX) and (not text or os.path.exists(os.path.expanduser(text))):
        return "path", text
    name = strip_prefix(text)
    if name in CATALOG:
        return "entry", CATALOG[name]
    if is_hub_id(name):
        return "hub", name
    if text.startswith(PREFIX) or _looks_like_name(text):
        return "unknown", text
    return "path", text


def is_weights_name(path_or_name: str | os.PathLike) -> bool:
    """Whether ``path_or_name`` names weights to fetch (a catalog name, a hub id, or ``hiera://...``) rather
    than a local path. An existing local path is never a name."""
    kind, _ = classify(path_or_name)
    return kind in ("entry", "hub") or os.fspath(path_or_name).startswith(PREFIX)


def find_entry(path_or_name: str | os.PathLike) -> WeightsEntry | None:
    """The catalog entry a name refers to; ``None`` for a path or a hub id outside the catalog."""
    kind, value = classify(path_or_name)
    return value if kind == "entry" else None


def unknown_name_error(text: str) -> CheckpointError:
    name = strip_prefix(text)
    close = difflib.get_close_matches(name, list(CATALOG), n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return CheckpointError(
        f"{text!r} is neither an existing file or directory nor a known weights name.{hint} "
        f"`python -m hiera_det.checkpoint --list` prints every name; a Hugging Face hub id (owner/name) "
        f"also works."
    )


def check_entry_fits(
    entry: WeightsEntry, *, architecture: str | None, attention: str, video: bool | None
) -> None:
    """Refuse, before anything is downloaded, a model that ``entry`` cannot load into.

    ``architecture`` is the official architecture the model has and ``video`` whether it takes clips
    (``None``: unknown, left to the loader once the weights are read); mask-unit weights do load into a
    windowed model.
    """
    if video is not None and video != (entry.modality == "video"):
        kind = "video" if video else "image"
        raise CheckpointError(
            f"{entry.name} holds {entry.modality} weights ({entry.architecture}) but the model takes {kind}s; "
            f"build {entry.build} ({entry.config}) or pick {kind} weights from "
            f"`python -m hiera_det.checkpoint --list`"
        )
    if architecture is not None and architecture != entry.architecture:
        raise CheckpointError(
            f"{entry.name} holds {entry.architecture} weights but the model is {architecture}; build "
            f"{entry.build} ({entry.config}) or pick {architecture} weights from "
            f"`python -m hiera_det.checkpoint --list`"
        )
    if entry.attention == "window" and attention != "window":
        raise CheckpointError(
            f"{entry.name} is a SAM 2 trunk, whose blocks attend within windows: build {entry.build} "
            f"({entry.config}); the model has attention={attention!r}"
        )
