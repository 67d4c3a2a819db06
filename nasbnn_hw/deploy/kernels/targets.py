"""Named compilation targets and how to export a compiled module for each.

A target is the whole description of where code runs (TVM's view): a name here maps to a TVM target
dict, plus the compiler that links the exported shared library. `resolve_target` also accepts a TVM
target dict or a `tvm.target.Target`, so device profiles can describe targets that are not named here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from nasbnn_hw.errors import NasBnnError

__all__ = ["TargetSpec", "TARGET_NAMES", "resolve_target", "host_cpu_name", "export_library", "TargetError"]


class TargetError(NasBnnError):
    """An unknown or unusable compilation target."""


def host_cpu_name() -> str:
    import tvm
    return str(tvm.get_global_func("tvm.codegen.llvm.GetHostCPUName")())


@dataclass(frozen=True)
class TargetSpec:
    """A compilation target: `name` for humans and the store, `config` for TVM, `cross_cc` for linking."""
    name: str
    config: dict = field(compare=False)
    cross_cc: str | None = None
    key: str | None = None  # text for the store's target column (default: the TVM target string)

    @property
    def is_gpu(self) -> bool:
        return self.config.get("kind") == "cuda"

    @property
    def runs_here(self) -> bool:
        """Whether a library built for this target can be loaded by this process."""
        return self.config.get("kind") == "llvm" and not self.cross_cc and not self.config.get("mtriple")

    def tvm_target(self):
        import tvm
        return tvm.target.Target(self.config)

    def description(self) -> str:
        """The store's text for this target (`nasbnn_hw.profiling.store.canonical_target`): the same for a named
        target and a device profile that compile alike (`"local"` and the `local` profile)."""
        from nasbnn_hw.profiling.store import canonical_target
        return canonical_target(self.key or str(self.tvm_target()))


# CPU features the kernels use that a host's LLVM CPU name can miss: a virtual machine may report an older
# CPU model with a newer core's features (an AMX-INT8 core seen as `rocketlake`, which has no AMX).
HOST_EXTRA_FEATURES = ("amx-tile", "amx-int8")


def host_config(cpu: str | None = None, features: dict | None = None) -> dict:
    """The TVM target dict of this machine's CPU (or of LLVM CPU `cpu` with the CPUID `features`, name ->
    bool): its LLVM CPU name, plus `HOST_EXTRA_FEATURES` it has that the name does not imply."""
    import tvm
    cpu = cpu or host_cpu_name()
    cfg = {"kind": "llvm", "mcpu": cpu}
    if features is None:
        features = dict(tvm.get_global_func("tvm.codegen.llvm.GetHostCPUFeatures")())
    have = {str(k): bool(v) for k, v in features.items()}
    if all(have.get(f) for f in HOST_EXTRA_FEATURES):
        from tvm.target import codegen
        if not codegen.llvm_cpu_has_features(list(HOST_EXTRA_FEATURES), tvm.target.Target(cfg)):
            cfg["mattr"] = [f"+{f}" for f in HOST_EXTRA_FEATURES]
    return cfg


def _named(name: str) -> TargetSpec:
    if name in ("local", "llvm", "x86"):
        return TargetSpec("local", host_config())
    if name in ("aarch64", "aarch64-neon", "cortex-a72", "rpi4"):
        return TargetSpec("aarch64-neon", {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72",
                                           "mattr": ["+neon"]}, cross_cc="aarch64-linux-gnu-gcc")
    if name in ("cuda", "cuda-sm87", "jetson-orin"):
        return TargetSpec("cuda-sm87", {"kind": "cuda", "arch": "sm_87",
                                        "host": {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}},
                          cross_cc="aarch64-linux-gnu-gcc")
    if name in ("cuda-x86", "cuda-sm80"):
        return TargetSpec("cuda-sm80", {"kind": "cuda", "arch": "sm_80", "host": {"kind": "llvm"}})
    raise TargetError(f"unknown target {name!r} (known: {', '.join(TARGET_NAMES)}; or a TVM target dict)")


TARGET_NAMES = ("local", "aarch64-neon", "cuda-sm87", "cuda-sm80")


def resolve_target(target) -> TargetSpec:
    """A `TargetSpec` from a name, a TVM target dict, a `tvm.target.Target` or a `TargetSpec`."""
    if isinstance(target, TargetSpec):
        return target
    if target is None:
        return _named("local")
    if isinstance(target, str):
        return _named(target)
    if hasattr(target, "target_dict") and hasattr(target, "target_key"):  # a device_profiles.DeviceProfile
        cfg = dict(target.target_dict())
        if cfg.get("kind") not in ("llvm", "cuda"):
            raise TargetError(f"device '{target.name}': target kind {cfg.get('kind')!r} not supported by the "
                              f"kernels (allowed: llvm, cuda)")
        if target.host_target:
            host = dict(target.host_target)
            if host.get("mcpu") == "native":
                host["mcpu"] = host_cpu_name()
            cfg["host"] = host
        return TargetSpec(target.name, cfg, cross_cc=target.cross_compiler or None, key=target.target_key())
    if isinstance(target, dict):
        cfg = dict(target)
    else:  # a tvm.target.Target
        cfg = dict(target.export())
    kind = cfg.get("kind")
    if kind not in ("llvm", "cuda"):
        raise TargetError(f"target kind {kind!r} not supported (allowed: llvm, cuda)")
    triple = str(cfg.get("mtriple", ""))
    cross = "aarch64-linux-gnu-gcc" if triple.startswith("aarch64") else None
    if kind == "cuda":
        host_triple = str(cfg.get("host", {}).get("mtriple", "")) if isinstance(cfg.get("host"), dict) else ""
        cross = "aarch64-linux-gnu-gcc" if host_triple.startswith("aarch64") else None
    import tvm
    try:
        desc = str(tvm.target.Target(cfg))
    except Exception as e:  # noqa: BLE001 - TVM raises several types for a bad dict
        raise TargetError(f"invalid TVM target {target!r}: {str(e).strip().splitlines()[-1]}") from None
    return TargetSpec(desc, cfg, cross_cc=cross)


def export_library(executable, path: str | Path, target) -> Path:
    """Write `executable` (from `tvm.compile`) as a shared library loadable on the target's host."""
    spec = resolve_target(target)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if spec.cross_cc:
        from tvm.support import cc
        executable.export_library(str(path), fcompile=cc.cross_compiler(spec.cross_cc))
    else:
        executable.export_library(str(path))
    return path
