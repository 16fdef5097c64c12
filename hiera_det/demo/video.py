"""Running a trained model over whole videos: per-frame image detection, clip-to-keyframe detection or
clip classification, streamed in bounded memory, written as JSON Lines plus an annotated mp4.

``tools/video_demo.py`` is the command line; ``run_video_demo(cfg, model, video, out_dir, ...)`` is the
entry point for Python. Over a folder of videos it processes every video it can: one that fails is named
with the reason (in the result and in ``OUT_DIR/summary.json``) and the others go on.

Conventions:

* Frames are decoded as RGB (grayscale sources come out as 3 channels) and handed to the model in
  ``cfg.INPUT.FORMAT`` after Detectron2's test resize (``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``, at
  least one pixel a side, see :func:`hiera_det.demo.image.inference_resize`);
  classifier clips get the evaluation transform of ``VideoClassificationMapper`` (short side to
  ``INPUT.VIDEO.TEST_CROP_SIZE``, one center crop of that size).
* Clips near either end of the video, and clips of videos shorter than a clip, repeat the edge frame.
* Timestamps are the container's per-frame presentation times, so variable frame rates are reported
  correctly; the annotated mp4 plays at the average rate divided by the frame stride (an mp4 written by
  OpenCV has one constant rate). Frames with odd sizes are padded by one black row/column in the mp4
  (the encoder needs even sizes); JSON coordinates always refer to the source frame.
* Detection modes run as a pipeline (``DemoSettings.pipeline``, :mod:`hiera_det.demo.pipeline`): a thread
  decodes and resizes the next batches into pinned memory while the model runs, and another writes the JSON
  line, draws (OpenCV, :func:`hiera_det.demo.draw.draw_boxes`) and encodes each finished frame, in order.
  The outputs are those of the sequential run (``pipeline=False``), byte for byte. A frame that fails to run,
  draw or write stops the video with a :class:`FrameFailure` naming it; every frame before it is written.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
from tqdm import tqdm

from ..data import video_transforms as vt
from ..data.video_io import VideoReadError, open_video
from ..engine.checkpointer import atomic_write
from ..config import keyframe_position
from .draw import draw_boxes, draw_text_lines
from .image import describe_failure, inference_resize, unique_stem
from .pipeline import StageClock, consumer, prefetched

logger = logging.getLogger(__name__)

MODES = ("frame", "clip", "classify")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg")


def mode_for(meta_architecture: str) -> str:
    """The demo mode that fits a meta-architecture (image detectors run per frame)."""
    return {"HieraVideoClassifier": "classify", "HieraClipDetector": "clip", "HieraActionDetector": "actions"}.get(meta_architecture, "frame")


def list_videos(path: str) -> list[str]:
    """A video file, a folder of video files, or a folder of frames (read as one video)."""
    if not os.path.exists(path):
        raise VideoReadError(path, "the path does not exist", "give a video file or a folder of videos/frames")
    if os.path.isdir(path):
        videos = sorted(
            os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(VIDEO_EXTENSIONS)
        )
        return videos or [path]
    return [path]


class FrameWindow:
    """Frames of a reader fetched by index with a sliding cache: requests must move forward, and frames
    below ``release_below`` are dropped, so memory holds about one clip span plus one read chunk.

    ``prepare`` (``[T, H, W, 3]`` frames -> ``[T, H', W', 3]``, e.g. the test resize) is applied once per
    frame and cached too, so overlapping clips do not resize the same frame again (``get_prepared``)."""

    def __init__(self, reader, chunk: int = 32, prepare: Callable[[np.ndarray], np.ndarray] | None = None,
                 clock: StageClock | None = None):  # fmt: skip
        self.reader = reader
        self.chunk = chunk
        self.prepare = prepare
        self.clock = clock or StageClock()
        self._frames: dict[int, np.ndarray] = {}
        self._prepared: dict[int, np.ndarray] = {}
        self.peak = 0  # most frames held at once

    def get(self, indices: Sequence[int]) -> np.ndarray:
        missing = sorted({int(i) for i in indices} - self._frames.keys())
        if missing:
            # read ahead: the next requests will want the frames after these
            last = min(max(missing[-1], missing[0] + self.chunk - 1), self.reader.num_frames - 1)
            wanted = sorted(set(range(missing[0], last + 1)) - self._frames.keys())
            with self.clock("decode"):
                frames = self.reader.get_frames(wanted)
            for i, frame in zip(wanted, frames):
                self._frames[i] = frame
            self.peak = max(self.peak, len(self._frames))
        return np.stack([self._frames[int(i)] for i in indices])

    def get_prepared(self, indices: Sequence[int]) -> np.ndarray:
        missing = sorted({int(i) for i in indices} - self._prepared.keys())
        if missing:
            frames = self.get(missing)
            with self.clock("preprocess"):
                for i, frame in zip(missing, self.prepare(frames)):
                    self._prepared[i] = frame
        return np.stack([self._prepared[int(i)] for i in indices])

    def release_below(self, index: int) -> None:
        for cache in (self._frames, self._prepared):
            for i in [i for i in cache if i < index]:
                del cache[i]

    def __len__(self) -> int:
        return len(self._frames)


@dataclass
class DemoSettings:
    mode: str
    frame_stride: int = 1
    batch_size: int = 4
    score_threshold: float = 0.5
    top_k: int = 5
    clip_stride: int = 0  # classify: frames between clip starts; 0 = one clip span (no overlap)
    chunk: int = 32
    write_video: bool = True
    progress: bool = True
    pipeline: bool = True  # overlap decoding, the model and writing (False: one after the other)
    preprocess_threads: int = 4  # resizes at once when pipelined


class FrameFailure(RuntimeError):
    """A frame could not be run, drawn or written; the video's outputs keep every frame before it."""

    def __init__(self, frames: Sequence[int], timestamps: np.ndarray, stage: str, error: BaseException):
        self.frames = [int(i) for i in frames]
        first = self.frames[0]
        where = f"frame {first}" if len(self.frames) == 1 else f"frames {first}..{self.frames[-1]}"
        super().__init__(
            f"{where} (at {float(timestamps[first]):.3f} s) failed in {stage}: {describe_failure(error)}; "
            f"the outputs hold the frames before it"
        )


