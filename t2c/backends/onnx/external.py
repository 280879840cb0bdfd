"""Initializers as external data, written tensor by tensor while lowering: no >2 GiB protobuf, no extra copy.

A model whose initializers exceed the threshold (1 GiB) keeps its weights outside the
ModelProto. While lowering, `SpillingContext.add_initializer` appends each initializer above
INLINE_MAX bytes to a spill file as it is made (from the tensor's own memory: no bytes object,
no TensorProto holding it) and records an EXTERNAL TensorProto (location `model.onnx.data`,
offset, length) instead; the tensor can then be freed (the pre-transposed `<param>.T` copies
that lowering.py makes are gone as soon as they are written), and the pages of the params it
came from leave resident memory where they map a file (validate.page_out_mapped: a safetensors
checkpoint's weights are read back from it when needed). Small tensors (shape constants,
which shape inference reads) stay inline. `save` moves or links the spill file next to
model.onnx as model.onnx.data; the ModelProto never holds the weights' bytes.

Tensors of 1 MiB or more start at a multiple of 64 KiB (what onnx's own writer does), so ONNX
Runtime can map them from the file; the gaps are zeros.

The in-memory ModelProto names its spill file in metadata_props (SPILL_KEY); `save` drops that
entry from what it writes. Spill files not moved by a save are removed when the process exits.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

import onnx
import torch
from onnx import TensorProto

from ...ir.core import DType
from ...validate import page_out_mapped
from .context import ONNX_DTYPE, Context

EXTERNAL_DATA_THRESHOLD = 1 << 30  # weights beyond 1 GiB go to model.onnx.data
DATA_FILE = "model.onnx.data"
INLINE_MAX = 1024  # initializers up to this many bytes stay in model.onnx (as onnx.save's size_threshold)
ALIGN_MIN = 1 << 20  # tensors this large start at a multiple of ALIGN
ALIGN = 1 << 16
SPILL_KEY = "t2c.external_data_spill"  # metadata_props entry of an in-memory model: its spill file

_spills: set[str] = set()


@atexit.register
def _remove_spills() -> None:
    for path in list(_spills):
        try:
            os.unlink(path)
        except OSError:
            pass
    _spills.clear()


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    """The tensor's bytes in ONNX raw layout, without copying when it is contiguous on the CPU."""
    t = t.detach().cpu().contiguous()
    if DType.from_torch(t.dtype) == DType.BF16:
        t = t.view(torch.int16)
    return memoryview(t.numpy()).cast("B")


def _set_external(proto: TensorProto, offset: int, length: int, location: str = DATA_FILE) -> None:
    proto.data_location = TensorProto.EXTERNAL
    del proto.external_data[:]
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = proto.external_data.add()
        entry.key, entry.value = key, value


def external_info(proto: TensorProto) -> dict[str, str]:
    """{location, offset, length} of an external TensorProto ({} when its data is inline)."""
    if proto.data_location != TensorProto.EXTERNAL:
        return {}
    return {e.key: e.value for e in proto.external_data}


class DataWriter:
    """Appends tensors to one file at aligned offsets; `tell()` is the end of the data so far."""

    def __init__(self, path: str):
        self.path = path
        self.file = open(path, "wb")
        self.end = 0

    def write(self, data) -> tuple[int, int]:
        """Write `data` (bytes-like); returns (offset, length)."""
        length = memoryview(data).nbytes
        offset = self.end
        if length >= ALIGN_MIN and offset % ALIGN:
            offset += ALIGN - offset % ALIGN
            self.file.write(b"\0" * (offset - self.end))
        self.file.write(data)
        self.end = offset + length
        return offset, length

    def close(self) -> None:
        if not self.file.closed:
            self.file.close()


