"""TVM kernels of every layer a subnet contains (binary convs, 8-bit stem, classifier) and their
schedules for CPU (x86, aarch64 NEON) and CUDA. TVM is imported lazily, inside the functions."""
from nasbnn_hw.deploy.kernels.layer import LAYER_KINDS, CompiledLayer, KernelBuildError, build_layer, supports
from nasbnn_hw.deploy.kernels.targets import TARGET_NAMES, TargetError, TargetSpec, export_library, host_cpu_name, resolve_target

__all__ = ["LAYER_KINDS", "CompiledLayer", "KernelBuildError", "build_layer", "supports", "TARGET_NAMES",
           "TargetError", "TargetSpec", "export_library", "host_cpu_name", "resolve_target"]
