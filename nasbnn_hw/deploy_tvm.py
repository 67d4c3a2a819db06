"""Compile a whole static subnet into one TVM function: `main(x, *packed_params, logits)`.

    net = compile_subnet(extract_subnet(supernet, arch), target="local")
    logits = net(images)                       # NCHW float32, batch fixed at compile time
    net.export("subnet.so")                    # + subnet.npz: pre-packed parameters and metadata
    net = TvmSubnet.load("subnet.so")          # on a machine that has TVM

Every layer keeps its own schedule (see `nasbnn_hw.kernels`); activations between layers are NHWC float
buffers inside the function, binary weights are pre-packed uint64 words, BatchNorm is folded.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .errors import NasBnnError
from .layers import LayerConfig, arch_layers
from .runners.base import ArgSpec

__all__ = ["DeployError", "TvmSubnet", "compile_subnet", "compile_random_subnet", "subnet_layers"]

EXPORT_FORMAT = "nasbnn-hw/tvm-subnet-v1"


class DeployError(NasBnnError):
    """A model that cannot be compiled or a deployment file that cannot be loaded."""


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
        """Write the library to `path` and the parameters + metadata to `path` with suffix .npz."""
        from .kernels.targets import export_library
        from .utils import atomic_write_bytes
        import io
        path = Path(path)
        export_library(self.executable, path, self.target)
        meta = {"format": EXPORT_FORMAT, "target": self.target.config, "target_name": self.target.name,
                "input_shape": list(self.input_shape), "output_shape": list(self.output_shape),
                "param_names": self.param_names, "layers": [l.to_dict() for l in self.layers]}
        buf = io.BytesIO()
        np.savez(buf, __meta__=np.frombuffer(json.dumps(meta).encode(), np.uint8),
                 **{f"p{i:04d}": p for i, p in enumerate(self.params)})
        atomic_write_bytes(path.with_suffix(".npz"), buf.getvalue())
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TvmSubnet":
        import tvm

        from .kernels.targets import resolve_target
        path = Path(path)
        try:
            z = np.load(path.with_suffix(".npz"))
            meta = json.loads(bytes(z["__meta__"]).decode())
        except (OSError, KeyError, ValueError) as e:
            raise DeployError(f"cannot read deployment parameters {str(path.with_suffix('.npz'))!r}: {e}") from None
        if meta.get("format") != EXPORT_FORMAT:
            raise DeployError(f"{path}: format {meta.get('format')!r} not supported (allowed: {EXPORT_FORMAT})")
        spec = resolve_target(meta["target_name"]) if meta["target_name"] == "local" else resolve_target(meta["target"])
        try:
            ex = tvm.runtime.load_module(str(path))
        except Exception as e:  # noqa: BLE001 - TVM raises several FFI error types
            raise DeployError(f"cannot load compiled subnet {str(path)!r}: {str(e).strip().splitlines()[-1]}") from None
        params = [z[f"p{i:04d}"] for i in range(len(meta["param_names"]))]
        return cls([LayerConfig(**d) for d in meta["layers"]], spec, ex, meta["param_names"], params,
                   tuple(meta["input_shape"]), tuple(meta["output_shape"]))


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
    from .kernels.params import binary_half_params, head_params, stem_params
    out = [stem_params(model.stem)]
    for i, b in enumerate(model.blocks):
        r1, r2 = layers[1 + 2 * i].resolution, layers[2 + 2 * i].resolution
        out.append(binary_half_params(b.binary_conv, b.bn1, b.move11, b.move12, b.prelu1, b.move13, (r1, r1)))
        out.append(binary_half_params(b.binary_conv1x1, b.bn2, b.move21, b.move22, b.prelu2, b.move23, (r2, r2)))
    out.append(head_params(model.fc))
    return out


def _compile(layers: list[LayerConfig], params: list[dict] | None, target, batch: int, seed: int) -> TvmSubnet:
    from tvm import te

    from .kernels.layer import KernelBuildError, _shape_dtype, compile_function, layer_input_shape, layer_te, \
        schedule_layer, supports
    from .kernels.params import random_arrays
    from .kernels.targets import resolve_target
    spec = resolve_target(target)
    for cfg in layers:
        ok, why = supports(cfg)
        if not ok:
            raise KernelBuildError(f"cannot compile layer {cfg.key()}: {why}")
    x = te.placeholder(layer_input_shape(layers[0], batch), "float32", name="x")
    h, names, tensors, values = x, [], [], []
    rng = np.random.default_rng(seed)
    for i, cfg in enumerate(layers):
        ph, h = layer_te(cfg, h, f"l{i}", spec)
        given = params[i] if params is not None else random_arrays({k: _shape_dtype(v) for k, v in ph.items()}, rng)
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
            schedule_layer(sch, cfg, f"l{i}", spec)

    ex = compile_function([x, *tensors, h], spec, _schedule)
    return TvmSubnet(list(layers), spec, ex, names, values, _shape_dtype(x)[0], _shape_dtype(h)[0])


def compile_subnet(model, target="local", batch: int = 1, resolution: int | None = None) -> TvmSubnet:
    """Compile a static subnet (`extract_subnet(supernet, arch)`, in eval mode) with its weights."""
    layers = subnet_layers(model, resolution)
    return _compile(layers, _module_params(model, layers), target, batch, 0)


def compile_random_subnet(arch, space, target="local", batch: int = 1, seed: int = 0) -> TvmSubnet:
    """Compile `arch` of `space` with random weights (timing: speed does not depend on the values)."""
    return _compile(arch_layers(arch, space), None, target, batch, seed)
