"""Training-step time, evaluation throughput and peak memory of FFP, against a plain path in the same run.

    python bench/speed.py --img_size=256 --batch_size=4 --base_channels=64 --flownet=flownet2sd
    python bench/speed.py --readme      # the README's Speed table (plain fp32 against the default, two sizes)

Variants (each on synthetic frames, after warm-up, median of --repeats timed steps):
- plain:    fp32, NCHW, the ground-truth flow recomputed every step, evaluation one frame at a time;
- fp32:     fp32, NCHW, ground-truth flow cached per clip, evaluation batched (--eval_batch_size);
- bf16:     as fp32 with bf16 autocast;
- nhwc:     as fp32 with channels_last;
- bf16nhwc: both;
- default:  what train.py and eval.py pick with --amp=auto --channels_last=auto on this machine (ffpvad/training/autotune.py:
            measured once per machine and size, cached; its choice is printed, for training and evaluation apart);
- int8:     trains as bf16nhwc; evaluates an int8 copy of the generator (eval.py --quantize=int8, ffpvad/models/quantize.py),
            calibrated on 8 random clips (the cost does not depend on the values; its AUC is measured by eval.py).
Ratios are against plain.  Each variant runs in its own process, so its peak RSS (resident memory, the torch
libraries included) is its own.  In the bf16 variants the frozen flow network keeps its weights in bf16, as the
training engine does (flownet.store_weights_in).  "eval GFLOP/s" is the generator's forward FLOPs (counted by
torch.utils.flop_counter) times the frames per second: set it against the machine's matrix-multiply peak, printed
first, to see how much headroom is left.  --flownet picks the flow estimator from the registry; with flownet2sd and no
weights file, a randomly initialised FlowNet2-SD is timed (the cost does not depend on the values), and it says so.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import resource
import statistics
import sys
import time
from pathlib import Path

import torch


from ffpvad import losses
from ffpvad.config import preset
from ffpvad.flow.flownet2sd import FlowNet2SD
from ffpvad.flow import build_flownet, freeze, store_weights_in
from ffpvad.errors import UserError
from ffpvad.evaluation.metrics import psnr
from ffpvad.models import build_discriminator, build_generator
from ffpvad.runtime import autocast


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def set_mmap_threshold(size: int) -> None:
    """glibc's M_MMAP_THRESHOLD (fixed, no longer raised by glibc as large blocks are freed: see mallopt(3))."""
    import ctypes

    if size <= 0:
        sys.exit(f"--mmap_threshold={size}: give a size in bytes, e.g. 1048576 (0 = glibc's default)")
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        sys.exit("--mmap_threshold needs glibc (Linux): libc.so.6 not found")
    if libc.mallopt(-3, size) != 1:  # -3 = M_MMAP_THRESHOLD
        sys.exit(f"--mmap_threshold={size}: glibc refused it (at most 32 MiB on 64-bit systems)")


def make_step(G, D, flow, opt_g, opt_d, amp, channels_last, cache_gt_flow):
    cache: dict[int, torch.Tensor] = {}

    def step(clip_id: int, x: torch.Tensor) -> None:
        inputs, target, last = x[:, :-1].flatten(1, 2), x[:, -1], x[:, -2]
        if channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
            target = target.contiguous(memory_format=torch.channels_last)
        device = torch.device("cpu")
        with autocast(device, amp):
            prediction = G(inputs).float()
            d_loss = losses.discriminator_loss(D(target).float(), D(prediction.detach()).float())
        opt_d.zero_grad()
        d_loss.backward()
        opt_d.step()
        D.requires_grad_(False)
        with autocast(device, amp):
            g = losses.intensity_loss(prediction, target) + losses.gradient_loss(prediction, target)
            g = g + 0.05 * losses.generator_adversarial_loss(D(prediction).float())
            if flow is not None:
                if cache_gt_flow and clip_id in cache:
                    gt = cache[clip_id]
                else:
                    with torch.no_grad():
                        gt = flow(torch.stack([last, target], 2)).float()
                    if cache_gt_flow:
                        cache[clip_id] = gt.half().float()
                g = g + 2 * losses.flow_loss(flow(torch.stack([last, prediction], 2)).float(), gt)
        opt_g.zero_grad()
        g.backward()
        opt_g.step()
        D.requires_grad_(True)
    return step


