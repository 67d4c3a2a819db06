"""Schedules. CPU: register-tiled output blocks (a few pixels x a vector of output channels) accumulated
in registers over an unrolled word loop, the epilogue fused into the tile, rows in parallel. CUDA: thread
blocks of pixel x channel tiles, each thread's outputs in registers (`gpu_schedule`; not tuned)."""
from __future__ import annotations

from dataclasses import dataclass, replace

from nasbnn_hw.deploy.kernels.amx import AMX_STRATEGIES, amx_fits, amx_sign_in_loop, amx_weight_bytes
from nasbnn_hw.deploy.kernels.binary import WORD_BITS, dense_saves, pairs_fit, words_per_group
from nasbnn_hw.errors import NasBnnError


def _divisor_at_most(n: int, cap: int) -> int:
    return max(d for d in range(1, min(n, cap) + 1) if n % d == 0)


# CPU register tile of the binary conv: output pixels x output channels, vector lanes, accumulator type.
# x86: tuned with benchmarks/binary_conv.py (AVX-512 VPOPCNTDQ; 64-bit lanes take the vector popcount
# without a narrowing shuffle). aarch64 NEON has 32 128-bit registers and a per-byte `cnt`: a smaller
# tile that fits them, 32-bit lanes (one widening add less per word); not timed on a board yet.
#
# `parallel_min`: a loop nest runs in parallel only when it has at least this many innermost iterations
# (popcount words for a conv, bits for the packing pass). A parallel launch wakes the thread pool and
# joins it again: measured 8-10 us per launch on a 2-vCPU Zen 3 VM (about 2 us on a quiet AVX-512 host),
# while 2**17 popcount words take about 30 us on one AVX2 core. Below that, one thread finishes sooner
# than the launch and the time stays a property of the work (benchmarks/latency_floor.py).
PARALLEL_MIN = 1 << 17
ACC_DTYPES = ("int64", "int32", "int16")
# "word": 64-bit words XOR + popcount, output channels in vector lanes (`CpuSchedule`); "nibble": 4-bit
# table lookups with `vpshufb` and 8-bit accumulators (`binary.nibble_popcount_conv`), x86 with AVX2;
# "byte": byte popcounts (NEON `cnt`) with 8-bit accumulators (`binary.byte_popcount_conv`); "dense": the
# word strategy over each kernel row's taps packed back to back (`binary.dense_windows`), for groups whose
# channels leave spare bits in their last word (fewer words per row, `binary.dense_saves`); "pairs": the
# nibble lookups of two groups of 16 x odd output channels (48 per group...) sharing 32-lane steps
# (`binary.pairs_popcount_conv`), x86 with AVX2; "amx": +-1 int8 products on AMX tiles (`amx`), x86 with
# AMX-INT8; "amxs": the same with the sign stage inside the tile loop, each task signing the input rows its
# tiles read (one parallel region per layer instead of two; where few rows are signed twice: `amx`).
STRATEGIES = ("word", "nibble", "byte", "dense", "pairs", *AMX_STRATEGIES)
CHUNKED = ("nibble", "byte", "pairs")  # the strategies that accumulate bytes in 8-bit lanes
LOOKUPS = ("nibble", "pairs")   # the strategies of table lookups (vpshufb: x86 with AVX2)


class ScheduleError(NasBnnError):
    """A schedule description that is not valid."""


