"""Training with tools/train_net.py and hiera_det.engine.Trainer on a tiny generated shapes dataset (CPU)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import uuid
from pathlib import Path

import pytest
import torch

pytest.importorskip("detectron2")

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.datasets import register_coco_instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

import hiera_det  # noqa: E402,F401
from hiera_det.config import get_hiera_cfg, merge_config  # noqa: E402
from hiera_det.engine import Trainer, check_dataset_available  # noqa: E402
from hiera_det.modeling import build_hiera  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _load_tool(name: str):
    spec = importlib.util.spec_from_file_location(f"_tool_{name}", REPO / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


train_net = _load_tool("train_net")

# The shapes config, shrunk to seconds per run: one block per stage, 64-96 px images, few proposals.
TINY = [
    "MODEL.DEVICE", "cpu",
    "MODEL.HIERA.STAGES", "[1, 1, 1, 1]",
    "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
    "MODEL.ROI_MASK_HEAD.CONV_DIM", "32",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "64",
    "MODEL.RPN.POST_NMS_TOPK_TEST", "32",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "32",
    "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.MAX_SIZE_TRAIN", "96",
    "INPUT.MIN_SIZE_TEST", "64",
    "INPUT.MAX_SIZE_TEST", "96",
    "SOLVER.IMS_PER_BATCH", "2",
    "SOLVER.WARMUP_ITERS", "1",
    "SOLVER.STEPS", "()",
    "DATALOADER.NUM_WORKERS", "0",
]  # fmt: skip


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    """A 4 + 2 image hiera_shapes copy, registered under fresh names; returns (train, val) names."""
    from hiera_det.data.shapes import generate_shapes_dataset

    root = tmp_path_factory.mktemp("data") / "hiera_shapes"
    paths = generate_shapes_dataset(root, seed=0, num_train=4, num_val=2, min_size=64, max_size=96)
    tag = uuid.uuid4().hex[:8]
    names = []
    for split in ("train", "val"):
        name = f"test_shapes_{split}_{tag}"
        register_coco_instances(name, {}, str(paths.annotation_file(split)), str(paths.image_dir(split)))
        names.append(name)
    yield tuple(names)
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def tiny_cfg(shapes, output_dir, *opts):
    train, val = shapes
    cfg = get_hiera_cfg()
    merge_config(cfg, "shapes/hiera_tiny_shapes.yaml", TINY + [
        "DATASETS.TRAIN", f"('{train}',)", "DATASETS.TEST", f"('{val}',)", "OUTPUT_DIR", str(output_dir),
    ] + list(opts))  # fmt: skip
    return cfg


def run_args(config_opts, **flags):
    args = argparse.Namespace(config="shapes/hiera_tiny_shapes.yaml", config_file="", resume=False,
                              eval_only=False, num_gpus=1, num_machines=1, machine_rank=0,
                              dist_url="auto", opts=list(config_opts))  # fmt: skip
    for k, v in flags.items():
        setattr(args, k, v)
    return args


def test_one_iteration_has_finite_losses_and_backbone_gradients(shapes, tmp_path):
    cfg = tiny_cfg(shapes, tmp_path)
    model = Trainer.build_model(cfg)
    optimizer = Trainer.build_optimizer(cfg, model)
    batch = next(iter(Trainer.build_train_loader(cfg)))
    trunk = model.backbone.bottom_up.trunk
    before = trunk.blocks[0].attn.qkv.weight.detach().clone()
    model.train()
    with EventStorage(0):
        losses = model(batch)
    assert set(losses) == {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"}
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    checked = {
        "patch_embed": trunk.patch_embed.proj.weight,
        "pos_embed": trunk.pos_embed,
        "first block": trunk.blocks[0].attn.qkv.weight,
        "last block": trunk.blocks[-1].mlp.fc2.weight,
    }
    for name, p in checked.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, f"no gradient reaches the trunk's {name}"
    optimizer.step()
    assert not torch.equal(before, trunk.blocks[0].attn.qkv.weight)


def test_train_checkpoint_resume_and_eval_only(shapes, tmp_path):
    out = tmp_path / "run"
    opts = TINY + ["DATASETS.TRAIN", f"('{shapes[0]}',)", "DATASETS.TEST", f"('{shapes[1]}',)",
                   "OUTPUT_DIR", str(out), "SOLVER.CHECKPOINT_PERIOD", "1"]  # fmt: skip

    results = train_net.main(run_args(opts + ["SOLVER.MAX_ITER", "2"]))
    # the final evaluation ran through COCOEvaluator on the val split: boxes and masks
    assert set(results) == {"bbox", "segm"}
    assert all(math.isfinite(results[t]["AP"]) or math.isnan(results[t]["AP"]) for t in results)
    assert (out / "model_final.pth").is_file() and (out / "model_0000000.pth").is_file()
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    assert (out / "inference" / shapes[1] / "coco_instances_results.json").is_file()
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out))  # TensorBoard writer

    # resuming with a longer schedule continues at iteration 2, not from scratch
    train_net.main(run_args(opts + ["SOLVER.MAX_ITER", "3"], resume=True))
    log = (out / "log.txt").read_text()
    assert "Starting training from iteration 0" in log and "Starting training from iteration 2" in log
    trained = [json.loads(line)["iteration"] for line in (out / "metrics.json").read_text().splitlines()
               if '"total_loss"' in line]
    assert trained == [1, 2]  # the last iteration of each run; the resumed run did only iteration 2
    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert state["iteration"] == 2

    # evaluation alone, from the saved weights
    results = train_net.main(run_args(opts + ["MODEL.WEIGHTS", str(out / "model_final.pth")], eval_only=True))
    assert set(results) == {"bbox", "segm"} and {"AP", "AP50", "AP75"} <= set(results["bbox"])


def test_eval_only_without_weights_says_what_to_set(shapes, tmp_path):
    opts = TINY + ["DATASETS.TEST", f"('{shapes[1]}',)", "OUTPUT_DIR", str(tmp_path)]
    with pytest.raises(ValueError, match="MODEL.WEIGHTS to a checkpoint, or add --resume"):
        train_net.main(run_args(opts, eval_only=True))


def test_missing_weights_file_is_named(shapes, tmp_path):
    with pytest.raises(FileNotFoundError, match="MODEL.WEIGHTS '/no/such/model.pth' is not a file"):
        train_net.build_config(run_args(["MODEL.WEIGHTS", "/no/such/model.pth"]))


def test_config_adjusts_to_a_machine_without_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = run_args(["MODEL.DEVICE", "cuda"], config="hiera_fpn.yaml")
    cfg, notes = train_net.build_config(args)
    assert cfg.MODEL.DEVICE == "cpu" and not cfg.SOLVER.AMP.ENABLED
    assert any("CUDA is not available" in n for n in notes) and any("AMP" in n for n in notes)
    with pytest.raises(ValueError, match="either --config NAME or --config-file PATH"):
        train_net.build_config(run_args([], config="hiera_fpn.yaml", config_file="configs/hiera_fpn.yaml"))


def test_amp_on_cpu_is_rejected_by_the_trainer(shapes, tmp_path):
    cfg = tiny_cfg(shapes, tmp_path, "SOLVER.AMP.ENABLED", "True")
    with pytest.raises(ValueError, match="SOLVER.AMP.ENABLED needs a CUDA device"):
        Trainer(cfg)


def test_missing_datasets_say_where_to_put_them(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"Put COCO under \$DETECTRON2_DATASETS/coco"):
        check_dataset_available("coco_2017_val")
    with pytest.raises(KeyError, match="not registered. Did you mean: coco_2017_val"):
        check_dataset_available("coco_2017_vall")


def test_converted_checkpoint_loads_into_the_detector(tmp_path, randomize):
    convert_checkpoint = _load_tool("convert_checkpoint")
    official = randomize(build_hiera("hiera_tiny_224"))  # the official layout, with a classifier head
    source = tmp_path / "hiera_tiny_224.pth"
    torch.save({"model_state": official.state_dict()}, source)
    output = tmp_path / "hiera_tiny_d2.pth"
    assert convert_checkpoint.main(["--input", str(source), "--output", str(output),
                                    "--model", "hiera_tiny_224"]) == 0  # fmt: skip

    cfg = get_hiera_cfg()
    merge_config(cfg, "hiera_fpn.yaml", ["MODEL.HIERA.NAME", "hiera_tiny_224", "MODEL.DEVICE", "cpu"])
    model = Trainer.build_model(cfg)
    DetectionCheckpointer(model).load(str(output), checkpointables=[])
    written = torch.load(output, map_location="cpu", weights_only=False)["model"]
    model_keys = set(model.state_dict())
    assert set(written) <= model_keys, f"unexpected keys: {sorted(set(written) - model_keys)[:5]}"
    trunk_keys = {k for k in model_keys if k.startswith("backbone.bottom_up.trunk.")}
    assert trunk_keys == set(written), f"trunk keys not in the file: {sorted(trunk_keys - set(written))[:5]}"
    state = model.state_dict()
    for key, value in written.items():
        assert state[key].shape == value.shape and torch.equal(state[key], value), key
    official_state = official.state_dict()
    assert torch.equal(state["backbone.bottom_up.trunk.blocks.3.attn.qkv.weight"],
                       official_state["blocks.3.attn.qkv.weight"])  # fmt: skip


@pytest.mark.slow
def test_two_cpu_processes_train_with_gloo(shapes, tmp_path):
    from detectron2.engine import launch

    opts = TINY + ["DATASETS.TRAIN", f"('{shapes[0]}',)", "DATASETS.TEST", "()", "OUTPUT_DIR", str(tmp_path),
                   "SOLVER.MAX_ITER", "2"]  # fmt: skip
    # spawned workers start from a fresh interpreter: they register the test's dataset names again
    launch(_gloo_worker, 2, dist_url="auto", args=(opts, shapes, _registration(shapes)))
    assert (tmp_path / "model_final.pth").is_file()


def _registration(shapes):
    return {n: (MetadataCatalog.get(n).json_file, MetadataCatalog.get(n).image_root) for n in shapes}


def _gloo_worker(opts, shapes, registration):
    for name, (json_file, image_root) in registration.items():
        if name not in DatasetCatalog.list():
            register_coco_instances(name, {}, json_file, image_root)
    train_net.main(run_args(opts, num_gpus=2))
