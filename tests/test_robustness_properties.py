"""Property-based checks over random sizes: position-embedding resizing, the image mapper, the clip mapper."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hiera_det.modeling import Hiera, build_hiera

torch.set_num_threads(1)

_SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_TINY = dict(embed_dim=8, num_heads=1, stages=(1, 1, 1, 1), num_classes=0)
_MODELS = {
    "image_absolute": lambda: Hiera(input_size=(64, 96), **_TINY),
    "image_window": lambda: Hiera(
        input_size=(64, 64), attention="window", window_spec=(4, 2, 2, 1), pos_embed_bkg_size=(5, 7), **_TINY
    ),
    "video_separate": lambda: build_hiera("hiera_base_16x224", input_size=(4, 64, 64), **_TINY),
}
_BUILT = {}


def _model(kind):
    if kind not in _BUILT:
        torch.manual_seed(0)
        model = _MODELS[kind]()
        with torch.no_grad():  # random, not zero, embeddings so that identity and resizing are visible
            for name, p in model.named_parameters():
                if name.startswith("pos_embed"):
                    p.normal_()
        _BUILT[kind] = model.eval()
    return _BUILT[kind]


def _stored(model):
    if model.pos_embed_mode == "absolute":
        return model.pos_embed.transpose(1, 2).reshape(1, -1, *model.token_grid)
    if model.pos_embed_mode == "separate":
        t, h, w = model.token_grid
        c = model.pos_embed_spatial.shape[-1]
        spatial = model.pos_embed_spatial.transpose(1, 2).reshape(1, c, 1, h, w)
        return spatial + model.pos_embed_temporal.transpose(1, 2).reshape(1, c, t, 1, 1)
    return None


@pytest.mark.parametrize("kind", ["image_absolute", "video_separate"])
def test_pos_embed_is_identity_at_stored_grid(kind):
    model = _model(kind)
    with torch.no_grad():
        torch.testing.assert_close(model.pos_embed_for(model.token_grid), _stored(model), rtol=0, atol=0)


def test_window_pos_embed_at_background_grid_is_background_plus_tiled_window():
    model = _model("image_window")
    bkg = tuple(model.pos_embed.shape[2:])
    window = model.pos_embed_window
    grid = tuple(w * 3 for w in window.shape[2:])
    with torch.no_grad():
        same = model.pos_embed_for(bkg)
        reps = [-(-b // w) for b, w in zip(bkg, window.shape[2:])]
        tiled = window.tile(1, 1, *reps)[..., : bkg[0], : bkg[1]]
        torch.testing.assert_close(same, model.pos_embed + tiled, rtol=1e-6, atol=1e-6)
        out = model.pos_embed_for(grid)
    # the window part repeats exactly with the window's period
    w0, w1 = window.shape[2:]
    background = out - window.tile(1, 1, 3, 3)
    resized = torch.nn.functional.interpolate(model.pos_embed, grid, mode="bicubic")
    torch.testing.assert_close(background, resized)
    assert out.shape == (1, model.pos_embed.shape[1], *grid) and w0 * 3 == grid[0] and w1 * 3 == grid[1]


@_SETTINGS
@given(h=st.integers(1, 40), w=st.integers(1, 40))
def test_image_pos_embed_any_grid(h, w):
    for kind in ("image_absolute", "image_window"):
        model = _model(kind)
        with torch.no_grad():
            pe = model.pos_embed_for((h, w))
        channels = model.pos_embed.shape[-1] if kind == "image_absolute" else model.pos_embed.shape[1]
        assert pe.shape == (1, channels, h, w)
        assert torch.isfinite(pe).all()


@_SETTINGS
@given(t=st.integers(1, 8), h=st.integers(1, 24), w=st.integers(1, 24))
def test_video_pos_embed_any_grid(t, h, w):
    model = _model("video_separate")
    with torch.no_grad():
        pe = model.pos_embed_for((t, h, w))
    assert pe.shape == (1, model.pos_embed_spatial.shape[-1], t, h, w)
    assert torch.isfinite(pe).all()
    if (h, w) == model.token_grid[1:]:  # only the temporal part was resized: spatial part unchanged
        spatial = _stored(model)[:, :, :1] - model.pos_embed_temporal.transpose(1, 2)[..., :1, None, None]
        temporal = pe - spatial
        assert torch.allclose(temporal, temporal[..., :1, :1].expand_as(temporal), atol=1e-5)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(h=st.integers(1, 4), w=st.integers(1, 4))
def test_forward_accepts_every_size_multiple(h, w):
    model = _model("image_absolute")
    sh, sw = model.size_multiple
    with torch.no_grad():
        out = model(torch.randn(1, 3, h * sh, w * sw))
    for stage, stride in zip(("stage1", "stage2", "stage3", "stage4"), model.stage_strides):
        assert out[stage].shape[2:] == (h * sh // stride, w * sw // stride)
    if h * sh > 1:
        with pytest.raises(ValueError):
            model(torch.randn(1, 3, h * sh - 1, w * sw))




# ------------------------------------------------------------------------------------ the image mapper

detectron2 = pytest.importorskip("detectron2")
_BACKBONES = {}


def _detection_setup(lsj):
    if lsj not in _BACKBONES:
        from detectron2.modeling import build_backbone

        from hiera_det.config import get_hiera_cfg
        from hiera_det.data.image_mapper import build_detection_train_mapper

        cfg = get_hiera_cfg()
        cfg.MODEL.BACKBONE.NAME = "build_hiera_fpn_backbone"
        cfg.MODEL.HIERA.NAME = "hiera_tiny_224"
        cfg.MODEL.HIERA.STAGES = [1, 1, 1, 1]
        cfg.MODEL.HIERA.INPUT_SIZE = [64, 64]
        cfg.MODEL.FPN.OUT_CHANNELS = 16
        cfg.INPUT.FORMAT = "RGB"
        cfg.INPUT.MIN_SIZE_TRAIN = (40, 72)
        cfg.INPUT.MAX_SIZE_TRAIN = 120
        cfg.INPUT.LSJ.ENABLED = lsj
        cfg.INPUT.LSJ.IMAGE_SIZE = 96
        _BACKBONES[lsj] = (build_detection_train_mapper(cfg), build_backbone(cfg).eval())
    return _BACKBONES[lsj]


_boxes = st.lists(
    st.tuples(st.floats(-0.3, 1.1), st.floats(-0.3, 1.1), st.floats(0.02, 0.8), st.floats(0.02, 0.8)),
    min_size=1,
    max_size=4,
)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(h=st.integers(8, 160), w=st.integers(8, 160), boxes=_boxes, lsj=st.booleans(), seed=st.integers(0, 99))
def test_image_mapper_any_size_and_aspect(tmp_path_factory, h, w, boxes, lsj, seed):
    from detectron2.structures import BoxMode, ImageList
    from PIL import Image

    from hiera_det.data.datasets.coco import sanitize_coco_dicts

    np.random.seed(seed)
    mapper, backbone = _detection_setup(lsj)
    path = tmp_path_factory.mktemp("img") / "x.png"
    Image.fromarray(np.random.randint(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    annotations = [
        {"bbox": [x * w, y * h, bw * w, bh * h], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0}
        for x, y, bw, bh in boxes
    ]
    record = {"file_name": str(path), "width": w, "height": h, "image_id": 0, "annotations": annotations}
    (record,) = sanitize_coco_dicts([record], "property")  # what registered datasets go through
    out = mapper(record)

    image = out["image"]
    assert image.dtype == torch.uint8 and image.shape[0] == 3
    instances = out["instances"]
    assert instances.image_size == tuple(image.shape[1:])
    H, W = instances.image_size
    b = instances.gt_boxes.tensor
    assert ((b[:, 0] >= 0) & (b[:, 1] >= 0) & (b[:, 2] <= W) & (b[:, 3] <= H) & (b[:, 2] > b[:, 0])).all()
    if lsj:
        assert max(H, W) <= 96

    padded = ImageList.from_tensors([image.float()], padding_constraints=backbone.padding_constraints)
    ph, pw = padded.tensor.shape[-2:]
    assert ph % 32 == 0 and pw % 32 == 0 and ph >= H and pw >= W
    with torch.no_grad():
        features = backbone(padded.tensor)
    assert features["p2"].shape[-2:] == (ph // 4, pw // 4)


# ------------------------------------------------------------------------------------- the clip mapper


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    h=st.integers(8, 96),
    w=st.integers(8, 96),
    length=st.integers(1, 6),
    keyframe=st.integers(0, 5),
    box=st.tuples(st.floats(0, 0.7), st.floats(0, 0.7), st.floats(0.1, 0.5), st.floats(0.1, 0.5)),
)
def test_clip_mapper_any_size_and_length(tmp_path_factory, h, w, length, keyframe, box):
    import detectron2.data.transforms as T
    from detectron2.structures import BoxMode
    from PIL import Image

    from hiera_det.data.video_mapper import KeyframeClipMapper

    keyframe = min(keyframe, length - 1)
    folder = tmp_path_factory.mktemp("frames")
    for i in range(length):
        Image.fromarray(np.full((h, w, 3), 30 * i, np.uint8)).save(folder / f"{i:05d}.png")
    mapper = KeyframeClipMapper(
        is_train=True,
        augmentations=[T.ResizeShortestEdge((32, 64), max_size=96), T.RandomFlip()],
        num_frames=4,
        sampling_rate=2,
    )
    x, y, bw, bh = box
    annotation = {"bbox": [x * w, y * h, bw * w, bh * h], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0}
    record = {
        "frame_dir": str(folder),
        "frame_index": keyframe,
        "height": h,
        "width": w,
        "annotations": [annotation],
    }
    out = mapper(record)
    clip = out["image"]
    assert clip.shape[:2] == (3, 4) and clip.dtype == torch.uint8
    assert out["instances"].image_size == tuple(clip.shape[2:])
    H, W = out["instances"].image_size
    b = out["instances"].gt_boxes.tensor
    assert ((b[:, 0] >= 0) & (b[:, 1] >= 0) & (b[:, 2] <= W) & (b[:, 3] <= H)).all()
    # frames 2 apart around the keyframe, clamped at the ends (edge padding)
    expected = np.clip(keyframe + 2 * (np.arange(4) - 2), 0, length - 1)
    assert out["frame_indices"].tolist() == expected.tolist()
    means = clip[0].float().mean(dim=(1, 2))
    assert torch.allclose(means, torch.tensor(30.0 * expected, dtype=torch.float32), atol=1.0)
