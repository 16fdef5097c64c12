"""The Detectron2 adapter: every model train_net builds trains under DDP with find_unused_parameters=False,
and the video FPN handles trunks that stop before stage4 (regressions of the structure issue's bugs 1, 2)."""

from __future__ import annotations

import socket

import pytest
import torch

pytest.importorskip("detectron2")

import hiera_det.d2  # noqa: E402,F401  (registers the backbones and meta-architectures)
from detectron2.modeling import build_backbone, build_model  # noqa: E402
from detectron2.structures import BitMasks, Boxes, Instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

from hiera_det.config import get_hiera_cfg, merge_config  # noqa: E402

TINY_IMAGE = ["MODEL.HIERA.NAME", "hiera_tiny_224", "MODEL.HIERA.STAGES", "[1, 1, 1, 1]",
              "MODEL.HIERA.EMBED_DIM", "32", "INPUT.LSJ.IMAGE_SIZE", "64", "MODEL.FPN.OUT_CHANNELS", "32",
              "MODEL.RPN.POST_NMS_TOPK_TRAIN", "32", "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "16",
              "MODEL.ROI_BOX_HEAD.CONV_DIM", "16", "MODEL.ROI_BOX_HEAD.FC_DIM", "32", "MODEL.ROI_MASK_HEAD.CONV_DIM", "16"]
TINY_VIDEO = ["MODEL.HIERA_VIDEO.NUM_FRAMES", "4", "INPUT.VIDEO.TRAIN_CROP_SIZE", "64",
              "INPUT.VIDEO.TEST_CROP_SIZE", "64"]
STAGES_1_TO_3 = ["MODEL.HIERA.OUT_FEATURES", "['stage1', 'stage2', 'stage3']", "MODEL.FPN.IN_FEATURES", "[]",
                 "MODEL.RPN.IN_FEATURES", "['p2', 'p3', 'p4', 'p5']",
                 "MODEL.ANCHOR_GENERATOR.SIZES", "[[16], [32], [64], [128]]"]

# (name, packaged config, overrides): every meta-architecture train_net builds, with OUT_FEATURES subsets
MODELS = [
    ("mask_rcnn", "hiera_fpn.yaml", TINY_IMAGE),
    ("mask_rcnn_stage1_3", "hiera_fpn.yaml", TINY_IMAGE + STAGES_1_TO_3),
    ("mask_rcnn_window", "hiera_det_window_fpn.yaml",
     TINY_IMAGE + ["MODEL.HIERA.WINDOW_SPEC", "[8, 4, 2, 1]", "MODEL.HIERA.GLOBAL_BLOCKS", "[2]"]),
    ("retinanet", "hiera_retinanet.yaml", TINY_IMAGE),
    ("cascade", "hiera_cascade_fpn.yaml", TINY_IMAGE),
    ("clip_classifier", "video/moving_shapes_cls.yaml", TINY_VIDEO),
    ("clip_detector", "video/moving_shapes_keyframe.yaml", TINY_VIDEO),
    ("clip_detector_stage1_3", "video/moving_shapes_keyframe.yaml", TINY_VIDEO + STAGES_1_TO_3),
]


def _cfg(config: str, overrides: list[str]):
    cfg = merge_config(get_hiera_cfg(), config, overrides + ["MODEL.DEVICE", "cpu"])
    cfg.freeze()
    return cfg


def _instances(size: int, num_classes: int, with_masks: bool) -> Instances:
    instances = Instances((size, size))
    instances.gt_boxes = Boxes(torch.tensor([[8.0, 10.0, 40.0, 44.0], [30.0, 5.0, 60.0, 30.0]]))
    instances.gt_classes = torch.tensor([0, min(1, num_classes - 1)])
    if with_masks:
        masks = torch.zeros(2, size, size, dtype=torch.bool)
        masks[0, 10:44, 8:40] = True
        masks[1, 5:30, 30:60] = True
        instances.gt_masks = BitMasks(masks)
    return instances


def _batch(cfg, rank: int) -> list[dict]:
    generator = torch.Generator().manual_seed(rank)
    if cfg.MODEL.META_ARCHITECTURE == "HieraVideoClassifier":
        clip = torch.randint(0, 255, (3, cfg.MODEL.HIERA_VIDEO.NUM_FRAMES, 64, 64), generator=generator)
        return [{"clip": clip.to(torch.uint8), "label": rank}]
    num_classes = cfg.MODEL.RETINANET.NUM_CLASSES if "RetinaNet" in cfg.MODEL.META_ARCHITECTURE else \
        cfg.MODEL.ROI_HEADS.NUM_CLASSES
    shape = (3, cfg.MODEL.HIERA_VIDEO.NUM_FRAMES, 64, 64) if "Clip" in cfg.MODEL.META_ARCHITECTURE else (3, 64, 64)
    image = torch.randint(0, 255, shape, generator=generator).to(torch.uint8)
    return [{"image": image, "height": 64, "width": 64,
             "instances": _instances(64, num_classes, cfg.MODEL.MASK_ON)}]


