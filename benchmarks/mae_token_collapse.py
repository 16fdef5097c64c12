#!/usr/bin/env python
"""When does video MAE pre-training make a clip's tokens alike? A CPU trace of the clip classifier's trunk.

Pre-trains the video MAE of benchmarks/mae_proof.py (trunk initialisation, mask ratio 0.9, lr 1.5e-3) on
generated unlabeled moving-shapes clips, and at chosen iterations loads the encoder into the clip classifier
of ``configs/video/moving_shapes_cls.yaml`` (as ``MODEL.HIERA.WEIGHTS`` does) and measures it with
``mae_proof.trunk_diagnostics`` on held-out clips: the share of each stage's token-feature variance that
mean pooling keeps (near 1: every token of a clip carries the same feature), the token rms and the
gradient norm a fine-tune step would get. Iteration 0 is the random-init trunk.

    python benchmarks/mae_token_collapse.py --iters 0 100 200 400 800 --out /tmp/collapse   # about 3 min, 2 cores
    python benchmarks/mae_token_collapse.py --iters 0 200 --out /tmp/raw MODEL.MAE.NORM_PIX_LOSS False

Writes ``mae_token_collapse.json`` and ``.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):
    sys.path.insert(0, str(ROOT))

from benchmarks import mae_proof  # noqa: E402


def trace(iters: list[int], batch: int, clips: int, lr: float, opts: list[str] = (), seed: int = 0,
          fine_tune: int = 0, train_clips: int = 1200) -> tuple[list[dict], dict | None]:
    """Pre-train up to ``max(iters)`` (``opts``: MAE config overrides) and return the diagnostics of the
    classifier trunk at each of ``iters``; then, if ``fine_tune``, the clip classifier fine-tuned that many
    iterations from the last checkpoint (``mae_proof.run_video`` on ``train_clips`` generated training videos)."""
    import numpy as np
    import torch
    from detectron2.modeling import build_model

    import hiera_det.d2  # noqa: F401
    from hiera_det.engine.optimizer import build_optimizer

    torch.manual_seed(seed)
    unlabeled = torch.from_numpy(np.stack([mae_proof._render_clip((mae_proof.UNLABELED_SEED, 2, i))
                                           for i in range(clips)]))
    val = torch.from_numpy(np.stack([mae_proof._render_clip((0, 1, i)) for i in range(30)]))
    labels = torch.arange(len(val)) % 6
    dim, depth, heads = mae_proof.SIZES["decoder"][0]
    cfg = mae_proof._cfg(mae_proof.VIDEO_MAE, [
        "MODEL.DEVICE", "cpu", "SOLVER.BASE_LR", lr, "MODEL.MAE.ENCODER_INIT", "trunk", "MODEL.MAE.MASK_RATIO", 0.9,
        "MODEL.MAE.DECODER_EMBED_DIM", dim, "MODEL.MAE.DECODER_DEPTH", depth, "MODEL.MAE.DECODER_NUM_HEADS", heads,
        *opts])
    model = build_model(cfg)
    v = cfg.MODEL.HIERA_VIDEO
    generator = torch.Generator().manual_seed(seed)
    sampler = mae_proof.ClipBatches(unlabeled, v.NUM_FRAMES, v.SAMPLING_RATE, tuple(cfg.INPUT.VIDEO.TRAIN_JITTER_SCALES),
                                    generator)
    probe = mae_proof.ClipBatches(val, v.NUM_FRAMES, v.SAMPLING_RATE).take(torch.arange(len(val)), train=False)
    mean, std = model.pixel_mean.view(1, -1, 1, 1, 1), model.pixel_std.view(1, -1, 1, 1, 1)
    optimizer = build_optimizer(cfg, model)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    warmup = max(1, max(iters) // 20)
    rows, losses, start = [], [], time.perf_counter()
    model.train()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(max(iters) + 1):
            if i in iters:
                path = Path(tmp) / f"iter{i}.pth"
                torch.save({"model": model.state_dict(), "iteration": i}, path)
                torch.manual_seed(seed)
                classifier = build_model(mae_proof._cfg(mae_proof.CLASSIFIER, ["MODEL.HIERA.WEIGHTS", str(path)]))
                diagnostics = mae_proof.trunk_diagnostics(classifier, probe, labels)
                recent = losses[-max(1, len(losses) // 10):]
                rows.append({"iteration": i, "mae_loss": round(sum(recent) / len(recent), 4) if recent else None,
                             "seconds": round(time.perf_counter() - start, 1), **diagnostics})
                print(f"iter {i}: pooled share {diagnostics['clip_share']} token rms {diagnostics['token_rms']}",
                      flush=True)
            if i == max(iters):
                break
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * min(1.0, (i + 1) / warmup)
            loss = model.mae((sampler(batch)[0] - mean) / std).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        if not fine_tune:
            return rows, None
        data = Path(tmp) / "data"
        data.mkdir()
        np.save(data / "train_clips.npy", np.stack([mae_proof._render_clip((0, 0, i)) for i in range(train_clips)]))
        np.save(data / "train_labels.npy", np.arange(train_clips) % 6)
        np.save(data / "val_clips.npy", val.numpy())
        np.save(data / "val_labels.npy", labels.numpy())
        job = {"name": "fine_tune", "seed": seed, "weights": str(path), "opts": ["MODEL.DEVICE", "cpu"],
               "iters": fine_tune, "data_dir": str(data)}
        return rows, mae_proof.run_video(job)


def write_markdown(report: dict, path: Path) -> None:
    lines = ["# Video MAE pre-training makes a clip's tokens alike (CPU trace)", "",
             f"Command: `{report['command']}`; {report['wall_seconds']} s on {report['cpus']} CPU cores.", "",
             "pooled share: the share of a stage's token-feature variance (30 held-out clips) that survives mean "
             "pooling (1: every token of a clip has the same feature; random init 0.1-0.2). grad: the fine-tune's "
             "gradient norm per group at the classifier's initial head.", "",
             "| pre-training iteration | MAE loss | pooled share stage1-4 | position share stage1-4 | token rms stage1-4 "
             "| grad stage1-4 / head |", "|---|---|---|---|---|---|"]
    for row in report["trace"]:
        g = row["grad_norm"]
        grads = " / ".join(f"{g.get(k, 0):.2g}" for k in ("stage1", "stage2", "stage3", "stage4", "head"))
        cells = [" ".join(f"{v:.2f}" for v in row[key].values()) for key in ("clip_share", "position_share", "token_rms")]
        lines.append(f"| {row['iteration']} | {row['mae_loss']} | {' | '.join(cells)} | {grads} |")
    tune = report.get("fine_tune")
    if tune:
        lines += ["", f"Clip classifier fine-tuned {tune['iterations']} iterations from the last checkpoint: train loss "
                  f"{tune['first_loss']} -> {tune['final_loss']} (last 10%), top-1 {tune['top1']}% on "
                  f"{tune['val_clips']} held-out clips (chance 16.7)."]
    path.write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--iters", type=int, nargs="+", default=[0, 50, 100, 200, 400],
                        help="pre-training iterations at which to measure the classifier trunk")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--clips", type=int, default=400, help="unlabeled clips rendered for pre-training")
    parser.add_argument("--lr", type=float, default=1.5e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--fine-tune-iters", type=int, default=0,
                        help="then fine-tune the clip classifier this many iterations from the last checkpoint")
    parser.add_argument("--train-clips", type=int, default=1200, help="generated training videos of the fine-tune")
    parser.add_argument("--out", required=True)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="MAE config overrides (KEY VALUE ...), e.g. "
                        "MODEL.MAE.NORM_PIX_LOSS False")
    args = parser.parse_args(argv)
    if min(args.iters) < 0:
        parser.error("--iters must be >= 0")
    import os

    import torch

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    rows, fine_tune = trace(sorted(set(args.iters)), args.batch, args.clips, args.lr, args.opts,
                           fine_tune=args.fine_tune_iters, train_clips=args.train_clips)
    report = {"benchmark": "mae_token_collapse", "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
              "cpus": os.cpu_count(), "torch": torch.__version__, "settings": vars(args),
              "wall_seconds": round(time.perf_counter() - start, 1), "trace": rows, "fine_tune": fine_tune}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "mae_token_collapse.json").write_text(json.dumps(report, indent=1) + "\n")
    write_markdown(report, out / "mae_token_collapse.md")
    print(f"written to {out}/mae_token_collapse.json and .md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
