"""The end-to-end DDP benchmark's pieces that run without GPUs: the COCO-like data, the evaluation-log parser
and the derived figures (efficiency, end-to-end vs model-only, evaluation and loss-curve agreement)."""

import json
from pathlib import Path

import pytest

pytest.importorskip("detectron2")

from benchmarks import ddp  # noqa: E402
from benchmarks.coco_like import generate_images, visible_polygons  # noqa: E402


def test_coco_like_images_are_jpegs_with_polygon_masks_that_pass_the_dataset_checks(tmp_path):
    import numpy as np

    from hiera_det.data.custom import check_coco_file, mask_format_of

    specs = generate_images(tmp_path, 3, 1, width=96, height=64, workers=1)
    json_file, image_root = specs["train"].rsplit(":", 1)
    content = json.loads(Path(json_file).read_text())
    assert [i["file_name"] for i in content["images"]] == ["000000.jpg", "000001.jpg", "000002.jpg"]
    assert content["annotations"] and all(isinstance(a["segmentation"], list) for a in content["annotations"])
    assert mask_format_of(json_file) == "polygon"
    assert check_coco_file(json_file, image_root, "coco_like_train") == []

    ring = np.zeros((20, 20), bool)
    ring[4:16, 4:16] = True
    ring[8:12, 8:12] = False
    (polygon,) = visible_polygons(ring)  # holes are filled: one outer contour
    assert len(polygon) >= 8 and min(polygon) >= 4.0 and max(polygon) <= 16.0


def _train(images_per_s, loss_curve=(), **extra):
    return {"status": "ok", "kind": "train", "images_per_s": images_per_s, "loss_curve": [list(p) for p in loss_curve],
            **extra}


def test_derived_figures_and_report():
    results = {
        "maskrcnn_1gpu": _train(20.0, seconds_per_iteration=0.4, loader_share=0.01),
        "model_only_maskrcnn": {"status": "ok", "kind": "model_only", "synthetic_images_per_s": 25.0,
                                "real_batch_images_per_s": 22.0},
        "maskrcnn_2gpu": _train(36.0),
        "clip_det_2gpu": {"status": "failed", "kind": "train"},
        "video_cls_1gpu": _train(40.0),
        "model_only_video_cls": {"status": "ok", "kind": "model_only", "real_batch_images_per_s": 50.0},
        "video_cls_2gpu": _train(78.0, seconds_per_iteration=0.205),
        "video_cls_stepsync_2gpu": _train(70.0, seconds_per_iteration=0.23),
        # COCO's NaN for an area range without objects counts as equal
        "eval_maskrcnn_1gpu": {"status": "ok", "kind": "eval", "metrics": {"bbox": {"AP": 1.5, "APs": float("nan")}}},
        "eval_maskrcnn_2gpu": {"status": "ok", "kind": "eval", "metrics": {"bbox": {"AP": 1.5, "APs": float("nan")}}},
        "eval_video_cls_1gpu": {"status": "ok", "kind": "eval", "metrics": {"video_classification": {"top1": 50.0}}},
        "eval_video_cls_2gpu": {"status": "ok", "kind": "eval", "metrics": {"video_classification": {"top1": 40.0}}},
        "maskrcnn_lc_1gpu_seed0": _train(1.0, [(19, 2.0), (39, 1.5)]),
        "maskrcnn_lc_1gpu_seed1": _train(1.0, [(19, 2.2), (39, 1.4)]),
        "maskrcnn_lc_2gpu_seed0": _train(1.0, [(19, 2.05), (39, 1.5)]),
    }
    derived = ddp.derived(results)
    assert derived["efficiency"] == {"maskrcnn_2gpu": 0.9, "video_cls_2gpu": 0.975}
    assert derived["end_to_end_vs_model_only"] == {
        "maskrcnn": {"synthetic_images_per_s": 0.8, "real_batch_images_per_s": 0.909},
        "video_cls": {"real_batch_images_per_s": 0.8}}
    agreement = derived["eval_agreement"]
    assert agreement["maskrcnn"]["same_metrics"] is True and agreement["maskrcnn"]["same_detections"] is None
    assert agreement["video_cls"]["same_metrics"] is False
    curves = derived["loss_curves"]
    assert curves["seed_spread"] == 0.2 and curves["n_vs_1"] == {2: 0.05} and curves["within_spread"] is True

    text = ddp.markdown({"meta": {"tag": "t", "iters": 40, "per_gpu": 8, "workers": 8, "data_note": "x"},
                         "results": results, "derived": derived})
    assert "| maskrcnn_2gpu | " in text and "| 0.9 |" in text and "clip_det_2gpu (failed)" in text
    assert "within the spread True" in text
    assert "Distributed evaluation of video_cls (eval_video_cls_1gpu vs eval_video_cls_2gpu" in text
    assert "video_cls_stepsync_2gpu 70.0 items/s (0.23 s/iter) against 78.0 (0.205 s/iter)" in text


