"""Frame-mAP for AVA-format action detection, computed as the official ActivityNet AVA evaluator computes it,
and the Detectron2 evaluator that collects a model's predictions (from every rank) and scores them.

The metric (``Evaluation/get_ava_performance.py`` of github.com/activitynet/ActivityNet, PASCAL VOC style):

* Only the actions of the evaluated label map count (60 for AVA v2.2); rows of other actions are dropped
  from ground truth and detections alike, before anything else.
* Per keyframe at most ``max_detections_per_keyframe`` (50) detection rows are kept, the highest scores.
* Excluded keyframes are removed from ground truth and detections. A keyframe with detections but no ground
  truth row counts its detections as false positives (the v2.2 evaluator, which takes the excluded-timestamps
  file); ``ignore_keyframes_without_groundtruth=True`` drops them instead (the evaluator since April 2020,
  where action-less keyframes are two-column rows of the ground truth).
* Per action, each keyframe's detections are matched in descending score order: a detection takes the ground
  truth box it overlaps most (first on ties) if that IoU is >= 0.5 and the box is not taken yet; anything else
  is a false positive, so a duplicate detection of a found box is one. Detections with ``x2 <= x1`` or
  ``y2 <= y1`` are dropped. There are no "difficult" boxes.
* Per action, AP is the area under the precision-recall curve with precision made monotone (all points, VOC
  2010+); an action without ground truth has no AP (NaN) and is left out of the mean; one with ground truth
  but no detections has AP 0.
"""

from __future__ import annotations

import copy
import csv
import heapq
import io
import itertools
import json
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from hiera_det.data.ava import (
    LabelMap,
    _Rows,
    format_timestamp,
    image_key,
    iter_csv_rows,
    read_excluded_timestamps,
    read_label_map,
)

logger = logging.getLogger(__name__)

MAX_DETECTIONS_PER_KEYFRAME = 50
METRIC = "frame-mAP@0.5IOU"


@dataclass
class FrameMapResult:
    """``mean_ap`` in [0, 1] (NaN when no action has ground truth); ``per_class[id] = (name, AP, num_gt)``."""

    mean_ap: float
    per_class: "OrderedDict[int, tuple[str, float, int]]"

    def table(self) -> str:
        """The per-action AP table (AP in percent; "n/a" for actions without ground truth)."""
        lines = [f"{'id':>4}  {'AP':>6}  {'GT':>6}  action", f"{'-' * 4}  {'-' * 6}  {'-' * 6}  {'-' * 20}"]
        for action_id, (name, ap, num_gt) in self.per_class.items():
            value = "n/a" if np.isnan(ap) else f"{100 * ap:.2f}"
            lines.append(f"{action_id:>4}  {value:>6}  {num_gt:>6}  {name}")
        lines.append(f"frame-mAP@0.5IOU over {sum(1 for _, ap, _ in self.per_class.values() if not np.isnan(ap))} "
                     f"actions with ground truth: {100 * self.mean_ap:.2f}")
        return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- reading
def _ground_truth(source, evaluated: set[int], excluded: set[str], label_map: LabelMap | None, name: str):
    """key -> (boxes [M, 4], actions [M]) of the evaluated actions, and the set of annotated keys."""
    boxes: dict[str, list] = {}
    labels: dict[str, list] = {}
    annotated: set[str] = set()
    for item in iter_csv_rows(source, name=name, label_map=label_map):
        key = image_key(*item.key)
        if key in excluded:
            continue
        annotated.add(key)
        if item.box is None or item.action not in evaluated:
            continue
        boxes.setdefault(key, []).append(item.box)
        labels.setdefault(key, []).append(item.action)
    gt = {k: (np.asarray(boxes[k], np.float64).reshape(-1, 4), np.asarray(labels[k], np.int64)) for k in boxes}
    return gt, annotated


