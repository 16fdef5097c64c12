"""Wrong checkpoints and wrong configs fail at load / config time, naming what was expected and what was
found."""

import pytest
import torch

from hiera_det.checkpoint import CheckpointError, load_checkpoint
from hiera_det.modeling import Hiera, build_hiera

_TINY = dict(num_heads=1, num_classes=0, input_size=(64, 64))


def _image(embed_dim=8, stages=(1, 1, 1, 1)):
    return Hiera(embed_dim=embed_dim, stages=stages, **_TINY)


def _video():
    return build_hiera("hiera_base_16x224", embed_dim=8, num_heads=1, stages=(1, 1, 1, 1), num_classes=0,
                       input_size=(4, 64, 64))


@pytest.mark.parametrize(
    "checkpoint_model, found, expected",
    [
        (lambda: _image(stages=(1, 1, 2, 1)), "stages (1, 1, 2, 1)", "stages (1, 1, 1, 1)"),  # other depth
        (lambda: _image(embed_dim=16), "embed_dim 16", "embed_dim 8"),  # other width
    ],
    ids=["depth", "width"],
)
def test_wrong_architecture_names_both(checkpoint_model, found, expected):
    model = _image()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(model, checkpoint_model().state_dict())
    message = str(info.value)
    assert "checkpoint is" in message and found in message and expected in message
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), f"a failed load must leave the model untouched ({key})"


def test_video_checkpoint_into_image_model_and_back():
    with pytest.raises(CheckpointError, match=r"video weights.*image"):
        load_checkpoint(_image(), _video().state_dict())
    with pytest.raises(CheckpointError, match=r"image weights.*video"):
        load_checkpoint(_video(), _image().state_dict())


def test_truncated_unknown_and_missing_checkpoint_files(tmp_path):
    model = _image()
    path = tmp_path / "trunk.pth"
    torch.save({"model_state": model.state_dict()}, path)
    data = path.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 3])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as info:
        load_checkpoint(model, tmp_path / "cut.pth")
    assert str(tmp_path / "cut.pth") in str(info.value)

    torch.save({"weights": {"encoder.layer.0": torch.zeros(3)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="expected one of") as info:
        load_checkpoint(model, tmp_path / "other.pth")
    assert str(tmp_path / "other.pth") in str(info.value)

    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(model, tmp_path / "absent.pth")

    report = load_checkpoint(model, path)  # and the intact file loads
    assert not report.missing_keys or set(report.missing_keys) <= set(report.ignored_missing_keys)


# ------------------------------------------------------------------------------------------------- configs

detectron2 = pytest.importorskip("detectron2")


def _cfg():
    from hiera_det.config import get_hiera_cfg

    return get_hiera_cfg()


@pytest.mark.parametrize(
    "key, value, choices",
    [
        ("MODEL.HIERA.NAME", "hiera_tiny", ["hiera_tiny_224", "hiera_base_plus_224"]),
        ("MODEL.HIERA.NAME", "hiera_bsae_16x224", ["hiera_base_16x224", "hiera_tiny_224", "video"]),
        ("MODEL.HIERA.ATTENTION", "windowed", ["mask_unit", "window"]),
        ("MODEL.HIERA.POS_EMBED", "sincos", ["absolute", "absolute_win"]),
        ("MODEL.HIERA.OUT_FEATURES", ["stage5"], ["stage1", "stage4"]),
        ("SOLVER.OPTIMIZER", "LAMB", ["ADAMW", "SGD"]),
    ],
)
def test_bad_config_values_list_valid_choices(key, value, choices):
    from hiera_det.config import merge_config, validate_hiera_config

    cfg = _cfg()
    merge_config(cfg, "", [key, str(value) if not isinstance(value, list) else str(value)])
    with pytest.raises(ValueError) as info:
        validate_hiera_config(cfg)
    message = str(info.value)
    assert key in message and all(c in message for c in choices), message


def test_unknown_config_key_fails_at_merge_with_suggestion():
    from hiera_det.config import merge_config

    with pytest.raises(KeyError) as info:
        merge_config(_cfg(), "", ["MODEL.HIERA.NAMEE", "hiera_tiny_224"])
    assert "MODEL.HIERA.NAMEE" in str(info.value) and "MODEL.HIERA.NAME" in str(info.value)


def test_unknown_key_in_config_file_names_the_file(tmp_path):
    from hiera_det.config import merge_config

    path = tmp_path / "bad.yaml"
    path.write_text("MODEL:\n  HIERA:\n    ATENTION: window\n")
    with pytest.raises(KeyError) as info:
        merge_config(_cfg(), str(path))
    assert str(path) in str(info.value) and "MODEL.HIERA.ATTENTION" in str(info.value)


def test_backbone_builder_validates_too():
    from detectron2.modeling import build_backbone

    import hiera_det.d2  # noqa: F401  (registers the backbone: the test must not depend on others' imports)

    cfg = _cfg()
    cfg.MODEL.BACKBONE.NAME = "build_hiera_fpn_backbone"
    cfg.MODEL.HIERA.ATTENTION = "global"
    with pytest.raises(ValueError, match="MODEL.HIERA.ATTENTION 'global'.*mask_unit"):
        build_backbone(cfg)