@dataclass(frozen=True)
class CpuSchedule:
    """How one binary conv is scheduled on a CPU: the register tile (`pixels` output pixels x `channels`
    output channels, `vector` lanes), the popcount accumulator type and the parallel threshold.

    The popcount strategy follows from the lanes: `vector` > 1 keeps output channels in vector lanes, so
    LLVM emits the target's vector popcount (VPOPCNTQ with AVX-512 VPOPCNTDQ, a nibble lookup with byte
    sums on AVX2, `cnt` + widening adds on NEON); `vector` == 1 keeps each output channel in a scalar
    register (x86 `popcnt`, one word per instruction). Narrower accumulators save widening instructions
    and registers but are only valid while a dot product cannot overflow them (`fits`).

    `strategy="nibble"` replaces the popcount by table lookups (see `binary.nibble_popcount_conv`), and
    `strategy="byte"` counts bytes (`binary.byte_popcount_conv`): `vector` is then the 8-bit lanes of one
    step (nibble: 32 on AVX2, or 16 where the channel tile is not a multiple of 32), `acc_dtype` the
    accumulator the 8-bit chunk sums are widened into. `strategy="dense"` is the word strategy over dense
    kernel rows (`binary.dense_windows`): the same tile and lanes, fewer words where a group's channels leave
    spare bits in their last word; it builds only such layers (`fits`). `strategy="pairs"` is the nibble
    lookups of two groups of 16 x odd channels per 32-lane step (`binary.pairs_popcount_conv`): 32 lanes, the
    channel tile is the pair (`channels` unused); it builds only such layers. `strategy="amx"` is +-1 int8
    products on AMX tiles (`amx`): int32 accumulators, a fixed tile loop (`pixels`, `channels`, `vector`
    unused); it builds layers with input channels per group a multiple of 4 and outputs a multiple of 16."""
    pixels: int
    channels: int
    vector: int
    acc_dtype: str
    parallel_min: int = PARALLEL_MIN
    strategy: str = "word"

    def __post_init__(self):
        for k in ("pixels", "channels", "vector", "parallel_min"):
            v = getattr(self, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ScheduleError(f"schedule {k}={v!r} must be a positive integer")
        if self.acc_dtype not in ACC_DTYPES:
            raise ScheduleError(f"schedule acc_dtype={self.acc_dtype!r} not supported (allowed: {', '.join(ACC_DTYPES)})")
        if self.vector > self.channels:
            raise ScheduleError(f"schedule vector={self.vector} must be <= channels={self.channels}")
        if self.strategy not in STRATEGIES:
            raise ScheduleError(f"schedule strategy={self.strategy!r} not supported (allowed: {', '.join(STRATEGIES)})")
        if self.strategy == "nibble" and self.vector not in (16, 32):   # JOINED_LANES: derived from 32 (`chunk_lanes`)
            raise ScheduleError(f"schedule vector={self.vector}: a nibble schedule takes 16 or 32 lanes")
        if self.strategy == "pairs" and self.vector != 32:
            raise ScheduleError(f"schedule vector={self.vector}: a pairs schedule takes 32 lanes")
        if self.strategy == "byte" and self.vector not in BYTE_LANES:
            raise ScheduleError(f"schedule vector={self.vector}: a byte schedule takes {', '.join(map(str, BYTE_LANES))} "
                                f"lanes")

    @property
    def popcount(self) -> str:
        if self.strategy in CHUNKED or self.strategy in AMX_STRATEGIES:
            return self.strategy
        return "scalar" if self.vector == 1 else "vector"

    def fingerprint(self) -> str:
        """Short, stable text naming this schedule (the store's schedule identity)."""
        # amx: "amxf-" since the epilogue runs inside the tile loop (rows of the earlier kernel say "amx-")
        tag = {"nibble": "nib-", "byte": "byte-", "dense": "dense-", "pairs": "nibp-", "amx": "amxf-",
               "amxs": "amxs-"}.get(self.strategy, "")
        return f"{tag}p{self.pixels}c{self.channels}v{self.vector}-{self.acc_dtype}-pm{self.parallel_min}"

    def to_dict(self) -> dict:
        return {"pixels": self.pixels, "channels": self.channels, "vector": self.vector,
                "acc_dtype": self.acc_dtype, "parallel_min": self.parallel_min, "strategy": self.strategy}

    @classmethod
    def from_dict(cls, d, source: str = "a schedule") -> "CpuSchedule":
        if not isinstance(d, dict) or set(d) - set(_FIELDS):
            raise ScheduleError(f"{source}: {d!r} is not a schedule (keys: {', '.join(_FIELDS)})")
        try:
            return cls(**d)
        except TypeError as e:
            raise ScheduleError(f"{source}: {d!r} is not a schedule: {e}") from None

    def tile(self) -> dict:
        return self.to_dict()

    def fits(self, cfg) -> bool:
        """Whether this schedule can build layer `cfg`: the accumulator holds every popcount sum (taps x
        input channels per group), a nibble or byte schedule's channel tile is whole vectors, and a dense
        schedule saves words on it (`binary.dense_saves`)."""
        if cfg.kind != "bconv":
            return True
        bound = cfg.kernel * cfg.kernel * words_per_group(cfg.in_channels // cfg.groups) * WORD_BITS
        if bound >= {"int64": 2 ** 63, "int32": 2 ** 31, "int16": 2 ** 15}[self.acc_dtype]:
            return False
        if self.strategy == "dense":
            return dense_saves(cfg.in_channels // cfg.groups, cfg.kernel)
        if self.strategy == "pairs":
            return pairs_fit(cfg.out_channels // cfg.groups, cfg.groups)
        if self.strategy in AMX_STRATEGIES:
            return amx_fits(cfg.in_channels // cfg.groups, cfg.out_channels // cfg.groups) and (
                self.strategy == "amx" or amx_sign_in_loop(cfg))
        return self.strategy not in CHUNKED or self.tile_of(cfg)[2] > 0

    def tile_of(self, cfg) -> tuple[int, int, int]:
        """(pixels, channel tile, lanes) of layer `cfg`; lanes 0 where a nibble/byte schedule cannot tile it."""
        pad = cfg.kernel // 2
        wo = (cfg.resolution + 2 * pad - cfg.kernel) // cfg.stride + 1
        if self.strategy in AMX_STRATEGIES:    # the tile loop is fixed (`amx`): 16 pixels x 16 or 32 channels
            return 16, 32 if cfg.out_channels // cfg.groups % 32 == 0 else 16, 16
        if self.strategy == "pairs":   # the tile is a pair of groups, in `binary.pair_source` order
            fg = cfg.out_channels // cfg.groups
            ft = 2 * fg if pairs_fit(fg, cfg.groups) else 0
            return _divisor_at_most(wo, self.pixels), ft, 32 if ft else 0
        ft, vec = _channel_tile(cfg.out_channels // cfg.groups, cfg.out_channels, self.tile())
        if self.strategy in CHUNKED:
            vec = chunk_lanes(ft, self.vector, self.strategy)
        return _divisor_at_most(wo, self.pixels), ft, vec

    def effective(self, cfg) -> tuple:
        """What this schedule compiles to for layer `cfg` (tiles are clipped to divisors of the layer's
        sizes): two schedules with the same `effective` build the same code."""
        return (*self.tile_of(cfg), self.acc_dtype, self.parallel_min, self.strategy)


_FIELDS = ("pixels", "channels", "vector", "acc_dtype", "parallel_min", "strategy")


BYTE_LANES = (8, 16, 32, 64)


# A nibble step over a group of 48 channels, which 32-lane lookups cannot tile: a 32- and a 16-lane lookup
# joined (`intrinsics.nibble_lookup`).
JOINED_LANES = 48


def chunk_lanes(tile: int, lanes: int, strategy: str = "nibble") -> int:
    """Lanes of each step of a nibble or byte schedule on a channel tile of `tile`: `lanes` when they
    divide the tile; for 32-lane nibble lookups, JOINED_LANES when that does; else 16 when that does; else 0
    (the tile cannot be covered in whole vectors)."""
    options = [lanes] + ([JOINED_LANES] if strategy == "nibble" and lanes == 32 else []) + ([16] if lanes > 16 else [])
    return next((v for v in options if tile % v == 0), 0)


LEGACY_X86 = CpuSchedule(7, 16, 8, "int64")
LEGACY_ARM = CpuSchedule(4, 8, 4, "int32")
# x86 without AVX-512 has 16 vector registers of 256 bits: the legacy tile's 7 x 16 int64 accumulators
# need 28 of them and spill; 7 x 8 needs 14. Measured on a Zen 3 VM (AVX2) against the legacy tile on the
# six layers of benchmarks/tuned_layers.py: 0.59-1.02x its time, median 0.76x (docs/measurements.md).
AVX2_X86 = CpuSchedule(7, 8, 8, "int64")
# x86 with AVX2 but no AVX-512: the nibble strategy's table lookups (no vector popcount instruction there).
# 7 pixels x 64 channels, 32 lanes, 16-bit accumulators (int32 where a layer could overflow them). Measured
# against AVX2_X86 in docs/measurements.md ("Nibble lookups").
NIBBLE_X86 = CpuSchedule(7, 64, 32, "int16", strategy="nibble")
NIBBLE_X86_WIDE = CpuSchedule(7, 64, 32, "int32", strategy="nibble")
# Intel cores without AVX-512 (`intel_core`): 7 x 64 needs 14 byte accumulators + 4 weight vectors of the 16
# registers, and LLVM spills accumulators to the stack, a load and a store per step each. Zen cores forward
# such stack traffic almost for free (7 x 64 stayed best on Zen 4); on an Intel core (AVX2 code on a Sapphire
# Rapids class Xeon) the spilled loop ran 0.90-1.00x as fast as its best from one stack offset to the next
# (4K aliasing of the spill stores with the table loads) and 7 x 32, the same shuffles per binary MAC in 7
# accumulators, 1.06-1.13x faster and flat (`tune` chose it on 4 of 6 layers; docs/measurements.md).
NIBBLE_X86_32 = CpuSchedule(7, 32, 32, "int16", strategy="nibble")
NIBBLE_X86_32_WIDE = CpuSchedule(7, 32, 32, "int32", strategy="nibble")
# Groups of 48 channels (which 32-lane lookups cannot tile): 48-channel tiles, each step a 32- and a 16-lane
# lookup. 96->96 5x5 g2 at 28x28: 1.41x the word schedule's speed (docs/measurements.md, "Nibble lookups").
NIBBLE_X86_48 = CpuSchedule(7, 96, 32, "int16", strategy="nibble")
NIBBLE_X86_48_WIDE = CpuSchedule(7, 96, 32, "int32", strategy="nibble")
# Groups of 16 x odd channels (48 per group...), paired: both groups' tables in one 32-byte vector, so
# every step is a whole 32-lane lookup (three per 96 channels where joined 48-lane steps take four). The
# channel tile is the pair (`CpuSchedule.tile_of`; `channels` is not used).
PAIRS_X86 = CpuSchedule(7, 96, 32, "int16", strategy="pairs")
PAIRS_X86_WIDE = CpuSchedule(7, 96, 32, "int32", strategy="pairs")
# aarch64 NEON: byte popcounts (`cnt`) summed in 8-bit lanes, 2 pixels x 128 channels of 16 lanes. Chosen by
# the llvm-mca estimate of benchmarks/arm_static.py (cortex-a72 and -a76): 2.3x the binary MACs per cycle of
# LEGACY_ARM's inner loop on the 3x3 layers (docs/measurements.md, "ARM without a board"); not timed on a board.
BYTE_ARM = CpuSchedule(2, 128, 16, "int16", strategy="byte")
BYTE_ARM_WIDE = CpuSchedule(2, 128, 16, "int32", strategy="byte")
# Dense kernel rows (`binary.dense_windows`) with the word schedules' tiles, where a layer's groups leave
# spare bits in their last word. Binary conv alone, the word tile against its dense variant (AMD EPYC Zen 4,
# benchmarks/dense_rows.py, docs/measurements.md "Dense kernel rows"): AVX-512 1.13-1.20x on 5x5 g2 (48
# channels per group), 3x3 g8 and 5x5 g4 (96), 3x3 g2 (32), 1.69x on a 16-channel 3x3 layer; AVX2 code
# 1.18-1.36x, 2.30x on the 16-channel layer.
DENSE_X86 = replace(LEGACY_X86, strategy="dense")
DENSE_AVX2 = replace(AVX2_X86, strategy="dense")
DENSE_ARM = replace(LEGACY_ARM, strategy="dense")
# x86 with AMX-INT8 (Sapphire Rapids class): the binary conv as +-1 int8 tile products (`amx`); the tile
# loop is fixed (pixels, channels and vector are not used).
AMX_X86 = CpuSchedule(16, 32, 16, "int32", strategy="amx")
# The sign stage inside the tile loop: the default of 1x1 layers where AMX is (each task signs only its own
# pixels; 1.09-1.22x the amx strategy at 28x28-112x112, 0.96-1.03x at 7x7-14x14 with 1 thread, 1.02-1.12x
# with 2), a `tune` candidate on 3x3 layers up to 14x14 (0.87-0.98x with 1 thread, 1.04-1.39x with 2):
# docs/measurements.md "AMX".
AMXS_X86 = replace(AMX_X86, strategy="amxs")
# Where the AMX default applies (`amx_default_applies`): inputs of at most 56 x 56 pixels, or larger ones
# where each output sums at least 576 products (taps x input channels per group: a 3x3 of 64 channels); at
# 112 x 112 the int8 sign rows (8x the packed bits) and the float data outgrow L2, and 1x1 layers of 24-96
# channels and a 3x3 of 48 ran 0.46-0.94x the legacy tile's speed, 3x3 and 5x5 layers of 96 channels
# 1.05-1.25x. Int8 weights over 1.5 MB only where at least 14 x 14 output pixels reuse them (5x5 and 1x1
# layers of 1536 channels at 7 x 7: 0.70-0.75x). Elsewhere 0.93-1.8x, median 1.3x (imagenet space at 224,
# Intel Xeon of docs/measurements.md "AMX", benchmarks/amx_layers.py). `tune` still tries it on every layer
# it builds.
AMX_DEFAULT_MAX_INPUT_PIXELS = 56 * 56
AMX_DEFAULT_LARGE_INPUT_PRODUCTS = 9 * 64
AMX_DEFAULT_MAX_WEIGHTS = 3 << 19
AMX_DEFAULT_REUSE_PIXELS = 14 * 14


def amx_default_applies(cfg, strategy: str = "amx") -> bool:
    """Whether an untuned layer takes the AMX schedule of `strategy` on a target with AMX-INT8 (where it
    builds); amxs only on 1x1 layers (`AMXS_X86`)."""
    pad = cfg.kernel // 2
    out = ((cfg.resolution + 2 * pad - cfg.kernel) // cfg.stride + 1) ** 2
    products = cfg.kernel * cfg.kernel * (cfg.in_channels // cfg.groups)
    return (cfg.resolution ** 2 <= AMX_DEFAULT_MAX_INPUT_PIXELS or products >= AMX_DEFAULT_LARGE_INPUT_PRODUCTS) \
        and (amx_weight_bytes(cfg) <= AMX_DEFAULT_MAX_WEIGHTS or out >= AMX_DEFAULT_REUSE_PIXELS) \
        and (strategy == "amx" or cfg.kernel == 1)


CPU_TILE = LEGACY_X86.tile()

# The schedules `tune` tries per layer (deduplicated by what they compile to for the layer). Chosen to
# span the axes that moved the time on the CPUs measured (docs/measurements.md): register tile shape,
# lanes (vector vs scalar popcount), accumulator width.
X86_CANDIDATES = (
    LEGACY_X86, CpuSchedule(4, 16, 8, "int64"), CpuSchedule(14, 8, 8, "int64"), AVX2_X86,
    CpuSchedule(7, 16, 4, "int64"), CpuSchedule(4, 32, 8, "int32"), CpuSchedule(7, 32, 8, "int32"),
    CpuSchedule(7, 16, 16, "int32"), CpuSchedule(7, 16, 8, "int16"), CpuSchedule(2, 8, 1, "int64"),
    CpuSchedule(4, 4, 1, "int64"),
    NIBBLE_X86, *(CpuSchedule(p, c, 32, "int16", strategy="nibble")
                  for p, c in ((2, 64), (4, 64), (7, 32), (2, 128), (4, 128), (4, 96), (1, 128), (7, 96), (2, 96))),
    PAIRS_X86, CpuSchedule(4, 96, 32, "int16", strategy="pairs"), CpuSchedule(2, 96, 32, "int16", strategy="pairs"),
    DENSE_X86, DENSE_AVX2, CpuSchedule(4, 16, 8, "int64", strategy="dense"), CpuSchedule(14, 8, 8, "int64", strategy="dense"),
    AMX_X86, AMXS_X86,
)
ARM_CANDIDATES = (
    LEGACY_ARM, CpuSchedule(2, 8, 4, "int32"), CpuSchedule(8, 8, 4, "int32"), CpuSchedule(4, 16, 4, "int32"),
    CpuSchedule(2, 16, 4, "int32"), CpuSchedule(4, 4, 4, "int32"), CpuSchedule(4, 8, 8, "int16"),
    CpuSchedule(4, 8, 2, "int64"), CpuSchedule(2, 4, 1, "int64"),
    BYTE_ARM, *(CpuSchedule(p, c, 16, "int16", strategy="byte") for p, c in ((4, 64), (8, 32), (4, 32), (7, 32))),
    DENSE_ARM, CpuSchedule(4, 16, 4, "int32", strategy="dense"),
)


def target_family(spec) -> str:
    """'gpu', 'aarch64' or 'x86' (every other LLVM CPU target is scheduled like x86)."""
    if spec is not None and spec.is_gpu:
        return "gpu"
    triple = str(spec.config.get("mtriple", "")) if spec is not None else ""
    return "aarch64" if triple.startswith(("aarch64", "arm")) else "x86"


def legacy_schedule(spec) -> CpuSchedule:
    """The schedule every layer had before schedules were chosen per device: measurements stored without
    a schedule were taken with it."""
    return LEGACY_ARM if target_family(spec) == "aarch64" else LEGACY_X86


def has_feature(spec, feature: str) -> bool:
    """Whether LLVM's description of the target's CPU has `feature` (e.g. "avx512f"); False where unknown."""
    try:
        from tvm.target import codegen
        return bool(codegen.llvm_cpu_has_features([feature], spec.tvm_target()))
    except Exception:  # noqa: BLE001 - a target LLVM cannot describe: no feature known
        return False


def default_schedule(spec, cfg=None) -> CpuSchedule:
    """The schedule of an untuned layer, from the target's features (see `CpuSchedule` on strategies):
    aarch64 NEON: the byte popcounts (`BYTE_ARM`) for layers whose channel tile they cover (16 lanes), else
    `LEGACY_ARM`; x86 with AVX-512 (32 registers of 512 bits, VPOPCNTQ where VPOPCNTDQ is there):
    `LEGACY_X86`, tuned there, and where the target has AMX-INT8 the int8 tile products (`AMX_X86`) for the
    layers they build up to 56 x 56 pixels, large weights only where enough pixels reuse them
    (`amx_default_applies`; docs/measurements.md "AMX"), on 1x1 layers with the sign stage inside the tile
    loop (`AMXS_X86`); x86 with AVX2 but no AVX-512: the nibble lookups (`NIBBLE_X86`; on Intel cores
    `NIBBLE_X86_32`, which does not spill) for layers
    whose channel tile they cover in whole 32-lane lookups, paired groups (`PAIRS_X86`) for an even number
    of groups of 16 x odd channels, `NIBBLE_X86_48` for other groups of 48 channels (a 32- and a 16-lane
    lookup per step), else `AVX2_X86`, whose accumulators fit 16 registers (with 16-lane lookups
    only, the word schedule was as fast: docs/measurements.md).
    The 16-bit accumulators become 32-bit where a layer could overflow them. On x86, a layer left to the
    word schedule takes its dense-row variant (`DENSE_X86`, `DENSE_AVX2`) where that saves words (`fits`).
    Without a layer (`cfg` None): the target's word schedule."""
    word, others = target_defaults(spec)
    if cfg is not None and cfg.kind == "bconv":
        for s in others:
            if s.fits(cfg) and s.tile_of(cfg)[2] in (s.vector, JOINED_LANES) and (   # whole vectors (or joined
                    s.strategy not in AMX_STRATEGIES or amx_default_applies(cfg, s.strategy)):  # lookups)
                return s
    return word


def target_defaults(spec) -> tuple[CpuSchedule, tuple[CpuSchedule, ...]]:
    """(word schedule, the other schedules of untuned layers in order of preference: nibble, byte, dense)."""
    fam = target_family(spec)
    if fam == "aarch64":
        return LEGACY_ARM, (BYTE_ARM, BYTE_ARM_WIDE)
    if spec is None or has_feature(spec, "avx512f"):
        return LEGACY_X86, ((AMXS_X86, AMX_X86) if spec is not None and has_feature(spec, "amx-int8") else ()) + \
            (DENSE_X86,)
    nibble = (NIBBLE_X86_32, NIBBLE_X86_32_WIDE) if intel_core(spec) else (NIBBLE_X86, NIBBLE_X86_WIDE)
    return AVX2_X86, ((*nibble, PAIRS_X86, PAIRS_X86_WIDE, NIBBLE_X86_48, NIBBLE_X86_48_WIDE)
                      if has_feature(spec, "avx2") else ()) + (DENSE_AVX2,)


# LLVM CPU names of x86 cores that are not Intel's, or name no core (generic levels): `intel_core` is False.
_NOT_INTEL = ("znver", "bdver", "btver", "amdfam", "athlon", "k8", "opteron", "barcelona", "x86-64", "generic",
              "i686", "pentium4")


def intel_core(spec) -> bool:
    """Whether the target's LLVM CPU is an Intel core (haswell, skylake, alderlake, ...; not AMD's znver*, not
    a generic level such as x86-64-v3, where the Zen-measured defaults stay)."""
    try:
        cpu = str(spec.tvm_target().attrs.get("mcpu", "") or "")
    except Exception:  # noqa: BLE001 - a target without a CPU name
        return False
    return bool(cpu) and target_family(spec) == "x86" and not cpu.startswith(_NOT_INTEL)


def candidate_schedules(spec, cfg) -> list[CpuSchedule]:
    """The schedules `tune` times for layer `cfg` on target `spec`: the default first, then every other
    candidate of the target family that is valid for the layer (nibble lookups only where the target has
    AVX2) and compiles to different code."""
    fam = target_family(spec)
    if fam == "gpu" or cfg.kind != "bconv":
        return []
    base = default_schedule(spec, cfg)
    nibble_ok = fam == "x86" and has_feature(spec, "avx2")
    amx_ok = fam == "x86" and has_feature(spec, "amx-int8")
    seen, out = set(), []
    for s in (base, *(ARM_CANDIDATES if fam == "aarch64" else X86_CANDIDATES)):
        e = s.effective(cfg)
        if s.fits(cfg) and e not in seen and (s.strategy not in LOOKUPS or nibble_ok) and (s.strategy not in AMX_STRATEGIES or amx_ok):
            seen.add(e)
            out.append(s)
    return out


def _iterations(sch, block) -> int:
    """Innermost iterations of a block's loop nest (spatial and reduction)."""
    n = 1
    for v in sch.get(block).iter_vars:
        n *= int(v.dom.extent)
    return n


def _maybe_parallel(sch, work: int, loops, tile_cfg: dict | None) -> None:
    """Fuse `loops` and run them in parallel when `work` (innermost iterations) pays for a launch."""
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    if work >= (tile_cfg or CPU_TILE).get("parallel_min", PARALLEL_MIN):
        sch.parallel(fused)


# A conv's tiles run in parallel over pixel rows and pixel tiles, and over the channel tiles as well where the
# pixels give fewer than this many tasks: TVM splits a parallel loop into equal contiguous ranges, one per
# thread, so the 7 rows of a 7 x 7 layer run 4 + 3 on 2 threads (at most 1.75x).
PARALLEL_TASKS = 64


def _tile_tasks(sch, pixel_loops, fo) -> list:
    tasks = 1
    for lp in pixel_loops:
        tasks *= int(sch.get(lp).extent)
    return [*pixel_loops, fo] if tasks < PARALLEL_TASKS else list(pixel_loops)


def cpu_tile(spec) -> dict:
    """The default register tile for a target (a `TargetSpec`), as the dict the schedule functions take."""
    return default_schedule(spec).tile()


def _channel_tile(per_group: int, total: int, tile_cfg: dict) -> tuple[int, int]:
    """(tile, vector) for the output-channel axis: the tile divides the per-group channel count so one
    tile never straddles two groups (its input words are then shared by all its lanes)."""
    tile = tile_cfg["channels"]
    while tile > 1:
        if per_group % tile == 0 and total % tile == 0:
            return tile, min(tile, tile_cfg["vector"])
        tile //= 2
    return 1, 1


# Tile buffers. The accumulators of a CPU tile (and the head's sums) keep TVM's default "global" scope. TVM
# 0.27 lowers an allocation of any other scope (they were "local") to a `TVMBackendAllocWorkspace` and
# `TVMBackendFreeWorkspace` call on each pass of the loop that holds it: a pair per buffer per tile row of a
# conv (seen in the disassembly of a 1x1 layer). A "global" buffer under 1 KiB becomes a stack slot
# (`alloca`) that LLVM keeps in registers where it can. With the Zen 3 kernels on an AMD EPYC Zen 4, the six
# layers of benchmarks/tuned_layers.py ran 1.02-1.09x and whole imagenet subnets 1.11-1.13x as fast
# (benchmarks/commit_layers.py, 3 rounds). GPU kernels keep "local" (registers). Calibrated references say
# so in their keys (`kernel_revision`).


def _tile_conv(sch, acc_name: str, out_name: str, per_group: int, pixel_cap: int | None = None, n_reduce: int = 3,
               tile_cfg: dict | None = None):
    """Tile the (n, y, x, f) epilogue block `out_name` and compute its accumulation `acc_name` inside each
    tile (scheduled from the consumer side: the epilogue may also read tensors produced elsewhere, e.g.
    the shortcut)."""
    out = sch.get_sblock(out_name)
    n, y, x, f = sch.get_loops(out)
    wo, f_ext = int(sch.get(x).extent), int(sch.get(f).extent)
    tile_cfg = tile_cfg or CPU_TILE
    xt = _divisor_at_most(wo, pixel_cap or tile_cfg["pixels"])
    ft, vec = _channel_tile(per_group, f_ext, tile_cfg)
    xo, xi = sch.split(x, [None, xt])
    fo, fi = sch.split(f, [None, ft])
    sch.reorder(n, y, xo, fo, xi, fi)
    acc = sch.get_sblock(acc_name)
    work = _iterations(sch, acc)  # before compute_at, which shrinks the block to one tile
    sch.compute_at(acc, fo)
    n_red = _reduction_loops(sch, acc)
    own = sch.get_loops(acc)[4:]
    spatial, red = own[:len(own) - n_red], own[len(own) - n_red:]
    inner = []
    if spatial:
        tile = sch.fuse(*spatial) if len(spatial) > 1 else spatial[0]
        inner = sch.split(tile, [xt, ft // vec, vec])
        sch.reorder(*red, *inner)
    if inner:
        sch.unroll(inner[0])
        sch.unroll(inner[1])
        sch.vectorize(inner[2])
    if red:
        sch.unroll(red[-1])
    fi_o, fi_i = sch.split(fi, [None, vec])
    sch.vectorize(fi_i)
    _maybe_parallel(sch, work, _tile_tasks(sch, [n, y, xo], fo), tile_cfg)
    if red or inner:
        sch.decompose_reduction(acc, (red or inner)[0])


def sign8_applies(spec) -> bool:
    """Whether binary layers for `spec` take the byte sign stage (`binary.sign_bytes`, `vmovmskps`): x86 CPU
    targets with AVX."""
    return spec is not None and not spec.is_gpu and target_family(spec) == "x86" and has_feature(spec, "avx")


def kernel_revision(spec) -> str:
    """What the kernels for `spec` do differently from what their schedules name, for the keys of calibrated
    references ('' where nothing): "sign8" where the sign stage is the byte one, "stack" on every CPU target
    (tile accumulators on the stack: "Tile buffers" above; baselines calibrated before timed slower kernels),
    joined by "+"."""
    if spec is None or spec.is_gpu:
        return ""
    return "+".join((["sign8"] if sign8_applies(spec) else []) + ["stack"])


def cpu_pack(sch, name: str, work: int, tile_cfg: dict | None = None):
    """The pack's rows in parallel exactly when the conv's are (`work`: the conv's 64-bit words; a serial pack
    is the part of a layer a second thread cannot share). With a byte sign stage (`binary.sign_bytes`, x86
    with AVX) each byte is one compare + `vmovmskps` (`intrinsics.sign_bits8`), a row of them computed inside
    the pack's row loop (`sign_at`), and the words gather 8 bytes each. Without it, the 64-bit loop stays a
    loop: LLVM vectorises it (compare -> mask -> word), about 7x faster than unrolling it into scalar shifts."""
    if f"{name}_pack" in _block_names(sch):   # (the byte strategies read the sign bytes: `sign_at` there)
        blk = sch.get_sblock(f"{name}_pack")
        _maybe_parallel(sch, work, sch.get_loops(blk)[:2], tile_cfg)
        sign_at(sch, name, sch.get_loops(blk)[0])


def _block_names(sch) -> set:
    return {sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))}


def sign_at(sch, name: str, loop) -> None:
    """The byte sign stage (`binary.sign_bytes`), where the layer has one, computed inside `loop` (the
    padded-row loop of the stage that reads it: the pack's words, the byte strategies' tables or bytes) and
    tensorized (`intrinsics.sign_bits8`): the sign and its reader share one parallel region (a launch less
    per layer), and a row of sign bytes is still in L1 when it is read."""
    if f"{name}_sign" not in _block_names(sch):
        return
    from nasbnn_hw.deploy.kernels.intrinsics import sign_bits8
    sign = sch.get_sblock(f"{name}_sign")
    sch.compute_at(sign, loop)     # before the reduction is tensorized (an opaque block after)
    bits = sch.get_loops(sign)[-1]
    sch.decompose_reduction(sign, bits)
    sch.tensorize(bits, sign_bits8())


def cpu_binary_half(sch, name: str, groups: int, tile_cfg: dict | None = None):
    if (tile_cfg or {}).get("strategy") in AMX_STRATEGIES:
        from nasbnn_hw.deploy.kernels.amx import schedule_amx
        schedule_amx(sch, name, tile_cfg)
        return
    cpu_pack(sch, name, _iterations(sch, sch.get_sblock(f"{name}_acc")), tile_cfg)
    if (tile_cfg or {}).get("strategy") == "dense":
        win = sch.get_sblock(f"{name}_windows")
        loops = sch.get_loops(win)
        # the window words, each its own constant shifts (`binary.dense_windows`); built by one thread: in
        # parallel (rows split like the pack's) the layers ran up to 1.3x slower at 2 threads (AVX-512 VM,
        # benchmarks/dense_rows.py --threads 2), the stage being a few microseconds of work
        sch.unroll(loops[-1])
    acc = sch.get_sblock(f"{name}_acc")
    f_ext = int(sch.get(sch.get_loops(acc)[3]).extent)
    if (tile_cfg or {}).get("strategy") in CHUNKED:
        _tile_chunked_conv(sch, name, f_ext // groups, tile_cfg)
    else:
        _tile_conv(sch, f"{name}_acc", f"{name}_out", f_ext // groups, tile_cfg=tile_cfg)


def _tile_chunked_conv(sch, name: str, per_group: int, tile_cfg: dict):
    """The nibble and byte strategies (`binary._chunked_conv`): the input stage (tables or bytes) rows in
    parallel when large; the (n, y, x, f) epilogue tiled as in `_tile_conv`; per tile, 16-bit (or wider)
    accumulators and, per chunk of bytes, the 8-bit ones. Every (tap, byte, pixel, lanes) step is one
    `intrinsics.nibble_lookup` (nibble), `intrinsics.pair_lookup` (pairs: the channel tile is a pair of
    groups) or one vector popcount of bytes (byte)."""
    from nasbnn_hw.deploy.kernels.intrinsics import nibble_lookup, pair_lookup
    pairs = tile_cfg["strategy"] == "pairs"
    nibble = tile_cfg["strategy"] in LOOKUPS
    acc, acc8 = sch.get_sblock(f"{name}_acc"), sch.get_sblock(f"{name}_acc8")
    work = _iterations(sch, acc8) // (128 if nibble else 8)  # in 64-bit words, as `_tile_conv` counts
    inp = sch.get_sblock(f"{name}_table" if nibble else f"{name}_bytes")
    il = sch.get_loops(inp)
    if nibble:   # nibble: a byte's two tables as one 32-lane vector (`binary.nibble_tables`); pairs: 16
        sch.vectorize(il[-1] if pairs else sch.fuse(il[-2], il[-1]))
    # rows in parallel exactly when the conv's rows are: each thread then reads mostly the tables it wrote
    # (16 bytes per input nibble: 32x the packed input; built by one thread, half of them crossed cores)
    _maybe_parallel(sch, work, il[:2], tile_cfg)
    sign_at(sch, name, sch.get_loops(inp)[0])
    out = sch.get_sblock(f"{name}_out")
    n, y, x, f = sch.get_loops(out)
    xt = _divisor_at_most(int(sch.get(x).extent), tile_cfg["pixels"])
    if pairs:   # built only where it applies (`CpuSchedule.fits`): the tile is the pair, 32-lane steps
        ft, lanes = 2 * per_group, 32
    else:
        ft, _ = _channel_tile(per_group, int(sch.get(f).extent), tile_cfg)
        lanes = chunk_lanes(ft, tile_cfg["vector"], tile_cfg["strategy"])
    if not lanes:
        raise ScheduleError(f"{tile_cfg['strategy']} schedule: a channel tile of {ft} (from {per_group} channels "
                            f"per group) is not a multiple of 16 lanes")
    xo, xi = sch.split(x, [None, xt])
    fo, fi = sch.split(f, [None, ft])
    sch.reorder(n, y, xo, fo, xi, fi)
    single = sch.get(acc).init is None   # one chunk: the epilogue widens the 8-bit sums (`binary._chunked_conv`)
    sp, red = [], []
    if single:
        sch.compute_inline(acc)
    else:
        sch.compute_at(acc, fo)
        own = sch.get_loops(acc)[4:]
        n_red = _reduction_loops(sch, acc)
        sp, red = own[:len(own) - n_red], own[len(own) - n_red:]
        if red:
            sch.reorder(*red, *sp)
    sch.compute_at(acc8, red[0] if red else fo)   # both "global": see "Tile buffers" above
    loops8 = sch.get_loops(acc8)
    n_red8, n_sp8 = _reduction_loops(sch, acc8), (2 if xt > 1 else 1)
    own8 = loops8[len(loops8) - n_red8 - n_sp8:]
    sp8, red8 = own8[:n_sp8], own8[n_sp8:]  # (xi, fi), (ky, kx, bi[, table entry]) without unit loops
    steps = red8[:-1] if nibble else red8   # nibble: the 16 table entries stay inside the intrinsic
    fo8, fv8 = sch.split(sp8[-1], [None, lanes])
    sch.reorder(*steps, *sp8[:-1], fo8, fv8, *red8[len(steps):])
    for lp in (*sp8[:-1], fo8):
        sch.unroll(lp)
    if not nibble:
        sch.vectorize(fv8)
    # joined lookups (32 + 16 lanes): every other stage in whole 16-lane vectors (LLVM splits a 48-lane
    # vector element by element), the widening in 256-bit ones
    # pairs: the epilogue in 16-lane vectors too (each reads 16 consecutive accumulators, `binary.pair_source`)
    vec, wide = (16, 32) if lanes == JOINED_LANES or pairs else (lanes, lanes)
    sch.vectorize(sch.split(fi, [None, vec])[1])
    _maybe_parallel(sch, work, _tile_tasks(sch, [n, y, xo], fo), tile_cfg)  # before the reductions are decomposed
    sch.decompose_reduction(acc8, (steps or [*sp8[:-1], fo8])[0])
    sch.vectorize(sch.split(sch.get_loops(sch.get_sblock(f"{name}_acc8_init"))[-1], [None, vec])[1])
    if not single:
        widen = sch.split(sp[-1], [None, max(8, wide // {"int16": 2, "int32": 4, "int64": 8}[tile_cfg["acc_dtype"]])])
        sch.vectorize(widen[1])
        sch.decompose_reduction(acc, (red or sp[:-1] or widen)[0])
    if nibble:
        sch.tensorize(fv8, pair_lookup() if pairs else nibble_lookup(lanes))


def _reduction_loops(sch, block) -> int:
    """Reduction loops of `block` that compute_at kept (it drops unit loops)."""
    return sum(1 for v in sch.get(block).iter_vars if int(v.iter_type) == 2 and int(v.dom.extent) > 1)


def cpu_stem(sch, name: str, tile_cfg: dict | None = None):
    pad = sch.get_sblock(f"{name}_pad")
    _maybe_parallel(sch, _iterations(sch, pad), sch.get_loops(pad)[:2], tile_cfg)
    acc = sch.get_sblock(f"{name}_acc")
    f_ext = int(sch.get(sch.get_loops(acc)[3]).extent)
    _tile_conv(sch, f"{name}_acc", f"{name}_out", f_ext, pixel_cap=4, tile_cfg=tile_cfg)


def cpu_head(sch, name: str):
    fc = sch.get_sblock(f"{name}_fc")
    n, j, rc = sch.get_loops(fc)
    j_ext = int(sch.get(j).extent)
    vec = _divisor_at_most(j_ext, 8)
    jo, ji = sch.split(j, [None, vec])
    sch.reorder(n, jo, rc, ji)
    out = sch.get_sblock(f"{name}_out")
    sch.reverse_compute_at(out, jo)   # "global": see "Tile buffers"
    sch.vectorize(ji)
    sch.vectorize(sch.get_loops(out)[-1])
    sch.decompose_reduction(fc, rc)


@dataclass(frozen=True)
class GpuTile:
    """The CUDA conv tile (`gpu_conv_tile`): a warp of `threads_x` threads across output channels (NHWC:
    neighbouring lanes store neighbouring floats and read neighbouring weight words), `threads_y` rows of
    threads across pixels (the lanes of a warp read the same input words: one broadcast each), each thread
    `pixels` x `channels` outputs with their sums in registers and the epilogue applied there, so no int32
    accumulator goes through global memory."""
    threads_y: int = 8
    threads_x: int = 32
    pixels: int = 2
    channels: int = 2

    def fingerprint(self) -> str:
        return f"cuda-t{self.threads_y}x{self.threads_x}p{self.pixels}c{self.channels}"


# The default: not yet timed on a GPU (benchmarks/cuda_layers.py times it, the variants below, the generic
# schedule and cuDNN where a GPU is lent). Its fingerprint names GPU measurements (`GPU_SCHEDULE_ID`).
GPU_TILE = GpuTile()
GPU_SCHEDULE_ID = GPU_TILE.fingerprint()
GPU_TILE_VARIANTS = (GPU_TILE, GpuTile(4, 32, 1, 1), GpuTile(8, 32, 4, 4), GpuTile(4, 32, 2, 4), GpuTile(16, 32, 2, 2))


def gpu_schedule(sch, bind: bool = True, tile: GpuTile | None = GPU_TILE) -> None:
    """The CUDA schedule of a whole function: every conv (a `{name}_acc` block with its `{name}_out`
    epilogue, NHWC) tiled by `gpu_conv_tile` with `tile` (None: not tiled), every other block one thread
    per output element (`gpu_generic`). `bind=False` leaves the loops serial (the same loop nest runs on
    a CPU target: how the tests check the tiling computes the same outputs without a GPU)."""
    root = sch.get_sblock("root")
    names = [sch.get(b).name_hint for b in sch.get_child_blocks(root)]
    done = set()
    if tile is not None:
        for nm in names:
            if nm.endswith("_acc") and f"{nm[:-4]}_out" in names and len(sch.get_loops(sch.get_sblock(f"{nm[:-4]}_out"))) == 4:
                gpu_conv_tile(sch, nm[:-4], tile, bind)
                done |= {nm, f"{nm[:-4]}_out"}
    gpu_generic(sch, bind=bind, names=[nm for nm in names if nm not in done])


def gpu_conv_tile(sch, name: str, tile: GpuTile = GPU_TILE, bind: bool = True) -> None:
    """Thread blocks: (fused n, row blocks, x tiles) x (channel tiles); threads: `tile.threads_y` rows of
    pixel tiles (along x, then over rows where a row is narrower) x `tile.threads_x` channel tiles; each
    thread computes `{name}_acc` for its `tile.pixels` x `tile.channels` outputs in registers (reductions
    outside, the tile inside, unrolled) and their epilogue. Every split is a divisor of its axis (no
    bounds checks in the kernel), so odd sizes take smaller tiles."""
    out, acc = sch.get_sblock(f"{name}_out"), sch.get_sblock(f"{name}_acc")
    n, y, x, f = sch.get_loops(out)
    ho, wo, fe = (int(sch.get(lp).extent) for lp in (y, x, f))
    xp = _divisor_at_most(wo, tile.pixels)
    xt = _divisor_at_most(wo // xp, tile.threads_y)
    yt = _divisor_at_most(ho, max(1, tile.threads_y // xt))
    fp = _divisor_at_most(fe, tile.channels)
    ft = _divisor_at_most(fe // fp, tile.threads_x)
    yo, yi = sch.split(y, [None, yt])
    xo, xti, xpi = sch.split(x, [None, xt, xp])
    fo, fti, fpi = sch.split(f, [None, ft, fp])
    sch.reorder(n, yo, xo, fo, yi, xti, fti, xpi, fpi)
    blocks = sch.fuse(n, yo, xo)
    rows = sch.fuse(yi, xti)
    if bind:
        sch.bind(blocks, "blockIdx.x")
        sch.bind(fo, "blockIdx.y")
        sch.bind(rows, "threadIdx.y")
        sch.bind(fti, "threadIdx.x")
    sch.compute_at(acc, fti)
    sch.set_scope(acc, 0, "local")
    own = sch.get_loops(acc)[4:]
    n_red = _reduction_loops(sch, acc)
    spatial, red = own[:len(own) - n_red], own[len(own) - n_red:]
    if red and spatial:
        sch.reorder(*red, *spatial)
    for lp in spatial:
        sch.unroll(lp)
    sch.unroll(xpi)
    sch.unroll(fpi)
    if red:
        sch.decompose_reduction(acc, red[0])


def gpu_generic(sch, threads: int = 64, bind: bool = True, names=None):
    """One thread per output element of each block of `names` (default: every block of the function):
    spatial loops fused, split into (blocks, threads)."""
    if names is None:
        names = [sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))]
    for nm in names:
        blk = sch.get_sblock(nm)
        n_spatial = sum(1 for iv in sch.get(blk).iter_vars if int(iv.iter_type) == 0)
        loops = sch.get_loops(blk)
        fused = sch.fuse(*loops[:n_spatial])
        ext = int(sch.get(fused).extent)
        t = _divisor_at_most(ext, threads)
        bo, ti = sch.split(fused, [None, t])
        if bind:
            sch.bind(bo, "blockIdx.x")
            sch.bind(ti, "threadIdx.x")
