"""``tools/video_demo.py --mode actions``: AVA-style action detection over whole videos with a trained
``HieraActionDetector``, written as JSON Lines plus an annotated mp4.

Person boxes come from an AVA proposals CSV (``--proposals``, rows of the video's file stem; its keyframes are
used) or, on any video, from an image detector of this repository (``MODEL.ACTION_HEAD.PERSON_DETECTOR``: config
file, weights, person class and score threshold), run on a keyframe every ``--keyframe-interval`` seconds.
Boxes are linked across consecutive keyframes by IoU to give person ids.

``<video>.jsonl`` holds one line per keyframe: ``frame_index``, ``timestamp`` (seconds of the video;
``video_start_sec`` added for proposals files), and ``persons`` with ``box`` (x0, y0, x1, y1 source pixels),
``score`` (person), ``person_id`` and the ``--top-k`` ``actions`` (``id``, ``name``, ``score``). ``<video>.mp4``
shows every frame with the boxes and top actions of the latest keyframe beside each box.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from hiera_det.data import video_transforms as vt
from hiera_det.data.ava import clip_frame_indices, read_boxes_csv, read_label_map
from hiera_det.data.video_io import open_video
from hiera_det.demo.video import VideoDemoResult, run_over_videos


@dataclass
class ActionDemoSettings:
    top_k: int = 5
    keyframe_interval: float = 1.0
    proposals: str = ""
    video_start_sec: float = 0.0
    proposal_score_threshold: float = 0.8
    write_video: bool = True


class PersonDetector:
    """An image detector of this repository keeping one class above a score: frames in, person boxes out."""

    def __init__(self, cfg):
        from detectron2.engine import DefaultPredictor

        from hiera_det.config import get_hiera_cfg, merge_config

        p = cfg.MODEL.ACTION_HEAD.PERSON_DETECTOR
        detector_cfg = merge_config(get_hiera_cfg(), p.CONFIG_FILE, ["MODEL.WEIGHTS", p.WEIGHTS, "MODEL.DEVICE", cfg.MODEL.DEVICE])
        self.predictor = DefaultPredictor(detector_cfg)
        self.class_id, self.threshold = p.CLASS_ID, p.SCORE_THRESH

    def __call__(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        instances = self.predictor(np.ascontiguousarray(rgb[:, :, ::-1]))["instances"].to("cpu")
        keep = (instances.pred_classes == self.class_id) & (instances.scores >= self.threshold)
        return instances.pred_boxes.tensor[keep].numpy(), instances.scores[keep].numpy()


class _Tracker:
    """Person ids by greedy IoU matching with the previous keyframe's boxes."""

    def __init__(self, min_iou: float = 0.3):
        self.min_iou = min_iou
        self.boxes = np.zeros((0, 4))
        self.ids: list[int] = []
        self.next_id = 0

    def __call__(self, boxes: np.ndarray) -> list[int]:
        ids = [-1] * len(boxes)
        if len(boxes) and len(self.boxes):
            iou = _iou(boxes, self.boxes)
            for flat in np.argsort(-iou, axis=None):
                i, j = np.unravel_index(flat, iou.shape)
                if iou[i, j] < self.min_iou:
                    break
                if ids[i] < 0 and self.ids[j] not in ids:
                    ids[i] = self.ids[j]
        for i in range(len(ids)):
            if ids[i] < 0:
                ids[i], self.next_id = self.next_id, self.next_id + 1
        self.boxes, self.ids = np.asarray(boxes).reshape(-1, 4), ids
        return ids


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    w = np.clip(np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]), 0, None)
    h = np.clip(np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]), 0, None)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    return w * h / (area(a)[:, None] + area(b)[None, :] - w * h + 1e-9)


