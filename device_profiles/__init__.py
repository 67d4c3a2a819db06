"""Device profiles: one TOML file per device (what to compile for, how to reach it, how to time on it).

Shipped profiles live next to this file. Users add their own: a `.toml` file or a directory of them,
given with `--devices-dir` or in the environment variable `NASBNN_HW_DEVICES` (several entries separated
by `os.pathsep`). A user profile with the same name as a shipped one replaces it.

Every value is checked when the file is loaded; a bad one raises `ProfileError` whose message names the
file, the key, the bad value and what is allowed. `docs/devices.md` describes every key.
"""
from __future__ import annotations

import json
import os
import platform
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from nasbnn_hw.errors import NasBnnError

ENV_VAR = "NASBNN_HW_DEVICES"
BUILTIN_DIR = Path(__file__).resolve().parent
RUNNERS = ("local", "ssh", "tvm-rpc", "emulated")
TARGET_KINDS = ("llvm", "c", "cuda")
TIMEOUT_KEYS = ("connect", "command", "transfer")
DEFAULT_TIMEOUTS = {"connect": 10.0, "command": 120.0, "transfer": 60.0}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")

# mtriple's first component -> the name `uname -m` prints on such a machine
_ARCH_ALIASES = {"arm64": "aarch64", "amd64": "x86_64", "x86-64": "x86_64", "i686": "x86", "i386": "x86",
                 "armv7l": "arm", "armv7": "arm", "armv7a": "arm", "armv6": "arm", "armv6l": "arm",
                 "armv8l": "arm", "arm": "arm", "thumbv7": "arm", "riscv64": "riscv64", "aarch64": "aarch64",
                 "x86_64": "x86_64"}


class ProfileError(NasBnnError):
    """A device profile is missing, unknown or has a bad value."""


def normalize_arch(name: str) -> str:
    """`uname -m`-style machine name (aarch64, x86_64, arm, riscv64) for an mtriple prefix or machine."""
    name = name.strip().lower()
    return _ARCH_ALIASES.get(name, name)


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    target: dict
    runner: str = "local"
    description: str = ""
    host_target: dict | None = None
    cross_compiler: str = ""
    host: str = ""
    user: str = ""
    port: int = 0                       # 0: from ~/.ssh/config, else 22 (ssh) / 9090 (tvm-rpc)
    identity_file: str = ""
    known_hosts: str = "~/.ssh/known_hosts"
    ssh_config: str = "~/.ssh/config"
    remote_dir: str = "/tmp"
    exec_wrapper: tuple[str, ...] = ()
    threads: int = 0                    # 0: every core of the device
    warmup: int = 10
    repeat: int = 30
    number: int = 1
    rounds: int = 1                     # measure each item this many times, at different moments
    bursts: int = 1                     # split an item's samples into this many bursts ...
    reference: bool = False             # ... each after the reference kernel: latency in reference units
    subnet_reference: bool = False      # whole subnets against a fixed subnet of their space (with reference)
    sample_ms: float = 20.0             # a sample lasts at least this long (when number is calibrated)
    precision: float = 0.0              # with reference: add rounds until the kept value is this precise
    max_rounds: int = 0                 # ... up to this many rounds (0: 3 x rounds)
    retries: int = 4
    backoff: float = 1.0
    timeouts: dict = field(default_factory=lambda: dict(DEFAULT_TIMEOUTS))
    path: Path | None = field(default=None, compare=False)

    # ---- derived values ------------------------------------------------------------------------------
    @property
    def arch(self) -> str:
        """Machine name of the device's CPU as `uname -m` prints it (the host CPU of a GPU device)."""
        cpu = self.host_target if self.target["kind"] == "cuda" and self.host_target else self.target
        triple = cpu.get("mtriple", "")
        if triple:
            return normalize_arch(triple.split("-", 1)[0])
        return normalize_arch(platform.machine())

    @property
    def is_cross(self) -> bool:
        return self.arch != normalize_arch(platform.machine())

    def timeout(self, which: str) -> float:
        return float(self.timeouts[which])

    def target_dict(self) -> dict:
        """The TVM target as a dict with `mcpu="native"` replaced by this machine's CPU name."""
        return _resolve_native(self.target)

    def target_key(self) -> str:
        """A stable text form of the (resolved) target, suitable as the store's `target` column."""
        d = {"target": self.target_dict()}
        if self.host_target:
            d["host"] = _resolve_native(self.host_target)
        return json.dumps(d, sort_keys=True, separators=(",", ":"))

    def tvm_target(self):
        """The `tvm.target.Target` to compile for (imports tvm)."""
        import tvm
        tgt = tvm.target.Target(self.target_dict())
        if self.host_target:
            tgt = tvm.target.Target(self.target_dict(), host=_resolve_native(self.host_target))
        return tgt

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "path"}
        d["exec_wrapper"] = list(self.exec_wrapper)
        return d


