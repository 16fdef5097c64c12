"""benchmarks/mae_proof.py: the GPU-side data cutting, the plan of arms and the report, on tiny CPU inputs."""

from __future__ import annotations

import json
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from benchmarks import mae_proof


def test_clip_batches_cut_like_the_recipe():
    videos = torch.arange(16, dtype=torch.uint8).view(1, 16, 1, 1, 1).expand(3, 16, 64, 64, 3).contiguous()
    clips = mae_proof.ClipBatches(videos, frames=8, rate=2, generator=torch.Generator().manual_seed(0))
    test = clips.take(torch.arange(3), train=False)
    assert test.shape == (3, 3, 8, 64, 64)
    assert test[0, 0, :, 0, 0].tolist() == [0, 2, 4, 6, 8, 10, 12, 14]  # the centered 15-frame span
    train, index = clips(5)
    assert train.shape == (5, 3, 8, 64, 64) and index.shape == (5,)
    # every frame of a clip comes from one start, every `rate` frames (a constant frame stays constant)
    first = train[:, 0, :, 32, 32]
    assert ((first[:, 1:] - first[:, :-1]) == 2).all() and set(first[:, 0].tolist()) <= {0.0, 1.0}


def test_image_crops_stay_inside_and_have_the_size():
    boxes = mae_proof.random_boxes(200, 48, 80, (0.35, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(0), "cpu")
    assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= 80 + 1e-4).all() and (boxes[:, 4] <= 48 + 1e-4).all()
    pool = torch.randint(0, 255, (4, 48, 80, 3), dtype=torch.uint8)
    images = mae_proof.ImageBatches(pool, 32, torch.Generator().manual_seed(0))(6)
    assert images.shape == (6, 3, 32, 32) and images.min() >= 0 and images.max() <= 255


def test_plan_runs_every_arm_on_every_seed_after_its_pretraining(tmp_path):
    args = Namespace(tiny=True, device="", seeds=[0, 1], threads=1, pretrain_seconds=1.0, pretrain_max_iters=5, pretrain_lr=1e-3,
                     loader_workers=0, detection_iters=2, video_iters=2, diagnose_video=False,
                     transfer_video=False)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "val_tiny_images").write_text(str(tmp_path))
    jobs = mae_proof.plan_jobs(args, tmp_path)
    names = {j["name"] for j in jobs}
    pretrains = [j for j in jobs if j["kind"] == "pretrain"]
    assert len(pretrains) == 8 and len(jobs) == 8 + 2 * (4 + 7)
    for job in jobs:
        assert set(job["deps"]) <= names
        if job["kind"] != "pretrain" and job["arm"] != "scratch":
            assert job["deps"] and Path(job["weights"]).name.startswith(job["deps"][0].removeprefix("pretrain_"))
    assert {j["arm"] for j in jobs if j["kind"] == "video"} == {"scratch", "mae", "mae_low_lr", "mae_ratio_0.75",
                                                                 "mae_layer_decay_0.65", "mae_xavier_init",
                                                                 "xavier_init_untrained"}
    assert {j["arm"] for j in jobs if j["kind"] == "detection"} == {"scratch", "mae", "mae_low_lr", "mae_xavier_init"}
    inits = {j["name"]: j["opts"][j["opts"].index("MODEL.MAE.ENCODER_INIT") + 1] for j in pretrains}
    assert inits["pretrain_image_mae"] == inits["pretrain_video_mae"] == "trunk"
    assert inits["pretrain_video_mae_xavier"] == "xavier"
    untrained = next(j for j in pretrains if j["name"] == "pretrain_video_xavier_untrained")
    assert untrained["max_iters"] == 0
    args.diagnose_video = True
    diagnosis = mae_proof.plan_jobs(args, tmp_path)
    assert {j["kind"] for j in diagnosis} == {"pretrain", "video"} and len(diagnosis) == 3 + 2 * 4
    time_masked = [j for j in diagnosis if j["name"] == "pretrain_video_mae_time_r75"][0]["opts"]
    assert time_masked[time_masked.index("MODEL.MAE.MASK_MODE") + 1] == "time"
    args.diagnose_video, args.transfer_video = False, True
    transfer = mae_proof.plan_jobs(args, tmp_path)
    assert [j["name"] for j in transfer if j["kind"] == "pretrain"] == ["pretrain_video_mae"]
    modes = {j["arm"]: j["transfer"] for j in transfer if j["kind"] == "video" and j["seed"] == 0}
    assert modes == {"scratch": None, "mae": None, "mae_reinit_pos": "reinit_pos", "mae_stages_1_2": "stages_1_2",
                     "mae_stages_1_3": "stages_1_3", "mae_shrink_0.5": "shrink_0.5"}


def _tiny_video_classifier(seed: int):
    from hiera_det.video.meta_arch import HieraVideoClassifier
    from hiera_det.modeling.specs import build_hiera

    torch.manual_seed(seed)
    trunk = build_hiera("hiera_base_16x224", input_size=(8, 64, 64), embed_dim=16, num_heads=1, stages=(1, 1, 1, 1),
                        num_classes=6)
    return HieraVideoClassifier(trunk=trunk, pixel_mean=[0.0] * 3, pixel_std=[1.0] * 3)


