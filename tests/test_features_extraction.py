"""tools/extract_features.py and FeatureExtractor on tiny models: round trips, resume, clips, bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from hiera_det.features import FeatureExtractor, FeatureStore, NoInputsError, class_names, load_rows
from hiera_det.modeling import build_hiera

skimage_data = pytest.importorskip("skimage.data")
cv2 = pytest.importorskip("cv2")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))
import extract_features  # noqa: E402

IMAGE_BUILD = dict(stages=(1, 1, 1, 1), embed_dim=32, input_size=(64, 64))
VIDEO_BUILD = dict(stages=(1, 1, 1, 1), embed_dim=32, input_size=(4, 64, 64))
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera")


def _cli_build(build: dict) -> list[str]:
    return ["--build"] + [f"{k}={v!r}".replace(" ", "") for k, v in build.items()]


def _random_weights(path: Path, name: str, build: dict, seed: int) -> Path:
    """An official-format checkpoint of a tiny model with every parameter drawn at random."""
    model = build_hiera(name, **build)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    torch.save({"model_state": model.state_dict()}, path)
    return path


@pytest.fixture(scope="module")
def image_weights(tmp_path_factory):
    return _random_weights(tmp_path_factory.mktemp("weights") / "tiny_image.pth", "hiera_tiny_224", IMAGE_BUILD, 1)


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    (folder / "sub").mkdir()
    for name in PHOTOS:
        image = Image.fromarray(getattr(skimage_data, name)())
        image.thumbnail((160, 160))
        image.save(folder / "sub" / f"{name}.png" if name == "camera" else folder / f"{name}.jpg")
    (folder / "notes.txt").write_text("not an input: its extension is skipped")
    return folder


def _photo_names() -> list[str]:
    return sorted(f"{n}.png" if n == "camera" else f"{n}.jpg" for n in PHOTOS)


def _bad_images(folder: Path) -> dict[str, str]:
    (folder / "broken.jpg").write_text("<html>404 not found</html>")
    (folder / "empty.png").write_bytes(b"")
    return {"broken.jpg": "not an image file", "empty.png": "empty"}


def _run(*args) -> int:
    return extract_features.main([*map(str, args), "--num-workers", "0", "--no-progress"])


def _index(folder) -> list[dict]:
    return json.loads((Path(folder) / "index.json").read_text())["entries"]


def test_images_round_trip_with_failures_and_classification(tmp_path, photo_folder, image_weights, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "photos").symlink_to(photo_folder, target_is_directory=True)
    bad = _bad_images(inputs)
    out = tmp_path / "out"
    args = ["--model", "hiera_tiny_224", "--weights", image_weights, "--input", inputs, "--output", out,
            "--shard-rows", 2, "--batch-size", 3, "--pooled", "--classify", "--top-k", 3,
            *_cli_build(IMAGE_BUILD)]
    assert _run(*args) == 1  # some inputs were skipped; the others' rows are written
    printed = capsys.readouterr().out
    entries = _index(out)
    files = sorted(os.path.basename(e["file"]) for e in entries)
    assert files == _photo_names()
    assert len({(e["shard"], e["row"]) for e in entries}) == len(entries) == 5
    failures = json.loads((out / "failures.json").read_text())
    assert {os.path.basename(f["file"]): f["reason"] for f in failures}.keys() == bad.keys()
    for f in failures:
        assert bad[os.path.basename(f["file"])] in f["reason"] and f["file"] in printed

    # the stored rows are what the Python API gives for the same file
    extractor = FeatureExtractor("hiera_tiny_224", image_weights, pooled=True, top_k=3, device="cpu", **IMAGE_BUILD)
    entry = next(e for e in entries if e["file"].endswith("coffee.jpg"))
    direct = extractor(entry["file"])
    for key in ("stage1", "stage4", "pooled", "logits"):
        stored = load_rows(str(out), key, [entry])
        assert torch.allclose(stored, direct[key], atol=1e-5), key
    assert [p[0] for p in entry["top_k"]] == [p.index for p in direct["top_k"][0]]
    predictions = json.loads((out / "predictions.json").read_text())
    assert len(predictions) == 5 and all(len(v) == 3 for v in predictions.values())
    assert f"{direct['top_k'][0][0].name} (" in printed

    # a second run finds everything done; other settings into the same folder are refused
    assert _run(*args) == 1  # the unreadable inputs are tried, and named, again
    assert "0 rows written" in capsys.readouterr().out and len(_index(out)) == 5
    assert _run(*args[:-len(_cli_build(IMAGE_BUILD))], "--out-features", "stage4", *_cli_build(IMAGE_BUILD)) == 2
    assert "holds features of another run (out_features" in capsys.readouterr().err


def test_crash_between_shards_loses_at_most_the_current_shard(tmp_path, photo_folder, image_weights, monkeypatch):
    out = tmp_path / "out"
    args = ["--model", "hiera_tiny_224", "--weights", image_weights, "--input", photo_folder, "--output", out,
            "--shard-rows", 2, "--batch-size", 1, "--out-features", "stage4", *_cli_build(IMAGE_BUILD)]
    real_flush, calls = FeatureStore.flush, []

    def crash_on_second_shard(store):
        calls.append(len(store._pending_entries))
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated crash while writing shard 2")
        real_flush(store)

    monkeypatch.setattr(FeatureStore, "flush", crash_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        _run(*args)
    assert len(_index(out)) == 2  # shard 1 survived, shard 2's two rows are lost
    # leftovers of a crash mid-write: a temporary file and a shard renamed before its row list
    (out / "shard-00001.safetensors.tmp").write_bytes(b"partial")
    (out / "shard-00007.safetensors").write_bytes(b"orphan")
    monkeypatch.setattr(FeatureStore, "flush", real_flush)

    assert _run(*args) == 0
    entries = _index(out)
    assert sorted(os.path.basename(e["file"]) for e in entries) == _photo_names()
    assert not list(out.glob("*.tmp")) and not (out / "shard-00007.safetensors").exists()
    stored = load_rows(str(out), "stage4", entries)
    extractor = FeatureExtractor("hiera_tiny_224", image_weights, ["stage4"], device="cpu", **IMAGE_BUILD)
    direct = extractor([e["file"] for e in entries])["stage4"]
    assert torch.allclose(stored, direct, atol=1e-5)


@pytest.mark.slow  # two fresh interpreters: about 35 s on two cores
def test_killed_process_resumes(tmp_path, photo_folder, image_weights):
    many = tmp_path / "many"
    many.mkdir()
    for i in range(24):
        (many / f"{i:02d}.jpg").symlink_to(photo_folder / f"{PHOTOS[i % 4]}.jpg")
    out = tmp_path / "out"
    cmd = [sys.executable, str(ROOT / "tools" / "extract_features.py"), "--model", "hiera_tiny_224",
           "--weights", str(image_weights), "--input", str(many), "--output", str(out), "--shard-rows", "1",
           "--batch-size", "1", "--num-workers", "0", "--no-progress", "--out-features", "stage4",
           *_cli_build(IMAGE_BUILD), "--device", "cpu"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not list(out.glob("shard-00002.json")) and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    process.kill()
    process.wait()
    written_before = len(_index(out)) if (out / "index.json").exists() else 0
    assert 0 < written_before < 24, "the run was not interrupted mid-way; the test needs more inputs"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"{24 - written_before} rows written" in done.stdout
    entries = _index(out)
    assert sorted(os.path.basename(e["file"]) for e in entries) == [f"{i:02d}.jpg" for i in range(24)]


def _write_video(path: Path, num_frames: int, fps: float = 10.0, size=(80, 64)):
    """A camera pan over a photograph, ``num_frames`` frames of ``size`` (w, h)."""
    photo = skimage_data.astronaut()
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for t in range(num_frames):
        crop = photo[100 + 4 * t : 100 + 4 * t + 256, 80 + 6 * t : 80 + 6 * t + 320]
        writer.write(cv2.resize(crop, size)[:, :, ::-1].copy())
    writer.release()


@pytest.fixture(scope="module")
def video_weights(tmp_path_factory):
    path = tmp_path_factory.mktemp("weights") / "tiny_video.pth"
    return _random_weights(path, "hiera_base_16x224", VIDEO_BUILD, 2)


def test_video_clips_times_index_and_skips(tmp_path, video_weights, photo_folder, capsys):
    videos = tmp_path / "videos"
    videos.mkdir()
    _write_video(videos / "long.mp4", 24)
    _write_video(videos / "short.mp4", 5)
    (videos / "truncated.mp4").write_bytes((videos / "long.mp4").read_bytes()[:600])
    out = tmp_path / "out"
    args = ["--model", "hiera_base_16x224", "--weights", video_weights, "--input", videos,
            photo_folder / "coffee.jpg", "--output", out, "--num-frames", 4, "--sampling-rate", 2,
            "--clip-stride", 6, "--shard-rows", 4, "--classify", *_cli_build(VIDEO_BUILD)]
    assert _run(*args) == 1  # some inputs were skipped; the others' rows are written
    entries = _index(out)
    long = sorted((e for e in entries if e["file"].endswith("long.mp4")), key=lambda e: e["clip"])
    # 24 frames, clips of 4 frames 2 apart span 7 frames; starts 0, 6, 12 (18 would run past the end)
    assert [(e["start_frame"], e["end_frame"]) for e in long] == [(0, 6), (6, 12), (12, 18)]
    times = [t for e in long for t in (e["start_time"], e["end_time"])]
    assert times == pytest.approx([0.0, 0.7, 0.6, 1.3, 1.2, 1.9])  # 10 fps: the last frame ends 0.1 s later
    short = [e for e in entries if e["file"].endswith("short.mp4")]
    assert [(e["clip"], e["start_frame"], e["end_frame"]) for e in short] == [(0, 0, 4)]  # padded with frame 4
    failures = {os.path.basename(f["file"]): f["reason"] for f in json.loads((out / "failures.json").read_text())}
    assert set(failures) == {"truncated.mp4", "coffee.jpg"}
    assert "video model" in failures["coffee.jpg"] and "truncated.mp4" in capsys.readouterr().out

    extractor = FeatureExtractor("hiera_base_16x224", video_weights, top_k=5, num_frames=4, sampling_rate=2,
                                 device="cpu", **VIDEO_BUILD)
    clips, direct = extractor.extract_video(videos / "long.mp4", stride=6)
    assert [c.frame_indices for c in clips] == [(0, 2, 4, 6), (6, 8, 10, 12), (12, 14, 16, 18)]
    assert torch.allclose(load_rows(str(out), "stage4", long), direct["stage4"], atol=1e-5)
    assert direct["top_k"][0][0].name in class_names("kinetics-400")
    predictions = json.loads((out / "predictions.json").read_text())
    expected = direct["logits"].softmax(-1).mean(0).topk(5).indices.tolist()
    assert [p["index"] for p in predictions[str(videos / "long.mp4")]] == expected


def test_clip_arrays_and_frame_lists(video_weights):
    extractor = FeatureExtractor("hiera_base_16x224", video_weights, ["stage2"], pooled=True, num_frames=4,
                                 device="cpu", **VIDEO_BUILD)
    frames = np.stack([skimage_data.astronaut()[i * 8 : i * 8 + 200, :300] for i in range(4)])
    as_array = extractor(frames)
    as_list = extractor([list(frames)])
    assert as_array["stage2"].shape == (1, 64, 2, 8, 8) and as_array["pooled"].shape == (1, 256)
    assert torch.equal(as_array["stage2"], as_list["stage2"])
    with pytest.raises(ValueError, match="clips of 4 frames"):
        extractor(frames[:2])


def test_bf16_autocast_stays_close_to_fp32(image_weights):
    photos = [getattr(skimage_data, name)() for name in PHOTOS[:3]]
    fp32 = FeatureExtractor("hiera_tiny_224", image_weights, pooled=True, device="cpu", **IMAGE_BUILD)(photos)
    bf16 = FeatureExtractor("hiera_tiny_224", image_weights, pooled=True, device="cpu", bf16=True,
                            **IMAGE_BUILD)(photos)
    for key in ("stage1", "stage4", "pooled"):
        assert bf16[key].dtype == torch.bfloat16
        relative = (bf16[key].float() - fp32[key]).norm() / fp32[key].norm()
        assert relative < 0.05, (key, relative.item())


def test_bf16_weights_stay_close_to_fp32_and_the_cuda_only_options_say_so(image_weights):
    photos = [getattr(skimage_data, name)() for name in PHOTOS[:3]]
    fp32 = FeatureExtractor("hiera_tiny_224", image_weights, pooled=True, device="cpu", **IMAGE_BUILD)(photos)
    extractor = FeatureExtractor("hiera_tiny_224", image_weights, pooled=True, device="cpu", bf16_weights=True,
                                 **IMAGE_BUILD)  # fmt: skip
    assert next(extractor.trunk.parameters()).dtype == torch.bfloat16
    bf16 = extractor(photos)
    for key in ("stage1", "stage4", "pooled"):
        assert bf16[key].dtype == torch.bfloat16
        relative = (bf16[key].float() - fp32[key]).norm() / fp32[key].norm()
        assert relative < 0.05, (key, relative.item())
    with pytest.raises(ValueError, match="cuda_graphs replays CUDA graphs, but the device is cpu"):
        FeatureExtractor("hiera_tiny_224", image_weights, device="cpu", cuda_graphs=True, **IMAGE_BUILD)
    with pytest.raises(ValueError, match="two ways to run in bfloat16: choose one"):
        FeatureExtractor("hiera_tiny_224", image_weights, device="cpu", bf16=True, bf16_weights=True, **IMAGE_BUILD)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_graphs_give_the_compiled_features_and_keep_each_batch(image_weights):
    """Two batches through one graph (the second shorter, padded): each result stays as it was after the
    next call, and equals the plain extractor's within bf16 rounding."""
    photos = [getattr(skimage_data, name)() for name in PHOTOS[:3]]
    plain = FeatureExtractor("hiera_tiny_224", image_weights, pooled=True, device="cuda", bf16_weights=True,
                             **IMAGE_BUILD)  # fmt: skip
    graphed = FeatureExtractor("hiera_tiny_224", image_weights, pooled=True, device="cuda", bf16_weights=True,
                               cuda_graphs=True, **IMAGE_BUILD)  # fmt: skip
    first, second = graphed(photos), graphed(photos[:2])
    assert graphed._runner.num_graphs == 1
    for key in ("stage1", "stage4", "pooled"):
        expected = plain(photos)[key].float()
        torch.testing.assert_close(first[key].float(), expected, atol=5e-2, rtol=5e-2)
        torch.testing.assert_close(second[key].float(), expected[:2], atol=5e-2, rtol=5e-2)