def _train_two_steps_under_ddp(models):
    from detectron2.utils import comm
    from torch.nn.parallel import DistributedDataParallel

    torch.set_num_threads(1)
    rank = comm.get_rank()
    for name, config, overrides in models:
        cfg = _cfg(config, overrides)
        torch.manual_seed(0)  # the same initial weights on both ranks
        model = DistributedDataParallel(build_model(cfg).train(), find_unused_parameters=False,
                                        broadcast_buffers=False)
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
        with EventStorage(0) as storage:
            for step in range(2):  # DDP finds a parameter without gradient when the next step starts
                storage.iter = step
                losses = model(_batch(cfg, rank))
                optimizer.zero_grad()
                sum(losses.values()).backward()
                optimizer.step()
        checksum = torch.stack([p.detach().double().sum() for p in model.parameters()]).sum().item()
        checksums = comm.all_gather(checksum)
        assert checksums[0] == checksums[1], f"{name}: weights differ across ranks after DDP steps {checksums}"
    # a gloo group alive at exit can abort the process after its work is done
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_every_model_trains_under_ddp_without_searching_for_unused_parameters():
    from detectron2.engine import launch

    launch(_train_two_steps_under_ddp, 2, dist_url=f"tcp://127.0.0.1:{_free_port()}", args=(MODELS,))


@pytest.mark.parametrize("name, config, overrides", [m for m in MODELS if m[0].endswith("stage1_3")])
def test_fpn_on_a_trunk_that_stops_at_stage3(name, config, overrides):
    cfg = _cfg(config, overrides)
    fpn = build_backbone(cfg)
    assert list(fpn.output_shape()) == ["p2", "p3", "p4", "p5"]  # p5 max-pooled from p4
    x = torch.randn((1, 3, cfg.MODEL.HIERA_VIDEO.NUM_FRAMES, 64, 64) if "clip" in name else (1, 3, 64, 64))
    out = fpn(x)
    assert [tuple(v.shape[-2:]) for v in out.values()] == [(16, 16), (8, 8), (4, 4), (2, 2)]
    trunk = fpn.bottom_up.video.trunk if "clip" in name else fpn.bottom_up.trunk
    stage4 = range(trunk.stage_ends[2] + 1, len(trunk.blocks))
    assert not any(p.requires_grad for i in stage4 for p in trunk.blocks[i].parameters())
    assert not any(p.requires_grad for p in trunk.norm.parameters())


def test_installed_package_finds_its_configs_by_name(tmp_path):
    """`pip install .` ships the configs: from another directory, every packaged config resolves and merges."""
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    run = dict(check=True, capture_output=True, text=True, timeout=300)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "wheel"), str(repo)], **run)
    wheel = next((tmp_path / "wheel").glob("hiera_det-*.whl"))
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(tmp_path / "site"),
                    str(wheel)], **run)
    check = ("import hiera_det.config as c; names = c.list_configs(); assert len(names) >= 15, names; "
             "assert 'video/moving_shapes_cls.yaml' in names and 'hiera_fpn.yaml' in names; "
             "[c.merge_config(c.get_hiera_cfg(), n) for n in names if not n.split('/')[-1].startswith('Base-')]; "
             "print(c.config_dir())")
    out = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, env={"PYTHONPATH": str(tmp_path / "site"),
                                                                       "PATH": "/usr/bin:/bin"}, **run).stdout
    assert out.strip().startswith(str(tmp_path / "site"))


def test_model_weights_may_be_a_hiera_trunk_checkpoint(tmp_path):
    """MODEL.WEIGHTS naming official trunk weights loads them into the detector's trunk; trunk weights of
    another size get the loader's message naming both, not Detectron2's 'Unsupported type' traceback."""
    hiera = pytest.importorskip("hiera")
    from hiera_det.checkpoint import CheckpointError
    from hiera_det.engine.checkpointer import load_model_weights

    model = build_model(_cfg("hiera_fpn.yaml", TINY_IMAGE))
    official = hiera.Hiera(embed_dim=32, num_heads=1, stages=(1, 1, 1, 1), num_classes=0)
    torch.save({"model_state": official.state_dict()}, tmp_path / "fits.pth")
    report = load_model_weights(model, str(tmp_path / "fits.pth"))
    trunk = model.backbone.bottom_up.trunk
    assert torch.equal(trunk.blocks[0].attn.qkv.weight, official.blocks[0].attn.qkv.weight)
    assert report.loaded > 0 and report.missing_keys  # the FPN and heads stay at initialization

    wider = hiera.Hiera(embed_dim=48, num_heads=1, stages=(1, 1, 1, 1), num_classes=0)
    torch.save({"model_state": wider.state_dict()}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="embed_dim 48.*embed_dim 32"):
        load_model_weights(model, str(tmp_path / "other.pth"))
