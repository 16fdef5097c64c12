"""AVA-format spatiotemporal action data: the published files read as they are, and Detectron2 registration.

Files (https://research.google.com/ava/download.html, PySlowFast's ``ava`` folder):

* ``ava_{train,val}_v2.2.csv``: ``video_id,timestamp,x1,y1,x2,y2,action_id,person_id`` rows, boxes normalised
  to [0, 1], one row per (box, action); a two-column row ``video_id,timestamp`` marks an annotated keyframe
  without actions.
* ``ava_action_list_v2.2.pbtxt`` (80 actions) and ``ava_action_list_v2.2_for_activitynet_2019.pbtxt`` (the 60
  that are evaluated): ``item``/``label`` blocks with ``name`` and ``id``/``label_id``.
* ``ava_{train,val}_excluded_timestamps_v2.2.csv``: ``video_id,timestamp`` keyframes left out of training and
  evaluation.
* person proposals, PySlowFast's ``ava_detection_{train,val}_boxes_and_labels.csv``: rows of the annotation
  form whose last column is the detector's score (the action column may be empty); boxes under a score
  threshold are dropped.
* frames: PySlowFast's ``frame_lists/{train,val}.csv`` (``original_video_id video_id frame_id path labels``,
  paths relative to a frame folder, frame k of a video at ``video_start_sec + k / frame_rate``), or the videos
  themselves (``video_dir/<video_id>.<ext>``, decoded by decord, frame index from the container's rate).

Real AVA: 30 fps frames and 15-minute cuts starting at second 900, keyframes once a second from 902 to 1798
(the defaults below). Every time-related number is a parameter, so other AVA-format data (the bundled
``ava_shapes``) uses the same code.

Bad input. Every problem names the file and the row. ``strict=True`` raises ``AvaFormatError`` at the first
one; ``strict=False`` (training data) skips the row, counts it in a ``ReadReport`` and logs the first few.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation

import numpy as np

logger = logging.getLogger(__name__)

EVALUATOR_TYPE = "ava"
AVA_FRAME_RATE = 30.0
AVA_VIDEO_START_SEC = 900.0
AVA_KEYFRAME_RANGE = (902, 1798)
VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")
# Boxes are written with 3 decimals; tolerate rounding just outside [0, 1], then clip.
_BOX_TOLERANCE = 1e-3


class AvaFormatError(ValueError):
    """A row of an AVA-format file that cannot be used; the message names the file, the row and the fix."""

    def __init__(self, path: str, row: int | None, problem: str, fix: str = ""):
        self.path, self.row, self.problem = str(path), row, problem
        where = f"{self.path}, row {row}" if row is not None else self.path
        super().__init__(f"{where}: {problem}" + (f"; {fix}" if fix else ""))


@dataclass
class ReadReport:
    """What a lenient read skipped: counts per reason and the first messages."""

    path: str
    rows: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def skip(self, error: AvaFormatError, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if len(self.messages) < 20:
            self.messages.append(str(error))

    def log(self) -> None:
        if self.num_skipped:
            logger.warning(
                "%s: skipped %d of %d rows (%s); first: %s",
                self.path,
                self.num_skipped,
                self.rows,
                ", ".join(f"{n} {reason}" for reason, n in sorted(self.skipped.items())),
                " | ".join(self.messages[:3]),
            )


class _Rows:
    """Raise in strict mode, else record the problem and go on."""

    def __init__(self, path: str, strict: bool):
        self.report = ReadReport(path)
        self.strict = strict

    def problem(self, row: int, reason: str, message: str, fix: str = "") -> None:
        error = AvaFormatError(self.report.path, row, message, fix)
        if self.strict:
            raise error
        self.report.skip(error, reason)


# ---------------------------------------------------------------------------------------------- keys
def parse_timestamp(text: str) -> int | float:
    """``"0902"`` -> 902; fractional seconds stay floats."""
    value = Decimal(text.strip())
    return int(value) if value == value.to_integral_value() else float(value)


def image_key(video_id: str, timestamp) -> str:
    """The official evaluator's keyframe key, ``"video_id,902.000000"`` (``0902`` and ``902`` are the same)."""
    return "%s,%.6f" % (video_id, Decimal(str(timestamp)))


def format_timestamp(timestamp) -> str:
    """Timestamps as the AVA files write them: integer seconds with 4 digits (``0902``), else decimal."""
    value = Decimal(str(timestamp))
    return f"{int(value):04d}" if value == value.to_integral_value() else str(value)