class _Writer:
    """JSON Lines + optional mp4, opened lazily at the first frame (when its size is known)."""

    def __init__(self, jsonl_path: str, mp4_path: str | None, fps: float):
        self.jsonl = open(jsonl_path, "w")
        self.mp4_path = mp4_path
        self.fps = fps if fps > 0 else 30.0
        self.video = None
        self.frames_written = 0

    def record(self, item: dict) -> None:
        self.jsonl.write(json.dumps(item) + "\n")

    def frame(self, rgb: np.ndarray) -> None:
        if self.mp4_path is None:
            return
        h, w = rgb.shape[:2]
        bgr = cv2.copyMakeBorder(np.ascontiguousarray(rgb[..., ::-1]), 0, h % 2, 0, w % 2, cv2.BORDER_CONSTANT)
        if self.video is None:
            self.video = cv2.VideoWriter(
                self.mp4_path, cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (bgr.shape[1], bgr.shape[0])
            )
            if not self.video.isOpened():
                raise RuntimeError(
                    f"OpenCV cannot write {self.mp4_path!r} with the mp4v codec; install an OpenCV build with "
                    f"FFmpeg (opencv-python-headless has it) or pass --no-video"
                )
        self.video.write(bgr)
        self.frames_written += 1

    def close(self) -> None:
        self.jsonl.close()
        if self.video is not None:
            self.video.release()


