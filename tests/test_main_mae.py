"""scripts/main.sh started from the official MAE Hiera-T weights (configs/shapes/hiera_tiny_shapes_mae.yaml),
with no internet: the weights name resolves through a local stand-in for the download host serving a
checkpoint written by hiera-transformer's MAE model, every trunk tensor loads, and training runs."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("detectron2")
pytest.importorskip("hiera")

from hiera_det.checkpoint import CheckpointError, load_checkpoint  # noqa: E402
from hiera_det.config import get_hiera_cfg, merge_config, validate_hiera_config  # noqa: E402
from hiera_det.engine.checkpointer import DETECTRON2_TRUNK_PREFIX  # noqa: E402
from hiera_det.modeling import build_hiera  # noqa: E402
from weights_server import start_weights_server  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
WEIGHTS = "hiera_tiny_224.mae_in1k"
SERVED_AT = "/hiera/mae_hiera_tiny_224.pth"


@pytest.fixture(scope="module")
def mae_checkpoint(tmp_path_factory) -> Path:
    """``mae_hiera_tiny_224.pth`` as hiera-transformer writes it, random weights. The encoder is the real
    Hiera-T; a one-block decoder (the published file has eight) keeps the file at 120 MB instead of 220 MB,
    and the detector drops the decoder either way."""
    import hiera

    mae = hiera.mae_hiera_tiny_224(pretrained=False, decoder_depth=1)
    path = tmp_path_factory.mktemp("mae") / "mae_hiera_tiny_224.pth"
    torch.save({"model_state": mae.state_dict()}, path)
    return path


def test_the_from_scratch_trunk_refuses_mae_weights_naming_the_keys(mae_checkpoint):
    cfg = get_hiera_cfg()
    merge_config(cfg, "shapes/hiera_tiny_shapes.yaml", ["MODEL.HIERA.WEIGHTS", WEIGHTS])
    fix = r"set MODEL\.HIERA\.STAGES \[\] MODEL\.HIERA\.EMBED_DIM 0 MODEL\.HIERA\.STEM patch to load it"
    with pytest.raises(ValueError, match=fix):
        validate_hiera_config(cfg)  # before any download
    cfg = get_hiera_cfg()
    merge_config(cfg, "shapes/hiera_tiny_shapes_mae.yaml", [])
    validate_hiera_config(cfg)
    trunk = cfg.MODEL.HIERA
    assert (trunk.WEIGHTS, trunk.STEM, list(trunk.STAGES), trunk.EMBED_DIM) == (WEIGHTS, "patch", [], 0)

    # a file (no name to check early) into the shorter trunk: the loader names the override to drop
    shorter = build_hiera("hiera_tiny_224", stages=(1, 1, 2, 1))
    fix = r"without stages / embed_dim / num_heads overrides \(in a config: MODEL\.HIERA\.STAGES \[\]"
    with pytest.raises(CheckpointError, match=fix):
        load_checkpoint(shorter, mae_checkpoint)


def test_main_sh_from_mae_weights_loads_every_trunk_tensor_and_trains(mae_checkpoint, tmp_path, monkeypatch):
    from hiera_det.data.datasets.shapes import generate_shapes_dataset

    server = start_weights_server(tmp_path / "cache", monkeypatch)
    server.files[SERVED_AT] = mae_checkpoint.read_bytes()
    datasets = tmp_path / "datasets"
    generate_shapes_dataset(datasets / "hiera_shapes", num_train=2, num_val=1, min_size=64, max_size=96)
    out = tmp_path / "run"
    env = dict(os.environ, CONFIG="shapes/hiera_tiny_shapes_mae.yaml", OUTPUT_DIR=str(out),
               DETECTRON2_DATASETS=str(datasets), HIERA_DET_PYTHON_BIN=sys.executable, OMP_NUM_THREADS="2")
    try:
        done = subprocess.run(["bash", str(REPO / "scripts" / "main.sh"), "SOLVER.MAX_ITER", "1",
                               "SOLVER.IMS_PER_BATCH", "2"],
                              env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    finally:
        server.stop()
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert server.gets[SERVED_AT] == 1

    # the load report: every trunk tensor the detector uses came from the checkpoint
    trunk = build_hiera("hiera_tiny_224", num_classes=0)  # the detector's trunk
    used = [k for k in trunk.state_dict() if not k.startswith("norm.")]  # norm feeds only a classifier
    lines = (out / "log.txt").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if f"Loaded MODEL.HIERA.WEIGHTS {WEIGHTS} into" in line)
    indented = itertools.takewhile(lambda line: line.startswith("  "), lines[start + 2:])
    report = "\n".join([lines[start + 1], *indented])
    assert f"{WEIGHTS} [" in report and f"into hiera_tiny_224: {len(used)} tensors loaded" in report, report
    assert "dropped" in report and "missing, left" not in report and "unexpected" not in report, report

    # the first training iteration ran, and the trained trunk is the checkpoint's, moved by one small step
    metrics = (out / "metrics.json").read_text().splitlines()
    trained = [json.loads(line) for line in metrics if "total_loss" in line]
    assert [r["iteration"] for r in trained] == [0] and math.isfinite(trained[0]["total_loss"])
    load_checkpoint(trunk, mae_checkpoint)
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    for key in used:
        torch.testing.assert_close(final[DETECTRON2_TRUNK_PREFIX + key], trunk.state_dict()[key],
                                   atol=1e-4, rtol=0, msg=key)  # fmt: skip
    assert f"iterations from {WEIGHTS}" in done.stdout and (out / "gallery.png").is_file()