def test_partial_transfer_resets_only_what_the_mode_names():
    pretrained, fresh = _tiny_video_classifier(0).trunk, _tiny_video_classifier(1).trunk
    before = {n: p.detach().clone() for n, p in pretrained.named_parameters()}
    init = dict(fresh.named_parameters())

    def changed(mode):
        trunk = _tiny_video_classifier(0).trunk
        names = mae_proof.partial_transfer(trunk, fresh, mode)
        if not mode.startswith("shrink"):  # the named ones are the fresh trunk's, the rest the pre-trained ones
            for name, p in trunk.named_parameters():
                assert torch.equal(p, init[name] if name in names else before[name]), (mode, name)
        return trunk, set(names)

    assert changed("reinit_pos")[1] == {n for n in before if n.startswith("pos_embed")}
    later = {n for n in before if n.startswith(("blocks.2.", "blocks.3.", "norm."))}
    assert changed("stages_1_2")[1] == later
    assert changed("stages_1_3")[1] == {n for n in later if not n.startswith("blocks.2.")}
    shrunk, names = changed("shrink_0.5")
    assert names == {n for n in before if not n.startswith("head.")}
    torch.testing.assert_close(shrunk.blocks[1].mlp.fc1.weight,
                               (before["blocks.1.mlp.fc1.weight"] + init["blocks.1.mlp.fc1.weight"]) / 2)
    with pytest.raises(ValueError, match="unknown transfer mode"):
        mae_proof.partial_transfer(pretrained, fresh, "stage4_only")


def test_trunk_diagnostics_measure_attention_variance_shares_and_gradients():
    model = _tiny_video_classifier(0)
    clips = torch.rand(4, 3, 8, 64, 64)
    labels = torch.tensor([0, 1, 2, 3])
    report = mae_proof.trunk_diagnostics(model, clips, labels)
    assert set(report["grad_norm"]) == {"patch_embed", "pos_embed", "stage1", "stage2", "stage3", "stage4", "norm",
                                        "head"}
    assert all(v > 0 for v in report["grad_norm"].values())
    for key in ("position_share", "clip_share"):
        assert set(report[key]) == {"stage1", "stage2", "stage3", "stage4"}
        assert all(0 <= v <= 1 for v in report[key].values())
    assert all(0 < v <= 1.0001 for v in report["attention_entropy"].values()) and len(report["attention_entropy"]) == 4
    with torch.no_grad():  # zero queries and keys: every attention row is uniform, entropy exactly log(keys)
        for block in model.trunk.blocks:
            block.attn.qkv.weight.zero_()
            block.attn.qkv.bias.zero_()
    assert set(mae_proof.trunk_diagnostics(model, clips, labels)["attention_entropy"].values()) == {1.0}
    assert model.training  # the probe restores the mode it found


def test_summary_and_verdict():
    jobs = [dict(name=f"v_{arm}_{s}", kind="video", arm=arm, seed=s) for arm in ("scratch", "mae") for s in (0, 1)]
    results = {"v_scratch_0": {"ok": True, "top1": 90.0}, "v_scratch_1": {"ok": True, "top1": 92.0},
               "v_mae_0": {"ok": True, "top1": 20.0}, "v_mae_1": {"ok": False, "error": "stopped at the deadline"}}
    summary = mae_proof.summarize(jobs, results)
    arms = summary["video"]["arms"]
    assert arms["scratch"]["mean"] == 91.0 and arms["mae"]["gain_over_scratch"] == -71.0
    assert arms["mae"]["failed"] == {1: "stopped at the deadline"}
    verdict = mae_proof.verdict(summary)
    assert verdict["video"].startswith("MAE hurts") and "no finished run" in verdict["detection"]


@pytest.mark.slow
def test_tiny_video_diagnosis_end_to_end(tmp_path):
    out = tmp_path / "out"
    subprocess.run([sys.executable, "benchmarks/mae_proof.py", "--tiny", "--diagnose-video", "--seeds", "0",
                    "--parallel", "3", "--out", str(out), "--work", str(tmp_path / "work")], check=True,
                   cwd=Path(__file__).resolve().parents[1])
    report = json.loads((out / "mae_proof.json").read_text())
    assert all(run["ok"] for run in report["runs"].values()), report["runs"]
    for run in report["runs"].values():
        assert set(run["pooled_feature_cosine"]) == set(run["motion_sensitivity"]) == {"init", "final"}
        assert run["motion_sensitivity"]["init"] > 0  # a random trunk is not blind to time reversal
    assert report["pretraining"]["video_mae_time_r50"]["iterations"] >= 2
    assert (out / "mae_proof.md").read_text().startswith("# MAE pre-training vs random init")


def test_token_collapse_trace_measures_the_trunk_at_each_iteration(tmp_path):
    from benchmarks import mae_token_collapse

    mae_token_collapse.main(["--iters", "2", "0", "--clips", "4", "--batch", "2", "--threads",
                             str(torch.get_num_threads()), "--fine-tune-iters", "1", "--train-clips", "6",
                             "--out", str(tmp_path), "MODEL.MAE.MASK_RATIO", "0.75"])
    report = json.loads((tmp_path / "mae_token_collapse.json").read_text())
    assert [row["iteration"] for row in report["trace"]] == [0, 2]
    start, trained = report["trace"]
    assert start["mae_loss"] is None and trained["mae_loss"] > 0
    assert start["clip_share"] != trained["clip_share"]  # the two MAE steps changed the trunk the classifier loads
    assert all(0 <= v <= 1 for v in trained["clip_share"].values()) and trained["grad_norm"]["head"] > 0
    assert report["settings"]["opts"] == ["MODEL.MAE.MASK_RATIO", "0.75"]
    tune = report["fine_tune"]
    assert tune["iterations"] == 1 and tune["val_clips"] == 30 and 0 <= tune["top1"] <= 100
    assert set(tune["probes"]) == {"0", "final"}  # the classifier's trunk measured before and after
    markdown = (tmp_path / "mae_token_collapse.md").read_text()
    assert "| 2 |" in markdown and "fine-tuned 1 iterations" in markdown
