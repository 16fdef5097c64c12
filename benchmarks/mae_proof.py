#!/usr/bin/env python
"""Does MAE pre-training help? Pre-train on unlabeled generated data, fine-tune, and compare with random init.

Two tasks, each with a random-init arm and MAE-init arms, every arm over the same seeds and the same
fine-tune budget:

* images: MAE (``configs/mae/shapes_tiny_mae.yaml`` on the trunk of the detector) on unlabeled hiera_shapes
  scenes drawn by the generator with their own seeds (none of them is a train or val image), then the bundled
  detection recipe ``configs/shapes/hiera_tiny_shapes.yaml`` through ``tools/train_net.py`` with
  ``MODEL.HIERA.WEIGHTS`` = the MAE checkpoint; held-out box AP on ``hiera_shapes_val``;
* video: MAE (``configs/mae/moving_shapes_tiny_mae.yaml``) on unlabeled moving-shapes clips, then the clip
  classifier of ``configs/video/moving_shapes_cls.yaml``; held-out top-1 on the 120 validation videos.

The main MAE arm pre-trains at the paper's mask ratio with the encoder at Hiera's own initialisation
(``MODEL.MAE.ENCODER_INIT trunk``), so that it differs from random init by the pre-training alone. The
variants that say *why* when MAE does not help: pre-training at a fifth of the lr, video MAE at mask ratio
0.75 (a 64 px, 8-frame clip has only 16 mask units, so 0.9 leaves one visible), layer-wise lr decay in the
video fine-tune, the official xavier initialisation pre-trained and not pre-trained at all. Every video
fine-tune also reports how its features start and end (``pooled_feature_similarity``: similarity between clips
and sensitivity to the motion that the labels are about). ``--diagnose-video`` compares random mask units
with hiding whole time steps (``MODEL.MAE.MASK_MODE time``). ``--transfer-video`` fine-tunes partial transfers of
the video MAE checkpoint (position embeddings re-initialised, stages 1-2 or 1-3 only, half the pre-training
update), and every video fine-tune measures its trunk before steps 0, 50, 200 and after the last
(``trunk_diagnostics``: gradient norm per stage, attention entropy, how much of the token features' variance
position explains and how much mean pooling keeps).

Everything runs as parallel processes on one GPU (``--parallel``): the pre-training runs and the random-init
fine-tunes first, the MAE-init fine-tunes as soon as their checkpoint exists. Pre-training runs for
``--pretrain-seconds`` of wall time, its warm-up and cosine learning-rate schedule laid over that time (so
it ends on time however many jobs share the GPU; the iterations it reached are reported). Video clips and
unlabeled images are rendered once into memory (``--prepare-only`` does just that) and fed from the GPU; the detector reads the generated hiera_shapes files
through Detectron2 as the recipe does. ``--deadline`` stops what is still running and reports the rest.

    bash benchmarks/mae_proof.sh                      # on the GPU machine: speed + proof, results in $OUT
    python benchmarks/mae_proof.py --tiny --out /tmp/mae_proof   # CPU smoke test of the whole pipeline

Writes ``mae_proof.json`` and ``mae_proof.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if __package__ in (None, ""):  # run as a file: find the checkout
    sys.path.insert(0, str(ROOT))

IMAGE_MAE = "mae/shapes_tiny_mae.yaml"
VIDEO_MAE = "mae/moving_shapes_tiny_mae.yaml"
DETECTOR = "shapes/hiera_tiny_shapes.yaml"
# MAE pre-trains the patch embedding, and the detector config's conv stem has no pre-trained counterpart: both
# detection arms use the patch stem (the rest of the recipe as the config has it)
DETECTOR_OPTS = ["MODEL.HIERA.STEM", "patch"]
CLASSIFIER = "video/moving_shapes_cls.yaml"
CLIP_FRAMES = 16  # frames per generated moving-shapes video
UNLABELED_SEED = 7  # the generators' train / val splits use seed 0 (streams 0 and 1): no overlap

# (sizes for the GPU run, sizes for the CPU smoke test)
SIZES = {
    "unlabeled_images": (4000, 8),
    "unlabeled_clips": (4800, 8),
    "train_clips": (1200, 12),
    "val_clips": (120, 6),
    "image_size": (192, 64),
    "image_batch": (128, 4),
    "video_batch": (64, 4),
    "decoder": ((256, 2, 8), (32, 1, 2)),
}


# ------------------------------------------------------------------------------------------------- data
def _render_image(index: int):
    import numpy as np

    from hiera_det.data.datasets.shapes import render_scene

    return render_scene(np.random.default_rng([UNLABELED_SEED, 2, index]), 256, 256).image


def _render_clip(key: tuple[int, int, int]):
    import numpy as np

    from hiera_det.data.datasets.moving_shapes import CLASSES, _render_video

    seed, split, index = key
    frames, _ = _render_video(index % len(CLASSES), np.random.default_rng([seed, split, index]), 64, CLIP_FRAMES)
    return frames


def prepare(data_dir: Path, tiny: bool, workers: int, images: bool = True) -> dict:
    """Render the in-memory data once (uint8 .npy files) and generate the hiera_shapes files."""
    from multiprocessing import Pool

    import numpy as np

    import hiera_det.d2  # noqa: F401
    from hiera_det.config import get_hiera_cfg, merge_config, resolve_config_file
    from hiera_det.data.catalog import prepare_datasets

    k = int(tiny)
    start = time.perf_counter()
    data_dir.mkdir(parents=True, exist_ok=True)
    cfg = merge_config(get_hiera_cfg(), resolve_config_file(DETECTOR), [])
    if images:
        prepare_datasets(cfg, list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST))
    # the labeled clips are the bundled moving_shapes_cls videos, rendered again from the generator's seeds
    # (train stream 0, val stream 1) without the mp4 round trip
    todo = {
        "unlabeled_images": (_render_image, range(SIZES["unlabeled_images"][k] if images else 0)),
        "unlabeled_clips": (_render_clip, [(UNLABELED_SEED, 2, i) for i in range(SIZES["unlabeled_clips"][k])]),
        "train_clips": (_render_clip, [(0, 0, i) for i in range(SIZES["train_clips"][k])]),
        "val_clips": (_render_clip, [(0, 1, i) for i in range(SIZES["val_clips"][k])]),
    }
    with Pool(workers) as pool:
        for name, (render, keys) in todo.items():
            path = data_dir / f"{name}.npy"
            if keys and not path.is_file():
                np.save(path, np.stack(pool.map(render, keys, chunksize=16)))
    for split in ("train", "val"):
        count = SIZES[f"{split}_clips"][k]
        np.save(data_dir / f"{split}_labels.npy", np.arange(count) % 6)
    if tiny and images:  # three held-out images: a CPU evaluation of the untrained detector takes seconds per image
        from detectron2.data import MetadataCatalog

        meta = MetadataCatalog.get(cfg.DATASETS.TEST[0])
        coco = json.loads(Path(meta.json_file).read_text())
        coco["images"] = coco["images"][:3]
        ids = {image["id"] for image in coco["images"]}
        coco["annotations"] = [a for a in coco["annotations"] if a["image_id"] in ids]
        (data_dir / "val_tiny.json").write_text(json.dumps(coco))
        (data_dir / "val_tiny_images").write_text(meta.image_root)
    return {"prepare_seconds": round(time.perf_counter() - start, 1)}


def random_boxes(n: int, height: int, width: int, scale, ratio, generator, device):
    """``[n, 5]`` roi_align boxes (batch index, x0, y0, x1, y1) of random resized crops (area fraction in
    ``scale``, aspect ratio in ``ratio``), as torchvision's RandomResizedCrop draws them, clipped to fit."""
    import torch

    area = torch.empty(n, device=device).uniform_(*scale, generator=generator) * height * width
    log_r = torch.empty(n, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=generator)
    aspect = log_r.exp()
    w = (area * aspect).sqrt().clamp(max=width)
    h = (area / aspect).sqrt().clamp(max=height)
    x0 = torch.rand(n, device=device, generator=generator) * (width - w)
    y0 = torch.rand(n, device=device, generator=generator) * (height - h)
    index = torch.arange(n, device=device, dtype=torch.float32)
    return torch.stack([index, x0, y0, x0 + w, y0 + h], dim=1)


