"""Running a trained detector over image files: inputs, predictor, per-image records and detections.json.

``tools/demo.py`` is the command line. ``run_image_demo(cfg, paths, output)`` processes every image it can:
an image that cannot be read or run is named in ``failed`` with the reason, and the others are written.

detections.json holds, per image: ``file``, ``output`` (picture name), ``height``, ``width`` and
``instances``, each with ``bbox`` ([x, y, w, h] pixels), ``score``, ``category_id`` (the dataset's id, as in
COCO results), ``category`` (name) and, for mask models, ``segmentation`` (COCO RLE); ``categories`` maps
ids to names, ``failed`` lists the inputs that could not be processed with the reason, and ``unprocessed``
the inputs an interrupted run did not reach.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import signal
from pathlib import Path

import cv2
import numpy as np
import torch
import tqdm
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from pycocotools import mask as mask_utils

from .. import d2  # noqa: F401  (registers the backbones and meta-architectures build_model looks up)
from ..config import error_message, get_hiera_cfg, merge_config
from ..data.custom import add_dataset_specs, register_custom_datasets
from ..data.image_io import read_image
from ..detection.fast_inference import inference_autocast, use_cuda_graphs
from ..engine.checkpointer import atomic_write, load_model_weights
from .draw import draw_instances

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")

logger = logging.getLogger(__name__)


class DemoError(Exception):
    """A problem with the command line, config or checkpoint; the message says what to change."""


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


def demo_config(config: str, opts: list[str], confidence_threshold: float, datasets: list[str] = ()):
    """The frozen config of a demo run: ``config`` (a name under configs/ or a path) with ``opts``, the
    score threshold applied to every head, and the CPU when CUDA is missing. ``datasets`` (``NAME=SPEC``,
    as ``tools/train_net.py --dataset``) are registered, so the pictures and the JSON use their class names;
    a config saved by training keeps its own. Raises ``DemoError``."""
    if not 0.0 <= confidence_threshold <= 1.0:
        raise DemoError(f"--confidence-threshold must be in [0, 1], got {confidence_threshold}")
    cfg = get_hiera_cfg()
    try:
        merge_config(cfg, config, opts)
        add_dataset_specs(cfg, datasets)
        register_custom_datasets(cfg)
    except (FileNotFoundError, KeyError, ValueError) as e:
        raise DemoError(error_message(e)) from None
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
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = confidence_threshold
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = confidence_threshold
    cfg.MODEL.PANOPTIC_FPN.COMBINE.INSTANCES_CONFIDENCE_THRESH = confidence_threshold
    cfg.freeze()
    return cfg


def inference_resize(height: int, width: int, short_edge: int, max_size: int) -> T.Transform:
    """Detectron2's test resize (``ResizeShortestEdge``: short side to ``short_edge``, long side at most
    ``max_size``; 0 keeps the size), but never below one pixel a side, where Detectron2 fails on extreme
    aspect ratios (a 4 x 4000 image becomes 0 pixels high)."""
    if short_edge == 0:
        return T.NoOpTransform()
    new_h, new_w = T.ResizeShortestEdge.get_output_shape(height, width, short_edge, max_size)
    return T.ResizeTransform(height, width, max(new_h, 1), max(new_w, 1))


class ImagePredictor:
    """The detector of ``cfg`` with MODEL.WEIGHTS loaded (:func:`load_model_weights`), run on one image.

    What Detectron2's ``DefaultPredictor`` does (channel order, test resize, one forward without gradients),
    with the weights loaded the tools' one way, the resize of :func:`inference_resize`, ``TEST.PRECISION``
    and ``TEST.CUDA_GRAPHS``.
    """

    def __init__(self, cfg, *, allow_pickle: bool = False):
        self.cfg = cfg
        self.model = build_model(cfg).eval()
        self.weights = load_model_weights(
            self.model, cfg.MODEL.WEIGHTS, allow_pickle=allow_pickle, require_complete=True
        )
        use_cuda_graphs(cfg, self.model)

    def __call__(self, image_bgr: np.ndarray):
        """``Instances`` (on the CPU) for an ``[H, W, 3]`` uint8 BGR image."""
        image = image_bgr[:, :, ::-1] if self.cfg.INPUT.FORMAT == "RGB" else image_bgr
        height, width = image.shape[:2]
        resize = inference_resize(height, width, self.cfg.INPUT.MIN_SIZE_TEST, self.cfg.INPUT.MAX_SIZE_TEST)
        tensor = torch.as_tensor(resize.apply_image(image).astype("float32").transpose(2, 0, 1))
        with torch.no_grad(), inference_autocast(self.cfg):
            output = self.model([{"image": tensor, "height": height, "width": width}])[0]
        return output["instances"].to("cpu")


def dataset_labels(cfg) -> tuple[list[int], list[str]]:
    """The dataset's category ids and names by class index, from the metadata of the first of DATASETS.TEST
    and DATASETS.TRAIN that names classes (a run on custom data may have no test set)."""
    names = [*cfg.DATASETS.TEST, *cfg.DATASETS.TRAIN]
    named = [n for n in names if MetadataCatalog.get(n).get("thing_classes", None)]
    metadata = MetadataCatalog.get(named[0] if named else names[0] if names else "__unused")
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
    return dataset_ids, class_names


def instances_to_records(instances, dataset_ids: list[int], class_names: list[str], with_masks: bool) -> list:
    """detections.json's ``instances`` of one image (see the module docstring)."""
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


