"""Bad and unusual video files: handled (edge padding, true timestamps), or ``VideoReadError`` naming the
file; and a training loader with DataLoader workers that skips unreadable videos without hanging."""

import fractions
import logging
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

av = pytest.importorskip("av")
pytest.importorskip("decord")
pytest.importorskip("detectron2")

from hiera_det.data.video_io import VideoClipReader, VideoReadError, open_video  # noqa: E402
from hiera_det.data.video_transforms import clip_indices  # noqa: E402

_SIZE = (48, 64)  # H, W; multiples of 16 keep libx264 from padding


def _write_mp4(path, pts_ms, size=_SIZE):
    """H.264 mp4 whose frame ``i`` is flat grey ``10 * i mod 250``, shown at ``pts_ms[i]`` milliseconds."""
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=30)
    stream.width, stream.height, stream.pix_fmt = size[1], size[0], "yuv420p"
    stream.time_base = stream.codec_context.time_base = fractions.Fraction(1, 1000)
    for i, pts in enumerate(pts_ms):
        frame = av.VideoFrame.from_ndarray(np.full((*size, 3), (10 * i) % 250, np.uint8), format="rgb24")
        frame.pts, frame.time_base = pts, fractions.Fraction(1, 1000)
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    if not pts_ms:
        container.start_encoding()  # header and trailer only: a valid container without a single frame
    container.close()
    return str(path)


def _cfr(path, n):
    return _write_mp4(path, [round(i * 1000 / 30) for i in range(n)])


def _assert_names(error, path):
    assert error.path == str(path) and str(path) in str(error)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(VideoReadError, match="does not exist") as info:
        VideoClipReader(str(tmp_path / "none.mp4"))
    _assert_names(info.value, tmp_path / "none.mp4")
    (tmp_path / "zero.mp4").write_bytes(b"")
    with pytest.raises(VideoReadError, match="empty") as info:
        VideoClipReader(str(tmp_path / "zero.mp4"))
    _assert_names(info.value, tmp_path / "zero.mp4")


def test_not_a_video(tmp_path):
    path = tmp_path / "page.mp4"
    path.write_bytes(b"<html>403 Forbidden</html>" * 20)
    with pytest.raises(VideoReadError) as info:
        VideoClipReader(str(path))
    _assert_names(info.value, path)


@pytest.mark.parametrize("keep", [0.1, 0.5])
def test_truncated_mp4(tmp_path, keep):
    data = open(_cfr(tmp_path / "full.mp4", 30), "rb").read()
    path = tmp_path / "cut.mp4"
    path.write_bytes(data[: int(len(data) * keep)])
    # Either the container cannot be opened, or frames past the cut fail: never garbage or a crash.
    with pytest.raises(VideoReadError) as info:
        with VideoClipReader(str(path)) as reader:
            reader.get_frames(np.arange(reader.num_frames))
    _assert_names(info.value, path)


def test_zero_frame_video(tmp_path):
    path = _write_mp4(tmp_path / "empty.mp4", [])
    with pytest.raises(VideoReadError) as info:
        VideoClipReader(path)
    _assert_names(info.value, path)


def test_video_shorter_than_clip_is_edge_padded(tmp_path):
    path = _cfr(tmp_path / "short.mp4", 3)
    with open_video(path) as reader:
        clip = reader.get_frames(clip_indices(0, num_frames=8, sampling_rate=2, video_length=reader.num_frames))
    assert clip.shape == (8, *_SIZE, 3) and clip.dtype == np.uint8
    grey = clip[..., 0].mean(axis=(1, 2))
    # frames 0, 2, then the last frame (2) repeated
    np.testing.assert_allclose(grey, [0, 20, 20, 20, 20, 20, 20, 20], atol=3)