class ActionDemo:
    """Runs a ``HieraActionDetector`` (eval mode, weights loaded) over videos."""

    def __init__(self, cfg, model, settings: ActionDemoSettings, action_names: list[str]):
        if cfg.MODEL.META_ARCHITECTURE != "HieraActionDetector":
            raise ValueError(f"--mode actions needs MODEL.META_ARCHITECTURE HieraActionDetector, not {cfg.MODEL.META_ARCHITECTURE!r}")
        self.cfg, self.model, self.settings, self.names = cfg, model.eval(), settings, action_names
        self.proposals = None
        self.detector = None
        if settings.proposals:
            self.proposals = read_boxes_csv(settings.proposals, kind="proposals", score_threshold=settings.proposal_score_threshold, strict=False)
        elif cfg.MODEL.ACTION_HEAD.PERSON_DETECTOR.CONFIG_FILE:
            self.detector = PersonDetector(cfg)
        else:
            raise ValueError(
                "--mode actions needs person boxes: pass --proposals <AVA proposals CSV> or set "
                "MODEL.ACTION_HEAD.PERSON_DETECTOR.CONFIG_FILE and WEIGHTS (an image detector whose class "
                "MODEL.ACTION_HEAD.PERSON_DETECTOR.CLASS_ID is 'person')"
            )
        m = cfg.MODEL.HIERA_VIDEO
        self.num_frames, self.sampling_rate = m.NUM_FRAMES, m.SAMPLING_RATE

    def _keyframes(self, video_id: str, timestamps: np.ndarray) -> list[tuple[int, float, np.ndarray | None, np.ndarray | None]]:
        """(frame index, timestamp, boxes in pixels or None, scores) of each keyframe. Keyframes are chosen by
        the container's frame times, so a variable frame rate still gives one every ``keyframe_interval``
        seconds, at the times reported."""
        if not len(timestamps):
            return []
        if self.proposals is None:
            times = np.arange(float(timestamps[0]), float(timestamps[-1]) + 1e-9, self.settings.keyframe_interval)
            indices = np.unique(np.searchsorted(timestamps, times - 1e-6).clip(0, len(timestamps) - 1))
            return [(int(k), float(timestamps[k]), None, None) for k in indices]
        keys = sorted((ts for video, ts in self.proposals.boxes if video == video_id), key=float)
        if not keys:
            raise ValueError(f"{self.settings.proposals} has no boxes for video {video_id!r} (rows are keyed by the file stem)")
        frame = float(np.median(np.diff(timestamps))) if len(timestamps) > 1 else 0.0
        out = []
        for ts in keys:
            t = float(ts) - self.settings.video_start_sec
            if timestamps[0] - frame / 2 <= t <= timestamps[-1] + frame / 2:
                index = int(np.abs(timestamps - t).argmin())
                persons = self.proposals.boxes[(video_id, ts)]
                out.append((index, float(ts), np.array([p.box for p in persons]), np.array([p.score for p in persons])))
        if not out:
            raise ValueError(
                f"none of the {len(keys)} keyframe times of {video_id!r} in {self.settings.proposals} ({float(keys[0]):g} "
                f"to {float(keys[-1]):g} s) falls inside the video ({timestamps[0]:.2f} to {timestamps[-1]:.2f} s after "
                f"--video-start-sec {self.settings.video_start_sec:g}); AVA's 15-minute cuts start at 900 s: pass "
                "--video-start-sec 900 for them"
            )
        return out

    def run(self, video_path: str, out_dir: str, stem: str | None = None) -> dict:
        """Write ``<stem>.jsonl`` (and ``<stem>.mp4``) into ``out_dir``; ``stem`` defaults to the video's file
        name without extension."""
        os.makedirs(out_dir, exist_ok=True)
        video_id = os.path.splitext(os.path.basename(os.path.normpath(video_path)))[0]
        stem = stem or video_id
        jsonl = os.path.join(out_dir, stem + ".jsonl")
        reader = open_video(video_path, num_threads=self.cfg.INPUT.VIDEO.DECODE_THREADS)
        results = []
        tracker = _Tracker()
        try:
            keyframes = self._keyframes(video_id, reader.timestamps())
            with open(jsonl, "w", encoding="utf-8") as f, torch.no_grad():
                for index, timestamp, boxes, scores in tqdm(keyframes, desc=stem, unit="keyframe", disable=len(keyframes) < 2):
                    record = self._keyframe(reader, index, boxes, scores, tracker)
                    record.update(frame_index=index, timestamp=round(timestamp, 6))
                    f.write(json.dumps(record) + "\n")
                    results.append(record)
            mp4 = os.path.join(out_dir, stem + ".mp4") if self.settings.write_video else None
            if mp4:
                self._annotate(reader, results, mp4)
        finally:
            reader.close()
        return {"video": video_path, "jsonl": jsonl, "mp4": mp4, "keyframes": len(results),
                "persons": sum(len(r["persons"]) for r in results)}

    def _keyframe(self, reader, index: int, boxes, scores, tracker: _Tracker) -> dict:
        indices = clip_frame_indices(index, self.num_frames, self.sampling_rate, reader.num_frames)
        clip = reader.get_frames(indices)
        height, width = clip.shape[1:3]
        if boxes is None:
            boxes, scores = self.detector(clip[self.num_frames // 2])
        else:  # proposals are normalised
            boxes = boxes * np.array([width, height, width, height])
        boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        ids = tracker(boxes)
        if not len(boxes):
            return {"persons": []}
        geometry = vt.short_side_scale(height, width, self.cfg.INPUT.VIDEO.TEST_CROP_SIZE)
        inputs = {"image": vt.clip_to_tensor(vt.apply_to_clip(geometry, clip), self.cfg.INPUT.FORMAT),
                  "boxes": torch.as_tensor(vt.apply_to_boxes(geometry, boxes), dtype=torch.float32),
                  "box_scores": torch.as_tensor(scores, dtype=torch.float32), "height": height, "width": width}
        instances = self.model([inputs])[0]["instances"].to("cpu")
        persons = []
        for box, score, pid, action_scores in zip(instances.pred_boxes.tensor.numpy(), instances.scores.numpy(), ids,
                                                  instances.action_scores.numpy()):
            top = np.argsort(-action_scores, kind="stable")[: self.settings.top_k]
            persons.append({"box": box.astype(np.float64).round(2).tolist(), "score": round(float(score), 4), "person_id": int(pid),
                            "actions": [{"id": int(c) + 1, "name": self._name(int(c)), "score": round(float(action_scores[c]), 4)} for c in top]})
        return {"persons": persons}

    def _name(self, column: int) -> str:
        return self.names[column] if column < len(self.names) else f"action {column + 1}"

    def _annotate(self, reader, results: list[dict], path: str) -> None:
        import cv2

        writer = None
        latest = -1
        try:
            for indices, frames in reader.iter_chunks(stride=1, chunk=32):
                for index, frame in zip(indices, frames):
                    while latest + 1 < len(results) and results[latest + 1]["frame_index"] <= index:
                        latest += 1
                    image = np.ascontiguousarray(frame[:, :, ::-1])
                    if latest >= 0:
                        _draw_persons(image, results[latest]["persons"])
                    if writer is None:
                        h, w = image.shape[:2]
                        writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"mp4v"), reader.fps or 30.0, (w - w % 2, h - h % 2))
                        if not writer.isOpened():
                            raise RuntimeError(f"OpenCV cannot write {path!r} with the mp4v codec; pass --no-video")
                    writer.write(image[: image.shape[0] - image.shape[0] % 2, : image.shape[1] - image.shape[1] % 2])
        finally:
            if writer is not None:
                writer.release()


