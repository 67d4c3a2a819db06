"""Core subcommands: spaces, ops, sample."""
from __future__ import annotations

import json
import random

from nasbnn_hw.cli.args import POSITIVE, SEED, output_file
from nasbnn_hw.core.arch import Arch, validate
from nasbnn_hw.errors import ArchError
from nasbnn_hw.core.layers import count_ops
from nasbnn_hw.core.sampling import largest, sample_uniform, smallest
from nasbnn_hw.core.space import BUILTIN_SPACES, get_space
from nasbnn_hw.utils import check_outputs

SPACE_HELP = "built-in space name (nasbnn-hw spaces) or TOML file (default %(default)s)"


def resolve_archs(spec: str | None, space, official_cand: str | None = None, seed: int = 0) -> list[Arch]:
    """Archs named on the command line: an arch JSON file, largest, smallest, random:N (N uniform ND
    samples), or comma-separated combinations."""
    if official_cand:
        from nasbnn_hw.nn.checkpoint import load_official_candidate
        return [load_official_candidate(official_cand, space)]
    if not spec:
        raise ArchError("give --arch FILE|largest|smallest|random:N (comma-separated) or --official-cand FILE")
    out: list[Arch] = []
    rng = random.Random(seed)
    for part in spec.split(","):
        if part == "largest":
            out.append(largest(space))
        elif part == "smallest":
            out.append(smallest(space))
        elif part.startswith("random:"):
            try:
                n = int(part.split(":", 1)[1])
            except ValueError:
                raise ArchError(f"--arch {part!r}: random:N needs an integer N") from None
            if not 1 <= n <= 100_000:
                raise ArchError(f"--arch {part!r}: N = {n} is not allowed; expected random:N with N from 1 to 100000")
            out.extend(sample_uniform(space, rng) for _ in range(n))
        else:
            out.append(validate(Arch.load(part), space))
    return out


def cmd_ops(args) -> int:
    space = get_space(args.space)
    for arch in resolve_archs(args.arch, space, args.official_cand):
        validate(arch, space)
        print(json.dumps({"space": space.name, "arch": arch.to_dict()["stages"], **count_ops(arch, space).to_dict()}))
    return 0


def cmd_spaces(args) -> int:
    for name in BUILTIN_SPACES:
        sp = get_space(name)
        lo, hi = count_ops(smallest(sp), sp).ops / 1e6, count_ops(largest(sp), sp).ops / 1e6
        print(f"{name:10s} {sp.resolution}x{sp.resolution}x{sp.in_channels} {sp.num_classes:5d} classes "
              f"{len(sp.stages)} stages  OPs {lo:.3f}M .. {hi:.3f}M")
    return 0


def cmd_sample(args) -> int:
    space = get_space(args.space)
    rng = random.Random(args.seed)
    for _ in range(args.n):
        a = sample_uniform(space, rng)
        print(json.dumps({"arch": a.to_dict()["stages"], "ops_M": count_ops(a, space).ops / 1e6}))
    return 0


def cmd_convert_official(args) -> int:
    from nasbnn_hw.nn.checkpoint import load_supernet, save_supernet
    check_outputs({"checkpoint": args.out}, [("official checkpoint", args.checkpoint)], force=args.force)
    ck = load_supernet(args.checkpoint, space=args.space)
    save_supernet(args.out, ck.supernet, source=str(args.checkpoint))
    print(f"wrote {args.out} (space {ck.supernet.space.name}, "
          f"{sum(p.numel() for p in ck.supernet.parameters()) / 1e6:.2f}M parameters)")
    return 0


def cmd_import_official_search(args) -> int:
    from nasbnn_hw.nn.checkpoint import import_official_search
    if args.out:
        check_outputs({"arch list": args.out}, [("official search file", args.file)], force=args.force)
    space = get_space(args.space)
    recs = import_official_search(args.file, space)
    rows = [{"arch": r.arch.to_dict()["stages"], "acc": r.acc, "ops_recorded": r.ops,
             "ops_M": count_ops(r.arch, space).ops / 1e6, "pareto": r.pareto} for r in recs]
    text = "\n".join(json.dumps(r) for r in rows)
    if args.out:
        from nasbnn_hw.utils import atomic_write_text
        atomic_write_text(args.out, text + "\n")
        print(f"wrote {len(rows)} archs ({sum(r.pareto for r in recs)} on the Pareto front) to {args.out}")
    else:
        print(text)
    return 0


def add_arch_args(p) -> None:
    p.add_argument("--space", default="small", help=SPACE_HELP)
    p.add_argument("--arch", help="arch JSON file, largest, smallest or random:N; comma-separated for several")
    p.add_argument("--official-cand", help="official NAS-BNN candidate (tensor/list of [stage, block, "
                   "channels, kernel, groups1, groups2] rows) saved with torch.save or as JSON")


def register(sub) -> None:
    p = sub.add_parser("ops", help="print FLOPs, BOPs and OPs (millions) of an arch as JSON")
    add_arch_args(p)
    p.set_defaults(func=cmd_ops)
    p = sub.add_parser("spaces", help="list the built-in search spaces")
    p.set_defaults(func=cmd_spaces)
    p = sub.add_parser("sample", help="print N random archs (uniform under the ND constraint)")
    p.add_argument("--space", default="small", help=SPACE_HELP)
    p.add_argument("-n", type=POSITIVE, default=5, help="how many archs (default 5)")
    p.add_argument("--seed", type=SEED, default=0, help="random seed (default 0)")
    p.set_defaults(func=cmd_sample)
    p = sub.add_parser("convert-official", help="convert an official NAS-BNN supernet checkpoint")
    p.add_argument("--checkpoint", required=True, help="the official supernet checkpoint (.pth.tar), read "
                   "without unpickling code")
    p.add_argument("--space", default="imagenet", help="the space it was trained on (default imagenet)")
    p.add_argument("--out", required=True, type=output_file, help="this project's supernet checkpoint to write")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=cmd_convert_official)
    p = sub.add_parser("import-official-search", help="list the archs of an official info.pth.tar as JSON lines")
    p.add_argument("file", help="the official search's info.pth.tar")
    p.add_argument("--space", default="imagenet", help="the space it searched (default imagenet)")
    p.add_argument("--out", type=output_file, help="JSON lines file to write (default: print them)")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.set_defaults(func=cmd_import_official_search)
