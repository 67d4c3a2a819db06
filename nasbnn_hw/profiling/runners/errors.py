"""Errors of device connections. All are `NasBnnError`s: the CLI prints them as one line.

A campaign catches `BoardUnavailable` and `DeviceSetupError` to stop cleanly (every measurement stored so far stays stored) and
resumes later; `KernelError` and `KernelTimeout` belong to one kernel, the next one may still run.
"""
from nasbnn_hw.errors import NasBnnError


class RunnerError(NasBnnError):
    """A device could not run or time a kernel. The message is kept to one line (remote stderr and TVM
    errors span several), at most MAX_CHARS long."""
    MAX_CHARS = 1200

    def __init__(self, message: str = ""):
        text = " ".join(str(message).split())
        if len(text) > self.MAX_CHARS:
            text = text[: self.MAX_CHARS - 6] + " [...]"
        super().__init__(text)


class BoardUnavailable(RunnerError):
    """The device stayed unreachable (down, frozen, link lost) through every retry."""


class DeviceSetupError(RunnerError):
    """The way to the device is misconfigured (SSH key, authentication, known_hosts, compiler, remote
    directory): no kernel can run until the user fixes it, so a campaign should stop."""


class HostKeyError(DeviceSetupError):
    """The SSH host key is unknown or differs from the one recorded in known_hosts: refused."""


class KernelError(RunnerError):
    """The kernel library failed on the device (load error, crash, error return, bad output)."""


class KernelTimeout(RunnerError):
    """The kernel did not finish within the command timeout (it was killed on the device)."""