class SpillingContext(Context):
    """A lowering Context that writes large initializers to a spill file once the weights exceed `threshold`.

    It spills from the start when the graph's params already exceed the threshold; otherwise
    initializers stay inline (as in a plain Context) until their total passes it, when those
    made so far move to the file.
    """

    def __init__(self, graph, opset: int, flavor=None, *, threshold: int = EXTERNAL_DATA_THRESHOLD):
        super().__init__(graph, opset, flavor=flavor)
        self.threshold = threshold
        self.total = 0  # bytes of every initializer so far
        self.writer: DataWriter | None = None
        self._read: list[torch.Tensor] = []  # params lowering read since the last initializer written (param_tensor)
        params = sum(t.numel() * t.element_size() for t in graph.params.values() if isinstance(t, torch.Tensor))
        if params > threshold:
            self._start_spilling()

    def _start_spilling(self) -> None:
        fd, path = tempfile.mkstemp(prefix="t2c-", suffix=".onnx.data")
        os.close(fd)
        _spills.add(path)
        self.writer = DataWriter(path)
        self.location = os.path.basename(path)  # until saved: relative to the spill's folder, where `check` reads it
        for proto in self.initializers.values():  # those made before the total passed the threshold
            if proto.HasField("raw_data") and len(proto.raw_data) > INLINE_MAX:
                offset, length = self.writer.write(proto.raw_data)
                proto.ClearField("raw_data")
                _set_external(proto, offset, length, self.location)

    def param_tensor(self, v):
        t = super().param_tensor(v)
        if t is not None and self.writer is not None:
            self._read.append(t)
        return t

    def add_initializer(self, name: str, t: torch.Tensor) -> str:
        if name in self.initializers:
            return name
        nbytes = t.numel() * t.element_size()
        self.total += nbytes
        if self.writer is None and self.total > self.threshold:
            self._start_spilling()
        if self.writer is None or nbytes <= INLINE_MAX:
            return super().add_initializer(name, t)
        self._used.add(name)
        proto = TensorProto(name=name, data_type=ONNX_DTYPE[DType.from_torch(t.dtype)], dims=list(t.shape))
        offset, length = self.writer.write(_tensor_bytes(t))
        _set_external(proto, offset, length, self.location)
        self.initializers[name] = proto
        # Written: the tensor and the params read to make it (the `<param>.T` copies' sources) leave
        # resident memory where they map a file (a safetensors checkpoint), so that the weights
        # lowered so far and the copy being made are not all resident at the end of lowering.
        page_out_mapped([t, *self._read])
        self._read.clear()
        return name

    def discard(self) -> None:
        """Close and remove the spill file (a lowering that failed)."""
        if self.writer is not None:
            self.writer.close()
            _spills.discard(self.writer.path)
            try:
                os.unlink(self.writer.path)
            except OSError:
                pass

    def finish(self, model: onnx.ModelProto) -> None:
        """Close the spill file and name it in `model` (save moves it next to model.onnx)."""
        if self.writer is None:
            return
        self.writer.close()
        entry = model.metadata_props.add()
        entry.key, entry.value = SPILL_KEY, self.writer.path


def spill_path(model: onnx.ModelProto) -> str | None:
    """The spill file holding `model`'s external initializers, or None when they are inline."""
    for entry in model.metadata_props:
        if entry.key == SPILL_KEY:
            return entry.value
    return None


def initializer_bytes(model: onnx.ModelProto) -> int:
    """Total size of the model's initializers in bytes, inline or external."""
    total = 0
    for t in model.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            total += int(external_info(t).get("length", 0))
        else:
            total += len(t.raw_data) if t.HasField("raw_data") else onnx.numpy_helper.to_array(t).nbytes
    return total


def check_spilled(model: onnx.ModelProto) -> None:
    """onnx.checker (full) on a spilled model: from a header file beside its spill file, so the
    checker finds the external data (it refuses absolute locations)."""
    spill = spill_path(model)
    fd, header = tempfile.mkstemp(prefix="t2c-check-", suffix=".onnx", dir=os.path.dirname(spill))
    os.close(fd)
    try:
        onnx.save_model(_header(model, location=None), header)
        onnx.checker.check_model(header, full_check=True)
    finally:
        os.unlink(header)


CHECK_INLINE_MAX = 64 << 20  # an inline model with more weights is checked from a header + temporary data file