def test_two_gpu_plan_times_alone_and_shares_gpus_only_for_checks(tmp_path):
    from types import SimpleNamespace

    (tmp_path / "specs.json").write_text(json.dumps({"clips_train": "x.csv"}))
    args = SimpleNamespace(gpus=2, iters=40, per_gpu=8, models=["video_cls", "clip_det"], smoke=False, workers=8,
                           data=tmp_path, work=tmp_path / "work", lc_model="maskrcnn_small", lc_iters=200,
                           lc_batch=8, lc_period=100)
    phases = [[(name, build()) for name, build in phase] for phase in ddp.plan(args)]
    names = [[name for name, _ in phase] for phase in phases]
    assert names == [
        ["video_cls_1gpu", "clip_det_1gpu"], ["model_only_video_cls", "model_only_clip_det"],
        ["video_cls_2gpu"], ["clip_det_2gpu"],
        ["maskrcnn_small_lc_1gpu_seed0", "maskrcnn_small_lc_1gpu_seed1", "maskrcnn_small_lc_2gpu_seed0"],
        ["resume_across", "eval_maskrcnn_small_1gpu", "eval_maskrcnn_small_2gpu", "eval_video_cls_1gpu",
         "eval_video_cls_2gpu"],
        ["video_cls_stepsync_2gpu"]]
    for phase in phases[:4] + phases[-1:]:  # timing: every job on its own GPUs
        used = [gpu for _, job in phase for gpu in job.gpus]
        assert len(used) == len(set(used))
    lc = dict(phases[4])
    assert ddp._opt(lc["maskrcnn_small_lc_1gpu_seed0"].command, "SOLVER.IMS_PER_BATCH") == "8"
    assert ddp._opt(lc["maskrcnn_small_lc_2gpu_seed0"].command, "SOLVER.IMS_PER_BATCH") == "8"
    assert ddp._opt(lc["maskrcnn_small_lc_2gpu_seed0"].command, "SOLVER.CHECKPOINT_PERIOD") == "100"
    resume = dict(phases[5])["resume_across"].command
    assert resume[resume.index("--source") + 1].endswith("maskrcnn_small_lc_2gpu_seed0")
    assert ddp._opt(phases[-1][0][1].command, "SOLVER.LOSS_SYNC_PERIOD") == "1"


def test_evaluation_metrics_are_read_from_detectron2s_copypaste_lines(tmp_path):
    log = "\n".join([
        "[d2.evaluation.testing]: copypaste: Task: bbox",
        "[d2.evaluation.testing]: copypaste: AP,AP50",
        "[d2.evaluation.testing]: copypaste: 12.5000,30.0000",
        "[d2.evaluation.testing]: copypaste: Task: segm",
        "[d2.evaluation.testing]: copypaste: AP,AP50",
        "[d2.evaluation.testing]: copypaste: 10.0000,25.0000",
    ])  # fmt: skip
    job = ddp.Job("eval", "eval", "maskrcnn", [0], tmp_path, [], {})
    result = ddp.summarize_eval(job, log)
    assert result["metrics"] == {"bbox": {"AP": 12.5, "AP50": 30.0}, "segm": {"AP": 10.0, "AP50": 25.0}}


def test_video_e2e_report_orders_runs_and_relates_them_to_model_only_and_the_earlier_2gpu_run(tmp_path):
    from benchmarks.video_e2e import report

    runs = tmp_path / "runs"
    common = {"seconds_per_iteration": 0.1, "wall_clips_per_s": 79.0, "loader_share": 0.1, "peak_mem_mib": 7000}
    for name, started, clips in (("after", 20, 120.0), ("before", 10, 60.0)):
        (runs / name).mkdir(parents=True)
        profile = {"steps": 2, "wall_ms_per_step": 70.0, "device_busy_ms_per_step": 50.0,
                   "loader_next_ms_per_step": 1.0,
                   "host": {"cudaStreamSynchronize": {"calls_per_step": 2.0, "ms_per_step": 9.0}}}
        extra = {"model_only_clips_per_s": 150.0, "profile": profile} if name == "after" else {}
        (runs / name / "result.json").write_text(json.dumps(
            {"name": name, "started_unix": started, "clips_per_s": clips, **common, **extra}))
    (runs / "nvidia-smi.txt").write_text("name, driver\nNVIDIA H100 80GB HBM3, 580\n")
    earlier = tmp_path / "ddp.json"
    earlier.write_text(json.dumps({"results": {"video_cls_2gpu": {"images_per_s": 180.0}}}))
    doc = report(runs, tmp_path / "out", "t", earlier)
    assert list(doc["runs"]) == ["before", "after"] and doc["device"] == "NVIDIA H100 80GB HBM3, 580"
    assert doc["runs"]["before"]["end_to_end_vs_model_only"] == 0.4
    assert doc["runs"]["after"]["efficiency_of_earlier_2gpu_run"] == 0.75
    md = (tmp_path / "out" / "video_e2e_t.md").read_text()
    assert "| before | 60.0 |" in md and "cudaStreamSynchronize 9.0 ms (2.0)" in md
