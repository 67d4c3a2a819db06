"""Runners execute compiled kernels on a device and time them: local, over SSH, through TVM RPC."""
from .base import ArgSpec, Runner, Timing

__all__ = ["ArgSpec", "Runner", "Timing"]
