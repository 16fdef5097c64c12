"""MAE pre-training through Detectron2: HieraMAE training, unlabeled data specs, bad inputs, and MAE weights
going into the detector and the video classifier."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import hiera_det.d2  # noqa: F401
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from hiera_det.checkpoint import load_checkpoint
from hiera_det.config import merge_config, get_hiera_cfg, resolve_config_file
from hiera_det.data.custom import DatasetSpec, DatasetSpecError, check_datasets
from hiera_det.data.unlabeled import MAEInputMapper, UnlabeledDataError, load_image_folder

MAE_REASON = "MAE decoder, mask token, fusion heads and encoder_norm"


def _cfg(name: str, *opts):
    return merge_config(get_hiera_cfg(), resolve_config_file(name), list(opts))


def _images(folder, n=6):
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        image = np.full((72, 80, 3), 40, np.uint8)
        x, y = rng.integers(0, 40, 2)
        image[y:y + 24, x:x + 24] = rng.integers(100, 255, 3)  # a square on a flat background
        Image.fromarray(image).save(folder / f"{i}.png")
    return folder


def test_cpu_iterations_lower_the_loss(tmp_path):
    cfg = _cfg("mae/shapes_tiny_mae.yaml")
    torch.manual_seed(0)
    model = build_model(cfg)
    mapper = MAEInputMapper(cfg, is_train=False)
    batch = [mapper(d) for d in load_image_folder(str(_images(tmp_path / "images")))]
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    losses = []
    with EventStorage(0) as storage:
        for _ in range(12):
            torch.manual_seed(1)  # the same masks every step: the loss then measures fitting, not mask luck
            loss = model(batch)["loss_mae"]
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            storage.iter += 1
        # VIS_PERIOD 100 of the config: one picture, at iteration 0
        assert [(name, tuple(image.shape)) for name, image, _ in storage._vis_data] == [
            ("mae: masked | reconstruction | original", (3, 64, 192))]
    assert losses[-1] < 0.8 * losses[0], losses
    model.eval()
    pictures = model(batch[:2])
    assert pictures[0]["pictures"].shape == (3, 64, 192)


def test_unlabeled_specs_and_bad_inputs(tmp_path):
    images = _images(tmp_path / "images")
    spec = DatasetSpec.parse(f"mine=images:{images}")
    assert spec.kind == "unlabeled_images"
    spec.register()
    assert DatasetSpec.parse(f"clips=videos:{tmp_path}/list.txt").kind == "unlabeled_videos"

    (tmp_path / "empty").mkdir()
    with pytest.raises(UnlabeledDataError, match="holds no images"):
        load_image_folder(str(tmp_path / "empty"))
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    (images / "empty.png").write_bytes(b"")
    cfg = _cfg("mae/shapes_tiny_mae.yaml")
    cfg.defrost()
    cfg.DATASETS.CUSTOM = [f"mine=images:{images}", f"none=images:{tmp_path / 'empty'}",
                           f"clips=videos:{tmp_path / 'missing.txt'}"]
    cfg.DATASETS.TRAIN = ("mine", "none", "clips")
    with pytest.raises(DatasetSpecError) as error:
        check_datasets(cfg)
    message = str(error.value)
    assert "broken.jpg" in message and "empty.png" in message  # every unreadable file named
    assert "holds no images" in message and "missing.txt does not exist" in message

    for ratio in ("0.0", "1.0", "1.5"):
        with pytest.raises(ValueError, match="mask_ratio must be strictly between 0 and 1"):
            build_model(_cfg("mae/shapes_tiny_mae.yaml", "MODEL.MAE.MASK_RATIO", ratio))


def test_mae_weights_go_into_detector_and_video_classifier(tmp_path):
    tiny = ["MODEL.HIERA.STAGES", "[1, 1, 1, 1]", "MODEL.HIERA.EMBED_DIM", "32", "MODEL.HIERA.NUM_HEADS", "1"]
    image_mae = build_model(_cfg("mae/shapes_tiny_mae.yaml"))
    path = tmp_path / "image_mae.pth"
    torch.save({"model": image_mae.state_dict(), "iteration": 5}, path)  # as the Trainer writes it
    # the shapes detector's conv stem has no MAE counterpart: MAE weights go into a patch-stem trunk
    detector = build_model(_cfg("shapes/hiera_tiny_shapes.yaml", *tiny, "MODEL.HIERA.STEM", "patch",
                                "MODEL.DEVICE", "cpu"))
    report = load_checkpoint(detector.backbone.bottom_up, str(path), strict=True)
    assert "decoder_pred.weight" in report.dropped[MAE_REASON]
    torch.testing.assert_close(detector.backbone.bottom_up.trunk.blocks[0].attn.qkv.weight,
                               image_mae.mae.blocks[0].attn.qkv.weight)

    video_mae = build_model(_cfg("mae/moving_shapes_tiny_mae.yaml"))
    path = tmp_path / "video_mae.pth"
    torch.save({"model": video_mae.state_dict()}, path)
    classifier = build_model(_cfg("video/moving_shapes_cls.yaml"))
    report = load_checkpoint(classifier, str(path))
    assert "mask_token" in report.dropped[MAE_REASON] and not report.unexpected_keys
    torch.testing.assert_close(classifier.trunk.pos_embed_temporal, video_mae.mae.pos_embed_temporal)


def test_windowed_mae_weights_go_into_windowed_detector(tmp_path):
    window = ["MODEL.HIERA.ATTENTION", "window", "MODEL.HIERA.POS_EMBED", "absolute_win",
              "MODEL.HIERA.WINDOW_SPEC", "[8, 4, 4, 2]", "MODEL.HIERA.GLOBAL_BLOCKS", "[3]"]
    tiny = ["MODEL.HIERA.STAGES", "[1, 1, 1, 1]", "MODEL.HIERA.EMBED_DIM", "32", "MODEL.HIERA.NUM_HEADS", "1"]
    mae = build_model(_cfg("mae/shapes_tiny_window_mae.yaml"))
    assert mae.mae.windowed
    path = tmp_path / "window_mae.pth"
    torch.save({"model": mae.state_dict(), "iteration": 5}, path)
    detector = build_model(_cfg("shapes/hiera_tiny_shapes.yaml", *tiny, *window, "MODEL.HIERA.STEM", "patch",
                                "MODEL.DEVICE", "cpu"))
    report = load_checkpoint(detector.backbone.bottom_up, str(path), strict=True)
    dropped = report.dropped[MAE_REASON]
    assert "encoder_mask_token" in dropped and "decoder_pred.weight" in dropped and "MAE decoder" in str(report)
    trunk = detector.backbone.bottom_up.trunk
    torch.testing.assert_close(trunk.pos_embed_window, mae.mae.pos_embed_window)
    torch.testing.assert_close(trunk.blocks[3].attn.qkv.weight, mae.mae.blocks[3].attn.qkv.weight)


def test_a_pretraining_video_list_names_missing_and_empty_videos_before_training(tmp_path):
    from hiera_det.data.unlabeled import check_unlabeled

    (tmp_path / "ok.mp4").write_bytes(b"some bytes")
    (tmp_path / "empty.mp4").write_bytes(b"")
    (tmp_path / "list.txt").write_text("ok.mp4\nempty.mp4\ngone.mp4\n")
    problems = check_unlabeled("videos", str(tmp_path / "list.txt"), "clips")
    assert problems == [f"clips: video {tmp_path / 'empty.mp4'} is empty (0 bytes)",
                        f"clips: video {tmp_path / 'gone.mp4'} does not exist"]
