"""Throughput and memory of the streaming image pipeline (FolderData + TrainTransform + batches()).

Generates a synthetic ImageNet-like JPEG folder per image count (random smooth 500x375 images with noise,
quality 90, min(1000, n // 20) classes; `--pool` distinct files cycled, so generation is quick; once per
count, reused from --out), then, for each workers setting, in its own subprocess: decoded + augmented
images/s of TrainTransform(size) through `batches()` at batch 64 over `--measure` random images (after one
warm-up batch, which includes worker start-up), and the peak memory of the process tree (the process and
its loader workers): summed RSS and summed PSS sampled from /proc every 20 ms, plus ru_maxrss of the
process and of its largest child. Memory should not grow with the image count.
Run: `python benchmarks/data_pipeline.py [--images 2000 20000] [--workers 0 1 2] [--size 224] [--out DIR]`.
Files are read from the page cache (just written): this measures decoding, not the disk.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def make_folder(root: Path, n: int, pool: int, max_classes: int) -> Path:
    """root/train/<class>/<i>.jpg, n files; reused when already complete."""
    from PIL import Image
    marker = root / "complete.json"
    if marker.exists() and json.loads(marker.read_text()).get("images") == n:
        return root
    shutil.rmtree(root, ignore_errors=True)
    classes = min(max_classes, max(1, n // 20))
    rng = np.random.default_rng(n)
    blobs = []
    tmp = root / "blob.jpg"
    root.mkdir(parents=True)
    for _ in range(min(pool, n)):
        low = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)).resize((500, 375), Image.BICUBIC)
        a = np.asarray(low, dtype=np.int16) + rng.normal(0, 12, (375, 500, 3)).astype(np.int16)
        Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).save(tmp, quality=90)
        blobs.append(tmp.read_bytes())
    tmp.unlink()
    for c in range(classes):
        (root / "train" / f"n{c:05d}").mkdir(parents=True)
    for i in range(n):
        (root / "train" / f"n{i % classes:05d}" / f"{i:07d}.jpg").write_bytes(blobs[i % len(blobs)])
    marker.write_text(json.dumps({"images": n, "classes": classes, "mean_kb": sum(map(len, blobs)) / len(blobs) / 1024}))
    return root


def _tree_pids(root_pid: int) -> list[int]:
    parent: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = open(f"/proc/{d}/stat").read()
                parent[int(d)] = int(stat.rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [root_pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += [c for c, pp in parent.items() if pp == p]
    return out


def _mem_kb(pid: int) -> tuple[int, int]:
    rss = pss = 0
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
        for line in open(f"/proc/{pid}/smaps_rollup"):
            if line.startswith("Pss:"):
                pss = int(line.split()[1])
    except (OSError, ValueError):
        pass
    return rss, pss


class TreeMemory(threading.Thread):
    """Samples the summed RSS and PSS (kB) of this process and its descendants; keeps the peaks."""

    def __init__(self, interval: float = 0.02):
        super().__init__(daemon=True)
        self.interval, self.peak_rss, self.peak_pss, self.max_procs = interval, 0, 0, 0
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            pids = _tree_pids(os.getpid())
            mem = [_mem_kb(p) for p in pids]
            self.peak_rss = max(self.peak_rss, sum(m[0] for m in mem))
            self.peak_pss = max(self.peak_pss, sum(m[1] for m in mem))
            self.max_procs = max(self.max_procs, len(pids))
            self._halt.wait(self.interval)

    def stop(self):
        self._halt.set()
        self.join()


def child(args) -> None:
    """One measurement, in its own process: prints one JSON line."""
    import torch
    from nasbnn_hw.data.folder import FolderData, batches, scan_folder
    from nasbnn_hw.data.transforms import TrainTransform
    mem = TreeMemory()
    mem.start()
    t0 = time.perf_counter()
    info = scan_folder(Path(args.child))
    ds = FolderData(info["train"], info["classes"], args.size, 3, TrainTransform(args.size))
    t_scan = time.perf_counter() - t0
    n = len(ds)
    workers = args.workers[0]
    order = np.resize(np.random.default_rng(0).permutation(n), max(args.measure, 2 * args.batch)).tolist()
    lists = [order[i:i + args.batch] for i in range(0, len(order), args.batch)]
    t0 = time.perf_counter()
    count, t_first, check = 0, None, 0.0
    for x, y in batches(ds, lists, epoch=0, workers=workers):
        count += len(y)
        check += float(x[:, :, 0, 0].sum())
        if t_first is None:
            t_first = time.perf_counter()
            first = len(y)
    t_end = time.perf_counter()
    mem.stop()
    assert x.shape[1:] == (3, args.size, args.size) and x.dtype == torch.float32
    print(json.dumps({
        "images": n, "classes": len(info["classes"]), "workers": workers, "measured": count,
        "img_per_s": (count - first) / (t_end - t_first), "first_batch_s": t_first - t0, "scan_s": t_scan,
        "peak_tree_rss_mb": mem.peak_rss / 1024, "peak_tree_pss_mb": mem.peak_pss / 1024, "procs": mem.max_procs,
        "ru_maxrss_self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "ru_maxrss_children_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
        "skipped": len(ds.skipped)}))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, nargs="+", default=[2000, 20000])
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--measure", type=int, default=384, help="images decoded per measurement")
    p.add_argument("--classes", type=int, default=1000, help="at most this many classes")
    p.add_argument("--pool", type=int, default=256, help="distinct JPEG files per folder (cycled)")
    p.add_argument("--out", type=Path, default=None, help="folder for the generated images (kept; default: "
                                                          "a temporary folder, removed at the end)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(args)
    out = args.out or Path(tempfile.mkdtemp(prefix="nasbnn_data_bench_"))
    results = []
    try:
        for n in args.images:
            t0 = time.perf_counter()
            root = make_folder(out / f"jpeg_{n}", n, args.pool, args.classes)
            meta = json.loads((root / "complete.json").read_text())
            print(f"# folder of {n} JPEGs ({meta['classes']} classes, {meta['mean_kb']:.0f} kB mean) ready in "
                  f"{time.perf_counter() - t0:.1f} s", file=sys.stderr)
            for w in args.workers:
                cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(root / "train"),
                       "--workers", str(w), "--size", str(args.size), "--batch", str(args.batch),
                       "--measure", str(args.measure)]
                r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
                if r.returncode != 0:
                    sys.exit(f"measurement failed (images={n}, workers={w}):\n{r.stderr}")
                res = json.loads(r.stdout.strip().splitlines()[-1])
                res["mean_kb"] = meta["mean_kb"]
                results.append(res)
                print(f"# images={n} workers={w}: {res['img_per_s']:.1f} img/s", file=sys.stderr)
    finally:
        if args.out is None:
            shutil.rmtree(out, ignore_errors=True)
    print(f"\nCPU: {cpu_name()} ({os.cpu_count()} logical CPUs), TrainTransform({args.size}), batch {args.batch}\n")
    print("| images | classes | workers | img/s | first batch s | peak tree RSS MB | peak tree PSS MB | "
          "ru_maxrss self / child MB |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['images']} | {r['classes']} | {r['workers']} | {r['img_per_s']:.1f} | {r['first_batch_s']:.2f} | "
              f"{r['peak_tree_rss_mb']:.0f} | {r['peak_tree_pss_mb']:.0f} | "
              f"{r['ru_maxrss_self_mb']:.0f} / {r['ru_maxrss_children_mb']:.0f} |")
    print(json.dumps({"benchmark": "data_pipeline", "cpu": cpu_name(), "size": args.size, "batch": args.batch,
                      "results": results}))


if __name__ == "__main__":
    main()