# ---------------------------------------------------------------------------------------------- label map
@dataclass(frozen=True)
class LabelMap:
    """Action ids (1-based, as in the file) and names. ``num_classes`` is the largest id, so a model's output
    ``k`` is action id ``k + 1`` whatever ids are missing."""

    names: dict[int, str]
    path: str = ""

    @property
    def ids(self) -> list[int]:
        return sorted(self.names)

    @property
    def num_classes(self) -> int:
        return max(self.names)

    def class_names(self) -> list[str]:
        """Names by model output index (``id - 1``); ids missing from the file get ``"action <id>"``."""
        return [self.names.get(i, f"action {i}") for i in range(1, self.num_classes + 1)]


_BLOCK = re.compile(r"(\w+)\s*\{([^{}]*)\}", re.S)
_NAME = re.compile(r'\bname\s*:\s*"([^"]*)"')
_ID = re.compile(r"\b(?:label_)?id\s*:\s*(-?\d+)")


def read_label_map(path: str) -> LabelMap:
    """Read an AVA action list (``item { name: "..." id: N }`` or ``label { name: ... label_id: N ... }``)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"AVA label map {path!r} not found; it is ava_action_list_v2.2.pbtxt (80 actions) or "
            "ava_action_list_v2.2_for_activitynet_2019.pbtxt (60 evaluated), from the AVA download page"
        )
    with open(path, encoding="utf-8") as f:
        text = f.read()
    names: dict[int, str] = {}
    for match in _BLOCK.finditer(text):
        row = text.count("\n", 0, match.start()) + 1
        body = match.group(2)
        name, ident = _NAME.search(body), _ID.search(body)
        if name is None or ident is None:
            raise AvaFormatError(path, row, f"a {match.group(1)!r} block without both name and id: {body.strip()!r}")
        action_id = int(ident.group(1))
        if action_id < 1:
            raise AvaFormatError(path, row, f"action id {action_id} must be >= 1 (AVA ids are 1-based)")
        if action_id in names:
            raise AvaFormatError(path, row, f"action id {action_id} is listed twice ({names[action_id]!r} and {name.group(1)!r})")
        names[action_id] = name.group(1)
    if not names:
        raise AvaFormatError(path, None, "no `item`/`label` blocks with a name and an id", "is this an AVA .pbtxt file?")
    return LabelMap(names, path)


# ---------------------------------------------------------------------------------------------- boxes
@dataclass
class PersonBox:
    """One person box at one keyframe: normalised ``x1, y1, x2, y2``, its action ids and (GT) person id, or
    (proposals) the detector's score."""

    box: tuple[float, float, float, float]
    actions: list[int] = field(default_factory=list)
    person_id: int = -1
    score: float = 1.0


@dataclass
class AvaBoxes:
    """Boxes of a CSV grouped by keyframe: ``boxes[(video_id, timestamp)]`` lists the keyframe's persons;
    ``keyframes`` also holds the keys of action-less two-column rows."""

    path: str
    boxes: dict[tuple[str, int | float], list[PersonBox]]
    keyframes: set[tuple[str, int | float]]
    report: ReadReport

    @property
    def videos(self) -> set[str]:
        return {video for video, _ in self.keyframes}


def _parse_box(values: list[str], rows: _Rows, row: int) -> tuple[float, float, float, float] | None:
    try:
        x1, y1, x2, y2 = (float(v) for v in values)
    except ValueError:
        rows.problem(row, "unparsable box", f"box {values} is not four numbers")
        return None
    if not all(np.isfinite([x1, y1, x2, y2])) or min(x1, y1, x2, y2) < -_BOX_TOLERANCE or max(x1, y1, x2, y2) > 1 + _BOX_TOLERANCE:
        rows.problem(
            row, "box outside [0, 1]", f"box ({x1}, {y1}, {x2}, {y2}) is outside [0, 1]",
            "AVA boxes are normalised by the frame width and height; divide pixel boxes by them",
        )
        return None
    x1, y1, x2, y2 = (min(max(v, 0.0), 1.0) for v in (x1, y1, x2, y2))
    if x2 <= x1 or y2 <= y1:
        rows.problem(row, "empty box", f"box ({x1}, {y1}, {x2}, {y2}) has x2 <= x1 or y2 <= y1", "columns are x1,y1,x2,y2")
        return None
    return (x1, y1, x2, y2)


