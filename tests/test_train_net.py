"""Training with tools/train_net.py (run as a subprocess, as users run it) and hiera_det.engine.Trainer on a
tiny generated shapes dataset (CPU)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import torch

pytest.importorskip("detectron2")

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.datasets import register_coco_instances  # noqa: E402
from detectron2.utils.events import EventStorage  # noqa: E402

import hiera_det.d2  # noqa: E402,F401
from hiera_det.config import get_hiera_cfg, merge_config  # noqa: E402
from hiera_det.data.catalog import check_dataset_available  # noqa: E402
from hiera_det.engine import Trainer  # noqa: E402
from hiera_det.engine.checkpointer import convert_for_detectron2  # noqa: E402
from hiera_det.modeling import build_hiera  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CONFIG = "shapes/hiera_tiny_shapes.yaml"

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
def datasets_root(tmp_path_factory) -> Path:
    """A $DETECTRON2_DATASETS folder holding a 4 + 2 image hiera_shapes copy."""
    from hiera_det.data.datasets.shapes import generate_shapes_dataset

    root = tmp_path_factory.mktemp("data")
    generate_shapes_dataset(root / "hiera_shapes", seed=0, num_train=4, num_val=2, min_size=64, max_size=96)
    return root


@pytest.fixture(scope="module")
def shapes(datasets_root):
    """The hiera_shapes copy of ``datasets_root`` registered under fresh names; returns (train, val) names."""
    from hiera_det.data.datasets.shapes_spec import ShapesDatasetPaths

    paths = ShapesDatasetPaths(datasets_root / "hiera_shapes")
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


def train_net(*args, datasets_root=None) -> subprocess.CompletedProcess:
    """tools/train_net.py with ``args``; the bundled hiera_shapes data is read from ``datasets_root``."""
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="2")
    if datasets_root is not None:
        env["DETECTRON2_DATASETS"] = str(datasets_root)
    command = [sys.executable, "-W", "ignore", str(REPO / "tools" / "train_net.py"), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)


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


def test_train_checkpoint_resume_and_eval_only(datasets_root, tmp_path):
    out = tmp_path / "run"
    opts = [*TINY, "OUTPUT_DIR", out, "SOLVER.CHECKPOINT_PERIOD", "1"]

    done = train_net("--config", CONFIG, *opts, "SOLVER.MAX_ITER", "2", datasets_root=datasets_root)
    assert done.returncode == 0, done.stderr[-3000:]
    # the final evaluation ran through COCOEvaluator on the val split: boxes and masks
    log = (out / "log.txt").read_text()
    assert "copypaste: Task: bbox" in log and "copypaste: Task: segm" in log
    assert (out / "model_final.pth").is_file() and (out / "model_0000000.pth").is_file()
    assert (out / "last_checkpoint").read_text().strip() == "model_final.pth"
    assert (out / "inference" / "hiera_shapes_val" / "coco_instances_results.json").is_file()
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(out))  # TensorBoard writer

    # resuming with a longer schedule continues at iteration 2, not from scratch
    done = train_net("--config", CONFIG, "--resume", *opts, "SOLVER.MAX_ITER", "3",
                     datasets_root=datasets_root)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert "Starting training from iteration 0" in log and "Starting training from iteration 2" in log
    trained = [json.loads(line)["iteration"] for line in (out / "metrics.json").read_text().splitlines()
               if '"total_loss"' in line]
    assert trained == [1, 2]  # the last iteration of each run; the resumed run did only iteration 2
    state = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)  # no Python objects
    assert state["iteration"] == 2

    # evaluation alone, from the saved weights; on a machine without CUDA, a CUDA config falls back to the CPU
    done = train_net("--config", CONFIG, "--eval-only", *opts, "MODEL.WEIGHTS", out / "model_final.pth",
                     "OUTPUT_DIR", tmp_path / "eval", "MODEL.DEVICE", "cuda", "SOLVER.AMP.ENABLED", "True",
                     datasets_root=datasets_root)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    log = (tmp_path / "eval" / "log.txt").read_text()
    assert "copypaste: Task: bbox" in log and "copypaste: Task: segm" in log
    assert f"{out / 'model_final.pth'}: " in log and "model tensors loaded" in log  # load_model_weights
    if not torch.cuda.is_available():
        assert "CUDA is not available: MODEL.DEVICE cuda -> cpu" in log
        assert "SOLVER.AMP.ENABLED needs CUDA" in log


@pytest.mark.parametrize(
    "args, message",
    [
        (["--eval-only"], "MODEL.WEIGHTS to a checkpoint, or add --resume"),
        (["MODEL.WEIGHTS", "/no/such/model.pth"], "MODEL.WEIGHTS '/no/such/model.pth' is not a file"),
        (["--config-file", "configs/hiera_fpn.yaml"], "either --config NAME or --config-file PATH"),
    ],
)
def test_command_line_mistakes_are_named(tmp_path, args, message):
    done = train_net("--config", CONFIG, *args, *TINY, "DATASETS.TRAIN", "()", "DATASETS.TEST", "()",
                     "OUTPUT_DIR", tmp_path)  # fmt: skip
    assert done.returncode != 0 and message in done.stderr


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
    official = randomize(build_hiera("hiera_tiny_224"))  # the official layout, with a classifier head
    source = tmp_path / "hiera_tiny_224.pth"
    torch.save({"model_state": official.state_dict()}, source)
    output = tmp_path / "hiera_tiny_d2.pth"
    convert_for_detectron2(str(source), str(output), "hiera_tiny_224")  # tools/convert_checkpoint.py's work

    cfg = get_hiera_cfg()
    merge_config(cfg, "hiera_fpn.yaml", ["MODEL.HIERA.NAME", "hiera_tiny_224", "MODEL.DEVICE", "cpu"])
    model = Trainer.build_model(cfg)
    DetectionCheckpointer(model).load(str(output), checkpointables=[])
    written = torch.load(output, map_location="cpu", weights_only=True)["model"]
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
def test_two_cpu_processes_train_with_gloo(datasets_root, tmp_path):
    done = train_net("--config", CONFIG, "--num-gpus", "2", *TINY, "DATASETS.TEST", "()",
                     "OUTPUT_DIR", tmp_path, "SOLVER.MAX_ITER", "2", datasets_root=datasets_root)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "model_final.pth").is_file()


def test_ctrl_c_stops_after_the_iteration_with_a_checkpoint_to_resume_from(shapes, tmp_path):
    from detectron2.engine import HookBase

    from hiera_det.engine.trainer import StoppedOnRequest

    class CtrlCAtIteration2(HookBase):
        def before_step(self):
            if self.trainer.iter == 2:
                self.trainer._stop_on_sigint(signal.SIGINT, None)  # what the SIGINT handler does

    cfg = tiny_cfg(shapes, tmp_path, "SOLVER.MAX_ITER", "10", "TEST.EVAL_PERIOD", "0")
    trainer = Trainer(cfg)
    trainer.register_hooks([CtrlCAtIteration2()])
    with pytest.raises(StoppedOnRequest) as info:
        trainer.train()
    assert info.value.checkpoint == str(tmp_path / "model_0000002.pth") and os.path.isfile(info.value.checkpoint)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000002.pth"
    resumed = Trainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 3
