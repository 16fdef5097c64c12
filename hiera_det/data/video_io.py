"""Reading video frames: decord for video files, image files for frame folders.

Every failure to read (missing file, a container FFmpeg cannot parse, a truncated file, a video without
frames, a frame that does not decode) becomes a ``VideoReadError`` that names the path, what went wrong and
what to do about it. Readers are cheap to open and hold no global state, so open one per clip inside
DataLoader workers; never share one across processes.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

_REENCODE_HINT = (
    "re-encode it (e.g. `ffmpeg -i in.mp4 -c:v libx264 -pix_fmt yuv420p out.mp4`) "
    "or remove it from the dataset list"
)


class VideoReadError(RuntimeError):
    """A video (or frame folder) could not be read. The message names the path, the problem and the fix."""

    def __init__(self, path: str, problem: str, fix: str = _REENCODE_HINT):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"cannot read video {self.path!r}: {problem}; {fix}")


def _decord():
    # decord's wheel carries its own libpng/zlib: loaded before OpenCV's, they break cv2's PNG decoding in the
    # whole process ("libpng error: bad parameters to zlib", cv2.imread returns None), so OpenCV goes first
    import cv2  # noqa: F401

    try:
        import decord
    except ImportError as e:  # the 'video' extra
        raise ImportError("reading video files needs decord: `pip install decord`") from e
    return decord


class VideoClipReader:
    """Random access to the frames of one video file, decoded by decord on the CPU.

    Frames come out as uint8 RGB arrays ``[T, H, W, 3]``; grayscale or paletted sources are converted to
    three channels. Opening parses the container only; ``num_frames`` is what the container reports, and
    frames that do not decode (e.g. after a truncation point) raise ``VideoReadError`` when requested. A file
    cut short opens only if its index came before the cut (an mp4 written with its ``moov`` box first, or a
    stream format such as .ts / .mkv); otherwise opening raises ``VideoReadError``, and even the frames before
    the cut are out of reach until the file is re-encoded or downloaded again.
    """

    def __init__(self, path: str, num_threads: int = 1):
        self.path = os.fspath(path)
        if not os.path.isfile(self.path):
            what = "it is a directory" if os.path.isdir(self.path) else "the file does not exist"
            raise VideoReadError(
                self.path, what, "check the dataset root ($DETECTRON2_DATASETS) and the path in the list"
            )
        if os.path.getsize(self.path) == 0:
            raise VideoReadError(self.path, "the file is empty (0 bytes)", "re-download or re-create it")
        decord = _decord()
        try:
            self._reader = decord.VideoReader(self.path, ctx=decord.cpu(0), num_threads=num_threads)
        except Exception as e:  # decord raises DECORDError / RuntimeError with FFmpeg's message
            if "cannot find video stream" in str(e):
                problem = "FFmpeg finds no video stream in it: it is truncated or corrupt, holds no frames, or is audio only"
            else:
                problem = (
                    f"FFmpeg cannot open the container ({_first_line(e)}): corrupt, truncated or not a video"
                )
            raise VideoReadError(self.path, problem) from e
        self.num_frames = len(self._reader)
        if self.num_frames == 0:
            raise VideoReadError(self.path, "the video has zero frames")
        self.fps = self._average_fps()
        self._size: tuple[int, int] | None = None

    @property
    def size(self) -> tuple[int, int]:
        """``(height, width)`` of the decoded frames (decodes the first frame if none was read yet)."""
        if self._size is None:
            self.get_frames([0])
        return self._size

    def _average_fps(self) -> float:
        fps = float(self._reader.get_avg_fps())
        if np.isfinite(fps) and fps > 0:
            return fps
        # Some containers carry no rate; fall back to the frame timestamps.
        stamps = self.timestamps()
        duration = stamps[-1] - stamps[0]
        return float((len(stamps) - 1) / duration) if duration > 0 else 0.0

    def timestamps(self) -> np.ndarray:
        """Presentation time in seconds of every frame, ``float64 [num_frames]`` (correct for variable fps)."""
        try:
            return np.asarray(self._reader.get_frame_timestamp(np.arange(self.num_frames)), np.float64)[:, 0]
        except Exception as e:
            raise VideoReadError(self.path, f"cannot read frame timestamps ({_first_line(e)})") from e

    def get_frames(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Decode the frames at ``indices`` (repeats allowed, any order) as uint8 RGB ``[T, H, W, 3]``."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size == 0:
            raise ValueError("get_frames needs at least one frame index")
        bad = indices[(indices < 0) | (indices >= self.num_frames)]
        if bad.size:
            raise IndexError(
                f"frame indices {bad[:5].tolist()} are outside [0, {self.num_frames}) for video {self.path!r}; "
                "clamp clip indices with hiera_det.data.video_transforms.clip_indices"
            )
        try:
            frames = self._reader.get_batch(indices.tolist()).asnumpy()
        except Exception as e:
            raise VideoReadError(
                self.path,
                f"decoding frames {_describe(indices)} failed ({_first_line(e)}); "
                f"the container reports {self.num_frames} frames, so the file is probably truncated or corrupt",
            ) from e
        frames = _to_rgb(frames, self.path)
        self._size = (int(frames.shape[1]), int(frames.shape[2]))
        return frames

    def iter_chunks(self, stride: int = 1, chunk: int = 32) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Stream every ``stride``-th frame in chunks of at most ``chunk`` frames: yields ``(indices, frames)``.

        Memory stays bounded by one chunk, whatever the length of the video.
        """
        if stride < 1 or chunk < 1:
            raise ValueError(
                f"iter_chunks needs stride >= 1 and chunk >= 1, got stride={stride}, chunk={chunk}"
            )
        wanted = np.arange(0, self.num_frames, stride)
        for begin in range(0, len(wanted), chunk):
            indices = wanted[begin : begin + chunk]
            yield indices, self.get_frames(indices)

    def close(self) -> None:
        self._reader = None

    def __enter__(self) -> VideoClipReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        h, w = self.size
        return (
            f"VideoClipReader({self.path!r}, num_frames={self.num_frames}, fps={self.fps:.3f}, size={h}x{w})"
        )


