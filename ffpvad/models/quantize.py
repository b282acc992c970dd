"""Post-training static int8 quantization of a generator, for evaluation on the CPU (``eval.py --quantize=int8``).

Not in any of the papers: an engineering choice for inference speed.  Every convolution, with its BatchNorm folded
in and its ReLU fused, runs as an int8 x int8 -> int32 kernel (PyTorch's x86 backend: fbgemm with AVX512-VNNI):
weights with one scale per output channel, activations with one scale per tensor, chosen by histogram observers
while the float network predicts a few training clips.  Those clips are normal frames of the training split, so
quantizing sees no test frame and no label.  On the project's 2-core CPU the FFP U-Net at 256x256 predicts 2.0x as
many frames per second as in bf16 (bench/speed.py), but eight-bit activations cost 1.5-4 dB of prediction PSNR and
change the AUC (docs/speed.md 'int8 evaluation': on Ped2, micro AUC 93.48% -> 92.02% for one checkpoint, 92.66% ->
93.14% for
another, macro AUC 1.8-2.5 points lower for both): an opt-in trade, not a default.

The int8 kernels exist for the CPU only, and the network is traced with torch.fx: a generator whose forward pass
does not trace (data-dependent control flow) cannot be quantized this way, and says so.  The API used,
torch.ao.quantization's FX mode, is deprecated upstream in favour of torchao's pt2e flow; it is present and works
in the torch version requirements.txt pins, and its deprecation warning is silenced here, not hidden elsewhere.
"""
from __future__ import annotations

import copy
import warnings
from typing import Iterable

import torch
from torch import nn

from ffpvad.errors import UserError
from ffpvad.runtime import cpu_has_vnni


def _qconfig_mapping():
    # Deferred: torch.ao's quantization stack loads only for --quantize=int8.
    from torch.ao.quantization import QConfig, get_default_qconfig_mapping
    from torch.ao.quantization.observer import HistogramObserver, PerChannelMinMaxObserver

    # Full 8-bit activations where VNNI accumulates in 32 bits.  PyTorch's default keeps them to 7 bits
    # (reduce_range) so that the int16 intermediate sums of pre-VNNI AVX2 kernels cannot saturate; on Ped2 that
    # cost 4.4 dB of prediction PSNR and 2.6 points of micro AUC on one checkpoint (docs/speed.md 'int8 evaluation',
    # "Speed, third
    # version"), so it is kept only where it is needed.
    activation = HistogramObserver.with_args(quant_min=0, quant_max=255, reduce_range=not cpu_has_vnni())
    weight = PerChannelMinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_channel_symmetric)
    return get_default_qconfig_mapping("x86").set_global(QConfig(activation=activation, weight=weight))


def quantize_int8(generator: nn.Module, calibration_inputs: Iterable[torch.Tensor], model_name: str) -> nn.Module:
    """An int8 copy of ``generator`` (float, CPU), calibrated on ``calibration_inputs`` (generator inputs in the
    model range).  The original is left untouched."""
    if torch.backends.quantized.engine not in ("x86", "fbgemm"):
        raise UserError(f"--quantize=int8 is written for PyTorch's x86 int8 kernels, and this machine's quantized "
                        f"engine is {torch.backends.quantized.engine}: use --quantize=off")
    with warnings.catch_warnings():  # only the deprecation notices of torch.ao's quantization API itself
        warnings.filterwarnings("ignore", message=r"(?s).*torch\.ao\.quantization is deprecated")
        warnings.filterwarnings("ignore", message=r"(?s).*reduce_range will be deprecated")
        warnings.filterwarnings("ignore", message=r"(?s).*quantized tensor creation functions.*are deprecated")
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx  # deferred: as above

        model = copy.deepcopy(generator).cpu().float().eval().to(memory_format=torch.contiguous_format)
        batches = iter(calibration_inputs)
        try:
            first = next(batches)
        except StopIteration:
            raise UserError("--quantize=int8 needs calibration clips, and none were given") from None
        try:
            prepared = prepare_fx(model, _qconfig_mapping(), (first,))
        except Exception as exc:  # torch.fx raises many types for code it cannot trace
            raise UserError(f"--quantize=int8 cannot trace or prepare --model={model_name} with torch.fx "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]}): use --quantize=off") from None
        with torch.no_grad():
            for batch in (first, *batches):
                prepared(batch.float())
        return convert_fx(prepared)
