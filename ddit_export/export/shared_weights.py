"""One weights file for every graph: each large initializer is written once (deduplicated by content) and every
graph points at it as ONNX external data. Small tensors stay inline: ORT fails with a size threshold of 0."""
from __future__ import annotations

import hashlib
from pathlib import Path

from ..bundle import WEIGHTS

ALIGN = 64
SIZE_THRESHOLD = 1024  # bytes; smaller initializers (shape constants, tiny biases) stay in the graph


class SharedWeightsWriter:
    def __init__(self, folder: Path):
        self.path = Path(folder) / WEIGHTS
        self._f = open(self.path, "wb")
        self._index: dict[str, tuple[int, int]] = {}  # content hash -> (offset, length)
        self.unique_bytes = 0
        self.referenced_bytes = 0

    def externalize(self, model_proto, base_dir: Path | None = None):
        """Move the model's large initializers into the shared file (in place) and return their table. Initializers
        already stored as external data (every export is saved that way first) are read from ``base_dir``."""
        from onnx import external_data_helper as edh
        from onnx import helper, numpy_helper

        table = []  # (name, offset, length, numpy dtype, dims): what a runtime needs to share the tensors itself
        for t in model_proto.graph.initializer:
            if edh.uses_external_data(t):
                raw = _read_external(t, Path(base_dir))
            else:
                raw = t.raw_data if t.HasField("raw_data") else numpy_helper.to_array(t).tobytes()
            if len(raw) < SIZE_THRESHOLD:
                if edh.uses_external_data(t):  # bring small tensors back inline
                    del t.external_data[:]
                    t.data_location = t.DEFAULT
                    t.raw_data = raw
                continue
            key = hashlib.sha256(raw).hexdigest() + f":{t.data_type}"
            if key not in self._index:
                pad = (-self._f.tell()) % ALIGN
                self._f.write(b"\0" * pad)
                self._index[key] = (self._f.tell(), len(raw))
                self._f.write(raw)
                self.unique_bytes += len(raw)
            self.referenced_bytes += len(raw)
            offset, length = self._index[key]
            for field in ("float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
                t.ClearField(field)
            t.ClearField("raw_data")
            del t.external_data[:]
            for k, v in (("location", WEIGHTS), ("offset", str(offset)), ("length", str(length))):
                entry = t.external_data.add()
                entry.key, entry.value = k, v
            t.data_location = t.EXTERNAL
            table.append([t.name, offset, length, helper.tensor_dtype_to_np_dtype(t.data_type).name, list(t.dims)])
        return table

    def close(self):
        self._f.close()


def _read_external(tensor, base_dir: Path) -> bytes:
    info = {e.key: e.value for e in tensor.external_data}
    with open(base_dir / info["location"], "rb") as f:
        f.seek(int(info.get("offset", 0)))
        return f.read(int(info["length"])) if "length" in info else f.read()