@torch.inference_mode()
def eval_fps(G, size: int, n_frames: int, batch: int, amp, channels_last: bool) -> float:
    G.eval()
    frames = torch.rand(n_frames + 4, 3, size, size) * 2 - 1
    start = time.perf_counter()
    for lo in range(0, n_frames, batch):
        idx = torch.arange(lo, min(lo + batch, n_frames))
        clips = torch.stack([frames[i:i + 5] for i in idx])
        inputs = clips[:, :-1].flatten(1, 2)
        if channels_last:
            inputs = inputs.contiguous(memory_format=torch.channels_last)
        with autocast(torch.device("cpu"), amp):
            psnr(G(inputs).float(), clips[:, -1])
    G.train()
    return n_frames / (time.perf_counter() - start)


def matmul_peak_gflops(dtype: torch.dtype, n: int = 2048, repeats: int = 8) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(2):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n ** 3 * repeats / (time.perf_counter() - start) / 1e9


def generator_gflop_per_frame(cfg) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    G = build_generator(cfg).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        G(torch.zeros(1, 3 * cfg.n_inputs, cfg.img_size, cfg.img_size))
    return counter.get_total_flops() / 1e9


def step_gflop(cfg, batch: int) -> float:
    """FLOPs of one training step without the flow loss (G forward and backward, D on real and fake, forward and
    backward), counted by torch.utils.flop_counter."""
    from torch.utils.flop_counter import FlopCounterMode

    G, D = build_generator(cfg), build_discriminator(cfg)
    step = make_step(G, D, None, torch.optim.Adam(G.parameters()), torch.optim.Adam(D.parameters()), None, False,
                     False)
    with FlopCounterMode(display=False) as counter:
        step(0, torch.rand(batch, 5, 3, cfg.img_size, cfg.img_size) * 2 - 1)
    return counter.get_total_flops() / 1e9


def default_choice(cfg, batch: int, eval_batch: int) -> tuple:
    """(training (amp, nhwc), evaluation (amp, nhwc)) that --amp=auto --channels_last=auto give on this machine."""
    import copy

    from ffpvad.training.autotune import inference_compute, resolve_compute, sample_inputs, training_step
    from ffpvad.methods import method_for

    method = method_for(cfg)
    G, D = build_generator(cfg), build_discriminator(cfg)
    train = resolve_compute(cfg, torch.device("cpu"), "training", method,
                            lambda: training_step(copy.deepcopy(G), copy.deepcopy(D),
                                                  sample_inputs(cfg, method, batch), method.predict), batch,
                            say=lambda line: print(line, file=sys.stderr))
    evaluation = inference_compute(cfg, torch.device("cpu"), method, G, eval_batch,
                                   say=lambda line: print(line, file=sys.stderr))
    return train, evaluation


