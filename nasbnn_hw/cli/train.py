"""Training subcommands: train, eval, finetune."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from nasbnn_hw.cli.args import (FRACTION, NON_NEGATIVE, POSITIVE, RESOLUTION, SEED, THREADS, add_device_args, float_range,
                                output_dir, output_file)
from nasbnn_hw.cli.core import SPACE_HELP, resolve_archs
from nasbnn_hw.errors import NasBnnError
from nasbnn_hw.train.device import resolve_device
from nasbnn_hw.core.space import get_space
from nasbnn_hw.utils import check_outputs

THREADS_HELP = "PyTorch's CPU threads (default: PyTorch's choice)"
QUIET_HELP = "no progress bars"
MAX_STEPS_HELP = "end each epoch after this many steps (default 0: the whole epoch)"


def _threads(args):
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)


def _init_distributed(device: torch.device):
    """Under torchrun: join the process group (nccl when this process trains on a GPU, else gloo)."""
    import os

    import torch.distributed as dist
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return True
    return False


def cmd_train(args) -> int:
    from nasbnn_hw.data.sets import load_splits
    from nasbnn_hw.train.trainer import SupernetTrainer, TrainConfig
    _threads(args)
    space = get_space(args.space)
    if args.resolution:
        space = space.with_resolution(args.resolution)
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                      label_smoothing=args.label_smoothing, num_random=args.num_random,
                      bi_teacher=not args.no_bi_teacher, weight_norm=not args.no_weight_norm,
                      bi_transformation=not args.no_bi_transformation, weight_distill=args.weight_distill,
                      seed=args.seed, checkpoint_every=args.checkpoint_every, max_steps_per_epoch=args.max_steps_per_epoch,
                      workers=args.workers, device=args.device, amp=args.amp or "",
                      channels_last=args.channels_last, compile=args.compile)
    from nasbnn_hw.train.device import check_amp
    device = resolve_device(args.device)    # refused here, before any data is read
    check_amp(args.amp, device)
    distributed = _init_distributed(device)
    data_config = {"source": args.data, "val_fraction": args.val_fraction, "limit_train": args.limit_train,
                   "split_seed": 0, "augment": args.augment, "strict_images": args.strict_images}
    splits = load_splits(args.data, space.resolution, space.in_channels, args.val_fraction, args.limit_train,
                         augment=args.augment, strict_images=args.strict_images)
    if splits.train.num_classes > space.num_classes:
        raise NasBnnError(f"data has {splits.train.num_classes} classes; space '{space.name}' has "
                          f"num_classes={space.num_classes}")
    trainer = SupernetTrainer(space, splits, cfg, args.out, progress=not args.quiet, data_config=data_config)
    out = Path(args.out)
    if (out / "checkpoint.pt").exists() and not args.resume:
        raise NasBnnError(f"{out / 'checkpoint.pt'} exists: pass --resume to continue it, or choose another --out")
    if args.resume and trainer.resume() and trainer.rank == 0:
        print(f"resuming at epoch {trainer.epoch + 1}, step {trainer.step_in_epoch} (global step {trainer.global_step})")
    trainer.fit()
    if trainer.rank == 0:
        print(f"checkpoint: {trainer.checkpoint_path}")
    if distributed:
        import torch.distributed as dist
        dist.destroy_process_group()
    return 0


def cmd_eval(args) -> int:
    from nasbnn_hw.nn.checkpoint import load_supernet
    from nasbnn_hw.train.evaluate import accuracy, calibration_batches, recalibrate_bn
    from nasbnn_hw.core.layers import count_ops
    from nasbnn_hw.nn.subnet_io import data_for_checkpoint
    _threads(args)
    ck = load_supernet(args.checkpoint)
    net, space = ck.supernet.to(resolve_device(args.device)), ck.supernet.space
    splits = data_for_checkpoint(ck.extra, space, args.data)
    split = getattr(splits, args.split)
    calib = calibration_batches(splits.train, args.calib_batches, args.calib_batch_size, workers=args.workers)
    for arch in resolve_archs(args.arch, space, seed=args.seed):
        recalibrate_bn(net, arch, calib)
        acc = accuracy(net, split, arch=arch, workers=args.workers)
        print(json.dumps({"arch": arch.to_dict()["stages"], "split": args.split, "top1": round(acc["top1"], 3),
                          "top5": round(acc["top5"], 3), "ops_M": count_ops(arch, space).ops / 1e6}))
    return 0


def cmd_finetune(args) -> int:
    from nasbnn_hw.nn.checkpoint import load_supernet
    from nasbnn_hw.train.evaluate import accuracy
    from nasbnn_hw.nn.subnet_io import data_for_checkpoint, save_subnet
    from nasbnn_hw.train.trainer import finetune
    _threads(args)
    check_outputs({"subnet file": args.out}, [("supernet checkpoint", args.checkpoint)]
                  + ([("arch file", args.arch)] if Path(args.arch).is_file() else []), force=args.force)
    ck = load_supernet(args.checkpoint)
    net, space = ck.supernet.to(resolve_device(args.device)), ck.supernet.space
    archs = resolve_archs(args.arch, space, seed=args.seed)
    if len(archs) != 1:
        raise NasBnnError(f"--arch names {len(archs)} archs; finetune takes exactly one")
    splits = data_for_checkpoint(ck.extra, space, args.data)
    sub, hist = finetune(net, archs[0], splits, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                         progress=not args.quiet, max_steps_per_epoch=args.max_steps_per_epoch,
                         compile=args.compile)
    test = accuracy(sub, splits.test, workers=args.workers)
    save_subnet(args.out, sub, net, history=hist, data_config=ck.extra.get("data_config"), test=test)
    print(json.dumps({"out": str(args.out), "test_top1": test["top1"], "history": hist}))
    return 0


COMPILE_HELP = ("compile the element-wise chains around each binary conv with TorchInductor (dynamic shapes: "
                "one graph serves every subnet); faster steps after a one-off compile of 1-2 minutes on a CPU "
                "(a C++ compiler is needed there)")


def register(sub) -> None:
    p = sub.add_parser("train", help="train a supernet (Bi-Teacher sandwich rule); runs under torchrun too")
    p.add_argument("--space", default="small", help=SPACE_HELP)
    p.add_argument("--resolution", type=RESOLUTION, help="override the space's input resolution")
    p.add_argument("--data", default="fashion-mnist", help="digits | fashion-mnist | cifar10:DIR | imagefolder:DIR | idx:DIR")
    p.add_argument("--epochs", type=POSITIVE, default=10, help="default %(default)s")
    p.add_argument("--out", required=True, type=output_dir, help="run directory: checkpoints and the "
                   "training log; --resume continues the run found there")
    p.add_argument("--batch-size", type=POSITIVE, default=128, help="images per step (default %(default)s; "
                   "under torchrun per process)")
    p.add_argument("--lr", type=float_range(0, lo_open=True), default=2.5e-3, help="peak learning rate "
                   "(default %(default)s)")
    p.add_argument("--weight-decay", type=float_range(0), default=5e-6, help="default %(default)s")
    p.add_argument("--label-smoothing", type=float_range(0, 1, hi_open=True), default=0.1,
                   help="of the teacher's cross-entropy (default %(default)s)")
    p.add_argument("--num-random", type=NON_NEGATIVE, default=2, help="random students per step")
    p.add_argument("--no-bi-teacher", action="store_true", help="teacher = largest subnet with binary weights")
    p.add_argument("--no-bi-transformation", action="store_true", help="ablation: train without "
                   "Bi-Transformation")
    p.add_argument("--no-weight-norm", action="store_true", help="ablation: train without weight "
                   "normalisation")
    p.add_argument("--weight-distill", type=float_range(0), nargs="?", const=0.1, default=0.0, metavar="COEF",
                   help="add COEF x the weight-distillation MSE (binary vs FP weight) to each student's loss "
                        "(flag alone: 0.1; default off, as in the official recipe)")
    p.add_argument("--seed", type=SEED, default=0, help="random seed (default 0)")
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in --out")
    p.add_argument("--checkpoint-every", type=NON_NEGATIVE, default=0, metavar="K", help="also checkpoint every K steps")
    p.add_argument("--max-steps-per-epoch", type=NON_NEGATIVE, default=0, help=MAX_STEPS_HELP)
    p.add_argument("--limit-train", type=POSITIVE, help="use only the first N training images")
    p.add_argument("--val-fraction", type=FRACTION, default=0.1, help="held out for the search's fitness "
                   "(in-memory sets; an image folder holds out 50 training images per class, as officially)")
    p.add_argument("--augment", action="store_true", help="the official training augmentation for in-memory "
                   "sets (CIFAR: pad 4, random crop, flip); image folders are always augmented "
                   "(RandomResizedCrop + flip)")
    add_device_args(p, training=True)
    p.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    p.add_argument("--strict-images", action="store_true", help="stop at the first unreadable image (naming "
                   "it) instead of skipping and counting it")
    p.add_argument("--threads", type=THREADS, help=THREADS_HELP)
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="recalibrate BN and report top-1/top-5 of subnets")
    p.add_argument("--checkpoint", required=True, help="supernet checkpoint (nasbnn-hw train)")
    p.add_argument("--arch", default="largest,smallest", help="FILE | largest | smallest | random:N, comma-separated")
    p.add_argument("--data", help="override the data recorded in the checkpoint")
    p.add_argument("--split", choices=("val", "test"), default="test", help="val: the held-out training "
                   "images the search scores on; test: the test set (default)")
    p.add_argument("--calib-batches", type=POSITIVE, default=10,
                   help="training batches that recalibrate BN before each arch is evaluated (>= 1)")
    add_device_args(p)
    p.add_argument("--calib-batch-size", type=POSITIVE, default=256, help="default %(default)s")
    p.add_argument("--seed", type=SEED, default=0, help="random seed: random:N archs, calibration batches "
                   "(default 0)")
    p.add_argument("--threads", type=THREADS, help=THREADS_HELP)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("finetune", help="fine-tune one subnet and save it as a static subnet file")
    p.add_argument("--checkpoint", required=True, help="supernet checkpoint (nasbnn-hw train)")
    p.add_argument("--arch", required=True, help="the subnet: arch JSON file, largest, smallest or random:N")
    p.add_argument("--out", required=True, type=output_file, help="static subnet file to write")
    p.add_argument("--force", action="store_true", help="replace an existing --out file")
    p.add_argument("--data", help="override the data recorded in the checkpoint")
    p.add_argument("--epochs", type=POSITIVE, default=25, help="default %(default)s")
    p.add_argument("--lr", type=float_range(0, lo_open=True), default=1e-5, help="default %(default)s")
    p.add_argument("--batch-size", type=POSITIVE, default=128, help="default %(default)s")
    p.add_argument("--max-steps-per-epoch", type=NON_NEGATIVE, default=0, help=MAX_STEPS_HELP)
    p.add_argument("--seed", type=SEED, default=0, help="random seed (default 0)")
    p.add_argument("--threads", type=THREADS, help=THREADS_HELP)
    p.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    add_device_args(p)
    p.add_argument("--compile", action="store_true", help=COMPILE_HELP)
    p.set_defaults(func=cmd_finetune)
