"""Video datasets: Kinetics-style classification lists and COCO-style keyframe detection annotations.

Dataset dicts are ``{"file_name": absolute video path, "label": int, "video_id": str}``. ``video_id`` is
the path relative to the dataset root without its extension, which is unique where file stems may not be.

Layouts under ``root``:

* ``layout="csv"`` (PySlowFast): ``root/{split}.csv`` with one ``relative/path.mp4<separator>label`` per
  line (integer labels, no header). Class names come from ``root/classes.txt`` (one per line, line i is
  label i) when present, otherwise they are the label numbers.
* ``layout="folders"``: ``root/{split}/<class name>/<video>``; labels follow the sorted class names.

Keyframe detection (AVA-style, clip-to-keyframe): a COCO json whose ``images`` are annotated keyframes with
the extra fields ``video_file`` (or ``frame_dir``, a folder of extracted frames), relative to a video root,
and ``frame_index``; ``annotations`` are ordinary COCO boxes (and optional polygons) of that keyframe.
"""

from __future__ import annotations

import json
import logging
import os

logger = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg")
CLASS_NAMES_FILE = "classes.txt"
EVALUATOR_TYPE = "video_classification"


def _video_id(path: str, root: str) -> str:
    return os.path.splitext(os.path.relpath(path, root))[0].replace(os.sep, "/")


def read_class_names(path: str) -> list[str]:
    """One class name per line (line i names label i); blank lines are errors because they shift labels."""
    with open(path, encoding="utf-8") as f:
        names = [line.rstrip("\r\n") for line in f]
    while names and not names[-1].strip():
        names.pop()
    blank = [i + 1 for i, name in enumerate(names) if not name.strip()]
    if blank:
        raise ValueError(f"{path}: blank class name on line(s) {blank[:5]}; each line must name one class")
    return names


def _split_row(line: str, separator: str) -> list[str]:
    # the label follows the last separator, so paths may hold it (" " also splits on tabs and runs of spaces)
    return line.rsplit(separator, 1) if separator != " " else line.rsplit(None, 1)


