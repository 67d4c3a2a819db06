"""Small shared helpers: atomic file writes, progress bars."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path


# A progress bar written to a file or a CI log (stderr not a terminal) redraws at most this often: a
# terminal shows every update in place, a log keeps each redraw as text (125 kB of them per quickstart).
LOG_PROGRESS_INTERVAL_S = 30.0


def progress_bar(iterable=None, **kw):
    """tqdm with this project's defaults: dynamic width; outside a terminal, a line every 30 s at most, the
    redraws that tqdm forces (`set_postfix`, `refresh` after a change of `total`) included; the last state is
    still written when the bar closes."""
    import sys
    import time

    from tqdm import tqdm

    class LogBar(tqdm):
        _log_last = -float("inf")

        def refresh(self, nolock=False, lock_args=None):
            now = time.monotonic()
            if now - self._log_last < self.mininterval:
                return False
            self._log_last = now
            return super().refresh(nolock=nolock, lock_args=lock_args)

    kw.setdefault("dynamic_ncols", True)
    stream = kw.get("file") or sys.stderr
    if not stream.isatty():
        kw.setdefault("mininterval", LOG_PROGRESS_INTERVAL_S)
        return LogBar(iterable, **kw)
    return tqdm(iterable, **kw)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` so that a kill at any moment leaves either the old or the new file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj, path: str | Path) -> None:
    import io

    import torch
    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


OWNER_FILE = ".owner-pid"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:   # alive, someone else's
        return True
    return True


def sweep_orphans(prefix: str, base: str | Path | None = None) -> int:
    """Remove work directories `prefix*` under `base` (default: the temp dir) left by a killed process of
    this user: those whose owner PID (in `OWNER_FILE`) no longer runs. Returns how many were removed."""
    import shutil
    base = Path(base or tempfile.gettempdir())
    n = 0
    try:
        cands = [p for p in base.iterdir() if p.name.startswith(prefix) and p.is_dir() and not p.is_symlink()]
    except OSError:
        return 0
    for p in cands:
        try:
            if p.stat().st_uid != os.getuid():
                continue
            pid = int((p / OWNER_FILE).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            continue              # not ours, or being set up right now
        if pid != os.getpid() and not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True)
            n += 1
    return n


class WorkDir(tempfile.TemporaryDirectory):
    """A temporary directory that records its owner's PID, so that the next run removes it if this process
    is killed before it could (`sweep_orphans`, done on creation). Removed on exit like TemporaryDirectory;
    the CLI turns SIGTERM into a normal exit, so only SIGKILL leaves one behind until the next run."""

    def __init__(self, prefix: str, dir: str | Path | None = None):
        sweep_orphans(prefix, dir)
        super().__init__(prefix=prefix, dir=dir)
        Path(self.name, OWNER_FILE).write_text(f"{os.getpid()}\n")
