"""Training survives faults: a non-finite loss stops training with the iteration and the loss terms while
keeping the last good checkpoint, and two gloo processes match one (kill -9 and --resume: test_exact_resume.py).

The runs use tools/train_net.py on a two-image copy of the bundled hiera_shapes data with a tiny Hiera. The
configuration is chosen so that one process's losses equal two processes' up to summation order: no flip, one
resize size, and every anchor and proposal sampled (a huge BATCH_SIZE_PER_IMAGE), because two processes draw
their samples from two generators where one process draws from one.
"""

import pytest
import torch

pytest.importorskip("detectron2")

from train_net_runs import LOSS_KEYS, losses, shapes_with_one_annotation_each, short_schedule, train  # noqa: E402

MAX_ITER = 30
_OPTS = [
    "MODEL.DEVICE", "cpu",
    "MODEL.MASK_ON", "False",
    "MODEL.HIERA.STAGES", "[1,1,1,1]",
    "MODEL.HIERA.INPUT_SIZE", "[64,64]",
    "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "64",
    "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "100000",
    "MODEL.RPN.POST_NMS_TOPK_TRAIN", "32",
    "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "100000",
    "INPUT.MIN_SIZE_TRAIN", "(64,)",
    "INPUT.MAX_SIZE_TRAIN", "64",
    "INPUT.RANDOM_FLIP", "none",
    *short_schedule(MAX_ITER),
    "DATASETS.TEST", "()",
    "SEED", "0",
]  # fmt: skip


@pytest.fixture(scope="module")
def datasets_root(tmp_path_factory):
    """Two 64x64 training images with one annotation each, so that every image yields the same number of
    sampled proposals and a per-image mean (two processes) equals the pooled mean (one process)."""
    return shapes_with_one_annotation_each(tmp_path_factory.mktemp("datasets"), 2, 64, 64)


def _assert_losses_close(found, expected, rel):
    for key in LOSS_KEYS:
        assert found[key] == pytest.approx(expected[key], rel=rel, abs=1e-7), (key, found, expected)


@pytest.fixture(scope="module")
def uninterrupted(datasets_root, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("uninterrupted") / "out"
    train(datasets_root, output_dir, _OPTS)
    return output_dir


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(datasets_root, uninterrupted, tmp_path):
    output_dir = tmp_path / "out"
    train(datasets_root, output_dir, _OPTS, num_gpus=2, timeout=600)  # IMS_PER_BATCH 2 = one image per process
    for iteration in (19, MAX_ITER - 1):
        _assert_losses_close(losses(output_dir, iteration), losses(uninterrupted, iteration), rel=1e-4)


def test_non_finite_loss_stops_training_and_keeps_last_good_checkpoint(datasets_root, tmp_path):
    from detectron2.utils.events import get_event_storage

    import hiera_det.d2  # noqa: F401  (registers the backbones)
    from hiera_det.config import get_hiera_cfg, merge_config
    from hiera_det.data import catalog
    from hiera_det.engine import Trainer
    from hiera_det.engine.checkpointer import AtomicDetectionCheckpointer

    cfg = merge_config(get_hiera_cfg(), "shapes/hiera_tiny_shapes.yaml", _OPTS)
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    cfg.SOLVER.MAX_ITER, cfg.SOLVER.CHECKPOINT_PERIOD, cfg.SOLVER.STEPS = 10, 2, ()
    bad_iteration = 3
    torch.set_num_threads(1)  # as the subprocess runs (OMP_NUM_THREADS=1); the conftest fixture resets it
    catalog.register_builtin_datasets(datasets_root)
    try:
        trainer = Trainer(cfg)
        trainer.resume_or_load(resume=False)
        model, forward = trainer.model, trainer.model.forward

        def forward_with_injected_inf(batched_inputs):
            losses = forward(batched_inputs)
            if get_event_storage().iter == bad_iteration:
                losses["loss_box_reg"] = losses["loss_box_reg"] * float("inf")
            return losses

        model.forward = forward_with_injected_inf
        with pytest.raises(FloatingPointError) as info:
            trainer.train()
    finally:
        catalog.register_builtin_datasets()
    message = str(info.value)
    assert f"iteration={bad_iteration}" in message and "loss_box_reg" in message and "loss_cls" in message

    output_dir = tmp_path / "out"
    assert (output_dir / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not (output_dir / "model_final.pth").exists() and not (output_dir / "model_0000003.pth").exists()
    fresh = Trainer.build_model(cfg)
    extra = AtomicDetectionCheckpointer(fresh, cfg.OUTPUT_DIR).resume_or_load("", resume=True)
    assert extra["iteration"] == 1
    assert all(torch.isfinite(p).all() for p in fresh.state_dict().values())
