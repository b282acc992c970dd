"""A minimal writer of Torch7 binary files, so tests can build SPyNet level files with the real layout.

Format (torch7 File.lua / torchfile's reader): every object starts with an int32 type (0 nil, 1 number, 2 string,
3 table, 4 torch object, 5 boolean); tables and torch objects carry an int32 reference index; a torch object has a
version string "V 1", its class name, then a table of fields, except tensors (ndim, sizes, strides, 1-based
offset, storage) and storages (int64 size, raw data).  Native little-endian, 8-byte longs.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

import numpy as np


@dataclass
class TorchObject:
    class_name: str
    fields: dict = field(default_factory=dict)


class T7Writer:
    def __init__(self, handle):
        self.handle, self.index = handle, 0

    def _pack(self, fmt: str, *values) -> None:
        self.handle.write(struct.pack(fmt, *values))

    def _string(self, text: str | bytes) -> None:
        data = text.encode() if isinstance(text, str) else text
        self._pack("<i", len(data))
        self.handle.write(data)

    def _reference(self, kind: int) -> None:
        self.index += 1
        self._pack("<ii", kind, self.index)

    def write(self, value) -> None:
        if value is None:
            self._pack("<i", 0)
        elif isinstance(value, bool):
            self._pack("<ii", 5, int(value))
        elif isinstance(value, (int, float)):
            self._pack("<id", 1, float(value))
        elif isinstance(value, str):
            self._pack("<i", 2)
            self._string(value)
        elif isinstance(value, (list, dict)):
            items = list(enumerate(value, start=1)) if isinstance(value, list) else list(value.items())
            self._reference(3)
            self._pack("<i", len(items))
            for key, item in items:
                self.write(key)
                self.write(item)
        elif isinstance(value, np.ndarray):
            array = np.ascontiguousarray(value, dtype=np.float32)
            self._reference(4)
            self._string("V 1")
            self._string("torch.FloatTensor")
            self._pack("<i", array.ndim)
            self._pack(f"<{array.ndim}q", *array.shape)
            self._pack(f"<{array.ndim}q", *(s // 4 for s in array.strides))
            self._pack("<q", 1)
            self._reference(4)
            self._string("V 1")
            self._string("torch.FloatStorage")
            self._pack("<q", array.size)
            self.handle.write(array.tobytes())
        elif isinstance(value, TorchObject):
            self._reference(4)
            self._string("V 1")
            self._string(value.class_name)
            self.write(value.fields)
        else:
            raise TypeError(type(value))


def spynet_level_file(path, weights: list[tuple[np.ndarray, np.ndarray]], rng: np.random.Generator) -> None:
    """An nn.Sequential of [cudnn.SpatialConvolution, cudnn.ReLU] x 4 + conv, as the authors' files are."""
    modules = []
    for k, (weight, bias) in enumerate(weights):
        out_c, in_c, kh, kw = weight.shape
        modules.append(TorchObject("cudnn.SpatialConvolution", {
            "weight": weight, "bias": bias, "gradWeight": rng.normal(size=weight.shape).astype(np.float32),
            "gradBias": rng.normal(size=bias.shape).astype(np.float32), "nInputPlane": in_c, "nOutputPlane": out_c,
            "kW": kw, "kH": kh, "dW": 1, "dH": 1, "padW": 3, "padH": 3, "groups": 1, "train": False}))
        if k < 4:
            modules.append(TorchObject("cudnn.ReLU", {"inplace": False, "train": False}))
    with open(path, "wb") as handle:
        T7Writer(handle).write(TorchObject("nn.Sequential", {"modules": modules, "train": False,
                                                             "_type": "torch.FloatTensor"}))