@dataclass
class CsvRow:
    """One parsed row: ``box`` is None for a two-column (action-less keyframe) row; ``action`` is -1 where the
    column is empty; ``last`` is the 8th column (person id or score) as a float, or None."""

    row: int
    key: tuple[str, int | float]
    box: tuple[float, float, float, float] | None
    action: int
    last: float | None


def iter_csv_rows(source, *, name: str = "", label_map: LabelMap | None = None, require_action: bool = True,
                  check_boxes: bool = True, rows: _Rows | None = None):
    """Parse AVA CSV rows from a path or from lists of column strings (then ``name`` is used in messages).

    ``check_boxes=False`` keeps boxes as written (the official evaluator's reading of detections, which drops
    empty boxes later and never checks the range); otherwise boxes outside [0, 1] or empty are problems.
    Problems go to ``rows`` (a strict one raises); the row is then skipped.
    """
    rows = rows or _Rows(name or str(source), True)
    if isinstance(source, (str, os.PathLike)):
        if not os.path.isfile(source):
            raise FileNotFoundError(f"AVA CSV file {os.fspath(source)!r} not found")
        with open(source, newline="", encoding="utf-8") as f:
            yield from iter_csv_rows(list(csv.reader(f)), name=os.fspath(source), label_map=label_map,
                                     require_action=require_action, check_boxes=check_boxes, rows=rows)
        return
    for row, values in enumerate(source, start=1):
        if not values or (len(values) == 1 and not values[0].strip()):
            continue
        rows.report.rows += 1
        if len(values) not in (2, 7, 8):
            rows.problem(row, "wrong column count", f"{len(values)} columns {values}",
                         "AVA rows have 2 (video_id,timestamp) or 7-8 columns (video_id,timestamp,x1,y1,x2,y2,action_id[,person_id or score])")
            continue
        try:
            key = (values[0].strip(), parse_timestamp(values[1]))
        except InvalidOperation:
            rows.problem(row, "bad timestamp", f"timestamp {values[1]!r} is not a number of seconds")
            continue
        if not key[0]:
            rows.problem(row, "empty video id", "the video id column is empty")
            continue
        if len(values) == 2:
            yield CsvRow(row, key, None, -1, None)
            continue
        if check_boxes:
            box = _parse_box(values[2:6], rows, row)
        else:
            try:
                box = tuple(float(v) for v in values[2:6])
            except ValueError:
                box = None
                rows.problem(row, "unparsable box", f"box {values[2:6]} is not four numbers")
        if box is None:
            continue
        action_text = values[6].strip()
        try:
            action = int(action_text) if action_text else -1
        except ValueError:
            rows.problem(row, "unknown action id", f"action id {action_text!r} is not an integer")
            continue
        if require_action and action < 1:
            rows.problem(row, "unknown action id", f"action id {action} (annotation rows need an action id >= 1)")
            continue
        if action >= 1 and label_map is not None and action not in label_map.names:
            rows.problem(row, "unknown action id", f"action id {action} is not in the label map {label_map.path}".rstrip(),
                         "use the label map the annotations were made with (ava_action_list_v2.2.pbtxt lists 80)")
            continue
        last = None
        if len(values) == 8 and values[7].strip():
            try:
                last = float(values[7])
            except ValueError:
                rows.problem(row, "bad last column", f"last column {values[7]!r} (person id or score) is not a number")
                continue
        yield CsvRow(row, key, box, action, last)


def read_boxes_csv(
    path: str,
    *,
    label_map: LabelMap | None = None,
    kind: str = "annotations",
    score_threshold: float = 0.0,
    strict: bool = True,
) -> AvaBoxes:
    """Read an annotation CSV (``kind="annotations"``: 8th column person id) or a proposals / detections CSV
    (``kind="proposals"``: 8th column score, boxes scoring under ``score_threshold`` dropped, action column
    may be empty or -1).

    Rows of the same keyframe with the same box are one person with several actions. Action ids not in
    ``label_map`` are errors (unknown actions), not silently dropped.
    """
    if kind not in ("annotations", "proposals"):
        raise ValueError(f"kind must be 'annotations' or 'proposals', got {kind!r}")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"AVA {kind} file {path!r} not found")
    rows = _Rows(path, strict)
    grouped: dict[tuple[str, int | float], OrderedDict] = {}
    keyframes: set[tuple[str, int | float]] = set()
    for item in iter_csv_rows(path, label_map=label_map, require_action=kind == "annotations", rows=rows):
        keyframes.add(item.key)
        if item.box is None:
            continue
        score = 1.0 if kind == "annotations" or item.last is None else item.last
        if score < score_threshold:
            continue
        persons = grouped.setdefault(item.key, OrderedDict())
        person = persons.get(item.box)
        if person is None:
            person_id = int(item.last) if kind == "annotations" and item.last is not None else -1
            person = persons[item.box] = PersonBox(item.box, [], person_id, score)
        if item.action >= 1 and item.action not in person.actions:
            person.actions.append(item.action)
    rows.report.log()
    boxes = {key: list(persons.values()) for key, persons in grouped.items()}
    return AvaBoxes(path, boxes, keyframes, rows.report)