class VideoDemo:
    """Runs one model over videos. ``model`` is a built Detectron2 model in eval mode with weights loaded."""

    def __init__(self, cfg, model: torch.nn.Module, settings: DemoSettings, class_names: Sequence[str] = ()):
        if settings.mode not in MODES:
            raise ValueError(f"unknown demo mode {settings.mode!r}; choose one of {MODES}")
        expected = mode_for(cfg.MODEL.META_ARCHITECTURE)
        if settings.mode != expected:
            raise ValueError(
                f"mode {settings.mode!r} does not fit MODEL.META_ARCHITECTURE={cfg.MODEL.META_ARCHITECTURE!r}, "
                f"which runs in mode {expected!r}"
            )
        if settings.frame_stride < 1 or settings.batch_size < 1:
            raise ValueError("frame stride and batch size must be >= 1")
        if settings.preprocess_threads < 1:
            raise ValueError("preprocess_threads must be >= 1")
        self.cfg = cfg
        self.model = model.eval()
        self.settings = settings
        self.class_names = list(class_names)
        self.input_format = cfg.INPUT.FORMAT
        if settings.mode in ("clip", "classify"):
            self.num_frames = cfg.MODEL.HIERA_VIDEO.NUM_FRAMES
            self.sampling_rate = cfg.MODEL.HIERA_VIDEO.SAMPLING_RATE
            self.keyframe = keyframe_position(cfg)

    # ----- preprocessing -----
    def _resize(self, frames: np.ndarray, map_frames=map) -> np.ndarray:
        """RGB ``[T, H, W, 3]`` -> ``[T, H', W', 3]`` uint8 after the test resize of Detectron2's mappers (what
        DatasetMapper / KeyframeClipMapper give at evaluation); ``map_frames`` may run the frames at once."""
        h, w = frames.shape[1:3]
        transform = inference_resize(h, w, self.cfg.INPUT.MIN_SIZE_TEST, self.cfg.INPUT.MAX_SIZE_TEST)
        return np.stack(list(map_frames(transform.apply_image, frames)))

    def _model_input(self, resized: np.ndarray, pin: bool) -> torch.Tensor:
        """``[T, H, W, 3]`` uint8 -> ``[3, T, H, W]`` uint8 in the model's channel order; page-locked when it
        goes to a GPU from another thread, so the copy there does not block."""
        tensor = vt.clip_to_tensor(resized, self.input_format)
        return tensor.pin_memory() if pin else tensor

    def _classifier_clip(self, frames: np.ndarray) -> torch.Tensor:
        """The evaluation transform of ``VideoClassificationMapper`` for a single (center) view."""
        h, w = frames.shape[1:3]
        crop = self.cfg.INPUT.VIDEO.TEST_CROP_SIZE
        clip = vt.apply_to_clip(vt.test_transform(h, w, crop_size=crop, spatial_idx=0, num_spatial=1), frames)
        return vt.clip_to_tensor(clip, self.input_format)

    # ----- running -----
    def run(self, video_path: str, out_dir: str, stem: str | None = None) -> dict:
        """Process one video into ``<stem>.jsonl`` / ``<stem>.mp4`` (``stem``: the video's file name without
        extension by default); returns a summary with the output paths."""
        os.makedirs(out_dir, exist_ok=True)
        stem = stem or unique_stem(video_path, set())
        jsonl_path = os.path.join(out_dir, stem + ".jsonl")
        mp4_path = os.path.join(out_dir, stem + ".mp4") if self.settings.write_video else None
        reader = open_video(video_path, num_threads=self.cfg.INPUT.VIDEO.DECODE_THREADS)
        try:  # a folder run goes on to the next video after a failure: nothing may stay open
            timestamps = reader.timestamps()
            # every mode draws every frame_stride-th frame: the mp4 keeps the source's pace
            writer = _Writer(jsonl_path, mp4_path, reader.fps / self.settings.frame_stride)
            try:
                with torch.no_grad():
                    if self.settings.mode == "classify":
                        summary = self._classify(reader, timestamps, writer)
                    else:
                        summary = self._detect(reader, timestamps, writer)
            finally:
                writer.close()
        finally:
            reader.close()
        summary.update(video=video_path, jsonl=jsonl_path, mp4=mp4_path, frames_written=writer.frames_written)
        return summary

    def _progress(self, total: int, desc: str):
        return tqdm(total=total, desc=desc, unit="frame", disable=not self.settings.progress, leave=False)

    def _detect(self, reader, timestamps: np.ndarray, writer: _Writer) -> dict:
        s = self.settings
        n = reader.num_frames
        targets = list(range(0, n, s.frame_stride))
        clock = StageClock()
        device = getattr(self.model, "device", torch.device("cpu"))
        pin = s.pipeline and torch.device(device).type == "cuda"
        depth = 2 if s.pipeline else 0  # batches decoded ahead of the model
        pool = ThreadPoolExecutor(s.preprocess_threads, "video-demo-resize") if s.pipeline else None
        window = FrameWindow(reader, chunk=s.chunk, clock=clock,
                             prepare=lambda frames: self._resize(frames, pool.map if pool else map))  # fmt: skip

        def batches():
            for begin in range(0, len(targets), s.batch_size):
                batch = targets[begin : begin + s.batch_size]
                if s.mode == "frame":
                    with clock("decode"):
                        frames = reader.get_frames(batch)
                    with clock("preprocess"):
                        try:
                            resized = self._resize(frames, pool.map if pool else map)
                            inputs = [self._model_input(f[None], pin)[:, 0] for f in resized]
                        except Exception as e:
                            raise FrameFailure(batch, timestamps, "preprocessing", e) from e
                else:
                    frames = window.get(batch)
                    try:
                        clips = [window.get_prepared(self._keyframe_clip(f, n)) for f in batch]
                        with clock("preprocess"):
                            inputs = [self._model_input(c, pin) for c in clips]
                    except VideoReadError:
                        raise
                    except Exception as e:
                        raise FrameFailure(batch, timestamps, "preprocessing", e) from e
                    window.release_below(int(self._keyframe_clip(batch[-1] + s.frame_stride, n)[0]))
                yield batch, frames, inputs

        def write(item) -> None:
            index, record, frame, boxes, scores, classes = item
            try:
                writer.record(record)
                if writer.mp4_path is not None:
                    with clock("draw"):
                        picture = draw_boxes(frame, boxes, scores, classes, self.class_names)
                    with clock("encode"):
                        writer.frame(picture)
            except Exception as e:
                raise FrameFailure([index], timestamps, "drawing or writing", e) from e

        detections = 0
        output = consumer(write, depth=2 * s.batch_size if s.pipeline else 0, name="video-demo-writer")
        start = time.perf_counter()
        try:
            with self._progress(len(targets), os.path.basename(reader.path)) as bar, \
                    prefetched(batches(), depth, name="video-demo-decoder") as stream:  # fmt: skip
                for batch, frames, inputs in stream:
                    with clock("model"):
                        try:
                            found = self._detect_batch(inputs, frames.shape[1:3], device)
                        except Exception as e:
                            raise FrameFailure(batch, timestamps, "the model", e) from e
                    for index, frame, (boxes, scores, classes) in zip(batch, frames, found):
                        detections += len(scores)
                        record = {
                            "frame_index": int(index),
                            "timestamp": round(float(timestamps[index]), 6),
                            "boxes": boxes.astype(np.float64).round(2).tolist(),  # fp32: 30.850000381
                            "scores": scores.astype(np.float64).round(4).tolist(),
                            "classes": classes.tolist(),
                            "class_names": [self._name(c) for c in classes],
                        }
                        output.submit((index, record, frame, boxes, scores, classes))
                    bar.update(len(batch))
        except BaseException:
            output.close()  # the frames before the failure are written; an earlier failure there wins
            raise
        finally:
            if pool is not None:
                pool.shutdown()
        output.close()
        seconds = clock.rounded()
        seconds["total"] = round(time.perf_counter() - start, 4)
        return {"mode": s.mode, "frames": len(targets), "detections": detections, "peak_cached_frames": window.peak,
                "frames_per_s": round(len(targets) / max(seconds["total"], 1e-9), 2), "seconds": seconds}  # fmt: skip

    def _detect_batch(self, inputs: list[torch.Tensor], size: tuple[int, int], device) -> list[tuple]:
        """Boxes, scores and classes (numpy, above the score threshold) of each input."""
        h, w = size
        images = [x.to(device, non_blocking=True).float() for x in inputs]
        outputs = self.model([{"image": x, "height": h, "width": w} for x in images])
        found = []
        for out in outputs:
            inst = out["instances"].to("cpu")
            keep = inst.scores >= self.settings.score_threshold
            found.append((inst.pred_boxes.tensor[keep].numpy(), inst.scores[keep].numpy(),
                          inst.pred_classes[keep].numpy()))  # fmt: skip
        return found

    def _classify(self, reader, timestamps: np.ndarray, writer: _Writer) -> dict:
        s = self.settings
        n = reader.num_frames
        span = (self.num_frames - 1) * self.sampling_rate + 1
        clip_stride = s.clip_stride or span
        starts = list(range(0, max(n - span, 0) + 1, clip_stride))
        if starts[-1] + span < n:  # cover the tail too
            starts.append(n - span)
        window = FrameWindow(reader, chunk=s.chunk)
        clip_scores = []
        with self._progress(len(starts), os.path.basename(reader.path) + " clips") as bar:
            for begin in range(0, len(starts), s.batch_size):
                batch = starts[begin : begin + s.batch_size]
                indices = [vt.clip_indices(st, self.num_frames, self.sampling_rate, n) for st in batch]
                outputs = self.model([{"clip": self._classifier_clip(window.get(i))} for i in indices])
                next_start = starts[begin + s.batch_size] if begin + s.batch_size < len(starts) else n
                window.release_below(next_start)
                for st, idx, out in zip(batch, indices, outputs):
                    scores = out["scores"].float().cpu().numpy()
                    clip_scores.append(scores)
                    writer.record({
                        "clip_start": int(st),
                        "clip_end": int(idx[-1]),
                        "frame_indices": idx.tolist(),
                        "timestamp": round(float(timestamps[st]), 6),
                        "end_timestamp": round(float(timestamps[idx[-1]]), 6),
                        "top_k": self._top_k(scores),
                    })
                bar.update(len(batch))
        video_scores = np.mean(clip_scores, axis=0)
        video_top = self._top_k(video_scores)
        writer.record({"video": os.path.basename(reader.path), "num_clips": len(starts), "top_k": video_top})
        if writer.mp4_path is not None:
            self._annotate_classes(reader, starts, clip_scores, video_top, writer)
        return {"mode": "classify", "clips": len(starts), "top_k": video_top, "peak_cached_frames": window.peak}

    def _annotate_classes(self, reader, starts, clip_scores, video_top, writer: _Writer) -> None:
        stride = self.settings.frame_stride
        video_line = "video: " + ", ".join(f"{t['name']} {t['score']:.2f}" for t in video_top[:2])
        clip = 0
        for indices, frames in reader.iter_chunks(stride=stride, chunk=self.settings.chunk):
            for index, frame in zip(indices, frames):
                while clip + 1 < len(starts) and starts[clip + 1] <= index:
                    clip += 1
                top = self._top_k(clip_scores[clip])[:3]
                lines = [f"{t['name']} {t['score']:.2f}" for t in top] + [video_line]
                writer.frame(draw_text_lines(frame, lines))

    def _keyframe_clip(self, keyframe: int, video_length: int) -> np.ndarray:
        """Frame indices of the clip whose keyframe position holds frame ``keyframe``, edge-padded."""
        start = keyframe - self.keyframe * self.sampling_rate
        return vt.clip_indices(start, self.num_frames, self.sampling_rate, video_length)

    def _name(self, c: int) -> str:
        return self.class_names[c] if 0 <= c < len(self.class_names) else f"class {c}"

    def _top_k(self, scores: np.ndarray) -> list[dict]:
        order = np.argsort(-scores, kind="stable")[: self.settings.top_k]
        return [{"class": int(c), "name": self._name(int(c)), "score": round(float(scores[c]), 5)} for c in order]