def test_class_lists_are_in_head_order():
    imagenet, kinetics = class_names("imagenet-1k"), class_names("kinetics-400")
    assert len(imagenet) == 1000 and imagenet[0] == "tench" and imagenet[999] == "toilet tissue"
    assert len(kinetics) == 400 and list(kinetics) == sorted(kinetics) and kinetics[0] == "abseiling"


def test_bad_inputs_are_named(tmp_path, image_weights, video_weights, capsys):
    with pytest.raises(ValueError, match="unknown Hiera architecture 'hiera_tiny'.*hiera_tiny_224"):
        FeatureExtractor("hiera_tiny", device="cpu")
    with pytest.raises(SystemExit):
        extract_features.main(["--model", "hiera_tiny", "--weights", "w", "--input", "x", "--output", "o"])
    assert "invalid choice: 'hiera_tiny'" in capsys.readouterr().err

    from hiera_det.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="holds video weights"):
        FeatureExtractor("hiera_tiny_224", video_weights, device="cpu", **IMAGE_BUILD)
    with pytest.raises(CheckpointError, match="architecture mismatch"):
        FeatureExtractor("hiera_tiny_224", image_weights, device="cpu", stages=(1, 1, 2, 1), embed_dim=32)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NoInputsError, match="folder holds no images or videos"):
        from hiera_det.features import discover_inputs

        discover_inputs([str(empty), str(tmp_path / "missing"), str(tmp_path / "*.jpg")])
    code = _run("--model", "hiera_tiny_224", "--weights", image_weights, "--input", empty, "--output",
                tmp_path / "out", *_cli_build(IMAGE_BUILD))
    assert code == 2 and "no images or videos to extract features from" in capsys.readouterr().err

    extractor = FeatureExtractor("hiera_tiny_224", image_weights, device="cpu", **IMAGE_BUILD)
    with pytest.raises(ValueError, match="uint8 RGB pixels"):
        extractor(np.zeros((32, 32, 3), np.float32))
    with pytest.raises(OSError, match="Cannot read image .*does not exist"):
        extractor(str(tmp_path / "missing.jpg"))
    with pytest.raises(ValueError, match="needs a trained classification head"):
        headless = tmp_path / "headless.pth"
        state = {k: v for k, v in torch.load(image_weights, weights_only=True)["model_state"].items()
                 if not k.startswith("head.")}
        torch.save({"model_state": state}, headless)
        FeatureExtractor("hiera_tiny_224", headless, top_k=5, device="cpu", **IMAGE_BUILD)