def _resolve_native(t: dict) -> dict:
    t = dict(t)
    if t.get("mcpu") == "native":   # as the named target "local": the CPU name and features it misses
        from nasbnn_hw.deploy.kernels.targets import host_config
        host = host_config()
        t["mcpu"] = host["mcpu"]
        if "mattr" in host and "mattr" not in t:
            t["mattr"] = host["mattr"]
    return t


# ---- validation ---------------------------------------------------------------------------------------
_INT_KEYS = {"port": (0, 65535), "threads": (0, 4096), "warmup": (0, 10**6), "repeat": (1, 10**6),
             "number": (1, 10**7), "rounds": (1, 100), "retries": (0, 100), "bursts": (1, 1000),
             "max_rounds": (0, 300)}
_STR_KEYS = ("name", "description", "cross_compiler", "host", "user", "identity_file", "known_hosts",
             "ssh_config", "remote_dir", "runner")
ALLOWED_KEYS = tuple(k for k in DeviceProfile.__dataclass_fields__ if k != "path")


def _fail(where: str, key: str, value: Any, allowed: str) -> ProfileError:
    return ProfileError(f"device profile {where}: key '{key}' = {value!r} is not allowed; {allowed}")


def _check_target(where: str, key: str, t: Any) -> dict:
    if not isinstance(t, dict):
        raise _fail(where, key, t, 'expected a TOML table such as {kind="llvm", mcpu="native"}')
    kind = t.get("kind")
    if kind not in TARGET_KINDS:
        raise _fail(where, f"{key}.kind", kind, f"expected one of: {', '.join(TARGET_KINDS)}")
    for k, v in t.items():
        if k == "mattr":
            if not (isinstance(v, list) and all(isinstance(a, str) and a[:1] in "+-" and len(a) > 1 for a in v)):
                raise _fail(where, f"{key}.mattr", v, 'expected a list of strings such as ["+neon"]')
        elif not isinstance(v, (str, int, float, bool, list)):
            raise _fail(where, f"{key}.{k}", v, "expected a string, number, boolean or list")
    return dict(t)


