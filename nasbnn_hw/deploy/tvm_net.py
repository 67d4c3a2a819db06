"""Compile a whole static subnet into one TVM function: `main(x, *packed_params, logits)`.

    net = compile_subnet(extract_subnet(supernet, arch), target="local")
    logits = net(images)                       # NCHW float32, batch fixed at compile time
    net.export("subnet.so")                    # + subnet.npz: pre-packed parameters and metadata
    net = TvmSubnet.load("subnet.so")          # on a machine that has TVM

Every layer keeps its own schedule (see `nasbnn_hw.deploy.kernels`); activations between layers are NHWC float
buffers inside the function, binary weights are pre-packed uint64 words, BatchNorm is folded.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from nasbnn_hw.errors import NasBnnError
from nasbnn_hw.utils import check_outputs as _check_outputs
from nasbnn_hw.core.layers import LayerConfig, arch_layers
from nasbnn_hw.profiling.runners.base import ArgSpec

__all__ = ["DeployError", "TvmSubnet", "check_outputs", "compile_subnet", "compile_random_subnet", "subnet_layers"]

EXPORT_FORMAT = "nasbnn-hw/tvm-subnet-v1"


class DeployError(NasBnnError):
    """A model that cannot be compiled or a deployment file that cannot be loaded."""


def check_outputs(outputs: dict[str, str | Path], inputs: Iterable[tuple[str, str | Path]] = (),
                  force: bool = False) -> None:
    """`nasbnn_hw.utils.check_outputs`, raising DeployError."""
    _check_outputs(outputs, inputs, force, error=DeployError)


def _check_batch(batch) -> int:
    if isinstance(batch, bool) or not isinstance(batch, (int, np.integer)) or batch < 1:
        raise DeployError(f"batch must be a positive integer (got {batch!r})")
    return int(batch)


def _short(e: Exception) -> str:
    lines = str(e).strip().splitlines()
    return (lines[-1] if lines else type(e).__name__)[:200]


def _no_constant(name: str):
    raise ValueError(f"{name} is not a finite number")


def _npz_array(z, key: str, npz: Path, shape=None, dtype=None, what: str = "") -> np.ndarray:
    """Member `key` of the open archive `z`, its header checked against `shape` / `dtype` before the data
    is read (a damaged header must not allocate a huge array)."""
    name = f"array '{key}'" + (f" ({what})" if what else "")
    if key not in z.files:
        raise DeployError(f"{npz}: missing {name} (re-export the subnet)")
    fmt = np.lib.format
    try:
        info = z.zip.getinfo(f"{key}.npy")
        with z.zip.open(info) as f:
            version = fmt.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"unsupported .npy version {version}")
            got_shape, _, got_dtype = (fmt.read_array_header_1_0 if version == (1, 0)
                                       else fmt.read_array_header_2_0)(f)
    except Exception as e:  # noqa: BLE001 - zipfile / numpy raise many types for a damaged archive
        raise DeployError(f"{npz}: {name} is damaged (truncated or not a zip?): {_short(e)}") from None
    if dtype is not None and got_dtype != np.dtype(dtype):
        raise DeployError(f"{npz}: {name} has dtype {got_dtype}, expected {np.dtype(dtype)}")
    if shape is not None and tuple(got_shape) != tuple(shape):
        raise DeployError(f"{npz}: {name} has shape {tuple(got_shape)}, expected {tuple(shape)}")
    if got_dtype.hasobject or int(np.prod(got_shape, dtype=object)) * got_dtype.itemsize > info.file_size:
        raise DeployError(f"{npz}: {name} is damaged (its header does not match its size)")
    try:
        return np.ascontiguousarray(z[key])
    except Exception as e:  # noqa: BLE001 - as above (CRC errors, short reads)
        raise DeployError(f"{npz}: {name} is damaged (truncated or not a zip?): {_short(e)}") from None


def _posints(v) -> bool:
    return isinstance(v, list) and bool(v) and all(type(x) is int and x > 0 for x in v)


_STR, _SHAPE = (lambda v: isinstance(v, str), "a string"), (_posints, "a list of positive integers")
_META = {"format": _STR, "target_name": _STR, "target": (lambda v: isinstance(v, dict), "an object"),
         "input_shape": _SHAPE, "output_shape": _SHAPE,
         "param_names": (lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings"),
         "layers": (lambda v: isinstance(v, list) and bool(v) and all(isinstance(x, dict) for x in v),
                    "a non-empty list of objects")}
_LAYER_INTS = ("in_channels", "out_channels", "kernel", "groups", "stride", "resolution")


def _read_meta(z, npz: Path) -> dict:
    raw = _npz_array(z, "__meta__", npz, dtype=np.uint8, what="metadata")
    try:
        meta = json.loads(raw.tobytes().decode(), parse_constant=_no_constant)
    except ValueError as e:
        raise DeployError(f"{npz}: bad metadata (invalid JSON: {_short(e)})") from None
    if not isinstance(meta, dict):
        raise DeployError(f"{npz}: bad metadata (a JSON object expected, got {type(meta).__name__})")
    if meta.get("format") != EXPORT_FORMAT:
        raise DeployError(f"{npz}: format {meta.get('format')!r} not supported (allowed: {EXPORT_FORMAT})")
    for key, (ok, what) in _META.items():
        if key not in meta:
            raise DeployError(f"{npz}: bad metadata: missing '{key}' (re-export the subnet)")
        if not ok(meta[key]):
            raise DeployError(f"{npz}: bad metadata: '{key}' must be {what}, got {str(meta[key])[:60]!r}")
    if not isinstance(meta.get("library_sha256", ""), str):
        raise DeployError(f"{npz}: bad metadata: 'library_sha256' must be a string")
    for i, d in enumerate(meta["layers"]):
        if set(d) != {"kind", *_LAYER_INTS} or not isinstance(d["kind"], str) \
                or not all(type(d[k]) is int and 0 < d[k] < 2**31 for k in _LAYER_INTS):
            raise DeployError(f"{npz}: bad metadata: layer {i} must have a kind and positive integers "
                              f"{', '.join(_LAYER_INTS)} (got {str(d)[:120]})")
    return meta


def _expected_params(meta: dict, npz: Path):
    """(layers, target, [(name, shape, dtype)] in call order) that the metadata describes, checked to chain."""
    from tvm import te

    from nasbnn_hw.deploy.kernels.layer import _shape_dtype, layer_input_shape, layer_te, supports
    from nasbnn_hw.deploy.kernels.targets import resolve_target
    layers = [LayerConfig(**d) for d in meta["layers"]]
    for i, cfg in enumerate(layers):
        ok, why = supports(cfg)
        if not ok:
            raise DeployError(f"{npz}: bad metadata: layer {i} ({cfg.key()}): {why}")
    try:
        spec = resolve_target("local" if meta["target_name"] == "local" else meta["target"])
        schedules = _meta_schedules(meta, layers, spec, npz)
        batch = meta["input_shape"][0]
        h = te.placeholder(tuple(meta["input_shape"]), "float32", name="x")
        expected = []
        for i, cfg in enumerate(layers):
            if _shape_dtype(h)[0] != layer_input_shape(cfg, batch):
                raise DeployError(f"{npz}: bad metadata: layer {i} ({cfg.key()}) takes "
                                  f"{layer_input_shape(cfg, batch)}, gets {_shape_dtype(h)[0]}")
            ph, h = layer_te(cfg, h, f"l{i}", spec, schedules[i])
            expected += [(f"l{i}_{key}", *_shape_dtype(t)) for key, t in ph.items()]
    except NasBnnError:
        raise
    except Exception as e:  # noqa: BLE001 - TVM raises several FFI error types
        raise DeployError(f"{npz}: bad metadata: the layers do not build ({_short(e)})") from None
    if [n for n, _, _ in expected] != meta["param_names"]:
        raise DeployError(f"{npz}: bad metadata: 'param_names' ({len(meta['param_names'])}) differ from the "
                          f"{len(expected)} parameters the layers take")
    if list(_shape_dtype(h)[0]) != meta["output_shape"]:
        raise DeployError(f"{npz}: bad metadata: 'output_shape' {meta['output_shape']}, the layers give "
                          f"{list(_shape_dtype(h)[0])}")
    return layers, spec, expected


def _meta_schedules(meta: dict, layers: list[LayerConfig], spec, npz: Path) -> list:
    """Each layer's `CpuSchedule` from the metadata (it sets the weight layout); files written before
    schedules were recorded hold 64-bit weight words: the target's word schedule."""
    from nasbnn_hw.deploy.kernels.schedule import CpuSchedule, legacy_schedule
    got = meta.get("schedules")
    if got is None:
        return [None if spec.is_gpu or c.kind != "bconv" else legacy_schedule(spec) for c in layers]
    if not isinstance(got, list) or len(got) != len(layers):
        raise DeployError(f"{npz}: bad metadata: 'schedules' must list one entry per layer ({len(layers)})")
    out = []
    for i, (cfg, d) in enumerate(zip(layers, got)):
        try:
            out.append(None if d is None else CpuSchedule.from_dict(d, f"{npz}: layer {i} schedule"))
        except NasBnnError as e:
            raise DeployError(f"{npz}: bad metadata: {e}") from None
    return out