def read_excluded_timestamps(path: str) -> set[tuple[str, int | float]]:
    """``video_id,timestamp`` rows -> a set of keyframe keys."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"excluded-timestamps file {path!r} not found")
    excluded = set()
    with open(path, newline="", encoding="utf-8") as f:
        for row, values in enumerate(csv.reader(f), start=1):
            if not values:
                continue
            if len(values) != 2:
                raise AvaFormatError(path, row, f"{len(values)} columns {values}; excluded timestamps are video_id,timestamp")
            try:
                excluded.add((values[0].strip(), parse_timestamp(values[1])))
            except InvalidOperation:
                raise AvaFormatError(path, row, f"timestamp {values[1]!r} is not a number of seconds") from None
    return excluded


# ---------------------------------------------------------------------------------------------- frames
_NUMBERED = re.compile(r"^(.*?)(\d+)(\.[A-Za-z0-9]+)$")


@dataclass(frozen=True)
class FrameSequence:
    """The frames of one video as a numbered file pattern, ``template.format(first + k)`` for frame ``k``
    (PySlowFast names them ``<video>/<video>_000001.jpg``); kept this small because every keyframe's dataset
    dict carries it. ``list_file`` / ``first_row`` point error messages at the frame list."""

    template: str
    first: int
    count: int
    list_file: str = ""
    first_row: int = 0

    def path(self, index: int) -> str:
        return self.template.format(self.first + index)

    def row(self, index: int) -> int:
        return self.first_row + index


def read_frame_list(path: str, frame_dir: str) -> dict[str, FrameSequence]:
    """Read PySlowFast's ``frame_lists/{train,val}.csv`` (space separated, header line
    ``original_vido_id video_id frame_id path labels``); frame paths are relative to ``frame_dir``.

    Each video's frames must be consecutive numbered files (as PySlowFast's extraction writes them).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"frame list {path!r} not found; PySlowFast's frame_lists/{{train,val}}.csv lists every extracted frame "
            "(`original_vido_id video_id frame_id path labels`), or point at the videos instead"
        )
    videos: dict[str, list] = {}
    with open(path, encoding="utf-8") as f:
        for row, line in enumerate(f, start=1):
            parts = line.split()
            if not parts or (row == 1 and parts[0].startswith("original_vid")):
                continue
            if len(parts) < 4:
                raise AvaFormatError(path, row, f"{len(parts)} fields; frame list rows are `original_vido_id video_id frame_id path labels`")
            match = _NUMBERED.match(parts[3])
            if match is None:
                raise AvaFormatError(path, row, f"frame path {parts[3]!r} does not end in a frame number and an extension")
            prefix, digits, suffix = match.groups()
            entry = videos.setdefault(parts[0], [prefix, len(digits), suffix, int(digits), 0, row])
            expected = entry[3] + entry[4]
            if (prefix, suffix) != (entry[0], entry[2]) or int(digits) != expected or len(digits) != entry[1]:
                raise AvaFormatError(
                    path, row, f"frame {parts[3]!r} of video {parts[0]!r} breaks its numbered sequence "
                    f"(expected {entry[0]}{expected:0{entry[1]}d}{entry[2]})",
                    "list each video's frames in order, numbered consecutively, as PySlowFast's frame lists do",
                )
            entry[4] += 1
    if not videos:
        raise AvaFormatError(path, None, "no frames listed")
    sequences = {}
    for video, (prefix, width, suffix, first, count, first_row) in videos.items():
        literal = os.path.join(frame_dir, prefix).replace("{", "{{").replace("}", "}}")
        template = literal + "{:0%dd}" % width + suffix.replace("{", "{{").replace("}", "}}")
        sequences[video] = FrameSequence(template, first, count, path, first_row)
    return sequences