def test_variable_frame_rate_timestamps(tmp_path):
    pts_ms = [0, 33, 66, 200, 210, 500, 1000, 1033]
    path = _write_mp4(tmp_path / "vfr.mp4", pts_ms)
    with open_video(path) as reader:
        assert reader.num_frames == len(pts_ms)
        np.testing.assert_allclose(reader.timestamps(), np.array(pts_ms) / 1000, atol=1e-3)
        assert 0 < reader.fps < 30  # the average rate, not the nominal 30
        frames = reader.get_frames(np.arange(len(pts_ms)))
    np.testing.assert_allclose(frames[..., 0].mean(axis=(1, 2)), 10 * np.arange(len(pts_ms)), atol=3)


# ------------------------------------------------------------------------------------------- training loader


def _classification_loader(dicts, num_workers):
    from detectron2.data import build_detection_train_loader

    from hiera_det.data.video_mapper import VideoClassificationMapper

    mapper = VideoClassificationMapper(
        is_train=True, num_frames=4, sampling_rate=1, train_crop_size=32, jitter_scales=(32, 40)
    )
    loader = build_detection_train_loader(
        dataset=dicts, mapper=mapper, total_batch_size=2, aspect_ratio_grouping=False, num_workers=num_workers
    )
    return loader, mapper


def _take(loader, n, timeout):
    """First ``n`` batches, failing (instead of hanging the suite) if they take longer than ``timeout``."""
    result, error = [], []

    def run():
        try:
            for batch in loader:
                result.append(batch)
                if len(result) == n:
                    return
        except BaseException as e:  # noqa: BLE001 - handed to the test thread
            error.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"the training loader produced {len(result)} of {n} batches in {timeout}s: it hangs")
    if error:
        raise error[0]
    return result


def test_training_loader_skips_unreadable_videos_with_workers(tmp_path, caplog):
    good = [_cfr(tmp_path / f"good{i}.mp4", 6) for i in range(2)]
    (tmp_path / "empty.mp4").write_bytes(b"")
    cut = open(good[0], "rb").read()
    (tmp_path / "cut.mp4").write_bytes(cut[: len(cut) // 10])
    bad = [str(tmp_path / "missing.mp4"), str(tmp_path / "empty.mp4"), str(tmp_path / "cut.mp4")]
    dicts = [{"file_name": p, "label": i % 2, "video_id": f"v{i}"} for i, p in enumerate(good + bad)]

    loader, mapper = _classification_loader(dicts, num_workers=2)
    with caplog.at_level(logging.WARNING):
        batches = _take(loader, 6, timeout=120)
    files = {d["file_name"] for batch in batches for d in batch}
    assert files <= set(good) and all(d["clip"].shape == (3, 4, 32, 32) for b in batches for d in b)
    assert mapper.num_skipped > 0, "skips made in worker processes must be counted"


def test_training_loader_with_only_unreadable_videos_fails_instead_of_hanging(tmp_path, caplog):
    paths = [str(tmp_path / f"missing{i}.mp4") for i in range(3)]
    dicts = [{"file_name": p, "label": 0, "video_id": str(i)} for i, p in enumerate(paths)]
    loader, mapper = _classification_loader(dicts, num_workers=0)
    # Detectron2's MapDataset retries other indices and, once every index has failed, stops with its own
    # ValueError; what matters here is that it stops, and that the log names every unreadable file.
    with caplog.at_level(logging.WARNING, logger="hiera_det.data.video_mapper"):
        with pytest.raises(ValueError):
            _take(loader, 1, timeout=60)
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert all(d["file_name"] in logged for d in dicts) and mapper.num_skipped == 3


def test_png_frames_still_decode_after_the_video_reader_loads_decord(tmp_path):
    # A fresh process, so that nothing has loaded OpenCV yet: decord's bundled libpng must not win
    pytest.importorskip("decord")
    script = (
        "import sys, numpy as np\n"
        "from hiera_det.data import video_io\n"
        "video_io._decord()\n"
        "import cv2\n"
        f"path = {str(tmp_path / 'f.png')!r}\n"
        "assert cv2.imwrite(path, np.full((45, 61), 40, np.uint8))\n"
        "image = cv2.imread(path, cv2.IMREAD_COLOR)\n"
        "sys.exit(0 if image is not None and image.shape == (45, 61, 3) else 3)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
