"""Device subcommands: `devices` lists the known device profiles, `devices check NAME` validates one and, for
an SSH device, connects, runs `uname -m` and the timing harness, and compares with the target's CPU."""
from __future__ import annotations

import argparse
import platform
import sys


def _dirs(args) -> list[str]:
    return list(getattr(args, "devices_dir", None) or []) + list(getattr(args, "devices_dir_check", None) or [])


def _target_text(p) -> str:
    t = p.target
    parts = [t["kind"]] + [f"{k}={','.join(v) if isinstance(v, list) else v}" for k, v in t.items() if k != "kind"]
    return " ".join(parts)


def cmd_devices(args) -> int:
    from device_profiles import list_profiles
    if getattr(args, "devices_command", None) == "check":
        return cmd_check(args)
    profiles = list_profiles(_dirs(args))
    for name, p in profiles.items():
        where = f"{p.user + '@' if p.user else ''}{p.host}{':' + str(p.port) if p.port else ''}" if p.host else "-"
        print(f"{name:18s} {p.runner:8s} {p.arch:8s} {_target_text(p):55s} {where}")
        if args.verbose:
            print(f"{'':18s} {p.description}  [{p.path}]")
    return 0


def _noise(p, args) -> None:
    """`devices check --noise`: the device's noise floor under its own timing protocol, in one line."""
    from nasbnn_hw.profiling.devices import timing_for
    from nasbnn_hw.deploy.kernels import resolve_target
    from nasbnn_hw.profiling.runners import get_runner
    from nasbnn_hw.profiling.timing import noise_floor
    timing = timing_for(p)
    with get_runner(p, accept_new_host_key=getattr(args, "accept_new_host_key", False)) as runner:
        n = noise_floor(runner, resolve_target(p), timing)
    print(f"{p.name}: noise floor {100 * n['noise']:.1f} % ({n['protocol']} protocol, {n['rounds']} round(s) of "
          f"{n['bursts']} x {n['repeat']} samples; raw median {100 * n['noise_raw']:.1f} %, reference-normalised "
          f"{100 * n['noise_reference']:.1f} %); reference kernel p90/p10 {n['speed_range']:.2f}x meanwhile; "
          f"reference kernel {n['reference_us']:.1f} us")


def cmd_check(args) -> int:
    from device_profiles import load_profile
    p = load_profile(args.name, _dirs(args))
    print(f"{p.name}: profile OK ({p.path}); runner {p.runner}, target {_target_text(p)}, arch {p.arch}")
    rc = _check(p, args)
    if rc == 0 and getattr(args, "noise", False):
        _noise(p, args)
    return rc


def _check(p, args) -> int:
    from device_profiles import ProfileError, normalize_arch
    if p.runner == "local":
        here = normalize_arch(platform.machine())
        if here != p.arch:
            raise ProfileError(f"device '{p.name}': this machine is {here}, the profile targets {p.arch}")
        print(f"{p.name}: local machine {here} matches")
        return 0
    if p.runner == "tvm-rpc":
        from tvm import rpc
        try:
            remote = rpc.connect(p.host, p.port or 9090, session_timeout=int(p.timeout("connect")) + 5)
            remote.cpu(0).exist
        except Exception as e:  # noqa: BLE001 - TVM raises FFI errors of several types
            from nasbnn_hw.profiling.runners.errors import BoardUnavailable
            raise BoardUnavailable(f"device '{p.name}': no TVM RPC server at {p.host}:{p.port or 9090} "
                                   f"({str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__})") from None
        print(f"{p.name}: TVM RPC server at {p.host}:{p.port or 9090} answers")
        return 0
    if p.runner == "emulated":
        from nasbnn_hw.profiling.runners import get_runner
        with get_runner(p) as runner:
            info = runner.board_info()
        print(f"{p.name}: the {p.arch} harness (cross-built with {p.cross_compiler or 'cc'}) runs under "
              f"{' '.join(p.exec_wrapper)} on this {info['uname_m']} machine: arch {info['harness_arch']}, "
              f"{info['cpus']} CPUs; no SSH involved")
    else:
        import dataclasses

        from nasbnn_hw.profiling.runners.ssh import SSHRunner
        quick = dataclasses.replace(p, retries=min(p.retries, 1))      # a check should not wait long
        with SSHRunner(quick, accept_new_host_key=args.accept_new_host_key) as runner:
            info = runner.board_info()
        print(f"{p.name}: connected to {runner.settings}; uname -m: {info['uname_m']}; harness runs as "
              f"{info['harness_arch']} with {info['cpus']} CPUs")
    machine = normalize_arch(info["uname_m"])
    if normalize_arch(info["harness_arch"]) != p.arch:
        raise ProfileError(f"device '{p.name}': the board runs {info['harness_arch']} binaries, the profile's "
                           f"target is {p.arch}")
    if machine != p.arch:
        print(f"{p.name}: note: the board's CPU is {machine} but it runs {p.arch} code (emulation through "
              f"exec_wrapper or binfmt): times are not {p.arch} latencies", file=sys.stderr)
    else:
        print(f"{p.name}: architecture {machine} matches the target")
    return 0


def register(sub) -> None:
    p = sub.add_parser("devices", help="list device profiles; `devices check NAME` tests one")
    p.add_argument("--devices-dir", action="append", metavar="DIR_OR_FILE",
                   help="extra device profile directory or .toml file (repeatable; also $NASBNN_HW_DEVICES)")
    p.add_argument("-v", "--verbose", action="store_true", help="show descriptions and files")
    p.set_defaults(func=cmd_devices)
    dsub = p.add_subparsers(dest="devices_command", metavar="check")
    c = dsub.add_parser("check", help="validate a profile; for SSH devices connect and compare the CPU")
    c.add_argument("name", help="profile name or .toml path")
    c.add_argument("--accept-new-host-key", action="store_true",
                   help="record an unknown SSH host key (its SHA256 fingerprint is printed); a changed key is "
                        "always refused")
    c.add_argument("--noise", action="store_true",
                   help="also measure the device's noise floor under its timing protocol (one line)")
    c.add_argument("--devices-dir", action="append", metavar="DIR_OR_FILE", dest="devices_dir_check",
                   help=argparse.SUPPRESS)
    c.set_defaults(func=cmd_devices)
