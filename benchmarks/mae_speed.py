"""MAE pre-training speed: hiera_det's MaskedAutoencoderHiera against the official hiera_mae, same weights.

Forward + backward of the MAE loss under autocast (bf16 by default), images or clips per second, on one GPU,
timed with CUDA events after warm-up, both models in the same process on the same batch and mask. Also
checks that the two losses agree in fp32 on that mask, and measures ours with activation checkpointing and,
for image architectures, ours in the windowed (HieraDet) layout, whose dense masking runs the encoder on
every token (no official counterpart).

    python benchmarks/mae_speed.py --cases hiera_base_224:128 hiera_base_16x224:16 --out mae_speed.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def bench(step, iters: int, warmup: int) -> float:
    """Seconds per call of ``step``, from CUDA events around ``iters`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        step()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(iters):
        step()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1000.0 / iters


def training_step(model, call, dtype):
    def step():
        with torch.autocast("cuda", dtype=dtype):
            loss = call(model)
        loss.backward()
        model.zero_grad(set_to_none=True)
    return step


def measure(step, batch: int, iters: int, warmup: int) -> dict:
    seconds = bench(step, iters, warmup)
    torch.cuda.reset_peak_memory_stats()
    step()
    return {"samples_per_s": round(batch / seconds, 1), "ms_per_step": round(1000 * seconds, 2),
            "peak_mem_gib": round(torch.cuda.max_memory_allocated() / 2**30, 2)}


def run_case(arch: str, batch: int, dtype, iters: int, window: bool) -> dict:
    from hiera import hiera_mae

    from hiera_det.modeling import build_mae

    torch.manual_seed(0)
    ref = getattr(hiera_mae, f"mae_{arch}")(pretrained=False).cuda().train()
    ours = build_mae(arch).cuda().train()
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(batch, 3, *ours.input_size, device="cuda")
    visible = ours.random_mask(batch, device="cuda")
    with torch.no_grad():
        loss_diff = abs(ours(x, visible).loss.item() - ref(x, mask=visible)[0].item())
    result = {"arch": arch, "batch": batch, "mask_ratio": ours.mask_ratio, "fp32_loss_abs_diff": loss_diff}
    result["official_hiera_mae"] = measure(training_step(ref, lambda m: m(x, mask=visible)[0], dtype), batch,
                                           iters, warmup=5)
    result["hiera_det"] = measure(training_step(ours, lambda m: m(x, visible).loss, dtype), batch, iters, warmup=5)
    result["speedup"] = round(result["hiera_det"]["samples_per_s"] / result["official_hiera_mae"]["samples_per_s"], 3)
    ours.activation_checkpointing = True
    result["hiera_det_activation_checkpointing"] = measure(
        training_step(ours, lambda m: m(x, visible).loss, dtype), batch, max(2, iters // 2), warmup=2)
    del ref, ours
    if window and len(x.shape) == 4:
        windowed = build_mae(arch, attention="window").cuda().train()
        result["hiera_det_window_dense_masking"] = measure(
            training_step(windowed, lambda m: m(x, visible).loss, dtype), batch, iters, warmup=5)
        del windowed
    torch.cuda.empty_cache()
    return result


def markdown(results: dict) -> str:
    lines = [f"# MAE pre-training speed, forward + backward ({results['dtype']}, {results['device']})", "",
             "| architecture | batch | official hiera_mae (samples/s) | hiera_det (samples/s) | speedup | "
             "hiera_det + act. ckpt | hiera_det windowed, dense masking | peak GiB official / ours | "
             "fp32 loss diff |", "|---|---|---|---|---|---|---|---|---|"]
    for r in results["cases"]:
        if "error" in r:
            lines.append(f"| {r['arch']} | {r['batch']} | failed: {r['error']} | | | | | | |")
            continue
        window = r.get("hiera_det_window_dense_masking", {}).get("samples_per_s", "-")
        lines.append(
            f"| {r['arch']} | {r['batch']} | {r['official_hiera_mae']['samples_per_s']} | "
            f"{r['hiera_det']['samples_per_s']} | {r['speedup']}x | "
            f"{r['hiera_det_activation_checkpointing']['samples_per_s']} | {window} | "
            f"{r['official_hiera_mae']['peak_mem_gib']} / {r['hiera_det']['peak_mem_gib']} | "
            f"{r['fp32_loss_abs_diff']:.2e} |")
    lines += ["", f"Command: `{results['command']}`. Mask ratio: the paper's (0.6 images, 0.9 video); "
              "both models get the same weights, batch and mask; CUDA events over the timed steps after warm-up.", ""]
    return "\n".join(lines)


def main() -> None:
    import sys

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cases", nargs="+", default=["hiera_base_224:128", "hiera_base_16x224:16"],
                   help="ARCH:BATCH pairs")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--dtype", default="bfloat16", choices=("float16", "bfloat16"))
    p.add_argument("--no-window", action="store_true", help="skip the windowed-layout measurement")
    p.add_argument("--out", default="", help="a .json path; a .md with the table is written next to it")
    args = p.parse_args()
    dtype = getattr(torch, args.dtype)
    results = {"dtype": args.dtype, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
               "command": " ".join(["python benchmarks/mae_speed.py"] + sys.argv[1:]), "cases": []}
    for case in args.cases:
        arch, batch = case.split(":")
        try:
            results["cases"].append(run_case(arch, int(batch), dtype, args.iters, not args.no_window))
        except Exception as e:  # noqa: BLE001  (one case failing, e.g. out of memory, must not lose the others)
            results["cases"].append({"arch": arch, "batch": int(batch), "error": f"{type(e).__name__}: {e}"})
            torch.cuda.empty_cache()
        print(json.dumps(results["cases"][-1], indent=1), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
            Path(args.out).with_suffix(".md").write_text(markdown(results))


if __name__ == "__main__":
    main()
