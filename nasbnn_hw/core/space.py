"""Search spaces: a table of stages loaded from TOML (METHOD.md, "Search space").

Stage 0 is the 8-bit stem (depth 1); every later stage is a run of binary blocks. A space knows its input
resolution, input channels and number of classes, so it fully determines a supernet.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from nasbnn_hw.errors import SpaceError

_STAGE_KEYS = ("channels", "depth", "kernel", "groups1", "groups2", "stride")


@dataclass(frozen=True)
class StageSpec:
    channels: tuple[int, ...]
    depth: tuple[int, ...]
    kernel: tuple[int, ...]
    groups1: tuple[int, ...]
    groups2: tuple[int, ...]
    stride: int

    @property
    def max_depth(self) -> int:
        return max(self.depth)


@dataclass(frozen=True)
class SearchSpace:
    name: str
    resolution: int
    in_channels: int
    num_classes: int
    stages: tuple[StageSpec, ...]

    def __post_init__(self):
        _check_space(self)

    @property
    def num_slots(self) -> int:
        """Number of block slots of the supernet (all stages at their maximum depth)."""
        return sum(s.max_depth for s in self.stages)

    def stage_resolutions(self) -> list[int]:
        """Input resolution of each stage."""
        res, out = self.resolution, []
        for st in self.stages:
            out.append(res)
            res //= st.stride
        return out

    def with_resolution(self, resolution: int) -> "SearchSpace":
        return SearchSpace(self.name, int(resolution), self.in_channels, self.num_classes, self.stages)

    def to_dict(self) -> dict:
        return {"name": self.name, "resolution": self.resolution, "in_channels": self.in_channels,
                "num_classes": self.num_classes,
                "stage": [{k: (list(getattr(s, k)) if k != "stride" else s.stride) for k in _STAGE_KEYS}
                          for s in self.stages]}

    @classmethod
    def from_dict(cls, d: dict, source: str = "<dict>") -> "SearchSpace":
        """A space from its TOML/JSON form; every key and value is checked (SpaceError names the bad one)."""
        if not isinstance(d, dict):
            raise SpaceError(f"{source}: expected a table of keys ({', '.join(_TOP_KEYS)}), got {type(d).__name__}")
        unknown = sorted(set(d) - set(_TOP_KEYS))
        if unknown:
            raise SpaceError(f"{source}: unknown key {unknown[0]!r} (allowed: {', '.join(_TOP_KEYS)})")
        for key in ("name", "resolution", "stage"):
            if key not in d:
                raise SpaceError(f"{source}: missing key '{key}' (a space needs name, resolution, "
                                 f"in_channels, num_classes and [[stage]] tables)")
        if not isinstance(d["name"], str) or not d["name"].strip() or len(d["name"]) > 200:
            raise SpaceError(f"{source}: name={d['name']!r} must be a non-empty string")
        top = {}
        for key, default in (("resolution", None), ("in_channels", 3), ("num_classes", 1000)):
            v = d.get(key, default)
            lo, hi = _LIMITS[key]
            if type(v) is not int or not lo <= v <= hi:
                raise SpaceError(f"{source}: {key}={v!r} must be an integer from {lo} to {hi}")
            top[key] = v
        if not isinstance(d["stage"], list) or not 1 <= len(d["stage"]) <= _LIMITS["stages"][1]:
            raise SpaceError(f"{source}: stage must be a list of 2 to {_LIMITS['stages'][1]} [[stage]] tables "
                             f"(the stem, then binary stages), got {_short(d['stage'])}")
        stages = []
        for i, st in enumerate(d["stage"]):
            if not isinstance(st, dict):
                raise SpaceError(f"{source}: stage {i} must be a table of {', '.join(_STAGE_KEYS)}, "
                                 f"got {_short(st)}")
            missing = [k for k in _STAGE_KEYS if k not in st]
            if missing:
                raise SpaceError(f"{source}: stage {i} lacks {', '.join(missing)} "
                                 f"(each stage needs {', '.join(_STAGE_KEYS)})")
            unknown = sorted(set(st) - set(_STAGE_KEYS))
            if unknown:
                raise SpaceError(f"{source}: stage {i} has unknown key(s) {', '.join(unknown)} "
                                 f"(allowed: {', '.join(_STAGE_KEYS)})")
            vals = {}
            for k in _STAGE_KEYS[:-1]:
                v, (lo, hi) = st[k], _LIMITS[k]
                if not isinstance(v, list) or not v or len(v) > 64 \
                        or not all(type(x) is int and lo <= x <= hi for x in v):
                    raise SpaceError(f"{source}: stage {i} {k}={_short(v)} must be a non-empty list of "
                                     f"integers from {lo} to {hi}")
                vals[k] = tuple(sorted(set(v)))
            if type(st["stride"]) is not int or st["stride"] not in (1, 2):
                raise SpaceError(f"{source}: stage {i} stride={st['stride']!r} not allowed (allowed: 1, 2)")
            stages.append(StageSpec(stride=st["stride"], **vals))
        try:
            return cls(name=d["name"], stages=tuple(stages), **top)
        except SpaceError as e:
            raise SpaceError(f"{source}: {e}") from None


_TOP_KEYS = ("name", "resolution", "in_channels", "num_classes", "stage")
# Bounds that keep a space buildable (10^9 channels would make training allocate tens of GB).
_LIMITS = {"resolution": (2, 4096), "in_channels": (1, 64), "num_classes": (2, 100_000), "stages": (2, 64),
           "channels": (1, 8192), "depth": (1, 64), "kernel": (1, 15), "groups1": (1, 8192), "groups2": (1, 8192)}


def _short(v) -> str:
    r = repr(v)
    return r if len(r) <= 60 else r[:57] + "..."


def _check_space(sp: SearchSpace) -> None:
    if len(sp.stages) < 2:
        raise SpaceError(f"space '{sp.name}' has {len(sp.stages)} stage(s); it needs a stem stage and at least one binary stage")
    stem = sp.stages[0]
    if stem.depth != (1,):
        raise SpaceError(f"stage 0 (stem) depth={list(stem.depth)} not allowed (allowed: [1])")
    if sp.resolution < 2 or sp.in_channels < 1 or sp.num_classes < 2:
        raise SpaceError(f"space '{sp.name}': resolution={sp.resolution}, in_channels={sp.in_channels}, "
                         f"num_classes={sp.num_classes} must be >= 2, >= 1, >= 2")
    res = sp.resolution
    for i, st in enumerate(sp.stages):
        if any(k % 2 == 0 for k in st.kernel):
            raise SpaceError(f"stage {i} kernel={list(st.kernel)}: kernels must be odd")
        if st.stride == 2 and res % 2:
            raise SpaceError(f"stage {i} has stride 2 at odd resolution {res} (space '{sp.name}' "
                             f"at {sp.resolution}x{sp.resolution}); choose a resolution divisible by the strides")
        res //= st.stride
    prev_max = stem.channels
    for i, st in enumerate(sp.stages[1:], 1):
        for g in st.groups1:
            for c in set(prev_max) | set(st.channels):
                if c % g:
                    raise SpaceError(f"stage {i} groups1={g} does not divide channel count {c}")
        for g in st.groups2:
            for c in set(prev_max) | set(st.channels):
                if c % g:
                    raise SpaceError(f"stage {i} groups2={g} does not divide channel count {c}")
        prev_max = st.channels


BUILTIN_SPACES = ("imagenet", "small", "small16")


def load_space(path: str | Path) -> SearchSpace:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise SpaceError(f"cannot read space file {str(path)!r}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise SpaceError(f"space file {str(path)!r} is not UTF-8 text (expected TOML)") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpaceError(f"malformed TOML in space file {str(path)!r}: {e}") from None
    return SearchSpace.from_dict(data, source=str(path))


def get_space(name_or_path: str | Path) -> SearchSpace:
    """A built-in space by name (imagenet, small, small16) or a space TOML file by path."""
    if isinstance(name_or_path, SearchSpace):
        return name_or_path
    s = str(name_or_path)
    if s in BUILTIN_SPACES:
        text = resources.files("nasbnn_hw.core.spaces").joinpath(f"{s}.toml").read_text()
        return SearchSpace.from_dict(tomllib.loads(text), source=f"built-in space {s}")
    if s.endswith(".toml") or Path(s).exists():
        return load_space(s)
    raise SpaceError(f"unknown space {s!r} (built-in: {', '.join(BUILTIN_SPACES)}; or a path to a .toml file)")