def run_variant(args, variant: str) -> dict:
    cfg = preset("ped2").replace(img_size=args.img_size, base_channels=args.base_channels, model=args.model,
                                 flownet=args.flownet, batch_size=args.batch_size)
    amp = torch.bfloat16 if "bf16" in variant or variant == "int8" else None
    nhwc = "nhwc" in variant or variant == "int8"
    eval_amp, eval_nhwc, chosen = amp, nhwc, ""
    if variant == "default":
        (amp, nhwc), (eval_amp, eval_nhwc) = default_choice(cfg.replace(flownet="none"), args.batch_size,
                                                            args.eval_batch_size)
        from ffpvad.training.autotune import describe
        chosen = f"training {describe((amp, nhwc))}, evaluation {describe((eval_amp, eval_nhwc))}"
    flow = None
    if args.flownet != "none":
        try:
            flow = build_flownet(cfg.replace(flownet=args.flownet, weights_dir=args.weights_dir))
        except UserError:
            if args.flownet != "flownet2sd":
                raise
            flow = freeze(FlowNet2SD())
        store_weights_in(flow, amp)
    torch.manual_seed(0)
    fmt = torch.channels_last if nhwc else torch.contiguous_format
    if flow is not None:
        flow = flow.to(memory_format=fmt)  # as the training engine does
    G = build_generator(cfg).to(memory_format=fmt)
    D = build_discriminator(cfg).to(memory_format=fmt)
    step = make_step(G, D, flow, torch.optim.Adam(G.parameters(), 1e-4), torch.optim.Adam(D.parameters(), 1e-5),
                     amp, nhwc, cache_gt_flow=variant != "plain")
    rss_built = peak_rss_gib()  # torch imported, G, D and the flow network built, nothing run yet
    # Clips repeat (as they do across epochs), so the cached variants reuse their ground-truth flow.
    clips = [torch.rand(args.batch_size, 5, 3, args.img_size, args.img_size) * 2 - 1 for _ in range(2)]
    for k in range(2):
        step(k % 2, clips[k % 2])
    times = []
    for k in range(args.repeats):
        start = time.perf_counter()
        step(k % 2, clips[k % 2])
        times.append(time.perf_counter() - start)
    batch = 1 if variant == "plain" else args.eval_batch_size
    if variant == "int8":
        from ffpvad.models.quantize import quantize_int8
        calibration = [torch.rand(2, 3 * cfg.n_inputs, args.img_size, args.img_size) * 2 - 1 for _ in range(4)]
        G, eval_amp, eval_nhwc = quantize_int8(G, calibration, cfg.model), None, False
    G = G.to(memory_format=torch.channels_last if eval_nhwc else torch.contiguous_format)
    eval_fps(G, args.img_size, batch, batch, eval_amp, eval_nhwc)  # warm-up at the timed batch shape
    fps = eval_fps(G, args.img_size, args.eval_frames, batch, eval_amp, eval_nhwc)
    return {"variant": variant, "seconds": statistics.median(times), "fps": fps, "rss": peak_rss_gib(),
            "rss_built": rss_built, "chosen": chosen}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--img_size", type=int, default=256)
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--base_channels", type=int, default=64)
    parser.add_argument("--model", default="ffp", help="generator registry name (ffp, stemgan, ...)")
    parser.add_argument("--flownet", default="none", choices=["none", "flownet2sd", "spynet", "lucaskanade"])
    parser.add_argument("--weights_dir", default="weights")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--eval_frames", type=int, default=32)
    parser.add_argument("--eval_batch_size", type=int, default=4)
    parser.add_argument("--variants", default="plain,fp32,bf16,nhwc,bf16nhwc,default,int8")
    parser.add_argument("--mmap_threshold", type=int, default=0,
                        help="bytes: glibc serves every allocation at least this big with its own mmap, returned to "
                             "the system when freed (lower peak RSS, more page faults); 0 = glibc's dynamic default")
    parser.add_argument("--readme", action="store_true",
                        help="the README's Speed table: fp32 against the default at 128 px w32 and 256 px w64")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)  # internal: run one variant, print JSON
    args = parser.parse_args()
    if args.child:
        if args.mmap_threshold != 0:
            set_mmap_threshold(args.mmap_threshold)
        print(json.dumps(run_variant(args, args.child)))
        return

    if args.readme:
        readme_table(args)
        return
    measure(args, sys.argv[1:])


