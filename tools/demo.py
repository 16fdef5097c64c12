#!/usr/bin/env python
"""Run a trained detector on images: writes a picture per image (boxes, masks, labels) and detections.json.

    python tools/demo.py --config shapes/hiera_tiny_shapes.yaml --input datasets/hiera_shapes/val \\
        --output output/demo MODEL.WEIGHTS output/shapes/model_final.pth

``--input`` takes files, glob patterns ("photos/*.jpg") and folders (their images, not recursive).
``--config`` names a file under configs/; ``--config-file`` takes any path. Config overrides go after
``--opts`` or at the end of the command line (``KEY VALUE`` pairs). Images that cannot be read are reported
and skipped; the exit status is 1 only when none could be processed.

detections.json holds, per image: ``file``, ``output`` (picture name), ``height``, ``width`` and
``instances``, each with ``bbox`` ([x, y, w, h] pixels), ``score``, ``category_id`` (the dataset's id, as in
COCO results), ``category`` (name) and, for mask models, ``segmentation`` (COCO RLE); ``categories`` maps
ids to names and ``failed`` lists the unreadable inputs with the reason.
"""

from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import tqdm  # noqa: E402
from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.data import MetadataCatalog  # noqa: E402
from detectron2.engine import DefaultPredictor  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402
from pycocotools import mask as mask_utils  # noqa: E402

import hiera_det  # noqa: E402,F401  (registers the Hiera backbones and the bundled datasets)
from hiera_det.config import get_hiera_cfg, merge_config  # noqa: E402
from hiera_det.data.image_io import ImageReadError, read_image  # noqa: E402
from hiera_det.visualization import draw_instances  # noqa: E402

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

logger = logging.getLogger("hiera_det.demo")


class DemoError(Exception):
    """A problem with the command line, config or checkpoint; the message says what to change."""


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Detect objects in images with a trained Detectron2 / hiera_det model.",
        epilog="Trailing KEY VALUE pairs (e.g. MODEL.WEIGHTS model_final.pth) override the config.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config-file", default="", metavar="FILE", help="path to a config file")
    source.add_argument(
        "--config", default="", metavar="NAME", help="a config under configs/, e.g. hiera_fpn.yaml"
    )
    parser.add_argument(
        "--input", nargs="+", required=True, help="image files, glob patterns or folders (quote globs)"
    )
    parser.add_argument("--output", required=True, help="folder for the pictures and detections.json")
    parser.add_argument(
        "--confidence-threshold", type=float, default=0.5, help="minimum score of a kept detection (0..1)"
    )
    parser.add_argument(
        "--no-json-masks", action="store_true", help="leave the RLE masks out of detections.json"
    )
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="KEY VALUE config overrides")
    return parser


def split_trailing_opts(argv: list[str], config_keys) -> tuple[list[str], list[str]]:
    """Splits ``argv`` before the first token that is a config key (``MODEL.WEIGHTS``, ``OUTPUT_DIR``...).

    ``--input`` takes any number of values, so without this split the overrides would be read as inputs.
    A token that names an existing file is an input, whatever it looks like.
    """
    if "--opts" in argv:
        return argv, []
    for i, token in enumerate(argv):
        if token.split(".", 1)[0] in config_keys and not os.path.exists(token):
            return argv[:i], argv[i:]
    return argv, []


def expand_inputs(patterns: list[str]) -> tuple[list[str], list[str]]:
    """Image paths from files, globs and folders (in the given order, sorted within a glob or folder),
    and a note for each pattern that matched nothing. Paths that do not exist are kept: reading them fails
    with a message naming them."""
    paths: list[str] = []
    seen: set[str] = set()
    notes: list[str] = []
    for pattern in patterns:
        pattern = os.path.expanduser(pattern)
        if os.path.isdir(pattern):
            found = sorted(
                str(p)
                for p in Path(pattern).iterdir()
                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
            )
            if not found:
                notes.append(f"folder {pattern} has no images ({', '.join(IMAGE_EXTENSIONS)})")
        elif glob.has_magic(pattern):
            found = sorted(p for p in glob.glob(pattern) if os.path.isfile(p))
            if not found:
                notes.append(f"pattern {pattern!r} matches no file")
        else:
            found = [pattern]
        for path in found:
            if path not in seen:
                seen.add(path)
                paths.append(path)
    return paths, notes