def _detections(source, evaluated: set[int], capacity: int, name: str):
    """key -> (boxes, actions, scores), keyframes in order of first appearance, each keyframe's rows in
    descending score after keeping the ``capacity`` best (0: all).

    The best rows are kept with a min-heap of ``(score, action, box)`` entries filled in file order, a row
    replacing the heap's smallest only when its score is strictly larger, and the survivors sorted by score
    with ties left in heap order: this is how the official reader breaks ties, which can decide matches.
    """
    heaps: dict[str, list] = {}
    rows = _Rows(name or str(source), True)
    for item in iter_csv_rows(source, name=name, require_action=False, check_boxes=False, rows=rows):
        if item.box is None or item.action not in evaluated:
            continue
        score = 1.0 if item.last is None else item.last
        x1, y1, x2, y2 = item.box
        entry = (score, item.action, y1, x1, y2, x2)
        heap = heaps.setdefault(image_key(*item.key), [])
        if capacity < 1 or len(heap) < capacity:
            heapq.heappush(heap, entry)
        elif score > heap[0][0]:
            heapq.heapreplace(heap, entry)
    out = {}
    for key, heap in heaps.items():
        entries = sorted(heap, key=lambda e: -e[0])
        scores = np.asarray([e[0] for e in entries], np.float64)
        actions = np.asarray([e[1] for e in entries], np.int64)
        boxes = np.asarray([(e[3], e[2], e[5], e[4]) for e in entries], np.float64).reshape(-1, 4)
        out[key] = (boxes, actions, scores)
    return out


# ---------------------------------------------------------------------------------------------- scoring
def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of XYXY boxes in continuous coordinates, ``[N, M]``."""
    w = np.maximum(0.0, np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]))
    h = np.maximum(0.0, np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]))
    inter = h * w
    area_a = (a[:, 3] - a[:, 1]) * (a[:, 2] - a[:, 0])
    area_b = (b[:, 3] - b[:, 1]) * (b[:, 2] - b[:, 0])
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def _match(det_boxes: np.ndarray, gt_boxes: np.ndarray, iou_threshold: float) -> np.ndarray:
    """True positive flags of one keyframe's detections of one action, given in descending score order."""
    hits = np.zeros(len(det_boxes), bool)
    if len(gt_boxes) == 0 or len(det_boxes) == 0:
        return hits
    iou = _iou(det_boxes, gt_boxes)
    best = iou.argmax(axis=1)
    taken = np.zeros(len(gt_boxes), bool)
    for i, g in enumerate(best):
        if iou[i, g] >= iou_threshold and not taken[g]:
            hits[i] = taken[g] = True
    return hits


