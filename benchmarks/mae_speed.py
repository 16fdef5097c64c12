"""MAE pre-training speed: hiera_det's MaskedAutoencoderHiera against the official hiera_mae, same weights.

Forward + backward of the MAE loss under autocast (fp16 by default), images or clips per second, on one GPU;
also checks that the two losses agree on the same mask and that activation checkpointing runs.
    python benchmarks/mae_speed.py --arch hiera_base_224 --batch 128 --out results.json
"""

from __future__ import annotations

import argparse
import json
import time

import torch


def bench(step, iters: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(iters):
        step()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / iters


def main() -> None:
    from hiera import hiera_mae

    from hiera_det.modeling import build_mae

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--arch", default="hiera_base_224")
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--dtype", default="float16", choices=("float16", "bfloat16"))
    p.add_argument("--out", default="")
    args = p.parse_args()
    dtype = getattr(torch, args.dtype)
    ref = getattr(hiera_mae, f"mae_{args.arch}")(pretrained=False).cuda()
    ours = build_mae(args.arch).cuda()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(args.batch, 3, *ours.input_size, device="cuda")
    visible = ours.random_mask(args.batch, device="cuda")
    with torch.no_grad():
        loss_diff = abs(ours(x, visible).loss.item() - ref(x, mask=visible)[0].item())

    def step_of(model, call):
        def step():
            with torch.autocast("cuda", dtype=dtype):
                loss = call(model)
            loss.backward()
            model.zero_grad(set_to_none=True)
        return step

    results = {"arch": args.arch, "batch": args.batch, "dtype": args.dtype, "fp32_loss_abs_diff": loss_diff,
               "device": torch.cuda.get_device_name(), "mask_ratio": ours.mask_ratio}
    runs = {
        "official_hiera_mae": step_of(ref, lambda m: m(x, mask=visible)[0]),
        "hiera_det": step_of(ours, lambda m: m(x, visible).loss),
    }
    for name, step in runs.items():
        seconds = bench(step, args.iters, warmup=3)
        results[f"{name}_samples_per_s"] = args.batch / seconds
        torch.cuda.reset_peak_memory_stats()
        step()
        results[f"{name}_peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    ours.activation_checkpointing = True
    ours.train()
    seconds = bench(step_of(ours, lambda m: m(x, visible).loss), args.iters // 2, warmup=2)
    results["hiera_det_activation_checkpointing_samples_per_s"] = args.batch / seconds
    torch.cuda.reset_peak_memory_stats()
    step_of(ours, lambda m: m(x, visible).loss)()
    results["hiera_det_activation_checkpointing_peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    results["speedup"] = results["hiera_det_samples_per_s"] / results["official_hiera_mae_samples_per_s"]
    print(json.dumps(results, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
