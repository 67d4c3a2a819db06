"""Layer-level API: one `LayerConfig` -> one compiled function `main(x, *params, out)`.

    lay = build_layer(LayerConfig("bconv", 64, 64, 3, 2, 2, 28), target="local")
    lay.export("bconv.so")       # for a runner (entry function `main`)
    out = lay.run()              # local targets only: run once on the random arguments

Layouts: the stem takes NCHW float input (as PyTorch) and every later layer NHWC float; outputs are NHWC.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nasbnn_hw.errors import NasBnnError
from nasbnn_hw.core.layers import LayerConfig
from nasbnn_hw.profiling.runners.base import ArgSpec
from nasbnn_hw.deploy.kernels.targets import TargetSpec, export_library, resolve_target

LAYER_KINDS = ("stem", "bconv", "head")


class KernelBuildError(NasBnnError):
    """A layer the kernels cannot build (bad shape, unsupported kind)."""


def supports(cfg: LayerConfig) -> tuple[bool, str]:
    """Whether `build_layer` can compile `cfg`, and why not."""
    if cfg.kind not in LAYER_KINDS:
        return False, f"layer kind {cfg.kind!r} not supported (allowed: {', '.join(LAYER_KINDS)})"
    if cfg.kind == "bconv":
        if cfg.in_channels % cfg.groups or cfg.out_channels % cfg.groups:
            return False, f"groups={cfg.groups} must divide in_channels={cfg.in_channels} and out_channels={cfg.out_channels}"
        if cfg.out_channels < cfg.in_channels:
            return False, f"out_channels={cfg.out_channels} < in_channels={cfg.in_channels} (shortcut needs C_out >= C_in)"
        if cfg.kernel % 2 == 0:
            return False, f"kernel={cfg.kernel} must be odd"
    if cfg.kind != "head" and cfg.stride not in (1, 2):
        return False, f"stride={cfg.stride} not supported (allowed: 1, 2)"
    if cfg.kind == "bconv" and cfg.stride == 2 and cfg.resolution % 2:
        return False, f"stride 2 needs an even resolution (got {cfg.resolution})"
    if cfg.resolution < 1:
        return False, f"resolution={cfg.resolution} must be positive"
    return True, ""


def layer_input_shape(cfg: LayerConfig, batch: int = 1) -> tuple[int, ...]:
    r = cfg.resolution
    return (batch, cfg.in_channels, r, r) if cfg.kind == "stem" else (batch, r, r, cfg.in_channels)


def layer_schedule(cfg: LayerConfig, spec: TargetSpec | None, schedule=None):
    """The `CpuSchedule` layer `cfg` is built with: `schedule` (a `CpuSchedule`, or a callable taking the
    layer, e.g. a `nasbnn_hw.profiling.tuning.ScheduleBook`) or the target's default; None on a GPU."""
    from nasbnn_hw.deploy.kernels.schedule import CpuSchedule, ScheduleError, default_schedule
    if spec is not None and spec.is_gpu:
        return None
    if callable(schedule) and not isinstance(schedule, CpuSchedule):
        schedule = schedule(cfg)
    if schedule is None:
        return default_schedule(spec, cfg)
    if not isinstance(schedule, CpuSchedule):
        raise ScheduleError(f"schedule {schedule!r} is not a CpuSchedule")
    if not schedule.fits(cfg):
        raise ScheduleError(f"schedule {schedule.fingerprint()}: a {schedule.acc_dtype} accumulator can overflow "
                            f"on layer {cfg.key()}")
    return schedule


def layer_te(cfg: LayerConfig, x, name: str, spec: TargetSpec | None = None, schedule=None):
    """TE of `cfg` applied to tensor `x`: (placeholders dict, output tensor). `schedule` as in
    `layer_schedule` (it sets the accumulator type)."""
    from nasbnn_hw.deploy.kernels import binary, float_ops
    if cfg.kind == "stem":
        return float_ops.stem_conv(x, cfg.out_channels, cfg.kernel, cfg.stride, name)
    if cfg.kind == "bconv":
        from nasbnn_hw.deploy.kernels.schedule import sign8_applies
        sched = layer_schedule(cfg, spec, schedule)
        return binary.binary_half_block(x, cfg.kernel, cfg.stride, cfg.groups, cfg.out_channels, name,
                                        "int32" if sched is None else sched.acc_dtype,
                                        "word" if sched is None else sched.strategy,
                                        None if sched is None else sched.parallel_min, sign8_applies(spec))
    return float_ops.pool_classifier(x, cfg.out_channels, name)


