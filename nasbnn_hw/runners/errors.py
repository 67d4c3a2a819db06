"""Errors of device connections. All are `NasBnnError`s: the CLI prints them as one line.

A campaign catches `BoardUnavailable` to stop cleanly (every measurement stored so far stays stored) and
resumes later; `KernelError` and `KernelTimeout` belong to one kernel, the next one may still run.
"""
from nasbnn_hw.errors import NasBnnError


class RunnerError(NasBnnError):
    """A device could not run or time a kernel."""


class BoardUnavailable(RunnerError):
    """The device stayed unreachable (down, frozen, link lost) through every retry."""


class HostKeyError(RunnerError):
    """The SSH host key is unknown or differs from the one recorded in known_hosts: refused."""


class KernelError(RunnerError):
    """The kernel library failed on the device (load error, crash, error return, bad output)."""


class KernelTimeout(RunnerError):
    """The kernel did not finish within the command timeout (it was killed on the device)."""
