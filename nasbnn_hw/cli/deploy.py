"""Subcommands `export` (a subnet of a trained supernet as a compiled TVM library, an ONNX file or a
self-contained inference bundle) and `run` (a bundle on a device: here, under its emulator or over SSH)."""
from __future__ import annotations

from pathlib import Path

from nasbnn_hw.cli.args import POSITIVE, int_range
from nasbnn_hw.errors import NasBnnError


def _target(name: str, devices_dir=None):
    """What to compile for on --device, without connecting to it."""
    if name == "local":
        return "local"
    from device_profiles import load_profile
    return load_profile(name, [devices_dir] if devices_dir else [])



def _load_model(args):
    """(static subnet, space, training splits or None, the file's extra fields): a subnet file as is, or an
    arch of a supernet checkpoint after BN recalibration on its training data (`--no-recalibrate` keeps the
    stored statistics, and loads no data)."""
    from nasbnn_hw.nn.checkpoint import load_supernet, safe_load
    from nasbnn_hw.cli.core import resolve_archs
    from nasbnn_hw.nn.subnet_io import SUBNET_FORMAT, data_for_checkpoint, load_subnet, recalibrated_subnet
    from nasbnn_hw.nn.supernet import extract_subnet
    obj = safe_load(args.checkpoint)
    if isinstance(obj, dict) and obj.get("format") == SUBNET_FORMAT:
        sub = load_subnet(args.checkpoint, obj)
        return sub, sub.space, None, obj
    ck = load_supernet(args.checkpoint, args.space)
    sup = ck.supernet
    archs = resolve_archs(args.arch, sup.space, getattr(args, "official_cand", None))
    if len(archs) != 1:
        raise NasBnnError(f"--arch names {len(archs)} archs; export takes exactly one")
    if args.no_recalibrate:
        return extract_subnet(sup, archs[0]).eval(), sup.space, None, ck.extra
    splits = data_for_checkpoint(ck.extra, sup.space, args.data)
    return recalibrated_subnet(sup, archs[0], splits).eval(), sup.space, splits, ck.extra


def _bundle_data(args, space, splits, extra):
    """(Preprocess, labels, where they come from) for a bundle: from the model's training data (loaded
    now if the export did not need it), else the image-folder convention."""
    from nasbnn_hw.deploy.bundle import Preprocess
    from nasbnn_hw.nn.subnet_io import data_for_checkpoint
    if splits is None and (args.data or (extra or {}).get("data_config")):
        splits = data_for_checkpoint(extra or {}, space, args.data)
    if splits is None:
        return (Preprocess.imagenet(space.resolution, space.in_channels), None,
                "no training data recorded: image-folder evaluation preprocessing (pass --data to use a dataset's)")
    pre = Preprocess.for_splits(splits, space.resolution, space.in_channels)
    names = splits.class_names if splits.class_names and len(splits.class_names) == space.num_classes else None
    return pre, names, f"preprocessing of {splits.train.name}"


