"""Convert the authors' SPyNet Torch7 files (modelL<k>_<v>.t7) into a state dict this project loads.

    python tools/convert_spynet.py <folder with the .t7 files> [--variant=sintel-final] [--out=weights/...]

Each file is an nn.Sequential of [conv, ReLU] x 4 + conv (7x7, 8->32->64->32->16->2); the weights are copied as
they are (PyTorch Conv2d layout), the stored training gradients are ignored.  The chairs variants ship no level-6
file; as the authors' code does, level 5 is used again for level 6.  The weights are the authors' (non-commercial
research use): users download them themselves; this repository never contains them.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch


from ffpvad.errors import UserError, run_cli
from ffpvad.flow.spynet import DEFAULT_VARIANT, VARIANTS, SpyNet
from ffpvad.ioutil import atomic_path

CONV_INDICES = (0, 2, 4, 6, 8)  # positions of the convolutions in the Sequential (ReLUs between)


def read_level(path: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight, bias) of the five convolutions of one level file."""
    import torchfile

    try:
        model = torchfile.load(str(path))
        modules = model._obj[b"modules"]
        convs = [m for m in modules if b"Convolution" in m.torch_typename()]
    except Exception as exc:  # torchfile raises many types for foreign files
        raise UserError(f"cannot read {path} as a SPyNet Torch7 level file ({type(exc).__name__}: {exc})") from None
    if len(convs) != 5:
        raise UserError(f"{path} has {len(convs)} convolutions, expected 5: not a SPyNet level file")
    return [(np.asarray(c._obj[b"weight"], np.float32), np.asarray(c._obj[b"bias"], np.float32)) for c in convs]


def convert(folder: Path, variant: str = DEFAULT_VARIANT) -> dict[str, torch.Tensor]:
    if variant not in VARIANTS:
        raise UserError(f"unknown SPyNet variant '{variant}': choose one of {', '.join(VARIANTS)}")
    suffix = VARIANTS[variant]
    network = SpyNet()
    state = network.state_dict()
    for level in range(1, 7):
        path = folder / f"modelL{level}_{suffix}.t7"
        if level == 6 and not path.exists() and suffix in ("3", "4"):
            path = folder / f"modelL5_{suffix}.t7"  # the chairs models have no level 6: the authors reuse 5
        if not path.exists():
            raise UserError(f"missing {path}: the {variant} variant needs modelL1_{suffix}.t7 .. modelL6_{suffix}.t7")
        for index, (weight, bias) in zip(CONV_INDICES, read_level(path)):
            key = f"basic.{level - 1}.{index}"
            if tuple(weight.shape) != tuple(state[f"{key}.weight"].shape):
                raise UserError(f"{path}: convolution {index} has shape {weight.shape}, expected "
                                f"{tuple(state[f'{key}.weight'].shape)}")
            state[f"{key}.weight"] = torch.from_numpy(weight.copy())
            state[f"{key}.bias"] = torch.from_numpy(bias.copy())
    return state


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--variant", default=DEFAULT_VARIANT, choices=sorted(VARIANTS))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        raise UserError(f"{args.folder} is not a folder of SPyNet .t7 files")
    state = convert(args.folder, args.variant)
    out = args.out or Path("weights") / f"spynet_{args.variant}.pth"
    with atomic_path(out, suffix=".pth") as tmp:
        torch.save({"state_dict": state, "variant": args.variant, "source": "anuragranj/spynet .t7"}, tmp)
    print(f"wrote {out} ({args.variant}, 6 levels, {sum(t.numel() for t in state.values()):,} parameters)")
    return 0


if __name__ == "__main__":
    run_cli(main)
