"""Measuring devices: runners (local, SSH, TVM RPC, emulated), the timing protocol, the profiler that fills
the SQLite measurement store, and a device profile turned into runner + target + timing."""