class FrameFolderReader:
    """The same interface over a folder of extracted frames (AVA-style ``frame_dir``), frames in name order.

    There is no container clock, so ``fps`` is what the caller states and ``timestamps()`` is
    ``index / fps``.
    """

    def __init__(self, path: str, fps: float = 30.0):
        self.path = os.fspath(path)
        if not os.path.isdir(self.path):
            raise VideoReadError(
                self.path, "the frame folder does not exist", "check `frame_dir` and the dataset root"
            )
        self._files = sorted(f for f in os.listdir(self.path) if f.lower().endswith(IMAGE_EXTENSIONS))
        self.num_frames = len(self._files)
        if self.num_frames == 0:
            raise VideoReadError(
                self.path,
                f"the frame folder holds no images ({', '.join(IMAGE_EXTENSIONS)})",
                "extract the frames first, e.g. `ffmpeg -i video.mp4 frame_dir/%06d.jpg`",
            )
        self.fps = float(fps)
        first = self.get_frames([0])
        self.size = (int(first.shape[1]), int(first.shape[2]))

    def timestamps(self) -> np.ndarray:
        return np.arange(self.num_frames, dtype=np.float64) / self.fps

    def get_frames(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        import cv2

        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        bad = indices[(indices < 0) | (indices >= self.num_frames)]
        if indices.size == 0 or bad.size:
            raise IndexError(
                f"frame indices {bad[:5].tolist()} are outside [0, {self.num_frames}) for {self.path!r}"
            )
        frames, cache = [], {}
        for index in indices.tolist():
            if index not in cache:
                file = os.path.join(self.path, self._files[index])
                image = cv2.imread(file, cv2.IMREAD_COLOR)  # grayscale files come back as 3 channels
                if image is None:
                    raise VideoReadError(
                        file, "the frame image is unreadable or corrupt", "re-extract the frames"
                    )
                cache[index] = image[:, :, ::-1]
            frames.append(cache[index])
        shapes = {f.shape for f in frames}
        if len(shapes) > 1:
            raise VideoReadError(
                self.path, f"frames have different sizes {sorted(shapes)}", "re-extract the frames"
            )
        return np.ascontiguousarray(np.stack(frames))

    def iter_chunks(self, stride: int = 1, chunk: int = 32) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        wanted = np.arange(0, self.num_frames, stride)
        for begin in range(0, len(wanted), chunk):
            indices = wanted[begin : begin + chunk]
            yield indices, self.get_frames(indices)

    def close(self) -> None:
        pass

    def __enter__(self) -> FrameFolderReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_video(path: str, num_threads: int = 1) -> VideoClipReader | FrameFolderReader:
    """Open a video file (decord) or, when ``path`` is a directory, a folder of frames."""
    if os.path.isdir(path):
        return FrameFolderReader(path)
    return VideoClipReader(path, num_threads=num_threads)


def _to_rgb(frames: np.ndarray, path: str) -> np.ndarray:
    if frames.ndim == 3:  # [T, H, W] grayscale
        frames = frames[..., None]
    if frames.shape[-1] == 1:
        frames = np.repeat(frames, 3, axis=-1)
    elif frames.shape[-1] == 4:
        frames = frames[..., :3]
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise VideoReadError(path, f"decoded frames have an unexpected shape {frames.shape}")
    return np.ascontiguousarray(frames, dtype=np.uint8)


def _first_line(error: Exception) -> str:
    text = str(error).strip().splitlines()
    if not text:
        return type(error).__name__
    # decord prefixes its messages with "[hh:mm:ss] /src/file.cc:123: "; keep only FFmpeg's part.
    return re.sub(r"^(\[[0-9:]+\] \S+:\d+: )+", "", text[0])[:300]


def _describe(indices: np.ndarray) -> str:
    if indices.size <= 6:
        return str(indices.tolist())
    return f"{indices.min()}..{indices.max()} ({indices.size} frames)"
