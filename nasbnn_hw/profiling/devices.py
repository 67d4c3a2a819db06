"""Opening a device by its profile: the runner it asks for, its compilation target and its timing settings.
Shared by the commands and the quickstart."""
from __future__ import annotations

from nasbnn_hw.errors import NasBnnError


def open_device(name: str, devices_dir=None, accept_new_host_key: bool = False):
    """(device name, runner, target, profile) for a device profile name or .toml path: the runner the profile
    asks for (connected lazily), and the profile itself as the compilation target."""
    from device_profiles import load_profile

    from nasbnn_hw.profiling.runners import get_runner
    profile = load_profile(name, [devices_dir] if devices_dir else [])
    return profile.name, get_runner(profile, accept_new_host_key=accept_new_host_key), profile, profile


def timing_for(profile, args=None):
    """The `TimingSettings` of a device (rounds included): --warmup/--repeat/--number/--rounds where given (`args`, an
    argparse namespace, may lack them or be None), else the device profile's values (protocol keys
    `bursts`, `reference`, `subnet_reference`, `sample_ms`, `precision`, `max_rounds` included); `number` defaults to calibrated (0)."""
    from nasbnn_hw.profiling.profiler import TimingSettings

    def pick(name, default):
        v = getattr(args, name, None)
        return v if v is not None else getattr(profile, name, default) if profile is not None else default
    rounds = pick("rounds", 1)
    if rounds < 1:
        raise NasBnnError(f"--rounds must be >= 1 (got {rounds})")
    number = getattr(args, "number", None)
    return TimingSettings(warmup=pick("warmup", 5), repeat=pick("repeat", 20),
                          number=number if number is not None else 0, min_sample_ms=float(pick("sample_ms", 20.0)),
                          bursts=pick("bursts", 1), reference=bool(pick("reference", False)), rounds=rounds,
                          subnet_reference=bool(pick("subnet_reference", False)),
                          precision=float(pick("precision", 0.0)), max_rounds=pick("max_rounds", 0))