def kernel_params(cfg: LayerConfig, placeholders: dict, given: dict) -> dict:
    """`given` parameters of layer `cfg` (`params.binary_half_params`: packed 64-bit weight words) in the
    layout its kernel's `placeholders` take (nibble, byte, dense, pairs and amx strategies: `binary.weights_for`;
    amx takes no padding correction)."""
    from nasbnn_hw.deploy.kernels.binary import weights_for
    w = placeholders.get("weight")
    if cfg.kind == "bconv" and w is not None and "corr" in given and "corr" not in placeholders:
        given = {k: v for k, v in given.items() if k != "corr"}   # amx: zero padding is exact
    if cfg.kind == "bconv" and w is not None and (str(w.dtype) in ("uint8", "int8") or len(w.shape) == 3) \
            and "weight" in given and np.asarray(given["weight"]).dtype == np.uint64 \
            and np.asarray(given["weight"]).ndim == 4:
        strategy = ("pairs" if w.name.endswith("_pairs") else "amx" if w.name.endswith("_amx")
                    else {5: "nibble", 4: "byte", 3: "dense"}[len(w.shape)])
        return {**given, "weight": weights_for(np.asarray(given["weight"]), cfg.in_channels // cfg.groups, strategy,
                                               cfg.groups)}
    return given