def validate_profile(data: dict, where: str, default_name: str = "", path: Path | None = None) -> DeviceProfile:
    """Check every key of a parsed profile; return the profile or raise ProfileError."""
    if not isinstance(data, dict):
        raise ProfileError(f"device profile {where}: expected a TOML document of keys")
    unknown = sorted(set(data) - set(ALLOWED_KEYS))
    if unknown:
        raise _fail(where, unknown[0], data[unknown[0]], f"known keys: {', '.join(ALLOWED_KEYS)}")
    d = dict(data)
    d.setdefault("name", default_name)
    for k in _STR_KEYS:
        if k in d and not isinstance(d[k], str):
            raise _fail(where, k, d[k], "expected a string")
    for k in _STR_KEYS:
        if k in d and any(ord(c) < 32 or ord(c) == 127 for c in d[k]):
            raise _fail(where, k, d[k], "expected text without control characters (newlines, tabs, escapes)")
    rdir = d.get("remote_dir", "/tmp")
    if not rdir.startswith("/") or "\0" in rdir:
        # an absolute path cannot be taken for an option of a remote command (`find -delete ...`)
        raise _fail(where, "remote_dir", rdir, "expected an absolute path on the board, e.g. \"/tmp\"")
    if not _NAME_RE.match(d["name"]):
        raise _fail(where, "name", d["name"], "expected letters, digits, '.', '_' or '-' (first a letter or digit)")
    if "target" not in d:
        raise ProfileError(f"device profile {where}: key 'target' is missing; expected a TOML table such as "
                           '{kind="llvm", mcpu="native"}')
    d["target"] = _check_target(where, "target", d["target"])
    if d.get("host_target") is not None:
        d["host_target"] = _check_target(where, "host_target", d["host_target"])
        if d["host_target"]["kind"] != "llvm":
            raise _fail(where, "host_target.kind", d["host_target"]["kind"], "expected llvm")
    runner = d.setdefault("runner", "local")
    if runner not in RUNNERS:
        raise _fail(where, "runner", runner, f"expected one of: {', '.join(RUNNERS)}")
    for k, (lo, hi) in _INT_KEYS.items():
        if k in d and (type(d[k]) is not int or not lo <= d[k] <= hi):
            raise _fail(where, k, d[k], f"expected an integer from {lo} to {hi}")
    for k in ("reference", "subnet_reference"):
        if k in d and type(d[k]) is not bool:
            raise _fail(where, k, d[k], "expected true or false")
    if "sample_ms" in d and (type(d["sample_ms"]) not in (int, float) or not 0 < d["sample_ms"] <= 10_000):
        raise _fail(where, "sample_ms", d["sample_ms"], "expected milliseconds, more than 0 and at most 10000")
    if "precision" in d and (type(d["precision"]) not in (int, float) or not 0 <= d["precision"] < 1):
        raise _fail(where, "precision", d["precision"], "expected a fraction from 0 (off) to below 1, e.g. 0.01 for "
                    "+-1 %")
    if d.get("precision") and not d.get("reference"):
        raise _fail(where, "precision", d["precision"], "it needs reference = true (it bounds the kept percentile "
                    "of the reference-normalised samples); set reference = true or precision = 0")
    if d.get("max_rounds") and d["max_rounds"] < d.get("rounds", 1):
        raise _fail(where, "max_rounds", d["max_rounds"], f"expected 0 (3 x rounds) or at least rounds = "
                    f"{d.get('rounds', 1)}")
    if "backoff" in d and (type(d["backoff"]) not in (int, float) or not 0 <= d["backoff"] <= 3600):
        raise _fail(where, "backoff", d["backoff"], "expected seconds from 0 to 3600")
    tmo = d.get("timeouts", {})
    if not isinstance(tmo, dict):
        raise _fail(where, "timeouts", tmo, "expected a table with keys " + ", ".join(TIMEOUT_KEYS))
    for k, v in tmo.items():
        if k not in TIMEOUT_KEYS:
            raise _fail(where, f"timeouts.{k}", v, f"known keys: {', '.join(TIMEOUT_KEYS)}")
        if type(v) not in (int, float) or not 0 < v <= 86400:
            raise _fail(where, f"timeouts.{k}", v, "expected seconds, more than 0 and at most 86400")
    d["timeouts"] = {**DEFAULT_TIMEOUTS, **{k: float(v) for k, v in tmo.items()}}
    wrap = d.get("exec_wrapper", [])
    if not (isinstance(wrap, list) and all(isinstance(w, str) and w for w in wrap)):
        raise _fail(where, "exec_wrapper", wrap, 'expected a list of non-empty strings, e.g. ["taskset", "-c", "2,3"]')
    d["exec_wrapper"] = tuple(wrap)

    kind = d["target"]["kind"]
    if kind == "cuda" and not d.get("host_target"):
        raise ProfileError(f"device profile {where}: key 'host_target' is missing; a cuda target needs the "
                           'CPU of its host, e.g. host_target = {kind="llvm", mtriple="aarch64-linux-gnu"}')
    if runner in ("ssh", "tvm-rpc") and not d.get("host"):
        raise ProfileError(f"device profile {where}: key 'host' is missing; runner '{runner}' needs the "
                           "device's host name, address or ~/.ssh/config alias")
    if runner == "ssh" and kind == "cuda":
        raise _fail(where, "runner", runner, "a cuda target needs runner 'tvm-rpc' (the SSH harness runs CPU "
                                             "kernels only)")
    prof = DeviceProfile(**d, path=path)
    if runner == "emulated" and not prof.exec_wrapper:
        raise _fail(where, "exec_wrapper", list(prof.exec_wrapper), 'runner "emulated" needs the emulator command, '
                    'e.g. ["qemu-aarch64", "-L", "/usr/aarch64-linux-gnu"]')
    if runner == "local" and prof.is_cross:
        raise _fail(where, "target.mtriple", prof.target.get("mtriple"),
                    f"runner 'local' runs on this {platform.machine()} machine; use a matching mtriple or "
                    "runner 'ssh'/'tvm-rpc'")
    return prof