def crop_resize(x, boxes, size: int):
    """Bilinear crops ``boxes`` of ``x`` ``[N, C, H, W]`` (float) resized to ``size`` x ``size``."""
    from torchvision.ops import roi_align

    return roi_align(x, boxes, output_size=(size, size), spatial_scale=1.0, sampling_ratio=2, aligned=True)


class ImageBatches:
    """Random resized crops (scale 0.35-1) with horizontal flips of a uint8 image pool ``[N, H, W, 3]``."""

    def __init__(self, pool, size: int, generator):
        self.pool, self.size, self.generator = pool, size, generator

    def __call__(self, batch: int):
        import torch

        index = torch.randint(len(self.pool), (batch,), device=self.pool.device, generator=self.generator)
        x = self.pool[index].permute(0, 3, 1, 2).float()
        boxes = random_boxes(batch, x.shape[2], x.shape[3], (0.35, 1.0), (3 / 4, 4 / 3), self.generator, x.device)
        x = crop_resize(x, boxes, self.size)
        flip = torch.rand(batch, device=x.device, generator=self.generator) < 0.5
        return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


class ClipBatches:
    """Clips ``[B, 3, frames, S, S]`` from uint8 videos ``[N, T, S, S, 3]`` as the recipe's video mapper cuts
    them: ``frames`` frames every ``rate``, training with a random start and short-side scale jitter in
    ``jitter`` followed by a random crop of ``S`` (a random square of side ``S * S / scale`` resized to ``S``),
    testing with the centered clip. No flip: it would turn one motion class into another."""

    def __init__(self, videos, frames: int, rate: int, jitter=(64, 72), generator=None):
        self.videos, self.frames, self.rate, self.jitter, self.generator = videos, frames, rate, jitter, generator
        self.span = (frames - 1) * rate + 1

    def take(self, index, train: bool):
        import torch

        videos = self.videos[index]
        B, T, S = videos.shape[:3]
        device = videos.device
        if train:
            start = torch.randint(T - self.span + 1, (B, 1), device=device, generator=self.generator)
        else:
            start = torch.full((B, 1), (T - self.span) // 2, device=device)
        frames = start + self.rate * torch.arange(self.frames, device=device)
        clips = videos[torch.arange(B, device=device).unsqueeze(1), frames]  # [B, frames, S, S, 3]
        clips = clips.permute(0, 4, 1, 2, 3).float()
        if not train:
            return clips
        scale = torch.empty(B, device=device).uniform_(*self.jitter, generator=self.generator)
        side = S * S / scale
        x0 = torch.rand(B, device=device, generator=self.generator) * (S - side)
        y0 = torch.rand(B, device=device, generator=self.generator) * (S - side)
        boxes = torch.stack([x0, y0, x0 + side, y0 + side], 1).repeat_interleave(self.frames, 0)
        index = torch.arange(B * self.frames, device=device, dtype=torch.float32).unsqueeze(1)
        flat = clips.permute(0, 2, 1, 3, 4).reshape(B * self.frames, 3, S, S)
        flat = crop_resize(flat, torch.cat([index, boxes], 1), S)
        return flat.view(B, self.frames, 3, S, S).permute(0, 2, 1, 3, 4)

    def __call__(self, batch: int):
        import torch

        index = torch.randint(len(self.videos), (batch,), device=self.videos.device, generator=self.generator)
        return self.take(index, train=True), index


# ------------------------------------------------------------------------------------------------- jobs
def _cfg(name: str, opts: list[str]):
    from hiera_det.config import get_hiera_cfg, merge_config, resolve_config_file

    return merge_config(get_hiera_cfg(), resolve_config_file(name), [str(o) for o in opts])


def _autocast(device: str):
    import contextlib

    import torch

    return torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda" else contextlib.nullcontext()


def _train(cfg, model, step, iters: int, name: str, probe=None, probe_at=()) -> dict:
    """``iters`` optimizer steps of ``step()`` (returns the loss) with the config's optimizer and schedule;
    ``probe(i)`` is called before step ``i`` for every ``i`` in ``probe_at`` (its results under ``"probes"``)."""
    import torch
    from detectron2.solver import build_lr_scheduler

    from hiera_det.engine.optimizer import build_optimizer

    cfg = cfg.clone()
    cfg.defrost()
    cfg.SOLVER.MAX_ITER = iters
    cfg.SOLVER.WARMUP_ITERS = min(cfg.SOLVER.WARMUP_ITERS, max(1, iters // 10))
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer)
    model.train()
    losses, start, probes = [], time.perf_counter(), {}
    log_every = max(1, iters // 10)
    for i in range(iters):
        if probe is not None and i in probe_at:
            probes[i] = probe(i)
        loss = step()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        losses.append(loss.detach())
        if (i + 1) % log_every == 0:
            recent = torch.stack(losses[-log_every:]).float().mean().item()
            print(f"{name} iter {i + 1}/{iters} loss {recent:.4f} ({time.perf_counter() - start:.1f} s)", flush=True)
    losses = torch.stack(losses).float().tolist()
    tail = losses[-max(1, iters // 10):]
    result = {"train_seconds": round(time.perf_counter() - start, 1), "iterations": iters,
              "first_loss": round(losses[0], 4), "final_loss": round(sum(tail) / len(tail), 4)}
    return {**result, "probes": probes} if probes else result


def linear_weight_rms(model) -> float:
    """Root mean square over the weights of every linear layer in the trunk's blocks, the scale that AdamW's
    lr-sized steps are relative to (Hiera's own initialisation: 0.02; the official MAE one, xavier, about
    0.05 over these narrow trunks, 0.12-0.17 in their 32-wide blocks)."""
    import torch

    blocks = model.blocks if hasattr(model, "blocks") else model.trunk.blocks
    weights = [m.weight.detach().float() for m in blocks.modules() if isinstance(m, torch.nn.Linear)]
    return round(float(torch.cat([w.flatten() for w in weights]).pow(2).mean().sqrt()), 4)


def run_pretrain(job: dict) -> dict:
    """MAE pre-training on the in-memory unlabeled pool for ``seconds``; writes the checkpoint at the end."""
    import numpy as np
    import torch
    from detectron2.modeling import build_model

    import hiera_det.d2  # noqa: F401

    video = job["task"] == "video"
    cfg = _cfg(job["config"], job["opts"])
    device = cfg.MODEL.DEVICE
    torch.manual_seed(job["seed"])
    generator = torch.Generator(device).manual_seed(job["seed"])
    model = build_model(cfg)
    pool = torch.from_numpy(np.load(job["data"])[: job.get("num_samples")]).to(device)
    if video:
        clips = ClipBatches(pool, cfg.MODEL.HIERA_VIDEO.NUM_FRAMES, cfg.MODEL.HIERA_VIDEO.SAMPLING_RATE,
                            tuple(cfg.INPUT.VIDEO.TRAIN_JITTER_SCALES), generator)

        def sample():
            return clips(job["batch"])[0]
    else:
        images = ImageBatches(pool, model.mae.input_size[-1], generator)

        def sample():
            return images(job["batch"])
    shape = (1, -1) + (1,) * (3 if video else 2)
    mean, std = model.pixel_mean.view(shape), model.pixel_std.view(shape)
    init_rms = linear_weight_rms(model.mae)

    def step():
        with _autocast(device):
            return model.mae((sample() - mean) / std).loss

    # The schedule runs on wall time, so that the run takes its budget however many jobs share the GPU:
    # linear warm-up over the first 5%, then cosine decay, both of the fraction of ``seconds`` elapsed.
    from hiera_det.engine.optimizer import build_optimizer

    optimizer = build_optimizer(cfg, model)
    base_lrs = [group["lr"] for group in optimizer.param_groups]
    model.train()
    losses, iters = [], 0
    start = time.perf_counter()
    while True:
        progress = (time.perf_counter() - start) / job["seconds"]
        if (progress >= 1.0 and iters >= job["min_iters"]) or iters >= job["max_iters"]:
            break
        p = min(progress, 1.0)
        factor = p / 0.05 if p < 0.05 else 0.5 * (1 + math.cos(math.pi * (p - 0.05) / 0.95))
        for group, lr in zip(optimizer.param_groups, base_lrs):
            group["lr"] = lr * max(factor, 1e-3)
        loss = step()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
        iters += 1
        if iters % 100 == 0:
            recent = torch.stack(losses[-100:]).float().mean().item()
            print(f"{job['name']} iter {iters} loss {recent:.4f} ({time.perf_counter() - start:.1f} s)", flush=True)
    seconds = time.perf_counter() - start
    torch.save({"model": model.state_dict(), "iteration": iters}, job["checkpoint"])
    losses = torch.stack(losses).float().tolist() if losses else []  # none: the initial weights, saved as they are
    tail = losses[-max(1, iters // 10):]
    return {"train_seconds": round(seconds, 1), "iterations": iters, "seconds_budget": job["seconds"],
            "first_loss": round(losses[0], 4) if losses else None,
            "final_loss": round(sum(tail) / len(tail), 4) if losses else None,
            "mask_ratio": model.mae.mask_ratio, "encoder_init": cfg.MODEL.MAE.ENCODER_INIT,
            "unlabeled_samples": len(pool), "batch": job["batch"],
            "input_size": list(model.mae.input_size), "samples_seen": iters * job["batch"],
            "epochs": round(iters * job["batch"] / len(pool), 1),
            "linear_weight_rms": {"init": init_rms, "final": linear_weight_rms(model.mae)}}


def run_video(job: dict) -> dict:
    """The clip classifier of the recipe, from ``weights`` or random init; held-out top-1."""
    import numpy as np
    import torch
    from detectron2.modeling import build_model

    import hiera_det.d2  # noqa: F401

    opts = list(job["opts"]) + ["SEED", job["seed"]]
    if job["weights"]:
        opts += ["MODEL.HIERA.WEIGHTS", job["weights"]]
    cfg = _cfg(CLASSIFIER, opts)
    device = cfg.MODEL.DEVICE
    transfer = job.get("transfer")
    if transfer:  # the random-init arm's weights of this seed, for what the MAE checkpoint does not give
        torch.manual_seed(job["seed"])
        fresh = build_model(_cfg(CLASSIFIER, list(job["opts"]) + ["SEED", job["seed"]]))
    torch.manual_seed(job["seed"])
    generator = torch.Generator(device).manual_seed(job["seed"])
    model = build_model(cfg)
    reset = partial_transfer(model.trunk, fresh.trunk, transfer) if transfer else []
    data = Path(job["data_dir"])
    v = cfg.MODEL.HIERA_VIDEO
    train = ClipBatches(torch.from_numpy(np.load(data / "train_clips.npy")).to(device), v.NUM_FRAMES,
                        v.SAMPLING_RATE, tuple(cfg.INPUT.VIDEO.TRAIN_JITTER_SCALES), generator)
    train_labels = np.load(data / "train_labels.npy").tolist()

    def step():
        clips, index = train(cfg.SOLVER.IMS_PER_BATCH)
        batch = [{"clip": c, "label": train_labels[i]} for c, i in zip(clips, index.tolist())]
        return model(batch)["loss_cls"]

    val = ClipBatches(torch.from_numpy(np.load(data / "val_clips.npy")).to(device), v.NUM_FRAMES, v.SAMPLING_RATE)
    val_labels = torch.from_numpy(np.load(data / "val_labels.npy")).to(device)
    probe_clips = val.take(torch.arange(min(60, len(val_labels)), device=device), train=False)
    probe_labels = val_labels[: len(probe_clips)]
    init_features, init_rms = pooled_feature_similarity(model, probe_clips), linear_weight_rms(model)
    iters = job["iters"] or cfg.SOLVER.MAX_ITER
    result = _train(cfg, model, step, iters, job["name"],
                    probe=lambda i: trunk_diagnostics(model, probe_clips, probe_labels),
                    probe_at={i for i in (0, 50, 200) if i < iters})
    result.setdefault("probes", {})["final"] = trunk_diagnostics(model, probe_clips, probe_labels)
    if transfer:
        result["transfer"] = {"mode": transfer, "reinitialised": len(reset)}
    final_features = pooled_feature_similarity(model, probe_clips)
    result["pooled_feature_cosine"] = {"init": init_features["cosine"], "final": final_features["cosine"]}
    result["motion_sensitivity"] = {"init": init_features["motion"], "final": final_features["motion"]}
    result["linear_weight_rms"] = {"init": init_rms, "final": linear_weight_rms(model)}
    model.eval()
    correct = 0
    with torch.no_grad():
        for chunk in torch.arange(len(val_labels), device=device).split(60):
            scores = model([{"clip": c} for c in val.take(chunk, train=False)])
            predicted = torch.stack([s["scores"] for s in scores]).argmax(1)
            correct += int((predicted == val_labels[chunk]).sum())
    return {**result, "top1": round(100.0 * correct / len(val_labels), 2), "val_clips": len(val_labels)}


def _stage_of_block(trunk, index: int) -> int:
    return next(k + 1 for k, end in enumerate(trunk.stage_ends) if index <= end)


def partial_transfer(trunk, fresh, mode: str) -> list[str]:
    """Give the MAE-initialised ``trunk`` back ``fresh``'s (random-init) values where ``mode`` says it should not
    keep the pre-trained ones, and return the names of the parameters changed:

    * ``reinit_pos``: the position embeddings;
    * ``stages_1_<n>``: the blocks of stages after ``n`` and the final norm (only stages 1..n transfer);
    * ``shrink_<a>``: every parameter becomes ``a * MAE + (1 - a) * init`` (pre-training's update scaled by a).
    """
    import torch

    fresh_params = dict(fresh.named_parameters())
    changed = []
    with torch.no_grad():
        for name, param in trunk.named_parameters():
            if name.startswith("head."):
                continue  # never pre-trained: both arms start from the same head already
            if mode == "reinit_pos":
                replace = name.startswith("pos_embed")
            elif mode.startswith("stages_1_"):
                last = int(mode.removeprefix("stages_1_"))
                replace = name.startswith("norm.") or (
                    name.startswith("blocks.") and _stage_of_block(trunk, int(name.split(".")[1])) > last)
            elif mode.startswith("shrink_"):
                alpha = float(mode.removeprefix("shrink_"))
                param.mul_(alpha).add_(fresh_params[name].to(param.device), alpha=1 - alpha)
                changed.append(name)
                continue
            else:
                raise ValueError(f"unknown transfer mode {mode!r}: reinit_pos, stages_1_<n> or shrink_<a>")
            if replace:
                param.copy_(fresh_params[name])
                changed.append(name)
    if not changed:
        raise ValueError(f"transfer mode {mode!r} changed no parameter of {type(trunk).__name__}")
    return changed


def _parameter_group(trunk, name: str) -> str:
    if name.startswith("blocks."):
        return f"stage{_stage_of_block(trunk, int(name.split('.')[1]))}"
    return name.split(".")[0].removesuffix("_spatial").removesuffix("_temporal")


def trunk_diagnostics(model, clips, labels) -> dict:
    """What the classifier's trunk does with ``clips`` (one batch, fp32, eval mode, no dropout):

    * ``grad_norm``: gradient norm of the cross-entropy per parameter group (patch_embed, pos_embed, stage1-4
      blocks, the final norm, head): where a fine-tune step can move the trunk;
    * ``attention_entropy``: per block, the mean entropy of the attention rows over log(keys) (near 0: each
      query looks at one key, a saturated softmax that passes little gradient; 1: uniform);
    * ``position_share``: per stage output, the share of the token features' variance that the token's
      position alone explains (its mean over clips); ``clip_share``: the share that survives mean pooling
      (the variance of the clips' pooled features), what the head can see;
    * ``token_rms``: per stage, the root mean square of the token features;
    * ``ln_gain``: per block, mean |gain| of its two LayerNorms, then the final norm's."""
    import torch

    trunk = model.trunk
    x = (clips - model.pixel_mean) / model.pixel_std
    entropy, hooks = {}, []

    def attention_hook(index):
        @torch.no_grad()
        def hook(module, args):
            seqs, layout, partition, pool = args
            N, L, _ = seqs.shape
            q, k, _ = module.qkv(seqs).view(N, L, 3, module.heads, module.head_dim).unbind(2)
            if pool:
                q = layout.pool_q(q, partition)
            attn = (q.transpose(1, 2) @ k.transpose(1, 2).transpose(-1, -2) * module.head_dim**-0.5).softmax(-1)
            rows = -(attn * attn.clamp_min(1e-12).log()).sum(-1)
            entropy[f"block{index}"] = round(float(rows.mean() / math.log(L)) if L > 1 else 1.0, 4)
        return hook

    was_training = model.training
    model.eval()
    for i, block in enumerate(trunk.blocks):
        hooks.append(block.attn.register_forward_pre_hook(attention_hook(i)))
    try:
        with torch.enable_grad():
            out = trunk(x.float(), return_logits=True)
            loss = torch.nn.functional.cross_entropy(out["logits"].float(), labels)
            grads = torch.autograd.grad(loss, [p for p in trunk.parameters() if p.requires_grad], allow_unused=True)
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    squares = {}
    names = [n for n, p in trunk.named_parameters() if p.requires_grad]
    for name, grad in zip(names, grads):
        if grad is not None:
            group = _parameter_group(trunk, name)
            squares[group] = squares.get(group, 0.0) + float(grad.float().pow(2).sum())
    position, clip, rms = {}, {}, {}
    for stage, grid in out.items():
        if stage == "logits":
            continue
        f = grid.detach().float().flatten(2)  # [B, C, positions]
        total = f.var(dim=(0, 2), unbiased=False).sum()
        position[stage] = round(float(f.mean(0).var(dim=1, unbiased=False).sum() / total), 4)
        clip[stage] = round(float(f.mean(2).var(dim=0, unbiased=False).sum() / total), 4)
        rms[stage] = round(float(f.pow(2).mean().sqrt()), 4)
    with torch.no_grad():
        gains = {f"block{i}": round(float((b.norm1.weight.abs().mean() + b.norm2.weight.abs().mean()) / 2), 4)
                 for i, b in enumerate(trunk.blocks)}
        gains["norm"] = round(float(trunk.norm.weight.abs().mean()), 4)
    return {"loss": round(float(loss.detach()), 4), "grad_norm": {g: round(v**0.5, 6) for g, v in squares.items()},
            "attention_entropy": entropy, "position_share": position, "clip_share": clip, "token_rms": rms,
            "ln_gain": gains}


def _classifier_features(model, clips):
    """The classifier's input without the head: the final norm of the mean-pooled last stage, unit length."""
    import torch

    x = (clips - model.pixel_mean) / model.pixel_std
    pooled = model.trunk(x)["stage4"].flatten(2).mean(-1)
    return torch.nn.functional.normalize(model.trunk.norm(pooled).float(), dim=1)


def pooled_feature_similarity(model, clips) -> dict[str, float]:
    """How the classifier inputs of different clips relate, in eval mode:

    * ``cosine``: mean cosine similarity between clips; near 1 when the features barely tell clips apart
      (the collapse that keeps the loss at ln(classes));
    * ``motion``: how far reversing a clip in time moves its features, relative to the mean distance between
      two different clips. The labels are motion directions, and reversing turns move_right into move_left,
      so near 0 means features that see appearance and not motion (a fine-tune has to find motion first)."""
    import torch

    was_training = model.training
    model.eval()
    with torch.no_grad():
        z = _classifier_features(model, clips)
        reversed_z = _classifier_features(model, clips.flip(2))
    model.train(was_training)
    n = len(z)
    cosine = ((z @ z.T).sum() - n) / (n * (n - 1))
    between = torch.cdist(z, z).sum() / (n * (n - 1))
    motion = (z - reversed_z).norm(dim=1).mean() / between
    return {"cosine": round(float(cosine), 4), "motion": round(float(motion), 4)}


def run_detection(job: dict) -> dict:
    """The bundled detection recipe through tools/train_net.py; held-out box and mask AP."""
    from benchmarks.shapes_ap import last_detectron2_metrics, scaled_schedule

    cfg = _cfg(DETECTOR, job["opts"])
    schedule = scaled_schedule(cfg, 1.0, job["iters"])
    out = Path(job["output_dir"])
    command = [sys.executable, str(ROOT / "tools" / "train_net.py"), "--config-file", str(ROOT / "configs" / DETECTOR),
               *map(str, job["opts"]), "SEED", str(job["seed"]), "OUTPUT_DIR", str(out),
               "SOLVER.MAX_ITER", str(schedule["max_iter"]), "SOLVER.STEPS", str(schedule["steps"]),
               "SOLVER.CHECKPOINT_PERIOD", str(10 * schedule["max_iter"]),
               "MODEL.HIERA.WEIGHTS", job["weights"]]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": f"{ROOT}:{os.environ.get('PYTHONPATH', '')}"})
    seconds = round(time.perf_counter() - start, 1)
    if done.returncode:
        raise RuntimeError(f"tools/train_net.py exited with {done.returncode} (its traceback is in this job's log)")
    metrics = last_detectron2_metrics(out)
    if "bbox/AP" not in metrics:
        raise RuntimeError(f"no final evaluation in {out / 'metrics.json'}")
    return {"train_and_eval_seconds": seconds, "iterations": schedule["max_iter"],
            "box_AP": round(metrics["bbox/AP"], 2), "box_AP50": round(metrics["bbox/AP50"], 2),
            "mask_AP": round(metrics.get("segm/AP", float("nan")), 2)}


JOB_KINDS = {"pretrain": run_pretrain, "video": run_video, "detection": run_detection}


def run_job(path: str) -> int:
    """Child process: run one job and write ``<job>.result.json`` (the error, if it failed)."""
    import torch
    from detectron2.utils.logger import setup_logger

    job = json.loads(Path(path).read_text())
    torch.set_num_threads(job.get("threads", 2))
    setup_logger(name="hiera_det")
    start = time.perf_counter()
    try:
        result = {"ok": True, **JOB_KINDS[job["kind"]](job)}
    except Exception as e:  # noqa: BLE001  (the orchestrator reports it with the log)
        import traceback

        traceback.print_exc()
        result = {"ok": False, "error": f"{type(e).__name__}: {e}"}
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    Path(job["result"]).write_text(json.dumps(result, indent=1))
    return 0 if result["ok"] else 1


# ------------------------------------------------------------------------------------------------- plan
def plan_jobs(args, work: Path) -> list[dict]:
    """Every job with its dependencies, in the order they should start (main comparisons before variants)."""
    k = int(args.tiny)
    device = args.device or ("cpu" if args.tiny else "cuda")
    det = _cfg(DETECTOR, [])
    h = det.MODEL.HIERA
    image_size = SIZES["image_size"][k]
    dec_dim, dec_depth, dec_heads = SIZES["decoder"][k]
    decoder = ["MODEL.MAE.DECODER_EMBED_DIM", dec_dim, "MODEL.MAE.DECODER_DEPTH", dec_depth,
               "MODEL.MAE.DECODER_NUM_HEADS", dec_heads]
    # the MAE trunk is the detector's trunk (name, depth, width), pre-trained at image_size
    image_opts = ["MODEL.DEVICE", device, "MODEL.HIERA.NAME", h.NAME, "MODEL.HIERA.STAGES", list(h.STAGES),
                  "MODEL.HIERA.EMBED_DIM", h.EMBED_DIM or 96, "MODEL.HIERA.NUM_HEADS", h.NUM_HEADS or 1,
                  "MODEL.HIERA.INPUT_SIZE", [image_size, image_size], "SOLVER.BASE_LR", args.pretrain_lr,
                  *decoder]  # fmt: skip
    video_opts = ["MODEL.DEVICE", device, "SOLVER.BASE_LR", args.pretrain_lr, *decoder]
    seconds = args.pretrain_seconds
    common = dict(seed=0, seconds=seconds, min_iters=2 if args.tiny else 50, max_iters=args.pretrain_max_iters,
                  threads=args.threads)
    data = work / "data"
    image = dict(task="image", config=IMAGE_MAE, data=str(data / "unlabeled_images.npy"), batch=SIZES["image_batch"][k])
    video = dict(task="video", config=VIDEO_MAE, data=str(data / "unlabeled_clips.npy"), batch=SIZES["video_batch"][k])
    trunk_init, xavier_init = ["MODEL.MAE.ENCODER_INIT", "trunk"], ["MODEL.MAE.ENCODER_INIT", "xavier"]
    low_lr = ["SOLVER.BASE_LR", args.pretrain_lr / 5]
    pretrains = {
        # the encoder starts where a random-init fine-tune starts (Hiera's trunc-normal 0.02): the arms differ by
        # the pre-training alone
        "image_mae": dict(image, opts=image_opts + trunk_init + ["MODEL.MAE.MASK_RATIO", 0.6]),
        "video_mae": dict(video, opts=video_opts + trunk_init + ["MODEL.MAE.MASK_RATIO", 0.9]),
        # pre-training lr: 1.5e-3 at batch 64-128 is 20-40x MAE's linear rule (1.5e-4 per 256 samples)
        "image_mae_low_lr": dict(image, opts=image_opts + trunk_init + low_lr + ["MODEL.MAE.MASK_RATIO", 0.6]),
        "video_mae_low_lr": dict(video, opts=video_opts + trunk_init + low_lr + ["MODEL.MAE.MASK_RATIO", 0.9]),
        # mask ratio: a 64 px, 8-frame clip has 16 mask units, so 0.9 leaves one visible and 0.75 four
        "video_mae_r75": dict(video, opts=video_opts + trunk_init + ["MODEL.MAE.MASK_RATIO", 0.75]),
        # session 4's pre-training, from the official MAE initialisation (xavier) of the encoder, and that
        # initialisation not pre-trained at all (its weights saved as they are): is it the weights' scale?
        "image_mae_xavier": dict(image, opts=image_opts + xavier_init + ["MODEL.MAE.MASK_RATIO", 0.6]),
        "video_mae_xavier": dict(video, opts=video_opts + xavier_init + ["MODEL.MAE.MASK_RATIO", 0.9]),
        "video_xavier_untrained": dict(video, opts=video_opts + xavier_init, min_iters=0, max_iters=0),
    }
    arms = {  # arm -> {task: (checkpoint or "", the pre-training job it needs, fine-tune overrides)}
        "scratch": {"image": ("", None, []), "video": ("", None, [])},
        "mae": {"image": ("image_mae.pth", "image_mae", []), "video": ("video_mae.pth", "video_mae", [])},
        "mae_low_lr": {"image": ("image_mae_low_lr.pth", "image_mae_low_lr", []),
                       "video": ("video_mae_low_lr.pth", "video_mae_low_lr", [])},
        "mae_ratio_0.75": {"video": ("video_mae_r75.pth", "video_mae_r75", [])},
        # MAE fine-tuning's layer-wise lr decay, the head at 5x the recipe's lr, the first block near it
        "mae_layer_decay_0.65": {"video": ("video_mae.pth", "video_mae", ["SOLVER.BASE_LR", 5e-4,
                                                                         "SOLVER.LAYER_DECAY", 0.65])},
        "mae_xavier_init": {"image": ("image_mae_xavier.pth", "image_mae_xavier", []),
                            "video": ("video_mae_xavier.pth", "video_mae_xavier", [])},
        "xavier_init_untrained": {"video": ("video_xavier_untrained.pth", "video_xavier_untrained", [])},
    }
    if args.diagnose_video:
        # Is it what the pretext teaches? Random mask units let the encoder solve it from appearance; hiding
        # whole time steps ("time") makes it predict other instants, which needs motion. 0.75 keeps 4 of the 16
        # units visible either way.
        time_masking = ["MODEL.MAE.MASK_MODE", "time"]
        pretrains = {
            "video_mae_r75": pretrains["video_mae_r75"],
            "video_mae_time_r75": dict(video, opts=video_opts + trunk_init + time_masking + ["MODEL.MAE.MASK_RATIO", 0.75]),
            "video_mae_time_r50": dict(video, opts=video_opts + trunk_init + time_masking + ["MODEL.MAE.MASK_RATIO", 0.5]),
        }
        arms = {
            "scratch": {"video": ("", None, [])},
            "mae_ratio_0.75": {"video": ("video_mae_r75.pth", "video_mae_r75", [])},
            "mae_time_masking_0.75": {"video": ("video_mae_time_r75.pth", "video_mae_time_r75", [])},
            "mae_time_masking_0.5": {"video": ("video_mae_time_r50.pth", "video_mae_time_r50", [])},
        }
    if args.transfer_video:
        # Which part of the pre-trained trunk keeps the clip fine-tune on the ln 6 plateau? Everything from the
        # main video MAE checkpoint except the position embeddings, the later stages, or the whole update scaled.
        pretrains = {"video_mae": pretrains["video_mae"]}
        main = ("video_mae.pth", "video_mae", [])
        arms = {"scratch": {"video": ("", None, [])}, "mae": {"video": main}}
        for mode in ("reinit_pos", "stages_1_2", "stages_1_3", "shrink_0.5"):
            arms[f"mae_{mode}"] = {"video": (*main, mode)}
    jobs = []
    for name, spec in pretrains.items():
        jobs.append(dict(name=f"pretrain_{name}", kind="pretrain", deps=[], **{**common, **spec},
                         checkpoint=str(work / f"{name}.pth")))
    for arm, tasks in arms.items():
        for seed in args.seeds:
            for task, (checkpoint, pretrain, arm_opts, *transfer) in tasks.items():
                name = f"{'detection' if task == 'image' else 'video'}_{arm}_seed{seed}"
                job = dict(name=name, arm=arm, seed=seed, threads=args.threads,
                           weights=str(work / checkpoint) if checkpoint else "",
                           deps=[f"pretrain_{pretrain}"] if pretrain else [])
                if task == "image":
                    opts = (["MODEL.DEVICE", device, "DATALOADER.NUM_WORKERS", args.loader_workers] + DETECTOR_OPTS
                            + arm_opts)
                    if args.tiny:
                        images = (data / "val_tiny_images").read_text()
                        opts += ["DATASETS.CUSTOM", f"['shapes_val_tiny={data / 'val_tiny.json'}:{images}']",
                                 "DATASETS.TEST", "('shapes_val_tiny',)"]
                    job.update(kind="detection", iters=args.detection_iters, opts=opts,
                               output_dir=str(work / "runs" / name))
                else:
                    opts = ["MODEL.DEVICE", device] + (["SOLVER.IMS_PER_BATCH", 4] if args.tiny else []) + arm_opts
                    job.update(kind="video", iters=args.video_iters, opts=opts, data_dir=str(data),
                               transfer=transfer[0] if transfer else None)
                jobs.append(job)
    return jobs


def schedule(jobs: list[dict], work: Path, parallel: int, deadline: float) -> dict[str, dict]:
    """Run the jobs as child processes, at most ``parallel`` at once, each when its dependencies succeeded;
    at ``deadline`` (monotonic seconds) stop the running ones. Returns the result of every job."""
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    pending = list(jobs)
    running: dict[str, tuple[subprocess.Popen, float]] = {}
    results: dict[str, dict] = {}
    while pending or running:
        for name, (proc, started) in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            result_file = work / f"{name}.result.json"
            results[name] = (json.loads(result_file.read_text()) if result_file.is_file() else
                             {"ok": False, "error": f"exited with {proc.returncode} before writing a result"})
            state = "done" if results[name]["ok"] else f"FAILED ({results[name].get('error')})"
            print(f"[{time.monotonic() - START:6.1f} s] {name} {state} after {time.monotonic() - started:.0f} s",
                  flush=True)
        for job in list(pending):
            failed = [d for d in job["deps"] if d in results and not results[d]["ok"]]
            if failed:
                pending.remove(job)
                results[job["name"]] = {"ok": False, "error": f"not run: {', '.join(failed)} failed"}
            elif len(running) < parallel and all(d in results for d in job["deps"]):
                pending.remove(job)
                job_file = work / f"{job['name']}.job.json"
                job_file.write_text(json.dumps({**job, "result": str(work / f"{job['name']}.result.json")}))
                with open(logs / f"{job['name']}.log", "w") as log:
                    threads = str(job.get("threads", 2))  # train_net's children too
                    env = {**os.environ, "OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
                    proc = subprocess.Popen([sys.executable, __file__, "--job", str(job_file)], stdout=log,
                                            stderr=subprocess.STDOUT, start_new_session=True, env=env)
                running[job["name"]] = (proc, time.monotonic())
                print(f"[{time.monotonic() - START:6.1f} s] started {job['name']}", flush=True)
        if time.monotonic() > deadline:
            for name, (proc, _) in running.items():
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait()
                results[name] = {"ok": False, "error": "stopped at the deadline"}
            for job in pending:
                results[job["name"]] = {"ok": False, "error": "not started before the deadline"}
            break
        time.sleep(0.5)
    return results


# ----------------------------------------------------------------------------------------------- report
def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else 0.0
    return round(mean, 2), round(std, 2)


def summarize(jobs: list[dict], results: dict[str, dict]) -> dict:
    """Per task and arm: the metric of every seed, its mean and spread, and the difference to random init."""
    summary = {}
    for task, metric in (("detection", "box_AP"), ("video", "top1")):
        arms = {}
        for job in jobs:
            if job["kind"] != task:
                continue
            arm = arms.setdefault(job["arm"], {"seeds": {}, "failed": {}})
            result = results.get(job["name"], {"ok": False, "error": "no result"})
            if result["ok"]:
                arm["seeds"][job["seed"]] = result[metric]
            else:
                arm["failed"][job["seed"]] = result["error"]
        for arm in arms.values():
            if arm["seeds"]:
                arm["mean"], arm["std"] = _mean_std(list(arm["seeds"].values()))
        scratch = arms.get("scratch", {}).get("mean")
        for arm in arms.values():
            if scratch is not None and "mean" in arm:
                arm["gain_over_scratch"] = round(arm["mean"] - scratch, 2)
        summary[task] = {"metric": metric, "arms": arms}
    return summary


def verdict(summary: dict) -> dict[str, str]:
    """One sentence per task, from the numbers: is the main MAE arm above random init by more than the seeds
    spread, and which arm did best."""
    lines = {}
    for task, entry in summary.items():
        arms, metric = entry["arms"], entry["metric"]
        mae, scratch = arms.get("mae", {}), arms.get("scratch", {})
        if "mean" not in mae or "mean" not in scratch:
            lines[task] = "no comparison: an arm has no finished run"
            continue
        spread = max(mae["std"], scratch["std"])
        gain = mae["gain_over_scratch"]
        word = "helps" if gain > spread else ("hurts" if gain < -spread else "makes no difference beyond the seed spread")
        best = max((a for a in arms if "mean" in arms[a]), key=lambda a: arms[a]["mean"])
        lines[task] = (f"MAE {word}: {metric} {mae['mean']} vs {scratch['mean']} from random init "
                       f"({gain:+.2f}, seed spread {spread}); best arm: {best} ({arms[best]['mean']})")
    return lines


def write_markdown(report: dict, path: Path) -> None:
    lines = ["# MAE pre-training vs random init on the bundled generators", "",
             f"Device: {report['machine']['device']}; command: `{report['command']}`; total wall "
             f"{report['wall_seconds']} s (data {report['prepare'].get('prepare_seconds')} s).", ""]
    for task, sentence in report["verdict"].items():
        lines.append(f"* **{task}**: {sentence}")
    lines += ["", "## Pre-training", "",
              "| run | encoder init | mask ratio | unlabeled samples | iterations | batch | epochs | loss first -> last "
              "| encoder weight rms start -> end | s |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in report["pretraining"].items():
        if r.get("ok"):
            rms = r.get("linear_weight_rms", {})
            lines.append(f"| {name} | {r.get('encoder_init', 'xavier')} | {r['mask_ratio']} | {r['unlabeled_samples']} "
                         f"| {r['iterations']} | {r['batch']} | {r['epochs']} | {r['first_loss']} -> {r['final_loss']} "
                         f"| {rms.get('init')} -> {rms.get('final')} | {r['train_seconds']} |")
        else:
            lines.append(f"| {name} | failed: {r.get('error')} | | | | | | | | |")
    for task, entry in report["summary"].items():
        title = ("Detection fine-tune (configs/shapes/hiera_tiny_shapes.yaml), held-out box AP" if task == "detection"
                 else "Clip classifier fine-tune (configs/video/moving_shapes_cls.yaml), held-out top-1 (%)")
        lines += ["", f"## {title}", "", "| arm | per seed | mean ± std | vs random init |", "|---|---|---|---|"]
        for arm, a in entry["arms"].items():
            seeds = ", ".join(f"s{s}: {v}" for s, v in a["seeds"].items())
            failed = "; ".join(f"s{s} failed: {e}" for s, e in a["failed"].items())
            mean = f"{a['mean']} ± {a['std']}" if "mean" in a else "-"
            lines.append(f"| {arm} | {seeds}{' ' + failed if failed else ''} | {mean} | "
                         f"{a.get('gain_over_scratch', '-') if arm != 'scratch' else ''} |")
    video_runs = {name: r for name, r in report["runs"].items() if r["kind"] == "video" and r.get("ok")}
    if video_runs:
        lines += ["", "## Video runs: where each fine-tune started and ended", "",
                  "Motion sensitivity: how far reversing a clip in time moves its classifier features, relative to "
                  "the distance between two clips (0: blind to the motion that the labels are about).", "",
                  "| run | train loss first -> last 10% | feature cosine start -> end | motion sensitivity start -> end "
                  "| block weight rms start |", "|---|---|---|---|---|"]
        for name, r in video_runs.items():
            cosine, motion = r.get("pooled_feature_cosine", {}), r.get("motion_sensitivity")
            motion = f"{motion['init']} -> {motion['final']}" if motion else "not measured"
            lines.append(f"| {name} | {r['first_loss']} -> {r['final_loss']} | {cosine.get('init')} -> "
                         f"{cosine.get('final')} | {motion} | {r.get('linear_weight_rms', {}).get('init', '-')} |")
    probed = {name: r["probes"] for name, r in video_runs.items() if r.get("probes")}
    if probed:
        lines += ["", "## Video fine-tune diagnostics (60 held-out clips, eval mode, fp32)", "",
                  "Before fine-tune step 0, 50, 200 and after the last. grad: gradient norm of the cross-entropy per "
                  "parameter group. entropy: attention entropy over log(keys) per block (0: saturated softmax). "
                  "position share: the share of the stage's token-feature variance explained by position alone; "
                  "pooled share: the share left in the mean-pooled clip features (what the head sees).", "",
                  "| run | step | loss | grad pos_embed / stage1-4 / norm / head | entropy per block "
                  "| position share stage1-4 | pooled share stage1-4 | token rms stage1-4 | LN gain blocks, norm |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for name, probes in probed.items():
            for step, d in probes.items():
                g = d["grad_norm"]
                grads = " / ".join(f"{g.get(k, 0):.2g}" for k in ("pos_embed", "stage1", "stage2", "stage3", "stage4",
                                                                  "norm", "head"))
                row = [name, step, d["loss"], grads] + [" ".join(f"{v:.2f}" for v in d[key].values()) for key in
                                                        ("attention_entropy", "position_share", "clip_share",
                                                         "token_rms", "ln_gain")]
                lines.append("| " + " | ".join(map(str, row)) + " |")
    lines += ["", "Per-run details (iterations, seconds, losses, AP50, mask AP): mae_proof.json.", ""]
    path.write_text("\n".join(lines))


START = time.monotonic()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", str(ROOT / "output" / "mae_proof")),
                        help="where mae_proof.json / .md go (default $OUT)")
    parser.add_argument("--work", default="", help="data, checkpoints, runs and logs (default OUT/../mae_proof_work)")
    parser.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny data, models and schedules")
    parser.add_argument("--prepare-only", action="store_true", help="render and generate the data, then stop")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--parallel", type=int, default=12, help="jobs running at once on the GPU")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads per job")
    parser.add_argument("--loader-workers", type=int, default=1, help="DATALOADER.NUM_WORKERS of the detector")
    parser.add_argument("--pretrain-seconds", type=float, default=120.0)
    parser.add_argument("--pretrain-max-iters", type=int, default=6000)
    parser.add_argument("--pretrain-lr", type=float, default=1.5e-3)
    parser.add_argument("--detection-iters", type=int, default=None, help="default: the recipe's SOLVER.MAX_ITER")
    parser.add_argument("--video-iters", type=int, default=None, help="default: the recipe's SOLVER.MAX_ITER")
    parser.add_argument("--diagnose-video", action="store_true",
                        help="video only: MAE with random mask units (0.75) against MAE that hides whole "
                             "time steps (0.75, 0.5), and random init")
    parser.add_argument("--transfer-video", action="store_true",
                        help="video only: the main MAE checkpoint transferred in part (position embeddings "
                             "re-initialised, stages 1-2 or 1-3 only, the update halved) against all of it and "
                             "random init")
    parser.add_argument("--device", default="", help="cuda or cpu (default: cpu with --tiny, else cuda)")
    parser.add_argument("--deadline", type=float, default=420.0, help="seconds after start: stop what still runs")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.job:
        return run_job(args.job)

    out = Path(args.out)
    work = Path(args.work) if args.work else out.parent / "mae_proof_work"
    if args.tiny:
        args.detection_iters = args.detection_iters or 2
        args.video_iters = args.video_iters or 2
        args.pretrain_seconds = min(args.pretrain_seconds, 1.0)
    import torch

    prepared = prepare(work / "data", args.tiny, workers=max(1, min(12, (os.cpu_count() or 2) - 1)),
                       images=not (args.diagnose_video or args.transfer_video))
    print(f"data ready: {prepared}", flush=True)
    if args.prepare_only:
        return 0
    jobs = plan_jobs(args, work)
    results = schedule(jobs, work, args.parallel, START + args.deadline)
    summary = summarize(jobs, results)
    report = {
        "benchmark": "mae_proof",
        "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
        "machine": {"device": torch.cuda.get_device_name() if torch.cuda.is_available() and not args.tiny else "cpu",
                    "cpus": os.cpu_count(), "torch": torch.__version__, "platform": platform.platform()},
        "settings": {k: v for k, v in vars(args).items() if k != "job"},
        "prepare": prepared,
        "wall_seconds": round(time.monotonic() - START, 1),
        "verdict": verdict(summary),
        "summary": summary,
        "pretraining": {j["name"].removeprefix("pretrain_"): results.get(j["name"], {})
                        for j in jobs if j["kind"] == "pretrain"},
        "runs": {j["name"]: {"kind": j["kind"], "arm": j.get("arm"), "seed": j["seed"], "weights": j.get("weights"),
                             **results.get(j["name"], {})} for j in jobs if j["kind"] != "pretrain"},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "mae_proof.json").write_text(json.dumps(report, indent=1) + "\n")
    write_markdown(report, out / "mae_proof.md")
    print(json.dumps(report["verdict"], indent=1))
    print(f"written to {out}/mae_proof.json and mae_proof.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