def load_kinetics_csv(
    csv_path: str, root: str, separator: str = " ", class_names: list[str] | None = None
) -> tuple[list[dict], list[str]]:
    """Read a PySlowFast list file: ``path<separator>label`` per line, paths relative to ``root``.

    The label is the text after the last separator, so paths may contain the separator (e.g. spaces).
    Files that do not exist are dropped with a warning giving their number and a few examples; if none
    exists the error names the root, since that is the usual mistake. Returns ``(dataset_dicts,
    class_names)``; ``class_names`` is taken from the argument, else ``root/classes.txt``, else the numbers.
    """
    if not os.path.isfile(csv_path):
        raise FileNotFoundError(
            f"video list {csv_path!r} not found. Expected PySlowFast format: one `relative/path.mp4 label` per "
            f"line, paths relative to {root!r}. Put the Kinetics lists there or pass the right root "
            "(default $DETECTRON2_DATASETS/<name>)."
        )
    records, missing = [], []
    with open(csv_path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            parts = _split_row(line, separator)
            if len(parts) != 2:
                raise ValueError(
                    f"{csv_path}:{line_no}: expected `path{separator}label`, got {line!r}; "
                    f"set the separator (now {separator!r}) to the one the file uses"
                )
            rel_path, label_text = parts[0].strip(), parts[1].strip()
            try:
                label = int(label_text)
            except ValueError:
                raise ValueError(
                    f"{csv_path}:{line_no}: label {label_text!r} is not an integer; PySlowFast lists hold class "
                    f"indices (names go in {CLASS_NAMES_FILE}, or use layout='folders')"
                ) from None
            if label < 0:
                raise ValueError(f"{csv_path}:{line_no}: negative label {label}")
            path = rel_path if os.path.isabs(rel_path) else os.path.join(root, rel_path)
            if not (os.path.isfile(path) or os.path.isdir(path)):  # a video file or a folder of its frames
                missing.append(path)
                continue
            records.append({"file_name": path, "label": label, "video_id": _video_id(path, root)})
    if missing:
        if not records:
            raise FileNotFoundError(
                f"none of the {len(missing)} videos listed in {csv_path!r} exists under root {root!r} "
                f"(first: {missing[0]!r}); paths in the list must be relative to the root"
            )
        logger.warning(
            "%s: %d of %d listed videos are missing and were dropped (e.g. %s)",
            csv_path,
            len(missing),
            len(missing) + len(records),
            ", ".join(repr(p) for p in missing[:3]),
        )
    if not records:
        raise ValueError(f"video list {csv_path!r} is empty")

    num_classes = max(r["label"] for r in records) + 1
    if class_names is None:
        names_file = os.path.join(root, CLASS_NAMES_FILE)
        class_names = read_class_names(names_file) if os.path.isfile(names_file) else None
    if class_names is None:
        class_names = [str(i) for i in range(num_classes)]
    elif len(class_names) < num_classes:
        raise ValueError(
            f"{csv_path} uses label {num_classes - 1} but only {len(class_names)} class names are given"
        )
    return records, list(class_names)


def csv_class_count(csv_path: str, separator: str = " ") -> int | None:
    """1 + the largest label of a PySlowFast list (its class count when it holds no names), None when the
    file is missing or has no integer label (the check before training names those problems)."""
    if not os.path.isfile(csv_path):
        return None
    labels = []
    with open(csv_path, encoding="utf-8") as f:
        for line in f:
            parts = _split_row(line.strip(), separator)
            if len(parts) == 2 and parts[1].strip().lstrip("-").isdigit():
                labels.append(int(parts[1]))
    return max(labels) + 1 if labels and max(labels) >= 0 else None


def check_video_list(csv_path: str, root: str, num_classes: int, separator: str = " ", limit: int = 20) -> list[str]:
    """Every problem of a PySlowFast list, for the check before training: rows that do not parse, labels that
    are not integers in ``[0, num_classes)``, and listed videos that are missing or empty (each named)."""
    if not os.path.isfile(csv_path):
        return [f"{csv_path}: the video list does not exist"]
    problems: list[str] = []
    rows = 0
    with open(csv_path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            rows += 1
            where = f"{csv_path}:{line_no}"
            parts = _split_row(line, separator)
            if len(parts) != 2:
                problems.append(f"{where}: expected `path{separator}label`, got {line!r}")
                continue
            rel_path, label_text = parts[0].strip(), parts[1].strip()
            try:
                label = int(label_text)
            except ValueError:
                problems.append(f"{where}: label {label_text!r} is not an integer class index")
                label = None
            if label is not None and not 0 <= label < num_classes:
                problems.append(f"{where}: label {label} is outside [0, {num_classes}) (MODEL.HIERA_VIDEO.NUM_CLASSES "
                                f"{num_classes}): fix the row or set NUM_CLASSES")
            path = rel_path if os.path.isabs(rel_path) else os.path.join(root, rel_path)
            if os.path.isfile(path) and os.path.getsize(path) == 0:
                problems.append(f"{where}: {path} is empty (0 bytes)")
            elif not (os.path.isfile(path) or os.path.isdir(path)):
                problems.append(f"{where}: {path} does not exist (paths are relative to {root})")
    if not rows:
        problems.append(f"{csv_path}: the video list is empty")
    if len(problems) > limit:
        problems = problems[:limit] + [f"{csv_path}: ... and {len(problems) - limit} more problems"]
    return problems


def check_class_folders(root: str, num_classes: int) -> list[str]:
    """Every problem of a class-folder split: class folders without videos, and empty video files."""
    try:
        records, class_names = load_class_folders(root)
    except FileNotFoundError as e:
        return [str(e)]
    problems = [f"{root}: class folder {name!r} holds no videos ({', '.join(VIDEO_EXTENSIONS)})"
                for label, name in enumerate(class_names) if not any(r["label"] == label for r in records)]
    problems += [f"{r['file_name']} is empty (0 bytes)" for r in records if os.path.getsize(r["file_name"]) == 0]
    return problems


def load_class_folders(root: str) -> tuple[list[dict], list[str]]:
    """Read ``root/<class name>/<video>``: labels are indices into the sorted class names."""
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"video folder {root!r} not found. Expected one sub-folder per class holding its videos "
            f"({', '.join(VIDEO_EXTENSIONS)}), e.g. {os.path.join(root, 'abseiling', 'clip.mp4')!r}"
        )
    class_names = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not class_names:
        raise FileNotFoundError(f"{root!r} has no class sub-folders; expected {root}/<class name>/<video>")
    records = []
    for label, name in enumerate(class_names):
        class_dir = os.path.join(root, name)
        for dirpath, _, files in sorted(os.walk(class_dir)):
            for file in sorted(files):
                if file.lower().endswith(VIDEO_EXTENSIONS):
                    path = os.path.join(dirpath, file)
                    records.append({"file_name": path, "label": label, "video_id": _video_id(path, root)})
    if not records:
        raise FileNotFoundError(f"no videos ({', '.join(VIDEO_EXTENSIONS)}) found under {root!r}")
    return records, class_names


def split_location(root: str, split: str, layout: str) -> str:
    if layout == "csv":
        return os.path.join(root, f"{split}.csv")
    if layout == "folders":
        return os.path.join(root, split)
    raise ValueError(f"layout must be 'csv' or 'folders', got {layout!r}")


def load_kinetics_split(
    root: str, split: str, layout: str = "csv", separator: str = " "
) -> tuple[list[dict], list[str]]:
    location = split_location(root, split, layout)
    if layout == "csv":
        return load_kinetics_csv(location, root, separator)
    return load_class_folders(location)


def classes_if_cheap(root: str, split: str, layout: str) -> list[str] | None:
    if layout == "csv":
        names_file = os.path.join(root, CLASS_NAMES_FILE)
        return read_class_names(names_file) if os.path.isfile(names_file) else None
    folder = split_location(root, split, layout)
    if os.path.isdir(folder):
        return sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d))) or None
    return None


