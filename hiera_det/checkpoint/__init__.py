"""Loading Hiera weights from every public format into ``hiera_det.modeling.Hiera``.

``load_checkpoint(model, path_or_state_dict, strict=False) -> LoadReport`` recognises:

* official hiera-transformer checkpoints, ``{"model_state": ...}`` or bare, image and video, including the
  MAE pre-training ``mae_hiera_*`` ones (the decoder, mask token, fusion heads and ``encoder_norm`` are
  dropped and reported; those encoders were pre-trained with ``q_pool=2``, which has no weights: build with
  ``q_pool=2`` to reproduce the pre-training features, keep the default 3 to fine-tune as the paper does);
* Hugging Face transformers Hiera (``HieraModel``, ``HieraForImageClassification``,
  ``HieraForPreTraining``, ``HieraBackbone``): a ``save_pretrained`` directory, ``model.safetensors`` or
  ``pytorch_model.bin``; a ``config.json`` beside the weights is checked against the model;
* timm ``hiera_*`` state dicts (``head.fc`` / ``head.norm`` names);
* SAM2 checkpoints, ``{"model": {"image_encoder.trunk.*": ...}}`` or a bare trunk, for a model built with
  ``attention="window"``;
* hiera_det / Detectron2 checkpoints, ``{"model": ...}`` with a ``backbone.bottom_up.trunk.``,
  ``backbone.trunk.`` or ``trunk.`` prefix, so converted files load back.

Position embeddings are fitted to the model. An absolute ``pos_embed`` ``[1, N, C]`` is resampled bicubically
from the checkpoint's token grid to the model's; video ``pos_embed_spatial`` is resampled bicubically and
``pos_embed_temporal`` linearly. A checkpoint with an absolute embedding (official, Hugging Face, timm) loaded
into a window-layout model (``attention="window"``, ``pos_embed="absolute_win"``) is converted: the model's
background ``pos_embed`` becomes the official embedding reshaped to its grid, ``[1, C, h, w]`` (the parameter
changes shape in place), and ``pos_embed_window`` becomes zeros, which reproduces the absolute embedding
exactly at the checkpoint's input size and interpolates it, as SAM2 does, at other sizes. A SAM2 background
embedding is kept at the checkpoint's size for the same reason.

Weights can also be named (``python -m hiera_det.checkpoint --list`` prints the catalog): the official
image and video checkpoints (``hiera_base_224.mae_in1k_ft_in1k``, ``hiera_base_16x224.mae_k400``), the SAM 2 /
SAM 2.1 trunks (``sam2_hiera_large.sam2_1``) and Hugging Face hub ids (``facebook/hiera-base-224-hf``).
``load_checkpoint`` downloads a name into the cache the first time (``hiera_det.checkpoint.download`` says
where, and how to use a mirror or work offline) and reports as for a file; ``resolve_weights`` gives the
local path and ``check_weights`` checks a name without network access. ``hiera_det.checkpoint.path_handler``
makes ``hiera://NAME`` work in Detectron2's ``PathManager``.

The classification head is loaded when the model has one with the same number of classes, and otherwise
dropped and reported (``num_classes=0``, or a new class count for fine-tuning). A checkpoint of another
architecture, video weights for an image model (or the reverse), an unknown format, a corrupt file or a
missing path raise ``CheckpointError`` naming what was expected and what was found.
"""

from .download import check_weights, resolve_weights
from .formats import FORMATS
from .loading import load_checkpoint
from .report import CheckpointError, LoadReport
from .zoo import CATALOG, WeightsEntry, is_weights_name

__all__ = [
    "CATALOG",
    "FORMATS",
    "CheckpointError",
    "LoadReport",
    "WeightsEntry",
    "check_weights",
    "is_weights_name",
    "load_checkpoint",
    "resolve_weights",
]