def measure(args, forwarded_args: list[str]) -> dict:
    """Run every variant of ``args.variants`` in its own process; print the lines and the table; return them."""
    cfg = preset("ped2").replace(img_size=args.img_size, base_channels=args.base_channels, model=args.model)
    gflop = generator_gflop_per_frame(cfg)
    train_gflop = step_gflop(cfg, args.batch_size)
    from ffpvad.training.autotune import cpu_model
    print(f"{cpu_model()}, {os.cpu_count()} cores; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"{args.img_size}x{args.img_size}, "
          f"batch {args.batch_size}, {args.model} base width {args.base_channels}, flow {args.flownet}; "
          f"{sum(p.numel() for p in build_generator(cfg).parameters()):,} generator parameters, "
          f"{gflop:.1f} GFLOP per predicted frame, {train_gflop:.0f} GFLOP per training step (no flow loss)")
    peak32, peak16 = matmul_peak_gflops(torch.float32), matmul_peak_gflops(torch.bfloat16)
    print(f"matrix-multiply rate of this machine (2048^2): fp32 {peak32:.0f} GFLOP/s, bf16 {peak16:.0f} GFLOP/s")
    if args.flownet == "flownet2sd" and not any((Path(args.weights_dir) / f).is_file()
                                                for f in ("FlowNet2-SD.pth", "FlowNet2-SD_checkpoint.pth.tar")):
        print("note: no FlowNet2-SD weights: timing a randomly initialised FlowNet2-SD (same cost)")

    rows = []
    forwarded = [a for a in forwarded_args if not a.startswith(("--variants", "--readme"))]
    for variant in args.variants.split(","):
        done = subprocess.run([sys.executable, __file__, *forwarded, f"--child={variant}"], capture_output=True,
                              text=True)
        if done.returncode:
            sys.exit(f"variant {variant} failed:\n{done.stderr[-2000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"  {variant:8s} {r['seconds']:.3f} s/step  {r['fps']:.1f} eval frames/s  peak RSS {r['rss']:.2f} GiB"
              + (f"  ({r['chosen']})" if r["chosen"] else ""), flush=True)

    base_step, base_fps = rows[0]["seconds"], rows[0]["fps"]
    print(f"\nRatios against the first variant ({rows[0]['variant']}); GFLOP/s against the matmul rate above "
          f"(fp32 {peak32:.0f}, bf16 {peak16:.0f}).")
    print("| variant | s/step | train x | train GFLOP/s | eval frames/s | eval x | eval GFLOP/s | peak RSS GiB "
          "| peak RSS before step 1 |\n|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        name = f"{r['variant']} ({r['chosen']})" if r["chosen"] else r["variant"]
        print(f"| {name} | {r['seconds']:.3f} | {base_step / r['seconds']:.2f} | {train_gflop / r['seconds']:.0f} | "
              f"{r['fps']:.1f} | {r['fps'] / base_fps:.2f} | {r['fps'] * gflop:.0f} | {r['rss']:.2f} | "
              f"{r['rss_built']:.2f} |")

    return {"rows": rows, "peak32": peak32, "peak16": peak16, "train_gflop": train_gflop, "gflop": gflop}


README_SIZES = ((128, 32), (256, 64))  # the ped2_cpu recipe's size and width, and the paper's


def readme_table(args) -> None:
    """README's Speed table: plain fp32 against the default (measured auto) at the recipe's and the paper's size,
    each pair in one run of its own processes, with the CPU named and the share of the matmul rate reached."""
    from ffpvad.training.autotune import cpu_model
    lines = []
    for size, width in README_SIZES:
        args.img_size, args.base_channels, args.variants = size, width, "fp32,default"
        forwarded = [f"--img_size={size}", f"--base_channels={width}", f"--batch_size={args.batch_size}",
                     f"--repeats={args.repeats}"]
        result = measure(args, forwarded)
        plain, default = result["rows"]
        rate = result["train_gflop"] / default["seconds"]
        peak = result["peak16"] if "bf16" in default["chosen"].split(",")[0] else result["peak32"]
        lines.append(f"| {size} px, width {width} | {plain['seconds']:.3f} | {default['seconds']:.3f} | "
                     f"**{plain['seconds'] / default['seconds']:.2f}x** | {plain['fps']:.1f} | {default['fps']:.1f} | "
                     f"**{default['fps'] / plain['fps']:.2f}x** | {rate:.0f} of {peak:.0f} ({100 * rate / peak:.0f}%) "
                     f"| {default['chosen']} |")
    print(f"\nREADME table ({cpu_model()}, {os.cpu_count()} cores, torch {torch.__version__}, batch "
          f"{args.batch_size}, evaluation batch {args.eval_batch_size}, no flow loss):\n")
    print("| size | plain fp32 s/step | default s/step | training | plain eval frames/s | default eval frames/s "
          "| evaluation | default training GFLOP/s of the matmul rate | default's choice |")
    print("|---|---|---|---|---|---|---|---|---|")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