def check_inline_header(model: onnx.ModelProto) -> None:
    """onnx.checker (full) and strict shape inference on an inline model, its weights moved aside.

    Checking a ModelProto in memory serializes and parses it several times (about 6 copies of
    its weights at once); this writes each initializer past INLINE_MAX to a temporary data file,
    one at a time, and checks a header that refers to it.
    """
    folder = tempfile.mkdtemp(prefix="t2c-check-")
    try:
        header = _without_initializers(model)
        writer = DataWriter(os.path.join(folder, DATA_FILE))
        try:
            for proto in model.graph.initializer:
                if not proto.HasField("raw_data") or len(proto.raw_data) <= INLINE_MAX:
                    header.graph.initializer.append(proto)
                    continue
                t = header.graph.initializer.add(name=proto.name, data_type=proto.data_type, dims=proto.dims)
                offset, length = writer.write(proto.raw_data)
                _set_external(t, offset, length)
        finally:
            writer.close()
        path = os.path.join(folder, "model.onnx")
        onnx.save_model(header, path)
        onnx.checker.check_model(path, full_check=True)
        onnx.shape_inference.infer_shapes(header, check_type=True, strict_mode=True)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _write_inline_streamed(model: onnx.ModelProto, path: str) -> None:
    """Write an inline model as one file without serializing it whole (a copy of its weights).

    Protobuf merges concatenated messages (repeated fields append, sub-messages merge), so
    model.onnx is the model without its large initializers followed by one
    ModelProto{graph{initializer: [t]}} per large initializer, each serialized on its own: any
    protobuf reader (onnx.load, ONNX Runtime) parses the file as the whole model.
    """
    large = [t for t in model.graph.initializer if t.ByteSize() > INLINE_MAX]
    names = {t.name for t in large}
    header = _without_initializers(model)
    header.graph.initializer.extend(t for t in model.graph.initializer if t.name not in names)
    with open(path, "wb") as f:
        f.write(header.SerializeToString())
        for t in large:
            chunk = onnx.ModelProto()
            chunk.graph.initializer.append(t)
            f.write(chunk.SerializeToString())


def _copy_field(dst, field, value) -> None:
    if field.is_repeated:
        getattr(dst, field.name).extend(value)
    elif field.message_type is not None:
        getattr(dst, field.name).CopyFrom(value)
    else:
        setattr(dst, field.name, value)



def _without_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` with every field but the graph's initializers (no weight bytes copied)."""
    header = onnx.ModelProto()
    for field, value in model.ListFields():
        if field.name != "graph":
            _copy_field(header, field, value)
    for field, value in model.graph.ListFields():
        if field.name != "initializer":
            _copy_field(header.graph, field, value)
    return header

def _header(model: onnx.ModelProto, location: str | None = DATA_FILE) -> onnx.ModelProto:
    """A copy of `model` without t2c's spill entry, its external tensors read from `location`
    (None: unchanged). Cheap: the weights are external."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    if location is not None:
        for proto in out.graph.initializer:
            if proto.data_location == TensorProto.EXTERNAL:
                for e in proto.external_data:
                    if e.key == "location":
                        e.value = location
    keep = [(e.key, e.value) for e in out.metadata_props if e.key != SPILL_KEY]
    del out.metadata_props[:]
    for key, value in keep:
        entry = out.metadata_props.add()
        entry.key, entry.value = key, value
    return out


def save_model(model: onnx.ModelProto, out_dir: str, *, external_threshold: int = EXTERNAL_DATA_THRESHOLD, move: bool = False) -> str:
    """Write `out_dir/model.onnx`, and `model.onnx.data` when the weights exceed `external_threshold`.

    A model lowered with its weights spilled has its spill file moved (`move=True`, the compiler:
    the in-memory model cannot be saved again) or hard-linked / copied next to model.onnx. An
    inline model past the threshold is split while writing, tensor by tensor.
    """
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "model.onnx")
    data = os.path.join(out_dir, DATA_FILE)
    spill = spill_path(model)
    if spill is not None:
        if not os.path.isfile(spill):
            raise FileNotFoundError(f"{spill}: this model's external weights were already moved by an earlier save; lower the graph again")
        if os.path.lexists(data):
            os.unlink(data)
        if move:
            shutil.move(spill, data)
            _spills.discard(spill)  # the entry stays: a second save says the weights were moved
        else:
            try:
                os.link(spill, data)
            except OSError:
                shutil.copyfile(spill, data)
        onnx.save_model(_header(model), path)
        return path
    total = initializer_bytes(model)
    if total <= external_threshold:
        if total > CHECK_INLINE_MAX:
            _write_inline_streamed(model, path)
        else:
            onnx.save_model(model, path)
        return path
    out = onnx.ModelProto()
    out.CopyFrom(model)
    writer = DataWriter(data)
    try:
        for proto in out.graph.initializer:
            if proto.data_location == TensorProto.EXTERNAL:
                raise ValueError(f"initializer {proto.name} is external but the model names no data file")
            if proto.HasField("raw_data"):
                raw = proto.raw_data
            else:
                raw = onnx.numpy_helper.to_array(proto).tobytes()
            if len(raw) <= INLINE_MAX:
                continue
            offset, length = writer.write(raw)
            for field in ("raw_data", "float_data", "int32_data", "int64_data", "double_data", "uint64_data", "string_data"):
                proto.ClearField(field)
            _set_external(proto, offset, length)
    finally:
        writer.close()
    onnx.save_model(out, path)
    return path