def _draw_persons(bgr: np.ndarray, persons: list[dict], lines: int = 3) -> None:
    """Each box and, beside it, its person id and top actions (in place)."""
    import cv2

    scale = max(bgr.shape[0] / 720.0, 0.25)
    for person in persons:
        color = tuple(int(c) for c in np.random.default_rng(person["person_id"] + 1).integers(80, 256, 3))
        x0, y0, x1, y1 = (int(round(v)) for v in person["box"])
        cv2.rectangle(bgr, (x0, y0), (x1, y1), color, 1)
        text = [f"#{person['person_id']}"] + [f"{a['name']} {a['score']:.2f}" for a in person["actions"][:lines]]
        for i, line in enumerate(text):
            y = y0 + int((i + 1) * 22 * scale)
            cv2.putText(bgr, line, (x1 + 2, y), cv2.FONT_HERSHEY_SIMPLEX, 0.6 * scale, color, 1, cv2.LINE_AA)


def action_names(cfg) -> list[str]:
    """Action names by model output: from the test (else train) dataset's label map when registered."""
    from detectron2.data import MetadataCatalog

    from ..data.catalog import prepare_datasets

    for name in list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN):
        try:
            prepare_datasets(cfg, [name], generate=False)  # registered datasets carry the label map
        except (KeyError, FileNotFoundError):
            continue
        meta = MetadataCatalog.get(name)
        if meta.get("action_classes", None):
            return list(meta.action_classes)
        if meta.get("label_map_file", None) and os.path.isfile(meta.label_map_file):
            return read_label_map(meta.label_map_file).class_names()
    return []


def run_action_demo(cfg, model, args, on_video=None) -> VideoDemoResult:
    """The ``--mode actions`` entry point of tools/video_demo.py (``args`` from its parser), run over the
    videos as the other modes are (``video.run_over_videos``)."""
    settings = ActionDemoSettings(top_k=args.top_k, keyframe_interval=args.keyframe_interval, proposals=args.proposals,
                                  video_start_sec=args.video_start_sec, write_video=not args.no_video,
                                  proposal_score_threshold=cfg.INPUT.AVA.PROPOSAL_SCORE_THRESH)
    demo = ActionDemo(cfg, model, settings, action_names(cfg))
    return run_over_videos(demo, args.input, args.output, on_video)