def setup_cfg(args, opts: list[str]):
    if not 0.0 <= args.confidence_threshold <= 1.0:
        raise DemoError(f"--confidence-threshold must be in [0, 1], got {args.confidence_threshold}")
    cfg = get_hiera_cfg()
    try:
        merge_config(cfg, args.config or args.config_file, opts)
    except (FileNotFoundError, KeyError, ValueError) as e:
        raise DemoError(str(e).strip('"')) from None
    weights = cfg.MODEL.WEIGHTS = os.path.expanduser(cfg.MODEL.WEIGHTS)
    if not weights:
        raise DemoError(
            "MODEL.WEIGHTS is empty: the demo needs a trained detector. "
            "Add MODEL.WEIGHTS path/to/model_final.pth "
            "(e.g. OUTPUT_DIR/model_final.pth written by tools/train_net.py)"
        )
    if "://" not in weights and not os.path.isfile(weights):
        raise DemoError(
            f"MODEL.WEIGHTS {weights!r} is not a file; give the path of a checkpoint written by "
            "tools/train_net.py (OUTPUT_DIR/model_final.pth) or a Detectron2 model-zoo .pkl/.pth"
        )
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("CUDA is not available: running on the CPU (MODEL.DEVICE %s -> cpu)", cfg.MODEL.DEVICE)
        cfg.MODEL.DEVICE = "cpu"
    # MODEL.WEIGHTS replaces every parameter, so a pretrained trunk named in the config is not loaded.
    cfg.MODEL.HIERA.WEIGHTS = ""
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = args.confidence_threshold
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = args.confidence_threshold
    cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = args.confidence_threshold
    cfg.freeze()
    return cfg


class StrictDetectionCheckpointer(DetectionCheckpointer):
    """Refuses a checkpoint that leaves parameters of the model unset or gives them other shapes.

    Detectron2's checkpointer only logs such keys, and a detector whose heads keep their random
    initialization draws plausible-looking nonsense.
    """

    def _load_model(self, checkpoint):
        incompatible = super()._load_model(checkpoint)
        problems = []
        if incompatible.missing_keys:
            problems.append(
                f"{len(incompatible.missing_keys)} parameters missing (e.g. "
                f"{', '.join(incompatible.missing_keys[:3])})"
            )
        if incompatible.incorrect_shapes:
            key, got, expected = incompatible.incorrect_shapes[0]
            problems.append(
                f"{len(incompatible.incorrect_shapes)} with other shapes (e.g. {key}: checkpoint "
                f"{tuple(got)}, model {tuple(expected)})"
            )
        if problems:
            raise DemoError(
                f"the checkpoint does not fit the model of this config: {'; '.join(problems)}. Use the "
                "config it was trained with (e.g. the config.yaml next to it in its OUTPUT_DIR)"
            )
        return incompatible


def load_detector_weights(model: torch.nn.Module, weights: str) -> None:
    """Loads a whole-detector checkpoint into ``model`` (see :class:`StrictDetectionCheckpointer`)."""
    try:
        StrictDetectionCheckpointer(model).load(weights, checkpointables=[])
    except DemoError as e:
        raise DemoError(f"MODEL.WEIGHTS {weights}: {e}") from None
    except Exception as e:  # torch.load / pickle raise many types for a damaged or foreign file
        raise DemoError(
            f"MODEL.WEIGHTS {weights} could not be loaded ({type(e).__name__}: {e}); is it a "
            "complete checkpoint written by tools/train_net.py or DetectionCheckpointer.save?"
        ) from e


def build_predictor(cfg) -> DefaultPredictor:
    """Detectron2's ``DefaultPredictor`` with MODEL.WEIGHTS loaded through :func:`load_detector_weights`."""
    unloaded = cfg.clone()
    unloaded.defrost()
    unloaded.MODEL.WEIGHTS = ""
    unloaded.freeze()
    # Silences fvcore's "No checkpoint found. Initializing model from scratch": the weights come next.
    checkpoint_logger = logging.getLogger("fvcore.common.checkpoint")
    level = checkpoint_logger.level
    checkpoint_logger.setLevel(logging.WARNING)
    try:
        predictor = DefaultPredictor(unloaded)
    finally:
        checkpoint_logger.setLevel(level)
    load_detector_weights(predictor.model, cfg.MODEL.WEIGHTS)
    predictor.cfg = cfg
    return predictor


