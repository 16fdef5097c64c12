"""Optimizer with layer-wise lr decay over the Hiera blocks and no weight decay where it does harm.

Layer ids: the patch embedding and position embeddings are layer 0, block i is layer i + 1, everything
outside the trunk (neck, heads) and the trunk's final norm is layer n + 1 (n blocks). A parameter of
layer l trains at ``BASE_LR * LAYER_DECAY ** (n + 1 - l)``.

Weight decay: ``SOLVER.WEIGHT_DECAY`` for weights, ``SOLVER.WEIGHT_DECAY_NORM`` for normalization
layers, ``SOLVER.WEIGHT_DECAY_BIAS`` (None = WEIGHT_DECAY) for biases, and none for position embeddings,
which are a learned input table rather than a mapping to regularize.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from detectron2.layers.batch_norm import LayerNorm as ChannelsFirstLayerNorm
from detectron2.solver.build import maybe_add_gradient_clipping, reduce_param_groups

from ..modeling import Hiera

NORM_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.BatchNorm3d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.InstanceNorm1d,
    nn.InstanceNorm2d,
    nn.InstanceNorm3d,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    ChannelsFirstLayerNorm,
)


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def find_trunk(model: nn.Module) -> tuple[str, Hiera] | None:
    """The (qualified name, module) of the Hiera trunk inside ``model``, or None."""
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, Hiera)]
    if len(found) > 1:
        raise ValueError(f"layer-wise lr decay needs one Hiera trunk; the model holds {len(found)}: "
                         f"{[n for n, _ in found]}")
    return found[0] if found else None


def _relative_name(name: str, trunk_name: str) -> str | None:
    """``name`` relative to the trunk, or None outside it (``trunk_name`` "" means the model is the trunk)."""
    if not trunk_name:
        return name
    return name[len(trunk_name) + 1 :] if name.startswith(trunk_name + ".") else None


def hiera_layer_id(name: str, num_blocks: int) -> int:
    """Layer id of a parameter, by its name relative to the trunk."""
    if name.startswith(("patch_embed", "pos_embed")):
        return 0
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    return num_blocks + 1


def get_param_groups(
    model: nn.Module,
    base_lr: float,
    weight_decay: float,
    weight_decay_norm: float,
    weight_decay_bias: float,
    layer_decay: float = 1.0,
    bias_lr_factor: float = 1.0,
) -> list[dict]:
    """Parameter groups (lr, weight_decay) for every trainable parameter of ``model``, merged by value."""
    model = _unwrap(model)
    trunk = find_trunk(model)
    if trunk is None and layer_decay != 1.0:
        raise ValueError("SOLVER.LAYER_DECAY != 1 needs a Hiera trunk in the model, and there is none; "
                         "set SOLVER.LAYER_DECAY 1.0")
    num_blocks = len(trunk[1].blocks) if trunk else 0

    groups, seen = [], set()
    for module_name, module in model.named_modules():
        for param_name, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            full = f"{module_name}.{param_name}" if module_name else param_name
            lr, wd = base_lr, weight_decay
            if isinstance(module, NORM_TYPES):
                wd = weight_decay_norm
            elif param_name == "bias":
                wd, lr = weight_decay_bias, base_lr * bias_lr_factor
            relative = _relative_name(full, trunk[0]) if trunk else None
            if relative is not None:
                if relative.startswith("pos_embed"):
                    wd = 0.0
                lr *= layer_decay ** (num_blocks + 1 - hiera_layer_id(relative, num_blocks))
            groups.append({"params": [p], "lr": lr, "weight_decay": wd})
    return reduce_param_groups(groups)


def build_optimizer(cfg, model: nn.Module) -> torch.optim.Optimizer:
    """``SOLVER.OPTIMIZER`` (AdamW or SGD) over :func:`get_param_groups`, with Detectron2's gradient
    clipping (``SOLVER.CLIP_GRADIENTS``)."""
    s = cfg.SOLVER
    groups = get_param_groups(
        model,
        base_lr=s.BASE_LR,
        weight_decay=s.WEIGHT_DECAY,
        weight_decay_norm=s.WEIGHT_DECAY_NORM,
        weight_decay_bias=s.WEIGHT_DECAY if s.WEIGHT_DECAY_BIAS is None else s.WEIGHT_DECAY_BIAS,
        layer_decay=s.LAYER_DECAY,
        bias_lr_factor=s.BIAS_LR_FACTOR,
    )
    if not groups:
        raise ValueError("the model has no trainable parameters (is MODEL.HIERA.FREEZE_AT freezing all of "
                         "them, with frozen heads?)")
    if s.OPTIMIZER == "ADAMW":
        optimizer = maybe_add_gradient_clipping(cfg, torch.optim.AdamW)
        # one fused kernel per step: on CUDA instead of foreach's several (2% of a Mask R-CNN iteration on an
        # H100); on the CPU, where PyTorch's default is a Python loop over the parameters, it makes a batch-1
        # step of the shapes config 10% cheaper (benchmarks/results/shapes_recipe.md, "Session 7")
        fused = all(p.device.type in ("cuda", "cpu") for g in groups for p in g["params"]) or None
        return optimizer(groups, lr=s.BASE_LR, betas=tuple(s.BETAS), weight_decay=s.WEIGHT_DECAY, fused=fused)
    if s.OPTIMIZER == "SGD":
        optimizer = maybe_add_gradient_clipping(cfg, torch.optim.SGD)
        return optimizer(groups, lr=s.BASE_LR, momentum=s.MOMENTUM, nesterov=s.NESTEROV,
                         weight_decay=s.WEIGHT_DECAY)
    raise ValueError(f"SOLVER.OPTIMIZER {s.OPTIMIZER!r} is unknown; choose one of: ADAMW, SGD")
