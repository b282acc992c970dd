"""Where a training step's time goes, by kind of operator, for plain fp32 and for bf16 + NHWC.

    python bench/profile_step.py --img_size=128 --base_channels=32

One FFP training step (G and D, forward and backward, Adam), batch 4, no flow loss, profiled with torch.profiler
after two warm-up steps over --steps steps; operators' self CPU time summed into: convolution (forward and
backward), batch norm, precision casts and copies (bf16 <-> fp32, layout changes), optimizer, and everything else
(activations, losses, elementwise).  Convolution is what bf16 and NHWC speed up; the rest they do not (or cost).
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import torch


from bench.speed import build_discriminator, build_generator, make_step
from ffpvad.config import preset

KINDS = (("convolution", ("conv",)), ("batch norm", ("batch_norm",)),
         ("casts and copies", ("copy_", "_to_copy", "to_dense", "contiguous", "clone")),
         ("optimizer", ("adam", "_foreach", "lerp", "addcmul", "addcdiv", "sqrt")))


def kind_of(name: str) -> str:
    lowered = name.lower()
    for kind, needles in KINDS:
        if any(n in lowered for n in needles):
            return kind
    return "other"


def profile(img_size: int, width: int, amp, nhwc: bool, steps: int) -> dict[str, float]:
    cfg = preset("ped2").replace(img_size=img_size, base_channels=width, flownet="none", batch_size=4)
    torch.manual_seed(0)
    fmt = torch.channels_last if nhwc else torch.contiguous_format
    G, D = build_generator(cfg).to(memory_format=fmt), build_discriminator(cfg).to(memory_format=fmt)
    step = make_step(G, D, None, torch.optim.Adam(G.parameters(), 1e-4), torch.optim.Adam(D.parameters(), 1e-5),
                     amp, nhwc, cache_gt_flow=True)
    clip = torch.rand(4, 5, 3, img_size, img_size) * 2 - 1
    for k in range(2):
        step(k, clip)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for k in range(steps):
            step(k, clip)
    totals: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        totals[kind_of(event.key)] += event.self_cpu_time_total / 1e6 / steps
    return dict(totals)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--img_size", type=int, default=128)
    p.add_argument("--base_channels", type=int, default=32)
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()
    rows = {"fp32 NCHW": profile(args.img_size, args.base_channels, None, False, args.steps),
            "bf16 NHWC": profile(args.img_size, args.base_channels, torch.bfloat16, True, args.steps)}
    kinds = [k for k, _ in KINDS] + ["other"]
    print(f"{args.img_size} px, width {args.base_channels}, batch 4, {torch.get_num_threads()} threads; "
          f"seconds of operator self time per step (share)")
    print("| kind | " + " | ".join(rows) + " | speed-up |")
    print("|---|" + "---|" * (len(rows) + 1))
    plain, fast = rows["fp32 NCHW"], rows["bf16 NHWC"]
    for kind in kinds + ["total"]:
        a = sum(plain.values()) if kind == "total" else plain.get(kind, 0.0)
        b = sum(fast.values()) if kind == "total" else fast.get(kind, 0.0)
        share = lambda v, row: 100 * v / sum(row.values())  # noqa: E731
        print(f"| {kind} | {a:.3f} ({share(a, plain):.0f}%) | {b:.3f} ({share(b, fast):.0f}%) | "
              f"{a / b if b else float('inf'):.2f}x |")


if __name__ == "__main__":
    main()
