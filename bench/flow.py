"""How good and how costly is each flow estimator?  Prints a markdown table.

    python bench/flow.py --data_root=../shared/data --weights_dir=weights

- EPE on synthetic pairs with a known motion (a smooth texture moved by a shift or rotated about the centre;
  border pixels excluded), against zero flow;
- photometric error on real consecutive Ped2 test frames at --size: mean |frame_t - warp(frame_t+1, flow)| on
  [0, 1], against zero flow (lower is better; a useful estimator beats zero flow clearly);
- milliseconds per pair at --size, forward only and forward + backward to the input (the flow-loss path).
Estimators whose weights are not in --weights_dir are listed as not available, not skipped silently.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import torch


from ffpvad.config import preset
from ffpvad.errors import UserError
from ffpvad.flow import build_flownet
from ffpvad.flow.spynet import backward_warp


def texture(size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.resize(rng.random((size // 4, size // 4)).astype(np.float32), (size, size),
                      interpolation=cv2.INTER_CUBIC).clip(0, 1)


def synthetic_pair(kind: str, size: int, seed: int) -> tuple[torch.Tensor, np.ndarray]:
    """Frames (1, 3, 2, size, size) in [-1, 1] and the true flow (2, size, size) frame 0 -> frame 1."""
    base = texture(size, seed)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    if kind.startswith("shift"):
        dx, dy = {"shift3": (3.0, 0.0), "shift1.5,2.5": (1.5, 2.5)}[kind]
        matrix = np.float32([[1, 0, dx], [0, 1, dy]])
    else:  # rotate2: 2 degrees about the centre
        matrix = cv2.getRotationMatrix2D((size / 2 - 0.5, size / 2 - 0.5), 2.0, 1.0).astype(np.float32)
    moved = cv2.warpAffine(base, matrix, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    # frame1(p') = frame0(p) with p' = M p: the flow at p is M p - p
    flow = np.stack([matrix[0, 0] * xs + matrix[0, 1] * ys + matrix[0, 2] - xs,
                     matrix[1, 0] * xs + matrix[1, 1] * ys + matrix[1, 2] - ys])
    pair = torch.from_numpy(np.stack([base, moved])) * 2 - 1
    return pair[None, None].expand(1, 3, 2, size, size).contiguous(), flow


def epe(estimated: torch.Tensor, true: np.ndarray, margin: int = 16) -> float:
    error = estimated[0].numpy() - true
    return float(np.hypot(error[0], error[1])[margin:-margin, margin:-margin].mean())


def ped2_pairs(data_root: Path, size: int, n: int) -> torch.Tensor:
    folder = data_root / "ped2" / "testing" / "frames"
    if not folder.is_dir():
        raise UserError(f"no Ped2 frames at {folder}: pass --data_root (the photometric check needs real frames)")
    frames = sorted(folder.glob("*/*.jpg"))
    rng = np.random.default_rng(0)
    pairs = []
    for k in rng.choice(len(frames) - 1, size=n * 2, replace=False):
        a, b = frames[k], frames[k + 1]
        if a.parent != b.parent:
            continue
        load = lambda p: cv2.resize(cv2.imread(str(p))[:, :, ::-1], (size, size)).astype(np.float32) / 127.5 - 1
        pairs.append(np.stack([load(a), load(b)], axis=0).transpose(3, 0, 1, 2))  # (3, 2, H, W)
        if len(pairs) == n:
            break
    return torch.from_numpy(np.stack(pairs))


def photometric(flow_fn, pairs: torch.Tensor, batch: int = 8) -> float:
    errors = []
    for lo in range(0, len(pairs), batch):
        x = pairs[lo:lo + batch]
        with torch.no_grad():
            flow = flow_fn(x)
        first, second = (x[:, :, 0] + 1) / 2, (x[:, :, 1] + 1) / 2
        errors.append((first - backward_warp(second, flow)).abs().mean(dim=(1, 2, 3)))
    return float(torch.cat(errors).mean())


def milliseconds(flow_fn, size: int, backward: bool, repeats: int = 5) -> float:
    x = torch.rand(1, 3, 2, size, size) * 2 - 1
    times = []
    for k in range(repeats + 1):
        frames = x.clone().requires_grad_(backward)
        start = time.perf_counter()
        if backward:
            flow_fn(frames).abs().mean().backward()
        else:
            with torch.no_grad():
                flow_fn(frames)
        if k:
            times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_root", default="../shared/data", type=Path)
    parser.add_argument("--weights_dir", default="weights")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--pairs", type=int, default=64)
    args = parser.parse_args()

    zero = lambda x: torch.zeros(x.shape[0], 2, *x.shape[-2:])
    estimators = {"zero flow": zero}
    for name in ("lucaskanade", "spynet", "flownet2sd"):
        try:
            estimators[name] = build_flownet(preset("ped2").replace(flownet=name, weights_dir=args.weights_dir))
        except UserError as exc:
            print(f"{name}: not available ({exc})")
    pairs = ped2_pairs(args.data_root, args.size, args.pairs)
    kinds = ["shift3", "shift1.5,2.5", "rotate2"]
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads; synthetic pairs at {args.size}px, "
          f"{len(pairs)} Ped2 test pairs at {args.size}px")
    print("\n| estimator | " + " | ".join(f"EPE {k} (px)" for k in kinds)
          + " | Ped2 photometric L1 | ms/pair fwd | ms/pair fwd+bwd |")
    print("|---" * (len(kinds) + 4) + "|")
    for name, fn in estimators.items():
        errors = []
        for kind in kinds:
            frames, true = synthetic_pair(kind, args.size, seed=1)
            with torch.no_grad():
                errors.append(epe(fn(frames), true))
        timing = ("-", "-") if name == "zero flow" else (f"{milliseconds(fn, args.size, False):.1f}",
                                                          f"{milliseconds(fn, args.size, True):.1f}")
        print(f"| {name} | " + " | ".join(f"{e:.3f}" for e in errors)
              + f" | {photometric(fn, pairs):.4f} | {timing[0]} | {timing[1]} |", flush=True)


if __name__ == "__main__":
    main()