class FrameSequenceReader:
    """Random access to the frames of a ``FrameSequence`` (the ``VideoClipReader`` interface: ``num_frames``,
    ``fps``, ``get_frames``); a missing or unreadable file raises ``VideoReadError`` naming the frame list row."""

    def __init__(self, frames: FrameSequence, fps: float):
        self.frames = frames
        self.num_frames = frames.count
        self.fps = float(fps)
        self.path = os.path.dirname(frames.template)

    def get_frames(self, indices) -> np.ndarray:
        import cv2

        from .video_io import VideoReadError

        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        cache: dict[int, np.ndarray] = {}
        out = []
        for index in indices.tolist():
            if index not in cache:
                if not 0 <= index < self.num_frames:
                    raise IndexError(f"frame {index} is outside the {self.num_frames} frames of {self.path!r}")
                file = self.frames.path(index)
                image = cv2.imread(file, cv2.IMREAD_COLOR) if os.path.isfile(file) else None
                if image is None:
                    what = "is missing" if not os.path.isfile(file) else "cannot be decoded"
                    raise VideoReadError(
                        file, f"the frame {what} (row {self.frames.row(index)} of {self.frames.list_file})",
                        "extract the frames again or remove the video from the frame list",
                    )
                cache[index] = image[:, :, ::-1]
            out.append(cache[index])
        if len({f.shape for f in out}) > 1:
            raise VideoReadError(self.path, f"frames have different sizes {sorted({f.shape for f in out})}", "re-extract the frames")
        return np.ascontiguousarray(np.stack(out))

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def find_videos(video_dir: str) -> dict[str, str]:
    """``video_id -> path`` for the video files directly in ``video_dir`` (AVA names them ``<id>.<ext>``)."""
    if not os.path.isdir(video_dir):
        raise FileNotFoundError(f"AVA video folder {video_dir!r} not found")
    return {
        os.path.splitext(name)[0]: os.path.join(video_dir, name)
        for name in sorted(os.listdir(video_dir))
        if name.lower().endswith(VIDEO_EXTENSIONS)
    }


def open_frames(record: dict, decode_threads: int = 1):
    """The reader for a dataset dict: a ``FrameSequenceReader`` (frame list) or a decord ``VideoClipReader``."""
    if "frames" in record:
        frames = record["frames"]
        if isinstance(frames, dict):
            frames = FrameSequence(**frames)
        return FrameSequenceReader(frames, record["frame_rate"])
    from .video_io import VideoClipReader

    return VideoClipReader(record["video_file"], num_threads=decode_threads)


def keyframe_index(record: dict, fps: float) -> int:
    """Frame index of the record's keyframe in its video (frame 0 shown at ``video_start_sec``)."""
    return int(round((float(record["timestamp"]) - float(record["video_start_sec"])) * fps))


def clip_frame_indices(
    keyframe: int, num_frames: int, sampling_rate: int, video_length: int, keyframe_position: int | None = None
) -> np.ndarray:
    """``num_frames`` indices ``sampling_rate`` apart with ``keyframe`` at ``keyframe_position`` (default
    ``num_frames // 2``), clamped to the video: frames past either end repeat the edge frame."""
    position = num_frames // 2 if keyframe_position is None else keyframe_position
    offsets = (np.arange(num_frames, dtype=np.int64) - position) * sampling_rate
    return np.clip(keyframe + offsets, 0, video_length - 1)


# ---------------------------------------------------------------------------------------------- datasets
@dataclass
class AvaSplit:
    """Where one split's files are. Either ``frame_list_file`` + ``frame_dir`` or ``video_dir``."""

    annotation_file: str
    label_map_file: str
    frame_list_file: str = ""
    frame_dir: str = ""
    video_dir: str = ""
    proposals_file: str = ""
    proposal_score_threshold: float = 0.8
    excluded_timestamps_file: str = ""
    eval_label_map_file: str = ""
    frame_rate: float = AVA_FRAME_RATE
    video_start_sec: float = AVA_VIDEO_START_SEC
    keyframe_range: tuple[float, float] = AVA_KEYFRAME_RANGE
    # training: keyframes with ground-truth boxes; testing: keyframes with proposals (or GT boxes without a
    # proposals file), ground truth kept for reference
    is_train: bool = True

    def check(self) -> None:
        if bool(self.frame_list_file) == bool(self.video_dir):
            raise ValueError(
                f"AVA data for {self.annotation_file!r}: give the frames either as frame_list_file (+ frame_dir, "
                "PySlowFast's frame_lists/*.csv) or as video_dir (videos read by decord), exactly one of them"
            )


