#!/usr/bin/env python
"""Box and mask AP of the shapes detector after a longer training than scripts/main.sh runs.

Trains ``configs/shapes/hiera_tiny_shapes.yaml`` for ``--iter-multiplier`` times its SOLVER.MAX_ITER (the LR
steps scale along) through ``tools/train_net.py`` in a subprocess, which evaluates on ``hiera_shapes_val`` at
the end; then recomputes COCO AP from the detections it saved (pycocotools, the same numbers Detectron2
logs, plus per-class AP), prints the table with the wall time, and writes
``benchmarks/results/shapes_ap.json``.

    python benchmarks/shapes_ap.py                       # 4x the main schedule, on CPU takes a while
    python benchmarks/shapes_ap.py --max-iter 3000 SEED 1
    python benchmarks/shapes_ap.py --skip-train          # re-score the run already in --output-dir

Trailing KEY VALUE pairs go to the training config. The dataset is generated on first use under
$DETECTRON2_DATASETS/hiera_shapes (default ./datasets).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import io
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a file, python benchmarks/shapes_ap.py: find the checkout
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from pycocotools.coco import COCO  # noqa: E402
from pycocotools.cocoeval import COCOeval  # noqa: E402

SUMMARY_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")  # the first six COCOeval.stats, in order


def coco_ap(gt_json: str | Path, results: list[dict], iou_type: str) -> dict:
    """COCO AP (0-100) of ``results`` against ``gt_json``: the six summary numbers and AP per class."""
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        gt = COCO(str(gt_json))
    if not results:
        per_class = {c["name"]: 0.0 for c in gt.dataset["categories"]}
        return {**{name: 0.0 for name in SUMMARY_NAMES}, "per_class": per_class}
    with contextlib.redirect_stdout(io.StringIO()):  # and its own table
        evaluator = COCOeval(gt, gt.loadRes([dict(r) for r in results]), iou_type)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    summary = {name: float(100 * v) for name, v in zip(SUMMARY_NAMES, evaluator.stats[:6])}
    # precision: [iou thresholds, recall points, categories, area ranges, max detections]; -1 = no data
    precision = evaluator.eval["precision"]
    per_class = {}
    for k, cat_id in enumerate(evaluator.params.catIds):
        p = precision[:, :, k, 0, -1]
        per_class[gt.cats[cat_id]["name"]] = float(100 * p[p > -1].mean()) if (p > -1).any() else float("nan")
    return {**summary, "per_class": per_class}


def format_table(scores: dict[str, dict]) -> str:
    tasks = list(scores)
    lines = [f"{'metric':<12}" + "".join(f"{t:>9}" for t in tasks)]
    for name in SUMMARY_NAMES:
        lines.append(f"{name:<12}" + "".join(f"{scores[t][name]:9.2f}" for t in tasks))
    lines.append("AP per class")
    for cls in scores[tasks[0]]["per_class"]:
        lines.append(f"  {cls:<10}" + "".join(f"{scores[t]['per_class'][cls]:9.2f}" for t in tasks))
    return "\n".join(lines)


def scaled_schedule(cfg, multiplier: float, max_iter: int | None) -> dict:
    """MAX_ITER and STEPS for the longer run: STEPS keep their fraction of the schedule."""
    base = cfg.SOLVER.MAX_ITER
    target = max_iter if max_iter is not None else round(base * multiplier)
    if target < 1:
        raise ValueError(f"the run needs at least one iteration, got {target}")
    # fvcore needs increasing milestones below MAX_ITER; very short runs lose the steps that collapse.
    steps = tuple(sorted({round(s * target / base) for s in cfg.SOLVER.STEPS} & set(range(1, target))))
    return {"base_iter": base, "max_iter": target, "steps": steps}


def last_detectron2_metrics(output_dir: Path) -> dict:
    """The evaluation numbers Detectron2 wrote to metrics.json (``bbox/AP`` ...), if any."""
    found = {}
    metrics = output_dir / "metrics.json"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            with contextlib.suppress(ValueError):
                found.update({k: v for k, v in json.loads(line).items() if k.startswith(("bbox/", "segm/"))})
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="shapes/hiera_tiny_shapes.yaml", help="config name or path")
    parser.add_argument(
        "--iter-multiplier", type=float, default=4.0, help="times the config's SOLVER.MAX_ITER"
    )
    parser.add_argument(
        "--max-iter", type=int, default=None, help="iterations (instead of --iter-multiplier)"
    )
    parser.add_argument("--output-dir", default=str(REPO / "output" / "shapes_ap"), help="training output")
    parser.add_argument("--results", default=str(REPO / "benchmarks" / "results" / "shapes_ap.json"))
    parser.add_argument("--skip-train", action="store_true", help="score the run already in --output-dir")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides for training")
    args = parser.parse_args(argv)

    import hiera_det.d2  # noqa: F401  (registers the datasets, so their annotation files can be found)
    from detectron2.data import MetadataCatalog

    from hiera_det.config import get_hiera_cfg, merge_config, resolve_config_file

    config_file = resolve_config_file(args.config)
    cfg = merge_config(get_hiera_cfg(), config_file, args.opts)
    schedule = scaled_schedule(cfg, args.iter_multiplier, args.max_iter)
    output_dir = Path(args.output_dir)
    test_name = cfg.DATASETS.TEST[0]
    command = [
        sys.executable, str(REPO / "tools" / "train_net.py"), "--config-file", config_file, *args.opts,
        "OUTPUT_DIR", str(output_dir), "SOLVER.MAX_ITER", str(schedule["max_iter"]),
        "SOLVER.STEPS", str(schedule["steps"]), "SOLVER.CHECKPOINT_PERIOD", str(schedule["max_iter"]),
    ]  # fmt: skip
    wall = None
    if args.skip_train and (output_dir / "config.yaml").is_file():
        # report the schedule the run really had (default_setup saved its config there)
        run_cfg = merge_config(get_hiera_cfg(), str(output_dir / "config.yaml"))
        schedule.update(max_iter=run_cfg.SOLVER.MAX_ITER, steps=tuple(run_cfg.SOLVER.STEPS))
    if not args.skip_train:
        print("Running:", " ".join(command), flush=True)
        start = time.perf_counter()
        done = subprocess.run(command, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        wall = time.perf_counter() - start
        if done.returncode:
            print(
                f"error: training failed with exit status {done.returncode}; see {output_dir / 'log.txt'}",
                file=sys.stderr,
            )
            return done.returncode

    results_file = output_dir / "inference" / test_name / "coco_instances_results.json"
    if not results_file.is_file():
        print(
            f"error: {results_file} is missing: the run did not finish its final evaluation "
            f"(rerun without --skip-train, or check {output_dir / 'log.txt'})",
            file=sys.stderr,
        )
        return 1
    gt_json = MetadataCatalog.get(test_name).json_file
    detections = json.loads(results_file.read_text())
    tasks = ["bbox"] + (["segm"] if detections and "segmentation" in detections[0] else [])
    # COCOeval prefers the box when a result has both, so each task gets only its own field.
    own_field = {"bbox": "segmentation", "segm": "bbox"}
    scores = {t: coco_ap(gt_json, [{k: v for k, v in d.items() if k != own_field[t]} for d in detections], t)
              for t in tasks}  # fmt: skip
    gt = json.loads(Path(gt_json).read_text())

    report = {
        "benchmark": "hiera_shapes mask R-CNN AP",
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "config": os.path.relpath(config_file, REPO),
        "overrides": args.opts,
        "iterations": schedule["max_iter"],
        "config_iterations": schedule["base_iter"],
        "lr_steps": list(schedule["steps"]),
        "images_per_batch": cfg.SOLVER.IMS_PER_BATCH,
        "train_and_eval_wall_s": None if wall is None else round(wall, 1),
        "eval_dataset": {"name": test_name, "images": len(gt["images"]), "instances": len(gt["annotations"])},
        "machine": {"device": "cuda" if torch.cuda.is_available() else "cpu", "cpus": os.cpu_count(),
                    "torch": torch.__version__, "python": platform.python_version(),
                    "platform": platform.platform()},  # fmt: skip
        "command": command,
        **scores,
        "detectron2_reported": last_detectron2_metrics(output_dir),
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(report, indent=1) + "\n")
    timing = "not measured (--skip-train)" if wall is None else f"{wall / 60:.1f} min"
    print(
        f"\n{test_name}: {len(gt['images'])} images, {len(gt['annotations'])} objects; "
        f"{schedule['max_iter']} iterations, train + eval wall time {timing}"
    )
    print(format_table(scores))
    reported = report["detectron2_reported"]
    for task in tasks:
        if f"{task}/AP" in reported and not np.isclose(reported[f"{task}/AP"], scores[task]["AP"], atol=0.01):
            print(
                f"warning: Detectron2 logged {task} AP {reported[f'{task}/AP']:.2f}, recomputed "
                f"{scores[task]['AP']:.2f}"
            )
    print(f"wrote {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