def average_precision(scores: np.ndarray, hits: np.ndarray, num_gt: int) -> float:
    """VOC all-points AP of detections (``scores``, true-positive flags) against ``num_gt`` boxes; NaN without
    ground truth, 0 without detections."""
    if num_gt == 0:
        return float("nan")
    if len(scores) == 0:
        return 0.0
    # descending score; tied scores in the order the official evaluator leaves them (reversed argsort)
    order = np.argsort(scores)[::-1]
    tp = np.cumsum(hits[order].astype(np.int64))
    fp = np.cumsum(1 - hits[order].astype(np.int64))
    precision = np.concatenate([[0.0], tp / (tp + fp), [0.0]])
    recall = np.concatenate([[0.0], tp / num_gt, [1.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.nonzero(recall[1:] != recall[:-1])[0] + 1
    return float(np.sum((recall[steps] - recall[steps - 1]) * precision[steps]))


def frame_map(
    label_map: LabelMap,
    groundtruth,
    detections,
    *,
    excluded_timestamps=(),
    iou_threshold: float = 0.5,
    max_detections_per_keyframe: int = MAX_DETECTIONS_PER_KEYFRAME,
    ignore_keyframes_without_groundtruth: bool = False,
    full_label_map: LabelMap | None = None,
    names: tuple[str, str] = ("", ""),
) -> FrameMapResult:
    """Frame-mAP of ``detections`` against ``groundtruth`` over the actions of ``label_map`` (the evaluated
    list). Each of ``groundtruth`` / ``detections`` is a CSV path or a list of rows (lists of strings, as
    ``csv.reader`` gives them; ``names`` then labels them in errors). ``excluded_timestamps``: a CSV path or
    ``(video_id, timestamp)`` pairs. ``full_label_map`` (all actions) checks the ground-truth action ids;
    without it, ids outside ``label_map`` are dropped as the official evaluator drops them.
    """
    evaluated = set(label_map.ids)
    if isinstance(excluded_timestamps, (str, os.PathLike)):
        excluded_timestamps = read_excluded_timestamps(os.fspath(excluded_timestamps))
    excluded = {image_key(v, t) for v, t in excluded_timestamps}
    gt, annotated = _ground_truth(groundtruth, evaluated, excluded, full_label_map, names[0])
    dets = _detections(detections, evaluated, max_detections_per_keyframe, names[1])

    num_gt = {a: 0 for a in evaluated}
    for _, actions in gt.values():
        for a in actions.tolist():
            num_gt[a] += 1
    scores: dict[int, list] = {a: [] for a in evaluated}
    hits: dict[int, list] = {a: [] for a in evaluated}
    empty = (np.zeros((0, 4)), np.zeros(0, np.int64))
    for key, (boxes, actions, det_scores) in dets.items():
        if key in excluded or (ignore_keyframes_without_groundtruth and key not in annotated):
            continue
        valid = (boxes[:, 0] < boxes[:, 2]) & (boxes[:, 1] < boxes[:, 3])
        boxes, actions, det_scores = boxes[valid], actions[valid], det_scores[valid]
        gt_boxes, gt_actions = gt.get(key, empty)
        for action in np.unique(actions).tolist():
            mine = actions == action
            scores[action].append(det_scores[mine])
            hits[action].append(_match(boxes[mine], gt_boxes[gt_actions == action], iou_threshold))

    per_class: OrderedDict[int, tuple[str, float, int]] = OrderedDict()
    for action in label_map.ids:
        s = np.concatenate(scores[action]) if scores[action] else np.zeros(0)
        h = np.concatenate(hits[action]) if hits[action] else np.zeros(0, bool)
        per_class[action] = (label_map.names[action], average_precision(s, h, num_gt[action]), num_gt[action])
    aps = [ap for _, ap, _ in per_class.values() if not np.isnan(ap)]
    return FrameMapResult(float(np.mean(aps)) if aps else float("nan"), per_class)


# ---------------------------------------------------------------------------------------------- writing
def detection_rows(predictions: list[dict], action_ids: list[int]) -> list[list[str]]:
    """Official submission rows ``video_id,timestamp,x1,y1,x2,y2,action_id,score`` (boxes normalised, 3
    decimals as in the AVA files; scores 6 decimals), one per box and evaluated action, keyframes sorted.

    A prediction: ``{"video_id", "timestamp", "boxes": [N, 4] normalised XYXY, "scores": [N, num_classes]}``
    with column ``id - 1`` holding action ``id``.
    """
    rows = []
    columns = np.asarray(action_ids, np.int64) - 1
    for p in sorted(predictions, key=lambda p: (p["video_id"], float(p["timestamp"]))):
        boxes = np.asarray(p["boxes"], np.float64).reshape(-1, 4).clip(0.0, 1.0)
        scores = np.asarray(p["scores"], np.float64).reshape(len(boxes), -1)
        ts = format_timestamp(p["timestamp"])
        for box, box_scores in zip(boxes, scores):
            coords = [f"{v:.3f}" for v in box]
            for action, column in zip(action_ids, columns.tolist()):
                rows.append([p["video_id"], ts, *coords, str(action), f"{box_scores[column]:.6f}"])
    return rows


def write_rows(path: str, rows: list[list[str]]) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        csv.writer(f, lineterminator="\n").writerows(rows)
    os.replace(tmp, path)


# ---------------------------------------------------------------------------------------------- Detectron2
try:
    from detectron2.evaluation import DatasetEvaluator
except ImportError:  # the scoring functions above need numpy only
    DatasetEvaluator = object


class AvaEvaluator(DatasetEvaluator):
    """Frame-mAP of a ``HieraActionDetector`` on a dataset registered with ``hiera_det.data.ava.register_ava``.

    ``process`` keeps each keyframe's boxes (normalised by the input's ``width`` / ``height``) and action
    scores; ``evaluate`` gathers them from every rank (``detectron2.utils.comm``), and on the main process
    writes ``ava_detections.csv`` (official submission format) and ``ava_per_class_ap.txt`` / ``.json`` under
    ``output_dir``, then returns ``{"ava": {"frame-mAP@0.5IOU": percent, "mAP": the same, "AP-<action>": percent,
    ...}}``.
    """

    def __init__(
        self,
        dataset_name: str,
        output_dir: str | None = None,
        *,
        distributed: bool = True,
        max_detections_per_keyframe: int = MAX_DETECTIONS_PER_KEYFRAME,
        ignore_keyframes_without_groundtruth: bool = False,
    ):
        from detectron2.data import MetadataCatalog

        meta = MetadataCatalog.get(dataset_name)
        for key in ("annotation_file", "eval_label_map_file"):
            if not meta.get(key, None):
                raise ValueError(
                    f"dataset {dataset_name!r} has no metadata {key!r}; register it with "
                    "hiera_det.data.ava.register_ava to evaluate frame-mAP"
                )
        self.dataset_name = dataset_name
        self.output_dir = output_dir
        self.distributed = distributed
        self.max_detections = max_detections_per_keyframe
        self.ignore_unannotated = ignore_keyframes_without_groundtruth
        self.annotation_file = meta.annotation_file
        self.label_map = read_label_map(meta.eval_label_map_file)
        self.full_label_map = read_label_map(meta.label_map_file) if meta.get("label_map_file", None) else None
        self.excluded_file = meta.get("excluded_timestamps_file", "") or ""
        self._predictions: list[dict] = []

    def reset(self) -> None:
        self._predictions = []

    def process(self, inputs, outputs) -> None:
        for inp, out in zip(inputs, outputs):
            instances = out["instances"].to("cpu")
            scale = np.asarray([inp["width"], inp["height"]] * 2, np.float64)
            self._predictions.append({
                "video_id": inp["video_id"],
                "timestamp": inp["timestamp"],
                "boxes": (instances.pred_boxes.tensor.numpy().astype(np.float64) / scale).astype(np.float32),
                "scores": instances.action_scores.float().numpy(),
            })

    def evaluate(self):
        from .evaluation import gather_on_main

        predictions = gather_on_main(self._predictions, self.distributed)
        if predictions is None:
            return {}
        if not predictions:
            logger.warning("AvaEvaluator on %s got no predictions", self.dataset_name)
            return {}
        rows = detection_rows(predictions, self.label_map.ids)
        result = frame_map(
            self.label_map,
            self.annotation_file,
            rows,
            excluded_timestamps=self._excluded(),
            max_detections_per_keyframe=self.max_detections,
            ignore_keyframes_without_groundtruth=self.ignore_unannotated,
            full_label_map=self.full_label_map,
            names=(self.annotation_file, "predictions"),
        )
        logger.info("AVA frame-mAP on %s (%d keyframes):\n%s", self.dataset_name, len(predictions), result.table())
        if self.output_dir:
            self._write(rows, result)
        # "mAP" repeats the official name's value: Detectron2's copypaste summary drops names holding a "-"
        metrics = {METRIC: 100 * result.mean_ap, "mAP": 100 * result.mean_ap}
        for action_id, (name, ap, _) in result.per_class.items():
            if not np.isnan(ap):
                metrics[f"AP-{name}"] = 100 * ap
        return copy.deepcopy({"ava": metrics})

    def _excluded(self):
        return read_excluded_timestamps(self.excluded_file) if self.excluded_file else ()

    def _write(self, rows, result: FrameMapResult) -> None:
        os.makedirs(self.output_dir, exist_ok=True)
        write_rows(os.path.join(self.output_dir, "ava_detections.csv"), rows)
        with open(os.path.join(self.output_dir, "ava_per_class_ap.txt"), "w", encoding="utf-8") as f:
            f.write(result.table() + "\n")
        table = {
            "frame_mAP": None if np.isnan(result.mean_ap) else 100 * result.mean_ap,
            "per_class": [
                {"id": i, "name": n, "AP": None if np.isnan(ap) else 100 * ap, "num_gt": g}
                for i, (n, ap, g) in result.per_class.items()
            ],
        }
        with open(os.path.join(self.output_dir, "ava_per_class_ap.json"), "w", encoding="utf-8") as f:
            json.dump(table, f, indent=1)


def rows_from_text(text: str) -> list[list[str]]:
    """CSV text -> rows (for tests and for scoring in memory)."""
    return list(csv.reader(io.StringIO(text)))