def random_params(cfg: LayerConfig, placeholders: dict, rng: np.random.Generator, x=None) -> dict:
    """Random arguments of the kernel of layer `cfg` (`x` first, when given): the same logical weights for
    every strategy (64-bit words with their spare bits cleared, in the kernel's layout), so that kernels
    built with different schedules compute the same output from the same seed."""
    from nasbnn_hw.deploy.kernels.binary import (WORD_DTYPE, clear_spare_bits, padding_correction, sign_weights,
                                                 words_per_group)
    from nasbnn_hw.deploy.kernels.params import random_arrays
    shapes = {} if x is None else {"x": _shape_dtype(x)}
    shapes.update({k: _shape_dtype(v) for k, v in placeholders.items()})
    cg = cfg.in_channels // cfg.groups
    if cfg.kind == "bconv":
        shapes["weight"] = ((cfg.kernel, cfg.kernel, words_per_group(cg), cfg.out_channels), WORD_DTYPE)
    corr = shapes.pop("corr", None)   # not drawn: the same draws whether a strategy takes it or not
    data = random_arrays(shapes, rng)
    if cfg.kind == "bconv":
        data["weight"] = clear_spare_bits(data["weight"], cg)
        if corr is not None:   # the true correction of these weights: every strategy computes the same conv
            data["corr"] = padding_correction(sign_weights(data["weight"], cg), cfg.groups,
                                              (cfg.resolution, cfg.resolution), cfg.stride, cfg.kernel // 2)[0]
    return kernel_params(cfg, placeholders, data)


def schedule_layer(sch, cfg: LayerConfig, name: str, spec: TargetSpec, schedule=None) -> None:
    from nasbnn_hw.deploy.kernels import schedule as S
    if spec.is_gpu:
        return  # GPU: one pass over the whole function (see `compile_function`)
    if cfg.kind == "stem":
        S.cpu_stem(sch, name, S.legacy_schedule(spec).tile())  # not tuned: stem measurements keep their key
    elif cfg.kind == "bconv":
        S.cpu_binary_half(sch, name, cfg.groups, layer_schedule(cfg, spec, schedule).tile())
    else:
        S.cpu_head(sch, name)


def compile_function(args, spec: TargetSpec, schedule_fn, gpu_tile="default"):
    """create_prim_func(args) -> schedule -> tvm.compile for `spec`. A GPU: `schedule.gpu_schedule` with
    `gpu_tile` (a `schedule.GpuTile`; "default": `schedule.GPU_TILE`; None: one thread per output
    everywhere, the kernels before the tiled ones)."""
    import tvm
    from tvm import te

    from nasbnn_hw.deploy.kernels import schedule
    mod = tvm.IRModule({"main": te.create_prim_func(list(args))})
    sch = tvm.s_tir.Schedule(mod)
    if spec.is_gpu:
        schedule.gpu_schedule(sch, tile=schedule.GPU_TILE if gpu_tile == "default" else gpu_tile)
    else:
        schedule_fn(sch)
    return tvm.compile(sch.mod, target=spec.tvm_target())


def _shape_dtype(t) -> tuple[tuple[int, ...], str]:
    return tuple(int(v) for v in t.shape), str(t.dtype)


@dataclass
class CompiledLayer:
    """A compiled function and the arguments it takes, in call order (inputs, then the output)."""
    cfg: object
    target: TargetSpec
    executable: object = field(repr=False)
    arg_names: list[str]
    args: list[ArgSpec] = field(repr=False)

    def export(self, path: str | Path) -> Path:
        return export_library(self.executable, path, self.target)

    def run(self, inputs: dict | None = None) -> np.ndarray:
        """Call once here (local targets only) on the stored arguments, overridden by `inputs`."""
        import tvm
        if not self.target.runs_here:
            raise KernelBuildError(f"a module built for target {self.target.name!r} cannot run on this machine")
        dev = tvm.cpu(0)
        inputs = inputs or {}
        tensors = []
        for nm, a in zip(self.arg_names, self.args):
            if a.is_output:
                tensors.append(tvm.runtime.empty(a.shape, a.dtype, dev))
            else:
                data = np.ascontiguousarray(inputs.get(nm, a.data), dtype=a.dtype)
                if data.shape != a.shape:
                    raise KernelBuildError(f"argument {nm!r} has shape {data.shape}; the kernel needs {a.shape}")
                tensors.append(tvm.runtime.tensor(data, dev))
        self.executable["main"](*tensors)
        return tensors[-1].numpy()


def build_layer(cfg: LayerConfig, target="local", batch: int = 1, seed: int = 0,
                params: dict | None = None, schedule=None, gpu_tile="default") -> CompiledLayer:
    """Compile `cfg` for `target` with random (or given) parameters and a random input; `schedule` as in
    `layer_schedule` (default: the target's); `gpu_tile` as in `compile_function`."""
    ok, why = supports(cfg)
    if not ok:
        raise KernelBuildError(f"cannot build layer {cfg.key()}: {why}")
    from tvm import te

    spec = resolve_target(target)
    x = te.placeholder(layer_input_shape(cfg, batch), "float32", name="x")
    placeholders, out = layer_te(cfg, x, "l0", spec, schedule)
    data = random_params(cfg, placeholders, np.random.default_rng(seed), x)
    for key, val in kernel_params(cfg, placeholders, params or {}).items():
        if key not in placeholders:
            raise KernelBuildError(f"unknown parameter {key!r} for a {cfg.kind} layer (known: {', '.join(placeholders)})")
        data[key] = np.asarray(val)
    ex = compile_function([x, *placeholders.values(), out], spec, lambda s: schedule_layer(s, cfg, "l0", spec, schedule),
                          gpu_tile)
    names = ["x", *placeholders, "out"]
    args = [ArgSpec(*_shape_dtype(x), data=data["x"])]
    args += [ArgSpec(*_shape_dtype(v), data=np.ascontiguousarray(data[k], _shape_dtype(v)[1]))
             for k, v in placeholders.items()]
    args.append(ArgSpec(*_shape_dtype(out), is_output=True))
    return CompiledLayer(cfg, spec, ex, names, args)


def build_binary_conv(in_channels: int, out_channels: int, kernel: int, groups: int, stride: int,
                      resolution: int, target="local", batch: int = 1, seed: int = 0,
                      tile: dict | None = None) -> CompiledLayer:
    """The integer +-1 conv of sign(x + move) alone (int32 NHWC output): for exactness tests, benchmarks.
    `tile` overrides keys of the target's register tile (`schedule.cpu_tile`: pixels, channels, vector,
    acc_dtype, parallel_min, strategy)."""
    from tvm import te

    from nasbnn_hw.deploy.kernels import binary, schedule
    cfg = LayerConfig("bconv", in_channels, out_channels, kernel, groups, stride, resolution)
    ok, why = supports(LayerConfig("bconv", in_channels, max(in_channels, out_channels), kernel, groups, stride,
                                   resolution))
    if not ok:
        raise KernelBuildError(f"cannot build binary conv {cfg.key()}: {why}")
    spec = resolve_target(target)
    x = te.placeholder(layer_input_shape(cfg, batch), "float32", name="x")
    tile_cfg = {**schedule.cpu_tile(spec), **(tile or {})}
    acc = "int32" if spec.is_gpu else tile_cfg["acc_dtype"]
    strategy = "word" if spec.is_gpu else tile_cfg.get("strategy", "word")
    placeholders, out = binary.raw_binary_conv(x, kernel, stride, groups, out_channels, "l0", acc, strategy,
                                               tile_cfg.get("parallel_min"), schedule.sign8_applies(spec))
    data = random_params(cfg, placeholders, np.random.default_rng(seed), x)

    def _sched(sch):
        schedule.cpu_binary_half(sch, "l0", groups, tile_cfg)

    ex = compile_function([x, *placeholders.values(), out], spec, _sched)
    names = ["x", *placeholders, "out"]
    args = [ArgSpec(*_shape_dtype(x), data=data["x"])]
    args += [ArgSpec(*_shape_dtype(v), data=data[k]) for k, v in placeholders.items()]
    args.append(ArgSpec(*_shape_dtype(out), is_output=True))
    return CompiledLayer(cfg, spec, ex, names, args)
