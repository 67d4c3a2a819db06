"""Small shared helpers: atomic file writes, progress bars."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterable


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
            if self.disable or now - self._log_last < self.mininterval:
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


def _same_file(a: Path, b: Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)   # hard links
    except OSError:
        return False


def check_outputs(outputs: dict[str, str | Path], inputs: Iterable[tuple[str, str | Path]] = (),
                  force: bool = False, error: type[Exception] | None = None) -> None:
    """Refuse output paths ({role: path}) that would destroy a file: one of the `inputs` ((role, path)
    pairs; None paths are skipped), another output, an existing directory, or (unless `force`) any existing
    file. Raises `error` (default NasBnnError) with one line naming the path. Call it before the work that
    produces the output starts."""
    if error is None:
        from nasbnn_hw.errors import NasBnnError as error
    seen = [(r, Path(p), False) for r, p in inputs if p is not None]
    for role, out in outputs.items():
        out = Path(out)
        if out.is_dir():
            raise error(f"output {role} {str(out)!r} is an existing directory; give a file path")
        if out.parent.exists() and not out.parent.is_dir():
            raise error(f"output {role} {str(out)!r}: {str(out.parent)!r} is not a directory")
        for other_role, other, is_output in seen:
            if _same_file(out, other):
                raise error(
                    f"output {role} {str(out)!r} would be the same file as the {other_role}; give an output path "
                    f"not ending in {out.suffix}" if is_output else
                    f"output {role} {str(out)!r} is the same file as the {other_role} {str(other)!r}; writing it "
                    f"would destroy that file (choose another output path)")
        if out.exists() and not force:
            raise error(f"output {role} {str(out)!r} exists already; pass --force to overwrite it")
        seen.append((role, out, True))