def _output_name(path: str, taken: set[str]) -> str:
    stem = Path(path).stem
    name, k = f"{stem}.png", 1
    while name in taken:
        name, k = f"{stem}_{k}.png", k + 1
    taken.add(name)
    return name


def instances_to_records(instances, dataset_ids: list[int], class_names: list[str], with_masks: bool) -> list:
    boxes = instances.pred_boxes.tensor.numpy() if instances.has("pred_boxes") else np.zeros((0, 4))
    scores = instances.scores.numpy()
    classes = instances.pred_classes.numpy()
    rles = []
    if with_masks and instances.has("pred_masks") and len(instances):
        masks = instances.pred_masks.numpy().astype(np.uint8)
        rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
    records = []
    for i, ((x0, y0, x1, y1), score, c) in enumerate(zip(boxes.tolist(), scores.tolist(), classes.tolist())):
        record = {
            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
            "score": round(score, 4),
            "category_id": dataset_ids[c] if c < len(dataset_ids) else c,
            "category": class_names[c] if c < len(class_names) else f"class {c}",
        }
        if rles:
            record["segmentation"] = {"size": [int(s) for s in rles[i]["size"]],
                                      "counts": rles[i]["counts"].decode("ascii")}  # fmt: skip
        records.append(record)
    return records


def run(args, opts: list[str]) -> int:
    cfg = setup_cfg(args, opts)
    paths, notes = expand_inputs(args.input)
    for note in notes:
        logger.warning(note)
    if not paths:
        raise DemoError(f"no input images found in {args.input}; give image files, glob patterns or folders")
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0] if len(cfg.DATASETS.TEST) else "__unused")
    num_classes = cfg.MODEL.RETINANET.NUM_CLASSES if "RetinaNet" in cfg.MODEL.META_ARCHITECTURE else \
        cfg.MODEL.ROI_HEADS.NUM_CLASSES  # fmt: skip
    class_names = list(metadata.get("thing_classes", []))
    if len(class_names) != num_classes:
        logger.warning(
            "metadata of %r names %d classes but the model has %d; labels may be wrong",
            metadata.name,
            len(class_names),
            num_classes,
        )
    id_map = metadata.get("thing_dataset_id_to_contiguous_id", None)
    dataset_ids = sorted(id_map, key=id_map.get) if id_map else list(range(num_classes))

    predictor = build_predictor(cfg)
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    images, failed, taken = [], [], set()
    for path in tqdm.tqdm(paths, desc="demo", unit="image", disable=len(paths) < 2):
        try:
            image_bgr = read_image(path, format="BGR")
        except ImageReadError as e:
            logger.warning("skipping %s: %s", path, e)
            failed.append({"file": path, "error": str(e)})
            continue
        instances = predictor(image_bgr)["instances"].to("cpu")
        picture = draw_instances(
            np.ascontiguousarray(image_bgr[:, :, ::-1]),
            instances.pred_boxes.tensor,
            instances.scores,
            instances.pred_classes,
            class_names,
            masks=instances.pred_masks if instances.has("pred_masks") else None,
        )
        name = _output_name(path, taken)
        if not cv2.imwrite(str(output / name), np.ascontiguousarray(picture[:, :, ::-1])):
            raise DemoError(f"could not write {output / name}; check that --output is a writable folder")
        images.append({
            "file": path,
            "output": name,
            "height": int(image_bgr.shape[0]),
            "width": int(image_bgr.shape[1]),
            "instances": instances_to_records(instances, dataset_ids, class_names, not args.no_json_masks),
        })  # fmt: skip
    summary = {
        "config": args.config or args.config_file,
        "weights": cfg.MODEL.WEIGHTS,
        "confidence_threshold": args.confidence_threshold,
        "categories": [{"id": i, "name": n} for i, n in zip(dataset_ids, class_names)],
        "images": images,
        "failed": failed,
    }
    (output / "detections.json").write_text(json.dumps(summary, indent=1))
    print(f"{len(images)} of {len(paths)} images processed; pictures and detections.json in {output}")
    if failed:
        print(f"{len(failed)} images could not be read:", *(f"  {f['file']}" for f in failed), sep="\n")
    return 0 if images else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    head, trailing = split_trailing_opts(argv, set(get_hiera_cfg().keys()))
    args = argument_parser().parse_args(head)
    setup_logger(name="fvcore")
    setup_logger(name="hiera_det")
    try:
        return run(args, list(args.opts) + trailing)
    except DemoError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