def unique_stem(path: str, taken: set[str]) -> str:
    """The file name of ``path`` without extension, made unique among ``taken`` (``clip``, ``clip_1``...),
    so that inputs of the same name in other folders or formats do not overwrite each other's outputs."""
    base = os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
    stem, k = base, 1
    while stem in taken:
        stem, k = f"{base}_{k}", k + 1
    taken.add(stem)
    return stem


def prepare_output_folder(output: str | os.PathLike, inputs: list[str]) -> Path:
    """Create ``output`` (the folder a demo writes into) and return it, or raise ``DemoError`` saying what
    to change: it is a file, it cannot be created, or it is where inputs are. A demo's outputs are named after
    its inputs, so writing next to them would overwrite an input of the same name (``photo.png``) and mix
    the pictures into the next run's inputs."""
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise DemoError(f"--output {output} is a file; give a folder for the outputs")
    resolved = out.resolve()
    for path in inputs:
        folder = Path(path) if os.path.isdir(path) else Path(path).parent
        if folder.resolve() == resolved:
            raise DemoError(
                f"--output {output} is the folder the inputs are in ({path}): the outputs are named after the "
                "inputs and would overwrite or mix with them; choose another --output folder"
            )
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DemoError(f"cannot create the --output folder {output}: {e.strerror or e}") from e
    if not os.access(out, os.W_OK):
        raise DemoError(f"the --output folder {output} is not writable; choose another")
    return out


def interrupt_on_sigterm() -> None:
    """Make ``kill`` (SIGTERM) stop a demo as Ctrl-C does: its ``finally`` blocks then finish the file being
    written and the summary, where the default action would end the process mid-file."""
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


def describe_failure(error: Exception) -> str:
    """The reason an input failed, for the failure list: an ``OSError`` (unreadable or unwritable file)
    names the file and the fix already; other errors get their type in front."""
    text = str(error).strip() or "no message"
    return text if isinstance(error, OSError) else f"{type(error).__name__}: {text}"


def run_image_demo(
    cfg, paths: list[str], output: str | os.PathLike, *, config_name: str = "", with_masks: bool = True,
    allow_pickle: bool = False, progress: bool = True,
) -> dict:  # fmt: skip
    """Detect objects in every image of ``paths``; write a picture per image and detections.json into
    ``output``, and return detections.json's content. An image that fails (unreadable, or an error while
    running or drawing it) is logged and listed in ``failed`` with the reason; the others go on."""
    dataset_ids, class_names = dataset_labels(cfg)
    predictor = ImagePredictor(cfg, allow_pickle=allow_pickle)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    summary = {
        "config": config_name,
        "weights": cfg.MODEL.WEIGHTS,
        "confidence_threshold": cfg.MODEL.RETINANET.SCORE_THRESH_TEST if "RetinaNet" in
        cfg.MODEL.META_ARCHITECTURE else cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST,
        "categories": [{"id": i, "name": n} for i, n in zip(dataset_ids, class_names)],
        "images": [],
        "failed": [],
        "unprocessed": list(paths),
    }  # fmt: skip
    taken: set[str] = set()
    try:
        for path in tqdm.tqdm(paths, desc="demo", unit="image", disable=not progress or len(paths) < 2):
            try:
                summary["images"].append(_process(predictor, path, output, taken, class_names, dataset_ids,
                                                  with_masks))  # fmt: skip
            except Exception as e:  # noqa: BLE001  one bad input must not stop the others
                logger.warning("skipping %s: %s", path, describe_failure(e))
                summary["failed"].append({"file": path, "error": describe_failure(e)})
            summary["unprocessed"].pop(0)
    finally:  # an interrupted run keeps the results it has
        text = json.dumps(summary, indent=1)
        atomic_write(str(output / "detections.json"), lambda f: f.write(text.encode()))
    return summary


def _process(predictor, path, output: Path, taken, class_names, dataset_ids, with_masks) -> dict:
    image_bgr = read_image(path, format="BGR")
    instances = predictor(image_bgr)
    picture = draw_instances(
        np.ascontiguousarray(image_bgr[:, :, ::-1]),
        instances.pred_boxes.tensor,
        instances.scores,
        instances.pred_classes,
        class_names,
        masks=instances.pred_masks if instances.has("pred_masks") else None,
    )
    name = unique_stem(path, taken) + ".png"
    if not cv2.imwrite(str(output / name), np.ascontiguousarray(picture[:, :, ::-1])):
        raise OSError(f"could not write {output / name}; check that --output is a writable folder")
    return {
        "file": path,
        "output": name,
        "height": int(image_bgr.shape[0]),
        "width": int(image_bgr.shape[1]),
        "instances": instances_to_records(instances, dataset_ids, class_names, with_masks),
    }