def class_names_for(cfg) -> list[str]:
    """Class names from the metadata of the config's test (else train) datasets, when registered."""
    from detectron2.data import MetadataCatalog

    for name in list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN):
        meta = MetadataCatalog.get(name)
        for key in ("classes", "thing_classes"):
            names = meta.get(key, None)
            if names:
                return list(names)
    return []


@dataclass
class VideoDemoResult:
    """What :func:`run_video_demo` did: one summary per processed video, and each video it could not
    process with the reason (its partial outputs, if any, are left in place)."""

    videos: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)


def _describe(error: Exception) -> str:
    return str(error) if isinstance(error, (VideoReadError, FrameFailure)) else describe_failure(error)


def run_video_demo(
    cfg,
    model: torch.nn.Module,
    inputs: str,
    out_dir: str,
    settings: DemoSettings,
    class_names: Sequence[str] | None = None,
    on_video: Callable[[dict], None] | None = None,
) -> VideoDemoResult:
    """Run the demo on a video file, a folder of videos or a frame folder, and write ``summary.json``.

    A video that fails does not stop the others: it is logged and listed in ``failed`` with the reason.
    Videos whose names differ only in extension get distinct outputs (``clip.jsonl``, ``clip_1.jsonl``).
    A missing ``inputs`` path raises ``VideoReadError``.
    """
    demo = VideoDemo(cfg, model, settings, class_names_for(cfg) if class_names is None else class_names)
    return run_over_videos(demo, inputs, out_dir, on_video)


