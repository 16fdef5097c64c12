"""Kinetics-style video classification accuracy: per clip (view) and per video (views averaged)."""

from __future__ import annotations

import itertools
import json
import logging
import os
from collections import OrderedDict, defaultdict

import numpy as np
import torch
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

logger = logging.getLogger(__name__)


def gather_on_main(items: list, distributed: bool) -> list | None:
    """Every rank's ``items`` concatenated on the main process; None on the other ranks."""
    if not distributed:
        return items
    comm.synchronize()
    gathered = list(itertools.chain(*comm.gather(items, dst=0)))
    return gathered if comm.is_main_process() else None


def topk_hits(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Per row: whether the label is among the k highest scores (ties broken by class index)."""
    k = min(k, scores.shape[1])
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return (top == labels[:, None]).any(axis=1)


class VideoClassificationEvaluator(DatasetEvaluator):
    """Top-1 / top-5 accuracy in percent, per video (softmax scores averaged over its test views, as the
    Hiera and PySlowFast protocols do) and per clip (each view on its own).

    Reads ``video_id`` and ``label`` from the inputs, ``scores`` from the outputs. Results:
    ``{"video_classification": {"top1", "top5", "clip_top1", "clip_top5", "num_videos", "num_clips"}}``.
    With ``output_dir``, also writes ``video_predictions.json`` (per-video averaged scores' top-5).
    """

    def __init__(self, dataset_name: str | None = None, output_dir: str | None = None, distributed: bool = True):
        self.dataset_name = dataset_name
        self.output_dir = output_dir
        self.distributed = distributed
        self.reset()

    def reset(self):
        self._clips: list[tuple[str, int, np.ndarray]] = []

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            scores = out["scores"]
            if isinstance(scores, torch.Tensor):
                scores = scores.detach().float().cpu().numpy()
            self._clips.append((str(inp["video_id"]), int(inp["label"]), np.asarray(scores, dtype=np.float64)))

    def evaluate(self):
        clips = gather_on_main(self._clips, self.distributed)
        if clips is None:
            return {}
        if not clips:
            logger.warning("VideoClassificationEvaluator received no predictions for %s", self.dataset_name)
            return {}

        by_video: dict[str, list[np.ndarray]] = defaultdict(list)
        video_label: dict[str, int] = {}
        for video_id, label, scores in clips:
            if video_label.setdefault(video_id, label) != label:
                raise ValueError(f"video {video_id!r} has views with different labels ({video_label[video_id]}, {label})")
            by_video[video_id].append(scores)

        clip_scores = np.stack([c[2] for c in clips])
        clip_labels = np.array([c[1] for c in clips])
        video_ids = sorted(by_video)
        video_scores = np.stack([np.mean(by_video[v], axis=0) for v in video_ids])
        video_labels = np.array([video_label[v] for v in video_ids])
        views = {len(s) for s in by_video.values()}
        if len(views) > 1:
            logger.warning("videos have differing numbers of views: %s", sorted(views))

        result = {
            "top1": float(100.0 * topk_hits(video_scores, video_labels, 1).mean()),
            "top5": float(100.0 * topk_hits(video_scores, video_labels, 5).mean()),
            "clip_top1": float(100.0 * topk_hits(clip_scores, clip_labels, 1).mean()),
            "clip_top5": float(100.0 * topk_hits(clip_scores, clip_labels, 5).mean()),
            "num_videos": float(len(video_ids)),
            "num_clips": float(len(clips)),
        }
        if self.output_dir:
            PathManager.mkdirs(self.output_dir)
            top5 = np.argsort(-video_scores, axis=1, kind="stable")[:, :5]
            predictions = [
                {"video_id": v, "label": int(l), "top5": t.tolist(), "top5_scores": s[t].round(6).tolist()}
                for v, l, t, s in zip(video_ids, video_labels, top5, video_scores)
            ]
            with PathManager.open(os.path.join(self.output_dir, "video_predictions.json"), "w") as f:
                json.dump(predictions, f)
        return OrderedDict(video_classification=result)
