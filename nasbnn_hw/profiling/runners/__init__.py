"""Runners execute compiled kernels on a device and time them: local, over SSH, through TVM RPC."""
from __future__ import annotations

from nasbnn_hw.profiling.runners.base import ArgSpec, Runner, Timing
from nasbnn_hw.profiling.runners.errors import BoardUnavailable, DeviceSetupError, HostKeyError, KernelError, KernelTimeout, RunnerError

__all__ = ["ArgSpec", "Runner", "Timing", "get_runner", "RunnerError", "BoardUnavailable", "DeviceSetupError",
           "HostKeyError", "KernelError", "KernelTimeout"]


def get_runner(profile, *, accept_new_host_key: bool = False, **kw) -> Runner:
    """The runner a device profile asks for. `profile` is a `DeviceProfile`, a profile name or a .toml path.
    `accept_new_host_key` (SSH only) records an unknown host key instead of refusing it."""
    from device_profiles import DeviceProfile, load_profile
    if not isinstance(profile, DeviceProfile):
        profile = load_profile(profile)
    if profile.runner == "local":
        from nasbnn_hw.profiling.runners.local import LocalRunner
        return LocalRunner.from_profile(profile, **kw)
    if profile.runner == "ssh":
        from nasbnn_hw.profiling.runners.ssh import SSHRunner
        return SSHRunner(profile, accept_new_host_key=accept_new_host_key, **kw)
    if profile.runner == "emulated":
        from nasbnn_hw.profiling.runners.process import HarnessProcessRunner
        return HarnessProcessRunner(profile.arch, profile.cross_compiler, profile.exec_wrapper,
                                    threads=profile.threads or 1, timeout_s=profile.timeout("command"),
                                    device=profile.name)
    if profile.runner == "tvm-rpc":
        from nasbnn_hw.profiling.runners.rpc import RPCRunner
        return RPCRunner(profile, **kw)
    raise RunnerError(f"device '{profile.name}': unknown runner {profile.runner!r}")
