"""Finding the inputs of an extraction run and cutting videos into clips.

``discover_inputs`` expands folders (recursively), globs and files into a sorted list of image and video
files and names every argument that yields nothing. ``plan_video_clips`` cuts a video into clips of
``num_frames`` frames ``sampling_rate`` apart (PySlowFast's NUM_FRAMES x SAMPLING_RATE), one every
``stride`` frames, and records where each lies in the video, in frames and seconds.
"""

from __future__ import annotations

import glob
import os
from dataclasses import asdict, dataclass

import numpy as np

from .extractor import VIDEO_EXTENSIONS, is_video_path
from .preprocessing import InputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


@dataclass(frozen=True)
class Failure:
    """An input (or one clip of it) that was skipped, and why."""

    file: str
    reason: str
    clip: int | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class ClipSpec:
    """Clip ``index`` of a video: the source frames it samples and the time it spans.

    ``start_time`` is the presentation time of its first frame and ``end_time`` that of its last frame plus
    one frame duration, both in seconds; ``start_frame`` / ``end_frame`` are the first and last sampled
    frame indices (frames past the end of a short video repeat the last one).
    """

    index: int
    frame_indices: tuple[int, ...]
    start_time: float
    end_time: float

    @property
    def start_frame(self) -> int:
        return self.frame_indices[0]

    @property
    def end_frame(self) -> int:
        return self.frame_indices[-1]


class NoInputsError(InputError):
    """Nothing to extract: every input argument was empty, missing or matched no file."""


def _media_files(folder: str) -> list[str]:
    found = []
    for dirpath, dirnames, files in os.walk(folder, followlinks=True):
        dirnames.sort()
        for name in sorted(files):
            if name.lower().endswith(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS):
                found.append(os.path.join(dirpath, name))
    return found


def discover_inputs(specs: list[str]) -> tuple[list[str], list[Failure]]:
    """Folders, globs and files -> (absolute paths in a stable order, one ``Failure`` per argument that
    yields no file). Raises ``NoInputsError`` when nothing at all is found."""
    files, failures, seen = [], [], set()
    for spec in specs:
        if os.path.isdir(spec):
            found = _media_files(spec)
            if not found:
                exts = " ".join(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)
                failures.append(Failure(spec, f"the folder holds no images or videos ({exts})"))
        elif os.path.isfile(spec):
            found = [spec]
        elif glob.has_magic(spec):
            found = sorted(p for p in glob.glob(spec, recursive=True) if os.path.isfile(p))
            if not found:
                failures.append(Failure(spec, "the pattern matches no file"))
        else:
            failures.append(Failure(spec, "no such file or folder"))
            found = []
        for path in found:
            path = os.path.abspath(path)
            if path not in seen:
                seen.add(path)
                files.append(path)
    if not files:
        listed = "; ".join(f"{f.file}: {f.reason}" for f in failures)
        raise NoInputsError(f"no images or videos to extract features from ({listed}); pass folders, globs "
                            f"or files of images ({' '.join(IMAGE_EXTENSIONS)}) or videos")
    return files, failures


def plan_video_clips(path, num_frames: int, sampling_rate: int, stride: int | None = None) -> list[ClipSpec]:
    """The clips of a video, one every ``stride`` frames (default: the clip's span, so clips tile it).

    A video shorter than one clip gives one clip, padded by repeating its last frame. Raises
    ``hiera_det.data.video_io.VideoReadError`` for a video that cannot be opened.
    """
    from hiera_det.data.video_io import open_video
    from hiera_det.data.video_transforms import clip_indices, clip_span

    span = clip_span(num_frames, sampling_rate)
    stride = stride or span
    if stride < 1:
        raise ValueError(f"the clip stride must be >= 1 frame, got {stride}")
    with open_video(os.fspath(path)) as reader:
        length = reader.num_frames
        stamps = reader.timestamps()
        frame_time = 1.0 / reader.fps if reader.fps > 0 else 0.0
    clips = []
    for i, start in enumerate(range(0, max(length - span, 0) + 1, stride)):
        frames = clip_indices(start, num_frames, sampling_rate, length)
        clips.append(ClipSpec(i, tuple(int(f) for f in frames), float(stamps[frames[0]]),
                              float(stamps[frames[-1]]) + frame_time))
    return clips


def read_clip_frames(path, clip: ClipSpec) -> np.ndarray:
    """The uint8 RGB frames ``[T, H, W, 3]`` of one planned clip."""
    from hiera_det.data.video_io import open_video

    with open_video(os.fspath(path)) as reader:
        return reader.get_frames(list(clip.frame_indices))


def describe_error(error: Exception) -> str:
    """A one-line reason for a report file."""
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


__all__ = [
    "ClipSpec",
    "Failure",
    "IMAGE_EXTENSIONS",
    "NoInputsError",
    "discover_inputs",
    "is_video_path",
    "plan_video_clips",
    "read_clip_frames",
]