def check_keyframe_json(json_file: str, video_root: str, limit: int = 20) -> list[str]:
    """Every problem of a keyframe dataset, for the check before training: the json itself, and per keyframe
    a missing or unreadable video, a ``frame_index`` past its end, and ``width`` / ``height`` that are not the
    decoded frames' (each video is opened once)."""
    from tqdm import tqdm

    from ..video_io import VideoReadError, open_video

    try:
        records, _ = load_keyframe_coco_json(json_file, video_root)
    except (OSError, ValueError, KeyError) as e:
        return [f"{json_file}: {e}"]
    by_source: dict[str, list[dict]] = {}
    for record in records:
        by_source.setdefault(record["file_name"], []).append(record)
    problems: list[str] = []
    for source, keyframes in tqdm(by_source.items(), desc="checking keyframe videos", unit="video", leave=False,
                                  disable=len(by_source) < 100):  # fmt: skip
        if not os.path.exists(source):
            problems.append(f"{json_file}: {source} does not exist ({len(keyframes)} keyframes; paths are relative "
                            f"to {video_root})")  # fmt: skip
            continue
        try:
            with open_video(source) as reader:
                length, (height, width) = reader.num_frames, reader.size
        except VideoReadError as e:
            problems.append(f"{json_file}: {e}")
            continue
        for r in keyframes:
            where = f"{json_file}: image id {r['image_id']} ({os.path.basename(source)})"
            if not 0 <= r["frame_index"] < length:
                problems.append(f"{where}: frame_index {r['frame_index']} is outside the video's {length} frames")
            if (r["width"], r["height"]) != (width, height):
                problems.append(f"{where}: the json says {r['width']}x{r['height']} but the frames are "
                                f"{width}x{height}; fix width/height")  # fmt: skip
    if len(problems) > limit:
        problems = problems[:limit] + [f"{json_file}: ... and {len(problems) - limit} more problems"]
    return problems


def load_keyframe_coco_json(json_file: str, video_root: str) -> tuple[list[dict], dict]:
    """Read keyframe annotations into Detectron2 dicts for ``KeyframeClipMapper``.

    Each dict has ``file_name`` and ``video_file`` (or ``frame_dir``) as absolute paths, ``frame_index``,
    ``height``, ``width``, ``image_id`` and ``annotations`` (XYWH_ABS boxes, contiguous ``category_id``,
    ``segmentation`` when present). Returns ``(dicts, metadata)`` with ``thing_classes`` and
    ``thing_dataset_id_to_contiguous_id`` as Detectron2's COCO loader sets them.
    """
    from detectron2.structures import BoxMode

    if not os.path.isfile(json_file):
        raise FileNotFoundError(
            f"keyframe annotations {json_file!r} not found; expected a COCO json whose images carry "
            "`video_file` (or `frame_dir`) and `frame_index`"
        )
    with open(json_file, encoding="utf-8") as f:
        data = json.load(f)
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ValueError(f"{json_file}: not a COCO json (no {key!r} list)")
    categories = sorted(data["categories"], key=lambda c: c["id"])
    id_map = {c["id"]: i for i, c in enumerate(categories)}
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)

    records = []
    for image in data["images"]:
        source_key = "video_file" if "video_file" in image else "frame_dir" if "frame_dir" in image else None
        if source_key is None or "frame_index" not in image:
            raise ValueError(
                f"{json_file}: image id {image.get('id')} lacks `video_file` (or `frame_dir`) and `frame_index`; "
                "a keyframe json must say which video frame each image is"
            )
        source = os.path.join(video_root, image[source_key])
        annotations = []
        for ann in by_image.get(image["id"], []):
            if ann["category_id"] not in id_map:
                raise ValueError(
                    f"{json_file}: annotation {ann.get('id')} has unknown category {ann['category_id']}"
                )
            obj = {
                "bbox": ann["bbox"],
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": id_map[ann["category_id"]],
                "iscrowd": ann.get("iscrowd", 0),
            }
            if "segmentation" in ann:
                obj["segmentation"] = ann["segmentation"]
            annotations.append(obj)
        records.append(
            {
                "file_name": source,
                source_key: source,
                "frame_index": int(image["frame_index"]),
                "height": int(image["height"]),
                "width": int(image["width"]),
                "image_id": image["id"],
                "video_id": image.get("video_id", _video_id(source, video_root)),
                "annotations": annotations,
            }
        )
    metadata = {
        "thing_classes": [c["name"] for c in categories],
        "thing_dataset_id_to_contiguous_id": id_map,
    }
    return records, metadata
