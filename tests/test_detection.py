"""Hiera in Detectron2: config keys and checks, backbones, FPN variants, padding, freezing, optimizer."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("detectron2")

from detectron2.modeling import BACKBONE_REGISTRY, build_backbone, build_model  # noqa: E402
from detectron2.structures import ImageList  # noqa: E402

import hiera_det.d2  # noqa: E402,F401
from hiera_det.config import (  # noqa: E402
    config_dir,
    get_hiera_cfg,
    trunk_input_size,
    merge_config,
    resolve_config_file,
    validate_hiera_config,
)
from hiera_det.detection import HieraBackbone, freeze_trunk  # noqa: E402
from hiera_det.engine import build_optimizer, get_param_groups  # noqa: E402
from hiera_det.modeling import build_hiera  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TOP_CONFIGS = sorted(f for f in os.listdir(config_dir()) if f.endswith(".yaml") and not f.startswith("Base-"))
# A trunk small enough to build and run in a second: Hiera-T widths, one block per stage.
TINY = ["MODEL.HIERA.NAME", "hiera_tiny_224", "MODEL.HIERA.STAGES", "[1, 1, 1, 1]", "MODEL.DEVICE", "cpu"]


def tiny_cfg(config: str = "hiera_fpn.yaml", *opts):
    cfg = get_hiera_cfg()
    merge_config(cfg, config, TINY + ["INPUT.LSJ.IMAGE_SIZE", "256"] + list(opts))
    if cfg.MODEL.HIERA.ATTENTION == "window":
        cfg.MODEL.HIERA.GLOBAL_BLOCKS = [3]
    return cfg


def test_backbones_are_registered():
    for name in ("build_hiera_backbone", "build_hiera_fpn_backbone", "build_hiera_retinanet_fpn_backbone"):
        assert name in BACKBONE_REGISTRY


@pytest.mark.parametrize("config", TOP_CONFIGS + ["shapes/hiera_tiny_shapes.yaml"])
def test_every_config_merges_and_validates(config):
    cfg = get_hiera_cfg()
    merge_config(cfg, config)
    validate_hiera_config(cfg)
    assert cfg.MODEL.BACKBONE.NAME.startswith("build_hiera")


@pytest.mark.parametrize(
    "config, levels",
    [
        ("hiera_fpn.yaml", {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}),
        ("hiera_cascade_fpn.yaml", {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}),
        ("hiera_det_window_fpn.yaml", {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}),
        ("hiera_retinanet.yaml", {"p3": 8, "p4": 16, "p5": 32, "p6": 64, "p7": 128}),
    ],
)
def test_detector_builds_and_pads_odd_sizes(config, levels):
    cfg = tiny_cfg(config, "INPUT.LSJ.ENABLED", "False")
    model = build_model(cfg).eval()
    shapes = model.backbone.output_shape()
    assert {k: v.stride for k, v in shapes.items()} == levels
    assert all(v.channels == cfg.MODEL.FPN.OUT_CHANNELS for v in shapes.values())
    # 200x333 is padded by the model to 224x352 (multiples of 32), each level is the padded size / stride
    images = ImageList.from_tensors(
        [torch.rand(3, 200, 333) * 255], model.backbone.size_divisibility,
        padding_constraints=model.backbone.padding_constraints,
    )
    assert tuple(images.tensor.shape[-2:]) == (224, 352)
    with torch.no_grad():
        features = model.backbone(images.tensor)
        assert {k: tuple(v.shape[-2:]) for k, v in features.items()} == {
            k: (math.ceil(224 / s), math.ceil(352 / s)) for k, s in levels.items()
        }
        out = model([{"image": torch.rand(3, 200, 333) * 255, "height": 200, "width": 333}])
    assert out[0]["instances"].image_size == (200, 333)


@pytest.mark.parametrize("attention", ["mask_unit", "window"])
def test_hiera_backbone_shapes_strides_and_divisibility(attention):
    cfg = tiny_cfg("hiera_fpn.yaml", "MODEL.BACKBONE.NAME", "build_hiera_backbone",
                   "MODEL.HIERA.ATTENTION", attention, "INPUT.LSJ.ENABLED", "False")
    backbone = build_backbone(cfg)
    assert isinstance(backbone, HieraBackbone)
    assert backbone.size_divisibility == 32
    assert backbone.padding_constraints == {"size_divisibility": 32, "square_size": 0}
    expected = {"stage1": (96, 4), "stage2": (192, 8), "stage3": (384, 16), "stage4": (768, 32)}
    assert {k: (v.channels, v.stride) for k, v in backbone.output_shape().items()} == expected
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 96, 160))
    assert {k: tuple(v.shape[1:]) for k, v in out.items()} == {
        k: (c, 96 // s, 160 // s) for k, (c, s) in expected.items()
    }
    with pytest.raises(ValueError, match="size_divisibility"):
        backbone(torch.randn(1, 3, 100, 160))


def test_conv_stem_and_normalized_stage_outputs_from_the_config():
    cfg = tiny_cfg("hiera_fpn.yaml", "MODEL.HIERA.STEM", "conv", "MODEL.HIERA.OUT_NORM", "LN",
                   "INPUT.LSJ.ENABLED", "False")
    model = build_model(cfg)
    bottom_up = model.backbone.bottom_up
    assert bottom_up.trunk.stem == "conv" and set(bottom_up.stage_norms) == {"stage1", "stage2", "stage3", "stage4"}
    with torch.no_grad():
        bottom_up.trunk.blocks[0].mlp.fc2.weight.mul_(50)  # an un-normalized stream of large scale
        out = bottom_up(torch.randn(2, 3, 64, 96))
    for name, f in out.items():  # every position normalized over its channels
        assert torch.allclose(f.mean(1), torch.zeros(()), atol=1e-4), name
        assert torch.allclose(f.var(1, unbiased=False), torch.ones(()), atol=1e-2), name
    # the new norms are trained without weight decay, like every norm
    groups = _groups_by_param(model, base_lr=1.0, weight_decay=0.1, weight_decay_norm=0.0, weight_decay_bias=0.0)
    assert groups[id(bottom_up.stage_norms["stage1"].weight)][1] == 0.0
    assert groups[id(bottom_up.trunk.patch_embed.stem[1].weight)][1] == 0.0


def test_lsj_pads_to_square_and_pos_embed_size():
    cfg = tiny_cfg("hiera_fpn.yaml")
    assert trunk_input_size(cfg) == (224, 224)  # the pretraining grid, interpolated at run time
    cfg.MODEL.HIERA.INPUT_SIZE = [256, 256]
    model = build_model(cfg)
    assert model.backbone.padding_constraints["square_size"] == 256
    assert model.backbone.bottom_up.trunk.token_grid == (64, 64)
    images = ImageList.from_tensors([torch.zeros(3, 200, 133)], model.backbone.size_divisibility,
                                    padding_constraints=model.backbone.padding_constraints)
    assert tuple(images.tensor.shape[-2:]) == (256, 256)


def test_fpn_without_stage4_still_pads_to_32():
    cfg = tiny_cfg("hiera_fpn.yaml", "MODEL.HIERA.OUT_FEATURES", "['stage1', 'stage2', 'stage3']",
                   "MODEL.FPN.IN_FEATURES", "['stage1', 'stage2', 'stage3']",
                   "MODEL.RPN.IN_FEATURES", "['p2', 'p3', 'p4', 'p5']", "INPUT.LSJ.ENABLED", "False")
    backbone = build_backbone(cfg)
    assert backbone.size_divisibility == 32  # FPN alone would say 16
    trunk = backbone.bottom_up.trunk
    # stage-4 blocks feed nothing: frozen so that DDP does not wait for their gradients
    assert not any(p.requires_grad for p in trunk.blocks[trunk.stage_ends[3]].parameters())
    with torch.no_grad():
        out = backbone(torch.randn(1, 3, 224, 352))
    assert {k: tuple(v.shape[-2:]) for k, v in out.items()} == {
        "p2": (56, 88), "p3": (28, 44), "p4": (14, 22), "p5": (7, 11)
    }


def test_fpn_in_features_must_be_produced():
    cfg = tiny_cfg("hiera_fpn.yaml", "MODEL.HIERA.OUT_FEATURES", "['stage3', 'stage4']")
    with pytest.raises(ValueError, match="MODEL.FPN.IN_FEATURES.*stage1"):
        build_backbone(cfg)


@pytest.mark.parametrize("freeze_at, trainable_blocks", [(0, 4), (1, 4), (2, 3), (3, 2), (5, 0)])
def test_freeze_at(freeze_at, trainable_blocks):
    trunk = build_hiera("hiera_tiny_224", num_classes=0, stages=(1, 1, 1, 1))
    backbone = HieraBackbone(trunk, freeze_at=freeze_at)
    assert trunk.patch_embed.proj.weight.requires_grad == (freeze_at == 0)
    assert trunk.pos_embed.requires_grad == (freeze_at == 0)
    assert sum(any(p.requires_grad for p in b.parameters()) for b in trunk.blocks) == trainable_blocks
    assert not any(p.requires_grad for p in trunk.norm.parameters())
    with pytest.raises(ValueError, match="freeze_at"):
        freeze_trunk(backbone.trunk, 6)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("MODEL.HIERA.NAME", "hiera_bass_224", "Did you mean: hiera_base_224.*Image: hiera_tiny_224"),
        ("MODEL.HIERA.ATTENTION", "swin", "choose one of: mask_unit, window"),
        ("MODEL.HIERA.POS_EMBED", "rope", "choose one of: '' \\(layout default\\), absolute, absolute_win"),
        ("MODEL.HIERA.OUT_FEATURES", "['res5']", "subset of stage1"),
        ("MODEL.HIERA.WINDOW_SPEC", "[8, 4, 14]", "WINDOW_SPEC"),
        ("MODEL.HIERA.WINDOW_SPEC", "[8, 4, 14, 7]", "ATTENTION 'window' only"),
        ("MODEL.HIERA.FREEZE_AT", "7", "FREEZE_AT"),
        ("MODEL.HIERA.STEM", "deep", "STEM 'deep' is unknown; choose one of: patch, conv"),
        ("MODEL.HIERA.OUT_NORM", "BN", "OUT_NORM 'BN' is unknown; choose one of: '' \\(none\\), 'LN', 'GN'"),
        ("MODEL.HIERA.WEIGHTS", "/no/such/hiera.pth", "does not exist; give an existing checkpoint file .* or a weights name"),
        ("SOLVER.OPTIMIZER", "LAMB", "choose one of: ADAMW, SGD"),
        ("SOLVER.LAYER_DECAY", "1.5", "LAYER_DECAY"),
        ("SOLVER.AMP.PRECISION", "int8", "choose one of: float16, bfloat16"),
        ("MODEL.PROPOSAL_GENERATOR.NAME", "HieraRPNN", "'HieraRPNN' is not a registered name; choose one of: .*HieraRPN"),
        ("MODEL.ROI_HEADS.NAME", "Standard", "'Standard' is not a registered name; choose one of: .*StandardROIHeads"),
    ],
)
def test_bad_values_name_the_valid_choices(key, value, message):
    cfg = get_hiera_cfg()
    merge_config(cfg, "hiera_fpn.yaml", [key, value])
    with pytest.raises(ValueError, match=message):
        validate_hiera_config(cfg)
    with pytest.raises(ValueError, match=message):  # builders check too
        build_backbone(cfg)


def test_image_builder_refuses_a_video_trunk_and_names_the_video_builder():
    cfg = get_hiera_cfg()
    merge_config(cfg, "hiera_fpn.yaml", ["MODEL.HIERA.NAME", "hiera_base_16x224"])
    with pytest.raises(ValueError, match="build_hiera_video_fpn_backbone"):
        build_backbone(cfg)


def test_moved_video_trunk_keys_say_where_they_went():
    with pytest.raises(KeyError, match="MODEL.HIERA_VIDEO.NAME was renamed to MODEL.HIERA.NAME"):
        merge_config(get_hiera_cfg(), "", ["MODEL.HIERA_VIDEO.NAME", "hiera_base_16x224"])


def test_config_docs_are_current():
    from hiera_det.config import render_config_docs

    text = (REPO / "docs" / "config.md").read_text()
    assert render_config_docs(text) == text, "run: python -m hiera_det.config --write-docs docs/config.md"
    for section in ("MODEL.HIERA", "MODEL.HIERA_VIDEO", "INPUT.LSJ", "INPUT.VIDEO", "SOLVER"):
        assert f"<!-- keys: {section} -->" in text


def test_unknown_key_error_suggests_the_right_one():
    with pytest.raises(KeyError, match="MODEL.HIERA.NAMEE.*Did you mean: MODEL.HIERA.NAME"):
        merge_config(get_hiera_cfg(), "hiera_fpn.yaml", ["MODEL.HIERA.NAMEE", "hiera_tiny_224"])


def test_config_names_resolve_under_configs():
    assert resolve_config_file("hiera_fpn.yaml") == os.path.join(config_dir(), "hiera_fpn.yaml")
    with pytest.raises(FileNotFoundError, match="Did you mean: hiera_fpn.yaml"):
        resolve_config_file("hiera_fnp.yaml")


def test_paper_recipe_values():
    cfg = get_hiera_cfg()
    merge_config(cfg, "hiera_fpn.yaml")
    s = cfg.SOLVER
    assert (s.OPTIMIZER, tuple(s.BETAS), s.WEIGHT_DECAY, s.IMS_PER_BATCH) == ("ADAMW", (0.9, 0.999), 0.1, 64)
    assert s.BASE_LR == pytest.approx(3.5e-5)
    assert s.MAX_ITER == 184375 and round(s.MAX_ITER * 64 / 118_000) == 100  # 100 epochs of train2017
    assert [round(step / s.MAX_ITER, 3) for step in s.STEPS] == [0.889, 0.963]
    assert cfg.MODEL.HIERA.DROP_PATH_RATE == 0.2 and s.AMP.ENABLED
    assert cfg.INPUT.LSJ.ENABLED and cfg.INPUT.LSJ.IMAGE_SIZE == 1024
    assert (cfg.INPUT.LSJ.MIN_SCALE, cfg.INPUT.LSJ.MAX_SCALE) == (0.1, 2.0)
    assert list(cfg.MODEL.RPN.CONV_DIMS) == [-1, -1]


def _groups_by_param(model, **kwargs):
    groups = get_param_groups(model, **kwargs)
    return {id(p): (g["lr"], g["weight_decay"]) for g in groups for p in g["params"]}


def test_layer_decay_and_no_decay_params():
    cfg = tiny_cfg("hiera_fpn.yaml", "INPUT.LSJ.ENABLED", "False")
    model = build_model(cfg)
    groups = _groups_by_param(model, base_lr=1.0, weight_decay=0.1, weight_decay_norm=0.0,
                              weight_decay_bias=0.0, layer_decay=0.5)
    trunk = model.backbone.bottom_up.trunk
    n = len(trunk.blocks)
    assert groups[id(trunk.patch_embed.proj.weight)] == (0.5 ** (n + 1), 0.1)
    assert groups[id(trunk.pos_embed)] == (0.5 ** (n + 1), 0.0)
    for i, block in enumerate(trunk.blocks):
        assert groups[id(block.mlp.fc1.weight)] == (0.5 ** (n - i), 0.1)
        assert groups[id(block.mlp.fc1.bias)] == (0.5 ** (n - i), 0.0)
        assert groups[id(block.norm1.weight)] == (0.5 ** (n - i), 0.0)
    head = model.roi_heads.box_predictor.cls_score
    assert groups[id(head.weight)] == (1.0, 0.1) and groups[id(head.bias)] == (1.0, 0.0)
    fpn_norm = model.backbone.fpn_output2.norm
    assert groups[id(fpn_norm.weight)] == (1.0, 0.0)
    # frozen parameters are left out; every trainable one is in exactly one group
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(groups) == len(trainable)
    assert id(trunk.norm.weight) not in groups


def test_build_optimizer_adamw_and_sgd():
    cfg = tiny_cfg("hiera_fpn.yaml", "INPUT.LSJ.ENABLED", "False", "SOLVER.LAYER_DECAY", "0.8")
    model = build_model(cfg)
    opt = build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["betas"] == (0.9, 0.999)
    # fused on the CPU too: PyTorch's CPU default is a Python loop over the parameters
    assert opt.defaults["fused"] is True
    params = [p for g in opt.param_groups for p in g["params"]]
    before = [p.detach().clone() for p in params]
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, params))
    lrs = sorted({g["lr"] for g in opt.param_groups})
    assert lrs[-1] == pytest.approx(cfg.SOLVER.BASE_LR)
    assert len(lrs) == len(model.backbone.bottom_up.trunk.blocks) + 2  # patch embed, each block, heads
    cfg.SOLVER.OPTIMIZER = "SGD"
    assert isinstance(build_optimizer(cfg, model), torch.optim.SGD)