def load_ava_dicts(split: AvaSplit) -> tuple[list[dict], dict]:
    """Dataset dicts, one per keyframe, and metadata for ``register_ava``.

    A dict: ``video_id``, ``timestamp``, ``image_key``, ``file_name`` (the video or its first frame's folder),
    ``video_file`` or ``frames`` (a ``FrameSequence`` as a dict) + ``frame_rate``, ``video_start_sec``,
    ``annotations`` (``{"bbox": normalised XYXY, "actions": [ids], "person_id"}``) and, at test time,
    ``proposals`` (``{"boxes": [[x1, y1, x2, y2]...], "scores": [...]}``). Bad rows are skipped and counted.
    """
    split.check()
    label_map = read_label_map(split.label_map_file)
    gt = read_boxes_csv(split.annotation_file, label_map=label_map, kind="annotations", strict=False)
    excluded = read_excluded_timestamps(split.excluded_timestamps_file) if split.excluded_timestamps_file else set()
    proposals = None
    if split.proposals_file:
        proposals = read_boxes_csv(split.proposals_file, kind="proposals",
                                   score_threshold=split.proposal_score_threshold, strict=False)
        _check_proposal_videos(proposals, gt)

    if split.frame_list_file:
        sources = read_frame_list(split.frame_list_file, split.frame_dir)
    else:
        sources = find_videos(split.video_dir)
    lo, hi = split.keyframe_range
    if split.is_train or proposals is None:
        keys = set(gt.boxes)
    else:
        keys = set(proposals.boxes)
    skipped = {"excluded": 0, "outside keyframe range": 0, "no frames for the video": 0, "keyframe after the last frame": 0}
    missing_videos: set[str] = set()
    records = []
    for key in sorted(keys, key=lambda k: (k[0], float(k[1]))):
        video, timestamp = key
        if key in excluded:
            skipped["excluded"] += 1
            continue
        if not lo <= float(timestamp) <= hi:
            skipped["outside keyframe range"] += 1
            continue
        source = sources.get(video)
        if source is None:
            skipped["no frames for the video"] += 1
            missing_videos.add(video)
            continue
        record = {
            "video_id": video,
            "timestamp": timestamp,
            "image_key": image_key(video, timestamp),
            "video_start_sec": float(split.video_start_sec),
            "annotations": [
                {"bbox": list(p.box), "actions": sorted(p.actions), "person_id": p.person_id}
                for p in gt.boxes.get(key, [])
            ],
        }
        if isinstance(source, FrameSequence):
            index = keyframe_index(record, split.frame_rate)
            if not 0 <= index < source.count:
                skipped["keyframe after the last frame"] += 1
                continue
            record.update(file_name=os.path.dirname(source.path(0)), frames=source.__dict__.copy(), frame_rate=float(split.frame_rate))
        else:
            record.update(file_name=source, video_file=source)
        if proposals is not None:
            persons = proposals.boxes.get(key, [])
            record["proposals"] = {"boxes": [list(p.box) for p in persons], "scores": [p.score for p in persons]}
        records.append(record)
    unreadable = skipped["no frames for the video"] + skipped["keyframe after the last frame"]
    if not split.is_train and unreadable:
        # the evaluator scores every ground-truth keyframe: one left without predictions would lower the
        # frame-mAP without a word, so evaluation stops instead
        missing = f"; videos with no frames: {', '.join(sorted(missing_videos)[:10])}" if missing_videos else ""
        raise ValueError(
            f"AVA evaluation data from {split.annotation_file!r}: {unreadable} keyframes have no frames to read "
            f"({ {k: n for k, n in skipped.items() if n} }{missing}) in {split.frame_list_file or split.video_dir}. "
            "Their ground truth would count as missed detections. Add the videos (or frames), or remove their rows "
            "from the annotation and proposals files"
        )
    if any(skipped.values()):
        logger.info("%s: skipped keyframes: %s", split.annotation_file, {k: n for k, n in skipped.items() if n})
    if missing_videos:
        logger.warning("%s: %d keyframes of %d videos have no frames (%s) and are skipped, e.g. %s",
                       split.annotation_file, skipped["no frames for the video"], len(missing_videos),
                       split.frame_list_file or split.video_dir, sorted(missing_videos)[:3])
    if not records:
        raise ValueError(
            f"AVA data from {split.annotation_file!r}: no usable keyframe (skipped: {skipped}); check that the "
            f"frames ({split.frame_list_file or split.video_dir}) belong to these videos and that keyframe_range "
            f"{split.keyframe_range} and video_start_sec {split.video_start_sec} fit the timestamps"
        )
    metadata = {
        "num_skipped_rows": gt.report.num_skipped + (proposals.report.num_skipped if proposals else 0),
        "num_skipped_keyframes": skipped,
    }
    return records, metadata