def _verify_bundle(out: Path, model, shape, manifest_arch: str) -> str:
    """Run the bundle on this machine (natively or under the emulator of its architecture) on random inputs
    and compare with PyTorch; the sentence for the report."""
    import numpy as np
    import torch

    from nasbnn_hw.deploy.bundle import emulator_for, run_bundle
    from nasbnn_hw.deploy.onnx_net import check_agreement
    wrapper = emulator_for(manifest_arch)
    if wrapper is None:
        return (f"not verified: no way to run {manifest_arch} programs here (for aarch64, Debian: apt install "
                "qemu-user libc6-dev-arm64-cross)")
    n = shape[0] * (2 if shape[0] < 3 else 1)
    x = torch.randn(n, *shape[1:], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = np.concatenate([model(x[i: i + shape[0]]).numpy() for i in range(0, n, shape[0])])
    r = run_bundle(out, list(x.numpy()), exec_wrapper=wrapper, warmup=1, repeat=3)
    check = check_agreement("bundle", r.logits, ref, model, x)
    where = "here" if not wrapper else f"under {wrapper[0]} (emulated)"
    return (f"nasbnn-run {where} vs PyTorch on {n} inputs: max rel err {check['max_rel_err']:.2e}, same top-1: "
            f"{check['same_top1']}; median {r.latency['median']:.3g} ms per call"
            + (" (emulated: not latency)" if wrapper else "")
            + (f"\n  {check['explained']}" if "explained" in check else ""))


def _schedules(args, target):
    """The device's tuned kernel schedules from --store (None: the target's defaults), announced."""
    if not args.store:
        return None
    from nasbnn_hw.deploy.kernels import resolve_target
    from nasbnn_hw.errors import StoreError
    from nasbnn_hw.profiling.tuning import ScheduleBook
    if not Path(args.store).is_file():
        raise StoreError(f"--store {args.store!r} does not exist (tune first: nasbnn-hw tune --store PATH)")
    spec = resolve_target(target)
    book = ScheduleBook.load(args.store, spec.name, spec)
    print(f"kernel schedules: {len(book)} tuned layer(s) of device '{spec.name}' from {args.store}"
          + ("" if len(book) else " (none: the target's defaults)"))
    return book


def cmd_export(args) -> int:
    """Refuse outputs that would destroy a file (checked before anything is compiled), load the subnet,
    export it atomically and check its logits against PyTorch (a bundle: on this machine or its emulator)."""
    import torch

    from nasbnn_hw.deploy.onnx_net import check_agreement, export_onnx
    from nasbnn_hw.deploy.tvm_net import check_outputs
    from nasbnn_hw.errors import CheckpointError
    out = Path(args.out)
    named = [("checkpoint", args.checkpoint), *(("arch file", a) for a in (args.arch or "").split(",")),
             ("official candidate", args.official_cand), ("data", args.data), ("space file", args.space),
             ("device profile", args.device)]
    inputs = [(role, v) for role, v in named if v and (role == "checkpoint" or Path(v).exists())]
    if args.format == "bundle":
        from nasbnn_hw.deploy.bundle import check_bundle_out
        profile = _bundle_profile(args.device, args.devices_dir)
        check_bundle_out(out, inputs, force=args.force)
    else:
        outputs = ({"ONNX file": out} if args.format == "onnx"
                   else {"library": out, "parameter file": out.with_suffix(".npz")})
        check_outputs(outputs, inputs, force=args.force)
    model, space, splits, extra = _load_model(args)
    if args.space:
        from nasbnn_hw.core.space import get_space
        want, have = get_space(args.space).to_dict(), space.to_dict()
        diff = [k for k in have if k != "name" and want[k] != have[k]]
        if diff:
            raise CheckpointError(f"--space {args.space!r} is space '{want['name']}', but {args.checkpoint!r} holds "
                                  f"space '{have['name']}' (they differ in {', '.join(diff)}); drop --space or "
                                  f"pass --space {have['name']}")
    shape = (args.batch, space.in_channels, space.resolution, space.resolution)
    if args.format == "bundle":
        from nasbnn_hw.deploy.bundle import write_bundle
        from nasbnn_hw.deploy.tvm_net import compile_subnet
        pre, labels, source = _bundle_data(args, space, splits, extra)
        net = compile_subnet(model, target=profile, batch=args.batch, schedules=_schedules(args, profile))
        write_bundle(net, out, profile=profile, preprocess=pre, labels=labels, force=args.force, inputs=inputs,
                     provenance={"checkpoint": str(args.checkpoint), "subnet": model.arch.to_dict()
                                 if hasattr(model, "arch") else None})
        size = sum(f.stat().st_size for f in out.iterdir())
        print(f"wrote bundle {out} for {profile.name} ({size / 1e6:.2f} MB; {source})")
        print(f"  {_verify_bundle(out, model, shape, profile.arch)}")
        return 0
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = model(x).numpy()
    if args.format == "onnx":
        got = export_onnx(model, x, args.out)
        how = "onnxruntime"
    else:
        from nasbnn_hw.deploy.tvm_net import compile_subnet
        from nasbnn_hw.deploy.kernels import resolve_target
        target = _target(args.device, args.devices_dir)
        net = compile_subnet(model, target=target, batch=args.batch, schedules=_schedules(args, target))
        net.export(args.out)
        if net.target.runs_here:
            got, how = net(x.numpy()), "TVM"
        else:
            got, how = _run_emulated(net, Path(args.out), x.numpy(), target)
            if got is None:
                print(f"wrote {args.out} (+ .npz) for {resolve_target(target).name}; {how}")
                return 0
    check = check_agreement(how, got, ref, model, x)
    print(f"wrote {args.out}; {how} vs PyTorch: max rel err {check['max_rel_err']:.2e}, "
          f"same top-1: {check['same_top1']}" + (f"\n  {check['explained']}" if "explained" in check else ""))
    return 0


def _run_emulated(net, lib: Path, x, profile):
    """(logits, what ran them) of an exported library for another CPU, run by the C harness under this
    machine's emulator for it; (None, why not) when there is none or the target is not a CPU."""
    from nasbnn_hw.deploy.bundle import emulator_for
    from nasbnn_hw.profiling.runners.process import HarnessProcessRunner
    arch = getattr(profile, "arch", None)
    wrapper = emulator_for(arch) if arch and net.target.config.get("kind") == "llvm" else None
    if not wrapper:
        return None, (f"not verified here: no way to run {arch} code on this machine (for aarch64, Debian: apt "
                      "install qemu-user libc6-dev-arm64-cross)" if arch and net.target.config.get("kind") == "llvm"
                      else "not verified here (a GPU target)")
    runner = HarnessProcessRunner(arch, profile.cross_compiler, wrapper, device=f"{arch} (emulated)")
    t = runner.time_library(lib, net.arg_specs(x), warmup=0, repeat=1, return_outputs=True)
    return t.outputs[0], f"TVM under {wrapper[0]}"


def _bundle_profile(name: str, devices_dir=None):
    """The device profile a bundle is built for; bundles run on CPUs (the runner passes host tensors)."""
    from device_profiles import load_profile
    profile = load_profile(name, [devices_dir] if devices_dir else [])
    if profile.target.get("kind") != "llvm":
        raise NasBnnError(f"device '{profile.name}' compiles for {profile.target.get('kind')!r}; bundles run on "
                          "CPU (llvm) targets only: use --format tvm for it")
    return profile


def _print_run(result, device: str, emulated: bool) -> None:
    for name, classes in result.top:
        print(name)
        for rank, (cls, p, label) in enumerate(classes, 1):
            print(f"  {rank}. {cls:>4d}  {p:7.4f}  {label}".rstrip())
    lat = result.latency
    if lat:
        print(f"latency on {device}: median {lat['median']:.4g} ms, IQR {lat['iqr']:.3g} ms ({lat['runs']} runs, "
              f"{lat['warmup']} warm-up, {lat['threads']} thread{'s' if lat['threads'] != 1 else ''}, batch "
              f"{lat['batch']})" + ("; emulated: not latency" if emulated else ""))


def cmd_run(args) -> int:
    """Run a bundle's `nasbnn-run` on a device: locally, under the device's emulator, or over SSH (the
    runner's own host-key policy, quoting, timeouts, retries and clean-up)."""
    from device_profiles import load_profile

    from nasbnn_hw.deploy.bundle import open_bundle, run_bundle
    manifest = open_bundle(args.bundle)
    profile = load_profile(args.device, [args.devices_dir] if args.devices_dir else [])
    if profile.arch != manifest["arch"]:
        raise NasBnnError(f"bundle {args.bundle!r} is built for {manifest['arch']} (device '{manifest['device']}'); "
                          f"device '{profile.name}' runs {profile.arch} code: export it for that device")
    for f in args.input:
        if not Path(f).is_file():
            raise NasBnnError(f"input {f!r} does not exist (or is not a file)")
    kw = dict(top=args.top, warmup=args.warmup, repeat=args.repeat, threads=args.threads)
    if profile.runner in ("local", "emulated"):
        wrapper = list(profile.exec_wrapper) if profile.runner == "emulated" else []
        result = run_bundle(args.bundle, args.input, exec_wrapper=wrapper, **kw)
    elif profile.runner == "ssh":
        from nasbnn_hw.deploy.bundle import run_bundle_ssh
        from nasbnn_hw.profiling.runners.ssh import SSHRunner
        with SSHRunner(profile, accept_new_host_key=args.accept_new_host_key, notify=print) as runner:
            result = run_bundle_ssh(runner, args.bundle, args.input, **kw)
    else:
        raise NasBnnError(f"device '{profile.name}' is reached through {profile.runner}; `run` uses local, "
                          "emulated or ssh devices")
    _print_run(result, profile.name, profile.runner == "emulated")
    return 0


def register(sub) -> None:
    p = sub.add_parser("export", help="export a subnet of a supernet checkpoint (TVM library, ONNX, or a bundle "
                       "that runs on the device with only its C library)")
    p.add_argument("--checkpoint", required=True, help="supernet checkpoint (nasbnn-hw train) or static "
                   "subnet file (nasbnn-hw finetune)")
    p.add_argument("--space", help="space of the checkpoint (default: the one stored in it)")
    p.add_argument("--arch", help="arch JSON file (e.g. search/best/budget0.json), largest or smallest")
    p.add_argument("--official-cand", help="official NAS-BNN candidate file instead of --arch")
    p.add_argument("--data", help="data for BN recalibration and the bundle's preprocessing (default: the one "
                   "recorded in the checkpoint)")
    p.add_argument("--no-recalibrate", action="store_true", help="export with the supernet's stored BN statistics")
    p.add_argument("--format", choices=("tvm", "onnx", "bundle"), default="tvm",
                   help="tvm: .so + .npz for TVM's runtime; onnx; bundle: a directory with the compiled model, its "
                   "parameters and a C runner (nasbnn-run), checked against PyTorch here or under the emulator")
    p.add_argument("--device", default="local", help="device profile to compile for (tvm, bundle; default: local)")
    p.add_argument("--devices-dir", help="extra directory of device profiles")
    p.add_argument("--batch", type=POSITIVE, default=1, help="batch size the TVM library is compiled for")
    p.add_argument("--out", required=True, help="output: .so for tvm (parameters in .npz beside it), .onnx, or a "
                   "directory for bundle; never an input of the export")
    p.add_argument("--force", action="store_true", help="overwrite an existing output (a bundle: replace it)")
    p.add_argument("--store", help="measurement store with the device's tuned kernel schedules (nasbnn-hw tune); "
                   "default: the target's feature-based schedules")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("run", help="run an exported bundle on a device (here, emulated, or over SSH): top-k "
                       "classes per input and the measured latency")
    p.add_argument("--device", default="local", help="device profile name or .toml file (default: local)")
    p.add_argument("--devices-dir", help="extra directory of device profiles")
    p.add_argument("--bundle", required=True, help="bundle directory (nasbnn-hw export --format bundle)")
    p.add_argument("--input", nargs="+", required=True, metavar="FILE", help="PGM/PPM images, .npy arrays (uint8 "
                   "image or float32 model input) or raw float32 model inputs")
    p.add_argument("--top", type=int_range(1, 1000), default=5, help="classes shown per input (default: 5)")
    p.add_argument("--warmup", type=int_range(0, 100000), help="untimed calls first (default: 1)")
    p.add_argument("--repeat", type=POSITIVE, help="timed calls per batch of inputs (default: 1)")
    p.add_argument("--threads", type=int_range(0, 1024), help="worker threads (default: the bundle's; 0: every core)")
    p.add_argument("--accept-new-host-key", action="store_true", help="SSH devices: record an unknown host key "
                   "(its fingerprint is printed) instead of refusing it")
    p.set_defaults(func=cmd_run)