@dataclass
class TvmSubnet:
    """A compiled subnet: the executable, its parameters in call order and the input it takes."""
    layers: list[LayerConfig]
    target: object
    executable: object = field(repr=False)
    param_names: list[str]
    params: list[np.ndarray] = field(repr=False)
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    schedules: list[dict | None] | None = None  # each layer's `CpuSchedule.to_dict()` (None: stem, head, GPU)

    def arg_specs(self, x: np.ndarray | None = None) -> list[ArgSpec]:
        """Arguments for a runner: the input (random unless given), all parameters, the logits."""
        if x is None:
            x = np.random.default_rng(0).standard_normal(self.input_shape).astype(np.float32)
        return ([ArgSpec(self.input_shape, "float32", data=np.asarray(x, np.float32))]
                + [ArgSpec(p.shape, str(p.dtype), data=p) for p in self.params]
                + [ArgSpec(self.output_shape, "float32", is_output=True)])

    def __call__(self, x) -> np.ndarray:
        import tvm
        if hasattr(x, "detach"):
            x = x.detach().cpu().numpy()
        x = np.ascontiguousarray(x, np.float32)
        if x.shape != self.input_shape:
            raise DeployError(f"input has shape {x.shape}; this module was compiled for {self.input_shape}")
        if not self.target.runs_here:
            raise DeployError(f"a module built for target {self.target.name!r} cannot run on this machine")
        dev = tvm.cpu(0)
        if not hasattr(self, "_tensors"):
            self._tensors = [tvm.runtime.tensor(p, dev) for p in self.params]
        out = tvm.runtime.empty(self.output_shape, "float32", dev)
        self.executable["main"](tvm.runtime.tensor(x, dev), *self._tensors, out)
        return out.numpy()

    def export(self, path: str | Path) -> Path:
        """Write the library to `path` and the parameters + metadata to `path` with suffix .npz, each
        atomically (a temporary file in the same directory, then renamed): a kill leaves no half file."""
        from nasbnn_hw.deploy.kernels.targets import export_library
        from nasbnn_hw.utils import atomic_write_bytes
        import io
        path = Path(path)
        npz = path.with_suffix(".npz")
        check_outputs({"library": path, "parameter file": npz}, force=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
        try:
            lib = export_library(self.executable, tmp / path.name, self.target)
            meta = {"format": EXPORT_FORMAT, "target": self.target.config, "target_name": self.target.name,
                    "input_shape": list(self.input_shape), "output_shape": list(self.output_shape),
                    "param_names": self.param_names, "layers": [l.to_dict() for l in self.layers],
                    "schedules": self.schedules,
                    "library_sha256": hashlib.sha256(lib.read_bytes()).hexdigest()}
            buf = io.BytesIO()
            np.savez(buf, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8),
                     **{f"p{i:04d}": p for i, p in enumerate(self.params)})
            atomic_write_bytes(npz, buf.getvalue())
            os.replace(lib, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TvmSubnet":
        """The library `path` with its parameters (`path` with suffix .npz), every array, the metadata and
        the library's checksum validated before TVM sees them."""
        import tvm
        path = Path(path)
        npz = path.with_suffix(".npz")
        if npz == path:
            raise DeployError(f"{str(path)!r} is a parameter file: give the library beside it (e.g. .so)")
        try:
            z = np.load(npz, allow_pickle=False)
        except Exception as e:  # noqa: BLE001 - zipfile / numpy raise many types for a damaged archive
            why = e.strerror if isinstance(e, OSError) and e.strerror else f"truncated or not a zip: {_short(e)}"
            raise DeployError(f"cannot read deployment parameters {str(npz)!r}: {why}") from None
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise DeployError(f"cannot read deployment parameters {str(npz)!r}: a single .npy array, not an .npz")
        with z:
            meta = _read_meta(z, npz)
            layers, spec, expected = _expected_params(meta, npz)
            keys = [f"p{i:04d}" for i in range(len(expected))]
            extra = sorted(set(z.files) - {"__meta__", *keys})
            if extra:
                raise DeployError(f"{npz}: unexpected arrays {', '.join(extra[:5])} (expected __meta__ and "
                                  f"p0000..p{len(keys) - 1:04d})")
            params = [_npz_array(z, k, npz, shape, dtype, name) for k, (name, shape, dtype) in zip(keys, expected)]
        if not path.is_file():
            raise DeployError(f"compiled subnet {str(path)!r} does not exist (export writes it beside {npz.name})")
        try:
            got = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as e:
            raise DeployError(f"cannot read compiled subnet {str(path)!r}: {e.strerror or e}") from None
        digest = meta.get("library_sha256")
        if digest and got != digest:
            raise DeployError(f"compiled subnet {str(path)!r} is not the library {npz.name} was exported with "
                              f"(changed or damaged since); export both again")
        try:
            ex = tvm.runtime.load_module(str(path))
        except Exception as e:  # noqa: BLE001 - TVM raises several FFI error types
            raise DeployError(f"cannot load compiled subnet {str(path)!r}: {_short(e)}") from None
        return cls(layers, spec, ex, meta["param_names"], params, tuple(meta["input_shape"]),
                   tuple(meta["output_shape"]), meta.get("schedules"))


def subnet_layers(model, resolution: int | None = None) -> list[LayerConfig]:
    """The layer configurations of a static subnet module (stem, two per block, head)."""
    for attr in ("stem", "blocks", "fc"):
        if not hasattr(model, attr):
            raise DeployError(f"model has no '{attr}': expected a static subnet (extract_subnet) with stem, "
                              f"blocks and fc")
    if resolution is None:
        space = getattr(model, "space", None)
        if space is None:
            raise DeployError("the input resolution is unknown: pass resolution=")
        resolution = space.resolution
    stem = model.stem
    c_out, c_in, k, _ = stem.weight_int.shape
    if stem.padding != k // 2:
        raise DeployError(f"stem padding {stem.padding} != kernel // 2 = {k // 2} is not supported")
    layers = [LayerConfig("stem", int(c_in), int(c_out), int(k), 1, int(stem.stride), int(resolution))]
    res = resolution // stem.stride
    for i, b in enumerate(model.blocks):
        conv, conv1 = b.binary_conv, b.binary_conv1x1
        k = int(conv.sign_weight.shape[-1])
        if conv.padding != k // 2 or conv1.sign_weight.shape[-1] != 1:
            raise DeployError(f"block {i}: padding {conv.padding} with kernel {k} (or a non-1x1 second conv) "
                              f"is not supported")
        layers.append(LayerConfig("bconv", b.in_channels, b.in_channels, k, conv.groups, b.stride, res))
        res //= b.stride
        layers.append(LayerConfig("bconv", b.in_channels, b.out_channels, 1, conv1.groups, 1, res))
    layers.append(LayerConfig("head", int(model.fc.in_features), int(model.fc.out_features), 1, 1, 1, res))
    return layers


def _module_params(model, layers: list[LayerConfig]) -> list[dict]:
    from nasbnn_hw.deploy.kernels.params import binary_half_params, head_params, stem_params
    out = [stem_params(model.stem)]
    for i, b in enumerate(model.blocks):
        r1, r2 = layers[1 + 2 * i].resolution, layers[2 + 2 * i].resolution
        out.append(binary_half_params(b.binary_conv, b.bn1, b.move11, b.move12, b.prelu1, b.move13, (r1, r1)))
        out.append(binary_half_params(b.binary_conv1x1, b.bn2, b.move21, b.move22, b.prelu2, b.move23, (r2, r2)))
    out.append(head_params(model.fc))
    return out


def _compile(layers: list[LayerConfig], params: list[dict] | None, target, batch: int, seed: int,
             schedules=None, gpu_tile="default") -> TvmSubnet:
    from tvm import te

    from nasbnn_hw.deploy.kernels.layer import KernelBuildError, _shape_dtype, compile_function, kernel_params, \
        layer_input_shape, layer_schedule, layer_te, random_params, schedule_layer, supports
    from nasbnn_hw.deploy.kernels.targets import resolve_target
    batch = _check_batch(batch)
    spec = resolve_target(target)
    for cfg in layers:
        ok, why = supports(cfg)
        if not ok:
            raise KernelBuildError(f"cannot compile layer {cfg.key()}: {why}")
    x = te.placeholder(layer_input_shape(layers[0], batch), "float32", name="x")
    h, names, tensors, values = x, [], [], []
    rng = np.random.default_rng(seed)
    for i, cfg in enumerate(layers):
        ph, h = layer_te(cfg, h, f"l{i}", spec, schedules)
        given = kernel_params(cfg, ph, params[i]) if params is not None else random_params(cfg, ph, rng)
        for key, t in ph.items():
            shape, dtype = _shape_dtype(t)
            val = np.ascontiguousarray(given[key], dtype)
            if val.shape != shape:
                raise DeployError(f"layer {i} ({cfg.key()}) parameter {key}: shape {val.shape}, kernel needs {shape}")
            names.append(f"l{i}_{key}")
            tensors.append(t)
            values.append(val)

    def _schedule(sch):
        for i, cfg in enumerate(layers):
            schedule_layer(sch, cfg, f"l{i}", spec, schedules)

    ex = compile_function([x, *tensors, h], spec, _schedule, gpu_tile)
    used = [None if cfg.kind != "bconv" or spec.is_gpu else layer_schedule(cfg, spec, schedules).to_dict()
            for cfg in layers]
    return TvmSubnet(list(layers), spec, ex, names, values, _shape_dtype(x)[0], _shape_dtype(h)[0], used)


def compile_subnet(model, target="local", batch: int = 1, resolution: int | None = None,
                   schedules=None, gpu_tile="default") -> TvmSubnet:
    """Compile a static subnet (`extract_subnet(supernet, arch)`, in eval mode) with its weights.
    `schedules`: a callable giving each layer's `CpuSchedule` (a `ScheduleBook` of tuned schedules), None
    for the target's defaults. `gpu_tile`: on a GPU, the conv tile (`compile_function`; None: one thread
    per output, the kernels before the tiled ones, for comparisons)."""
    layers = subnet_layers(model, resolution)
    return _compile(layers, _module_params(model, layers), target, batch, 0, schedules, gpu_tile)


def compile_random_subnet(arch, space, target="local", batch: int = 1, seed: int = 0,
                          schedules=None) -> TvmSubnet:
    """Compile `arch` of `space` with random weights (timing: speed does not depend on the values)."""
    return _compile(arch_layers(arch, space), None, target, batch, seed, schedules)