def _check_proposal_videos(proposals: AvaBoxes, gt: AvaBoxes) -> None:
    ours = gt.videos
    theirs = proposals.videos
    if theirs and not theirs & ours:
        raise AvaFormatError(
            proposals.path, None,
            f"its boxes are for {len(theirs)} videos (e.g. {sorted(theirs)[:3]}), none of which is in {gt.path} "
            f"(e.g. {sorted(ours)[:3]})",
            "use the proposals of the same split (ava_detection_val_boxes_and_labels.csv for ava_val_v2.2.csv)",
        )
    extra = theirs - ours
    if extra:
        logger.warning("%s: boxes for %d videos not in %s are ignored, e.g. %s", proposals.path, len(extra), gt.path, sorted(extra)[:3])


def register_ava(name: str, split: AvaSplit) -> None:
    """Register an AVA-format dataset under ``name`` (lazy: files are read at first use). Registering an existing
    name replaces it.

    Metadata: ``evaluator_type="ava"``, ``action_classes`` (names by model output, ``id - 1``), ``num_actions``,
    ``label_map_file``, ``eval_label_map_file`` (the evaluated subset; defaults to the label map),
    ``annotation_file``, ``excluded_timestamps_file``, ``split`` (the ``AvaSplit``).
    """
    from detectron2.data import DatasetCatalog, MetadataCatalog

    split.check()
    label_map = read_label_map(split.label_map_file)

    def load() -> list[dict]:
        records, stats = load_ava_dicts(split)
        MetadataCatalog.get(name).set(**stats)
        return records

    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    DatasetCatalog.register(name, load)
    MetadataCatalog.get(name).set(
        evaluator_type=EVALUATOR_TYPE,
        action_classes=label_map.class_names(),
        num_actions=label_map.num_classes,
        label_map_file=split.label_map_file,
        eval_label_map_file=split.eval_label_map_file or split.label_map_file,
        annotation_file=split.annotation_file,
        excluded_timestamps_file=split.excluded_timestamps_file,
        ava_split=split,
    )


def ava_split_files(root: str, split: str, *, version: str = "v2.2", layout: str = "frames", **overrides) -> AvaSplit:
    """PySlowFast's AVA folder layout under ``root``: ``annotations/ava_{split}_{version}.csv``, the label maps,
    excluded timestamps and ``ava_detection_{split}_boxes_and_labels.csv`` proposals (used for val; for train
    only when ``overrides`` says so), frames in ``frames/`` listed by ``frame_lists/{split}.csv`` or
    (``layout="videos"``) videos in ``videos_15min/``."""
    ann = os.path.join(root, "annotations")
    kwargs = dict(
        annotation_file=os.path.join(ann, f"ava_{split}_{version}.csv"),
        label_map_file=os.path.join(ann, f"ava_action_list_{version}.pbtxt"),
        eval_label_map_file=os.path.join(ann, f"ava_action_list_{version}_for_activitynet_2019.pbtxt"),
        excluded_timestamps_file=os.path.join(ann, f"ava_{split}_excluded_timestamps_{version}.csv"),
        is_train=split == "train",
    )
    if split != "train":
        kwargs["proposals_file"] = os.path.join(ann, f"ava_detection_{split}_boxes_and_labels.csv")
    if layout == "frames":
        kwargs.update(frame_list_file=os.path.join(root, "frame_lists", f"{split}.csv"), frame_dir=os.path.join(root, "frames"))
    elif layout == "videos":
        kwargs["video_dir"] = os.path.join(root, "videos_15min")
    else:
        raise ValueError(f"layout must be 'frames' or 'videos', got {layout!r}")
    kwargs.update(overrides)
    return AvaSplit(**kwargs)