def load_profile_file(path: str | Path) -> DeviceProfile:
    path = Path(path).expanduser()
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ProfileError(f"device profile file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ProfileError(f"device profile file {path} cannot be read: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"device profile {path}: not valid TOML: {e}") from None
    return validate_profile(data, str(path), default_name=path.stem, path=path)


def search_paths(extra_dirs: Iterable[str | Path] = ()) -> list[Path]:
    """Where profiles are looked for, highest priority first: `extra_dirs`, $NASBNN_HW_DEVICES, shipped."""
    out = [Path(p).expanduser() for p in extra_dirs if str(p)]
    out += [Path(p).expanduser() for p in os.environ.get(ENV_VAR, "").split(os.pathsep) if p]
    out.append(BUILTIN_DIR)
    return out


def _files(paths: list[Path]) -> list[Path]:
    files = []
    for p in paths:
        if p.is_dir():
            files += sorted(p.glob("*.toml"))
        elif p.suffix == ".toml":
            if not p.is_file():
                raise ProfileError(f"device profile file {p} (from --devices-dir or ${ENV_VAR}) does not exist")
            files.append(p)
        elif not p.exists():
            raise ProfileError(f"devices directory {p} (from --devices-dir or ${ENV_VAR}) does not exist")
        else:
            raise ProfileError(f"{p} (from --devices-dir or ${ENV_VAR}) is neither a directory nor a .toml file")
    return files


def list_profiles(extra_dirs: Iterable[str | Path] = ()) -> dict[str, DeviceProfile]:
    """Every profile found, by name; earlier search paths win over later ones (user over shipped)."""
    found: dict[str, DeviceProfile] = {}
    for f in _files(search_paths(extra_dirs)):
        prof = load_profile_file(f)
        found.setdefault(prof.name, prof)
    return dict(sorted(found.items()))


def load_profile(name_or_path: str | Path, extra_dirs: Iterable[str | Path] = ()) -> DeviceProfile:
    """A profile by name (searched as `list_profiles` does) or from a `.toml` file path."""
    s = str(name_or_path)
    if s.endswith(".toml") or os.sep in s:
        return load_profile_file(s)
    for f in _files(search_paths(extra_dirs)):
        if f.stem == s:
            prof = load_profile_file(f)
            if prof.name == s:
                return prof
    profiles = list_profiles(extra_dirs)
    if s in profiles:
        return profiles[s]
    raise ProfileError(f"unknown device '{s}'; known devices: {', '.join(profiles) or '(none)'} "
                       f"(add your own with --devices-dir or ${ENV_VAR})")


__all__ = ["DeviceProfile", "ProfileError", "load_profile", "load_profile_file", "list_profiles",
           "validate_profile", "search_paths", "normalize_arch", "RUNNERS", "ENV_VAR"]