def run_over_videos(
    demo, inputs: str, out_dir: str, on_video: Callable[[dict], None] | None = None
) -> VideoDemoResult:
    """``demo.run(video, out_dir, stem=...)`` (a ``VideoDemo`` or the actions mode's ``ActionDemo``) on every
    video of ``inputs``, going on past failures, with ``summary.json`` written even when interrupted."""
    result = VideoDemoResult()
    taken: set[str] = set()
    try:
        for video in list_videos(inputs):
            try:
                summary = demo.run(video, out_dir, stem=unique_stem(video, taken))
            except KeyboardInterrupt:
                result.failed.append({"video": video, "error": "interrupted: its outputs hold what came before"})
                raise
            except Exception as e:  # noqa: BLE001  one bad video must not stop the others
                logger.warning("skipping %s: %s", video, _describe(e))
                result.failed.append({"video": video, "error": _describe(e)})
                continue
            if on_video is not None:
                on_video(summary)
            result.videos.append(summary)
    finally:  # an interrupted run keeps the list of what it did
        if result.videos or result.failed:
            os.makedirs(out_dir, exist_ok=True)
            text = json.dumps({"videos": result.videos, "failed": result.failed}, indent=1)
            atomic_write(os.path.join(out_dir, "summary.json"), lambda f: f.write(text.encode()))
    return result
