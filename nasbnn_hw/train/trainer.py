"""Bi-Teacher supernet training (METHOD.md, "The three training strategies"), resumable and distributed.

Each step: the largest subnet with full-precision weights (binary activations) learns the labels
(label-smoothed cross-entropy) and becomes the soft target; the smallest and `num_random` random subnets
with binary weights learn it by distillation; gradients accumulate; one optimizer step. Every random choice
(data order, random subnets) derives from (seed, epoch, step), so a resumed run repeats an uninterrupted
one exactly and all ranks of a distributed run agree on the subnets.
"""
from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from nasbnn_hw.core.sampling import largest, sample_uniform, smallest
from nasbnn_hw.core.space import SearchSpace
from nasbnn_hw.data import iter_batches
from nasbnn_hw.data.sets import Splits
from nasbnn_hw.errors import NasBnnError
from nasbnn_hw.nn import fused
from nasbnn_hw.nn.binary_ops import DynamicBinaryConv2d, QuantStemConv
from nasbnn_hw.nn.checkpoint import load_supernet, safe_load, save_supernet
from nasbnn_hw.nn.supernet import SuperBNN
from nasbnn_hw.train.device import autocast, check_amp, grad_scaler, model_device, resolve_device, to_device

log = logging.getLogger("nasbnn_hw.train.trainer")


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 128          # global batch (split across ranks)
    lr: float = 2.5e-3
    weight_decay: float = 5e-6     # conv/linear weights only
    label_smoothing: float = 0.1
    num_random: int = 2
    bi_teacher: bool = True        # False: the teacher is the largest subnet with binary weights
    weight_norm: bool = True
    bi_transformation: bool = True
    weight_distill: float = 0.0    # METHOD.md's optional weight distillation (0.1 when on; off officially)
    seed: int = 0
    checkpoint_every: int = 0      # also checkpoint every K steps (0: only at epoch ends)
    max_steps_per_epoch: int = 0   # 0: the whole training split
    workers: int = 0               # DataLoader processes decoding a streamed (image folder) training set
    device: str = "cpu"            # auto | cpu | cuda[:N]
    amp: str = ""                  # "" (float32) | bf16 | fp16 (with a gradient scaler)
    channels_last: bool = False
    compile: bool = False          # TorchInductor-compiled element-wise chains (nasbnn_hw.nn.fused)

    def validate(self):
        for name in ("epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise NasBnnError(f"{name}={getattr(self, name)} must be >= 1")
        if self.lr <= 0:
            raise NasBnnError(f"lr={self.lr} must be > 0")
        if self.num_random < 0:
            raise NasBnnError(f"num_random={self.num_random} must be >= 0")
        if self.weight_distill < 0:
            raise NasBnnError(f"weight_distill={self.weight_distill} must be >= 0")


def _param_groups(net: SuperBNN, weight_decay: float):
    decay, no_decay = [], []
    for mod in net.modules():
        for name, p in mod.named_parameters(recurse=False):
            is_weight = name == "weight" and (isinstance(mod, (DynamicBinaryConv2d, QuantStemConv))
                                              or isinstance(mod, torch.nn.Linear))
            (decay if is_weight else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _adam(net: SuperBNN, lr: float, weight_decay: float) -> torch.optim.Adam:
    """Adam over the supernet; fused (one pass per parameter) on CPU and CUDA: 5x faster than the per-op
    loop on a 2-core CPU, the same update to float rounding. The supernet's 66 M parameters made the
    unfused update 5-6 % of an imagenet training step (torch.profiler)."""
    device = next(net.parameters()).device
    return torch.optim.Adam(_param_groups(net, weight_decay), lr=lr, fused=device.type in ("cpu", "cuda"))


def _world():
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class SupernetTrainer:
    def __init__(self, space: SearchSpace, data: Splits, cfg: TrainConfig, out_dir: str | Path,
                 progress: bool = True, data_config: dict | None = None):
        cfg.validate()
        self.data_config = data_config or {"source": None}
        self.space, self.data, self.cfg, self.out = space, data, cfg, Path(out_dir)
        self.rank, self.world = _world()
        if cfg.batch_size % self.world:
            raise NasBnnError(f"batch_size={cfg.batch_size} must be divisible by the number of processes {self.world}")
        torch.manual_seed(cfg.seed)
        self.device = resolve_device(cfg.device)
        self.amp = check_amp(cfg.amp, self.device)
        self.scaler = grad_scaler(self.device, self.amp)
        self.net = SuperBNN(space, cfg.weight_norm, cfg.bi_transformation).to(
            self.device, memory_format=torch.channels_last if cfg.channels_last else torch.preserve_format)
        fused.enable(self.net, cfg.compile)
        self.opt = _adam(self.net, cfg.lr, cfg.weight_decay)
        n = len(data.train) // cfg.batch_size
        self.steps_per_epoch = min(n, cfg.max_steps_per_epoch) if cfg.max_steps_per_epoch else n
        if self.steps_per_epoch < 1:
            raise NasBnnError(f"batch_size={cfg.batch_size} exceeds the {len(data.train)} training images")
        total = cfg.epochs * self.steps_per_epoch
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda t: 0.5 * (1.0 + math.cos(math.pi * min(t, total) / total)))
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self.history: list[dict] = []
        self.progress = progress and self.rank == 0
        self.largest, self.smallest = largest(space), smallest(space)
        if self.world > 1:  # identical initial weights on every rank
            for t in self.net.state_dict().values():
                dist.broadcast(t, 0)

    # -- checkpointing ----------------------------------------------------------------------------
    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    def save(self):
        if self.rank != 0:
            return
        save_supernet(self.checkpoint_path, self.net, train_config=asdict(self.cfg),
                      train_state={"epoch": self.epoch, "step_in_epoch": self.step_in_epoch,
                                   "global_step": self.global_step, "optimizer": self.opt.state_dict(),
                                   "scheduler": self.sched.state_dict()},
                      history=self.history, data_config=self.data_config)

    def resume(self) -> bool:
        if not self.checkpoint_path.exists():
            return False
        obj = safe_load(self.checkpoint_path)
        saved = obj.get("train_config", {})
        for key in ("batch_size", "epochs", "seed", "bi_teacher", "weight_norm", "bi_transformation", "num_random",
                    "weight_distill"):
            if key in saved and saved[key] != getattr(self.cfg, key):
                raise NasBnnError(f"cannot resume {self.checkpoint_path}: it was trained with {key}={saved[key]}, "
                                  f"this run asks for {getattr(self.cfg, key)}")
        ck = load_supernet(self.checkpoint_path)
        if ck.supernet.space.to_dict() != self.space.to_dict():
            old, new = ck.supernet.space, self.space
            raise NasBnnError(f"cannot resume {self.checkpoint_path}: it holds space '{old.name}' at "
                              f"{old.resolution}x{old.resolution}, this run asks for '{new.name}' at "
                              f"{new.resolution}x{new.resolution}; pass the checkpoint's --space/--resolution")
        self.net.load_state_dict(ck.supernet.state_dict())
        st = obj["train_state"]
        self.opt.load_state_dict(st["optimizer"])
        self.sched.load_state_dict(st["scheduler"])
        self.epoch, self.step_in_epoch, self.global_step = st["epoch"], st["step_in_epoch"], st["global_step"]
        self.history = list(obj.get("history", []))
        return True

    # -- one step ---------------------------------------------------------------------------------
    def _batch_indices(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.cfg.seed * 100003 + epoch)
        return torch.randperm(len(self.data.train), generator=g)

    def _students(self, step: int):
        rng = random.Random(f"{self.cfg.seed}-{step}")
        return [self.smallest] + [sample_uniform(self.space, rng) for _ in range(self.cfg.num_random)]

    def _sync_grads(self):
        if self.world == 1:
            return
        grads = [p.grad for p in self.net.parameters() if p.grad is not None]
        flat = torch.cat([g.flatten() for g in grads])
        dist.all_reduce(flat)
        flat /= self.world
        off = 0
        for g in grads:
            g.copy_(flat[off:off + g.numel()].view_as(g))
            off += g.numel()

    def train_step(self, x: torch.Tensor, y: torch.Tensor) -> dict:
        cfg, net = self.cfg, self.net
        net.train()
        self.opt.zero_grad(set_to_none=True)  # unused params skip the step: resume-exact
        x, y = to_device(x, self.device, cfg.channels_last), y.to(self.device)
        same = lambda t: t  # noqa: E731
        scale = self.scaler.scale if self.scaler is not None else same
        fp32 = (lambda t: t.float()) if self.amp else same   # losses in float32 under autocast only
        with autocast(self.device, self.amp):
            t_logits = net(x, self.largest, binary_weights=not cfg.bi_teacher)
            t_loss = F.cross_entropy(fp32(t_logits), y, label_smoothing=cfg.label_smoothing)
        scale(t_loss).backward()
        soft = F.softmax(fp32(t_logits.detach()), dim=1)
        kd_losses = []
        for arch in self._students(self.global_step):
            with autocast(self.device, self.amp):
                s_logits = net(x, arch, binary_weights=True)
                kd = F.kl_div(F.log_softmax(fp32(s_logits), dim=1), soft, reduction="batchmean")
                kd_losses.append(kd.item())
                if cfg.weight_distill:
                    kd = kd + cfg.weight_distill * net.weight_distill_loss(arch)
            scale(kd).backward()
        self._sync_grads()
        if self.scaler is not None:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.sched.step()
        return {"teacher_loss": t_loss.item(), "kd_loss": sum(kd_losses) / max(1, len(kd_losses)),
                "teacher_acc": (t_logits.argmax(1) == y).float().mean().item() * 100}

    # -- the loop ---------------------------------------------------------------------------------
    def fit(self, on_epoch_end=None) -> list[dict]:
        from nasbnn_hw.utils import progress_bar
        cfg, B = self.cfg, self.cfg.batch_size
        self.out.mkdir(parents=True, exist_ok=True)
        logf = open(self.out / "train.log", "a") if self.rank == 0 else None
        try:
            while self.epoch < cfg.epochs:
                perm = self._batch_indices(self.epoch)
                bar = progress_bar(total=self.steps_per_epoch, initial=self.step_in_epoch, disable=not self.progress,
                                   desc=f"epoch {self.epoch + 1}/{cfg.epochs}", unit="step")
                t0, agg = time.time(), []
                steps = [perm[s * B:(s + 1) * B][self.rank::self.world]
                         for s in range(self.step_in_epoch, self.steps_per_epoch)]
                for x, y in iter_batches(self.data.train, steps, self.epoch, workers=cfg.workers):
                    m = self.train_step(x, y)
                    self.step_in_epoch += 1
                    self.global_step += 1
                    agg.append(m)
                    bar.set_postfix(t_loss=f"{m['teacher_loss']:.3f}", kd=f"{m['kd_loss']:.3f}",
                                    t_acc=f"{m['teacher_acc']:.1f}", lr=f"{self.sched.get_last_lr()[0]:.2e}")
                    bar.update(1)
                    if cfg.checkpoint_every and self.global_step % cfg.checkpoint_every == 0:
                        self.save()
                bar.close()
                rec = {"epoch": self.epoch + 1, "steps": len(agg), "seconds": round(time.time() - t0, 2)}
                if agg:
                    for k in agg[0]:
                        rec[k] = sum(a[k] for a in agg) / len(agg)
                    rec["images_per_s"] = len(agg) * B / max(1e-9, rec["seconds"])
                self.epoch += 1
                self.step_in_epoch = 0
                if on_epoch_end is not None:
                    rec.update(on_epoch_end(self) or {})
                self.history.append(rec)
                self.save()
                if logf:
                    logf.write(json.dumps(rec) + "\n")
                    logf.flush()
                log.info("epoch %d: %s", rec["epoch"], rec)
        finally:
            if logf:
                logf.close()
        return self.history


def finetune(supernet: SuperBNN, arch, data: Splits, epochs: int = 25, lr: float = 1e-5, batch_size: int = 128,
             weight_decay: float = 5e-6, label_smoothing: float = 0.1, seed: int = 0, progress: bool = True,
             max_steps_per_epoch: int = 0, compile: bool = False):
    """Fine-tune one subnet (binary weights) inside its supernet copy, then extract it as a static module.
    Official defaults: lr 1e-5, 25 epochs. `compile`: the fused training forward (`TrainConfig.compile`)."""
    from nasbnn_hw.train.evaluate import accuracy
    from nasbnn_hw.utils import progress_bar
    from nasbnn_hw.nn.supernet import extract_subnet
    if epochs < 1 or lr <= 0:
        raise NasBnnError(f"epochs={epochs} must be >= 1 and lr={lr} > 0")
    opt = _adam(supernet, lr, weight_decay)
    n = len(data.train) // batch_size
    steps = min(n, max_steps_per_epoch) if max_steps_per_epoch else n
    if steps < 1:
        raise NasBnnError(f"batch_size={batch_size} exceeds the {len(data.train)} training images")
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs * steps)
    history = []
    was_fused = supernet.fused
    fused.enable(supernet, compile)
    for ep in range(epochs):
        supernet.train()
        perm = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(seed * 7919 + ep))
        losses = []
        for i in progress_bar(range(steps), desc=f"finetune {ep + 1}/{epochs}", disable=not progress, unit="step"):
            idx = perm[i * batch_size:(i + 1) * batch_size]
            opt.zero_grad()
            x, y = next(iter_batches(data.train, [idx], ep))
            x, y = x.to(model_device(supernet)), y.to(model_device(supernet))
            loss = F.cross_entropy(supernet(x, arch), y,
                                   label_smoothing=label_smoothing)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        rec = {"epoch": ep + 1, "loss": sum(losses) / len(losses),
               "val_top1": accuracy(supernet, data.val, arch=arch)["top1"]}
        history.append(rec)
    fused.enable(supernet, was_fused)
    return extract_subnet(supernet, arch), history
