"""SSHRunner: time kernel libraries on a board reached over SSH; the board needs only a C runtime.

Per session the runner makes a private work directory on the board (`mktemp -d`), uploads the C harness
(cross-compiled here for the board's architecture, cached), and for every kernel uploads the library,
sends the argument spec on standard input, reads per-repeat times from standard output and downloads the
outputs if asked. The directory is removed by `close()` (also after failures; use the runner as a context
manager), and directories left behind by lost connections are removed after the next reconnect.

Failures are sorted into: network/board trouble (lost connection, timeouts, frozen board) → reconnect and
retry with exponential backoff, then `BoardUnavailable`; a kernel that hangs while the board answers →
killed by PID (a command without a pty survives the channel's close), retried once, then `KernelTimeout`;
a kernel that fails → `KernelError`; host-key and authentication problems → raised at once, never retried.
Every remote shell word is quoted with `shlex.quote`.
"""
from __future__ import annotations

import io
import logging
import socket
import time
from pathlib import Path
from shlex import quote
from typing import Callable, Sequence

import numpy as np
import paramiko

from nasbnn_hw.profiling.runners.base import ArgSpec, ClosingRunner, Timing
from nasbnn_hw.profiling.runners.errors import BoardUnavailable, DeviceSetupError, KernelError, KernelTimeout, RunnerError
from nasbnn_hw.profiling.runners.harness import CFLAGS, HARNESS_NAME, LDFLAGS, build_harness, harness_source, parse_samples, write_spec
from nasbnn_hw.profiling.runners.inputs import DEFAULT_SEED, input_arrays
from nasbnn_hw.profiling.runners.sshconn import SSHSettings, open_client, resolve_ssh

log = logging.getLogger(__name__)
MAX_BACKOFF_S = 60.0


class _ConnectionLost(Exception):
    """The board stopped answering during a command (worth a reconnect)."""


class _Hung(Exception):
    """The remote command outlived its timeout but the board answered and it was killed."""


_TRANSIENT = (OSError, EOFError, paramiko.SSHException, _ConnectionLost)


class SSHRunner(ClosingRunner):
    def __init__(self, profile, *, accept_new_host_key: bool = False, seed: int = DEFAULT_SEED,
                 notify: Callable[[str], None] | None = None, settings: SSHSettings | None = None):
        self.profile = profile
        self.device = profile.name
        self.settings = settings or resolve_ssh(profile)
        self.accept_new_host_key = accept_new_host_key
        self.seed = seed
        self.notify = notify
        self.reconnects = 0          # sessions opened after the first one (for reports and tests)
        self._client: paramiko.SSHClient | None = None
        self._sftp: paramiko.SFTPClient | None = None
        self._workdir: str | None = None
        self._stale: list[tuple[str, int | None]] = []   # (work dir, pid) left by lost sessions
        self._harness: Path | None = None
        self._sessions = 0
        self._runs = 0               # run_program calls: each gets its own directory in the work directory

    # ---- public API ------------------------------------------------------------------------------------
    def time_library(self, lib_path: Path, args: Sequence[ArgSpec], *, warmup: int, repeat: int,
                     number: int = 1, return_outputs: bool = False) -> Timing:
        lib_path = Path(lib_path)
        if not lib_path.is_file():
            raise KernelError(f"kernel library {lib_path} does not exist")
        arrays = input_arrays(args, self.seed)
        given = {i: f"in{i}.bin" for i, a in enumerate(args) if a.data is not None and not a.is_output}
        spec = write_spec(args, lib="kernel.so", warmup=warmup, repeat=repeat, number=number,
                          threads=self.profile.threads, seed=self.seed, outputs=return_outputs, input_files=given)

        def attempt() -> Timing:
            wd = self._workdir
            self._put(lib_path.read_bytes(), f"{wd}/kernel.so")
            for i, name in given.items():
                self._put(arrays[i].tobytes(), f"{wd}/{name}")
            rc, out, err = self._exec(self._harness_command("-"), stdin=spec, timeout=self.profile.timeout("command"))
            if rc != 0:
                why = "was killed by a signal (crashed?)" if rc == -1 else f"exited with status {rc}"
                raise KernelError(f"device '{self.device}': kernel {lib_path.name} {why}: {err.strip()[-600:]}")
            samples = parse_samples(out)
            if len(samples) != repeat:
                raise KernelError(f"device '{self.device}': harness printed {len(samples)} samples, expected "
                                  f"{repeat}: {out[-300:]!r} {err[-300:]!r}")
            outputs = None
            if return_outputs:
                outputs = tuple(np.frombuffer(self._get(f"{wd}/out{i}.bin"), dtype=a.dtype).reshape(a.shape).copy()
                                for i, a in enumerate(args) if a.is_output)
            return Timing(samples, outputs)

        return self._with_retries(attempt, f"timing {lib_path.name}")

    def run_program(self, files: dict[str, bytes], executable: str, argv: Sequence[str], *,
                    fetch: Sequence[str] = (), source: str | None = None) -> tuple[str, dict[str, bytes]]:
        """Upload `files` ({relative name: bytes}; one directory level at most) to a fresh directory inside the
        session's work directory, run `executable` (one of them) with `argv` there and return its standard
        output and the `fetch`ed files; the directory is removed afterwards. If the uploaded program does not
        start on the board (typically an older C library than the cross toolchain's) and `source` names its
        C file among `files`, it is built there with the board's compiler. A non-zero exit is a `KernelError`
        carrying the program's last line on standard error. Every word reaching the shell is quoted."""
        tmo = self.profile.timeout("command")

        def attempt():
            self._runs += 1
            d = f"{self._workdir}/run{self._runs}"
            self._sftp.mkdir(d, 0o700)
            try:
                for sub in sorted({n.split("/")[0] for n in files if "/" in n}):
                    self._sftp.mkdir(f"{d}/{sub}", 0o700)
                for name, data in files.items():
                    self._put(data, f"{d}/{name}")
                self._sftp.chmod(f"{d}/{executable}", 0o700)
                rc, out, err = self._exec(self._program_command(d, executable, ["--info"]), timeout=tmo)
                if rc != 0 and source and not err.lstrip().startswith(executable.rsplit("/", 1)[-1] + ":"):
                    build = (f"cd -- {quote(d)} && CC=$(command -v cc || command -v gcc) && \"$CC\" "
                             + " ".join(quote(f) for f in CFLAGS) + f" -o {quote(executable)} {quote(source)} "
                             + " ".join(quote(f) for f in LDFLAGS))
                    rc_b, _, err_b = self._exec(build, timeout=tmo)
                    if rc_b != 0:
                        raise DeviceSetupError(
                            f"device '{self.device}': {executable} does not run on the board "
                            f"({' '.join(err.split())[-200:]}), and building it there failed "
                            f"({' '.join(err_b.split())[-200:] or 'no C compiler'})")
                    log.warning("%s: the cross-built %s does not run on the board; built it there", self.device,
                                executable)
                rc, out, err = self._exec(self._program_command(d, executable, argv), timeout=tmo)
                if rc != 0:
                    lines = [l for l in err.strip().splitlines() if l.strip() and not l.startswith("pid ")]
                    why = "was killed by a signal (crashed?)" if rc == -1 else f"exited with status {rc}"
                    raise KernelError(lines[-1] if lines else f"device '{self.device}': {executable} {why}")
                got = {name: self._get(f"{d}/{name}") for name in fetch}
                return "\n".join(l for l in out.splitlines() if not l.startswith("pid ")), got
            finally:
                try:
                    self._exec(f"rm -rf -- {quote(d)}", timeout=self.profile.timeout("connect"))
                except _TRANSIENT + (_Hung,):
                    pass   # the session's work directory goes with close()

        return self._with_retries(attempt, f"running {executable}")

    def run(self, command: str, timeout: float | None = None) -> tuple[int, str, str]:
        """Run a shell command (the caller quotes it) on the board, with the runner's retries."""
        return self._with_retries(lambda: self._exec(command, timeout=timeout or self.profile.timeout("command")),
                                  "running a command")

    def board_info(self) -> dict:
        """`uname -m` of the board and what the uploaded harness says about itself (proves it runs)."""
        def attempt():
            rc, machine, err = self._exec("uname -m", timeout=self.profile.timeout("connect"))
            rc2, info, err2 = self._exec(self._harness_command("--info"), timeout=self.profile.timeout("command"))
            if rc2 != 0:
                raise KernelError(f"device '{self.device}': the {self.profile.arch} harness does not run on the "
                                  f"board (status {rc2}): {err2.strip()[-400:]}")
            fields = dict(f.split("=", 1) for f in info.split() if "=" in f)
            return {"uname_m": machine.strip(), "harness_arch": fields.get("arch", ""), "cpus": fields.get("cpus", "")}
        return self._with_retries(attempt, "probing the board")

    def close(self) -> None:
        """Remove this session's work directories on the board (best effort) and disconnect."""
        if self._client is not None and self._client.get_transport() is not None \
                and self._client.get_transport().is_active():
            try:
                self._clean_stale()
                if self._workdir:
                    self._exec(f"rm -rf -- {quote(self._workdir)}", timeout=self.profile.timeout("connect"))
            except _TRANSIENT + (_Hung,) as e:
                log.warning("%s: could not remove the work directory %s on the board: %s", self.device,
                            self._workdir, e)
        self._drop(keep_workdir=False)

    # ---- session management --------------------------------------------------------------------------
    def _with_retries(self, fn: Callable, what: str):
        retries, delay = self.profile.retries, max(self.profile.backoff, 0.0)
        t0, last, hangs = time.monotonic(), None, 0
        for attempt in range(retries + 1):
            try:
                self._ensure_session()
                return fn()
            except _Hung as e:
                hangs += 1
                last = e
                log.warning("%s: %s: %s", self.device, what, e)
                if hangs >= 2 or attempt == retries:
                    raise KernelTimeout(f"device '{self.device}': {what}: {e}") from None
            except RunnerError:
                raise
            except _TRANSIENT as e:
                last = e
                log.warning("%s: %s failed (attempt %d of %d): %s", self.device, what, attempt + 1, retries + 1,
                            _describe(e))
                self._drop(keep_workdir=True)
            if attempt < retries:
                time.sleep(delay)
                delay = min(delay * 2, MAX_BACKOFF_S) if delay else 0.0
        raise BoardUnavailable(
            f"device '{self.device}' ({self.settings}) unavailable: {what} failed {retries + 1} times over "
            f"{time.monotonic() - t0:.0f}s (last: {_describe(last)}); measurements stored so far are kept, "
            "run again when the board is back to resume")

    def _ensure_session(self) -> None:
        if self._client is not None and self._client.get_transport() is not None \
                and self._client.get_transport().is_active() and self._workdir:
            return
        self._drop(keep_workdir=True)
        if self._harness is None:
            self._harness = build_harness(self.profile.arch, self.profile.cross_compiler)
        tmo = self.profile.timeout("connect")
        self._client = open_client(self.settings, timeout=tmo, accept_new=self.accept_new_host_key,
                                   notify=self.notify)
        transport = self._client.get_transport()
        transport.set_keepalive(max(1, int(tmo)))
        try:   # small request/response exchanges: without this, Nagle + delayed ACKs add ~40 ms to each
            transport.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except (OSError, AttributeError):
            pass
        try:
            self._sftp = self._client.open_sftp()
        except paramiko.SSHException as e:
            if not transport.is_active():
                raise
            # the server refused the subsystem: retrying cannot help
            raise DeviceSetupError(
                f"device '{self.device}' ({self.settings}): the SSH server offers no SFTP ({e}); nasbnn-hw "
                "uploads kernels over SFTP: enable it on the board (OpenSSH: `Subsystem sftp internal-sftp` "
                "in /etc/ssh/sshd_config; Dropbear: install an sftp-server)") from None
        self._sftp.get_channel().settimeout(self.profile.timeout("transfer"))
        if self._sessions:
            self.reconnects += 1
        self._sessions += 1
        self._clean_stale()
        base = self.profile.remote_dir.rstrip("/") or "/"
        if not base.startswith("/"):   # validated in the profile; never let a path become an option
            raise DeviceSetupError(f"device '{self.device}': remote_dir {self.profile.remote_dir!r} is not an "
                                   "absolute path")
        template = base.rstrip("/") + "/nasbnn-hw.XXXXXX"
        # orphans of sessions whose board went down for good (untouched for a day) go first; `base` is
        # absolute, so it cannot read as an option (BusyBox find takes no `--`)
        sweep = (f"find {quote(base)} -maxdepth 1 -type d -name 'nasbnn-hw.*' -user \"$(id -u)\" -mmin +1440 "
                 "-exec rm -rf {} + 2>/dev/null")
        rc, out, err = self._exec(f"{sweep}; mktemp -d -- {quote(template)}", timeout=tmo)
        if rc != 0 or not out.strip():
            raise DeviceSetupError(f"device '{self.device}': cannot create a work directory under "
                                   f"{self.profile.remote_dir!r} on the board: {err.strip()}")
        self._workdir = out.strip().splitlines()[-1]     # recorded first: removed even if the upload fails
        self._install_harness()

    def _install_harness(self) -> None:
        """Upload the cross-built harness and check that it runs and is built for the profile's CPU. If it
        does not run (typically a board whose C library is older than the cross toolchain's), build it on
        the board from source when the board has a C compiler."""
        wd, tmo = self._workdir, self.profile.timeout("command")
        self._put(self._harness.read_bytes(), f"{wd}/{HARNESS_NAME}")
        self._sftp.chmod(f"{wd}/{HARNESS_NAME}", 0o700)
        rc, out, err = self._exec(self._harness_command("--info"), timeout=tmo)
        if rc != 0:
            first = " ".join(err.split())[-300:]
            self._put(harness_source(), f"{wd}/harness.c")
            build = (f"cd -- {quote(wd)} && CC=$(command -v cc || command -v gcc) && \"$CC\" "
                     + " ".join(quote(f) for f in CFLAGS) + f" -o {HARNESS_NAME} harness.c "
                     + " ".join(quote(f) for f in LDFLAGS))
            rc_b, _, err_b = self._exec(build, timeout=tmo)
            if rc_b == 0:
                rc, out, err = self._exec(self._harness_command("--info"), timeout=tmo)
            if rc_b != 0 or rc != 0:
                raise DeviceSetupError(
                    f"device '{self.device}': the harness cross-built with "
                    f"{self.profile.cross_compiler or 'cc'} does not run on the board ({first}), and building it "
                    f"there failed ({' '.join((err_b if rc_b else err).split())[-300:] or 'no C compiler'}); "
                    "install gcc on the board or use a cross compiler matching its C library")
            log.warning("%s: the cross-built harness does not run on the board (%s); built it there instead",
                        self.device, first)
        arch = dict(f.split("=", 1) for f in out.split() if "=" in f).get("arch", "")
        if arch != self.profile.arch:
            raise DeviceSetupError(f"device '{self.device}': the board runs {arch or 'unknown'} code, the profile's "
                                   f"target is {self.profile.arch}")

    def _drop(self, keep_workdir: bool) -> None:
        if keep_workdir and self._workdir:
            self._stale.append((self._workdir, None))
        self._workdir = None
        for c in (self._sftp, self._client):
            try:
                if c is not None:
                    c.close()
            except Exception:  # noqa: BLE001 - closing a dead connection may raise anything
                pass
        self._sftp = self._client = None

    def _clean_stale(self) -> None:
        """Kill harnesses of lost sessions still running (only if their cwd is that session's directory:
        a PID may have been reused) and remove their directories."""
        if not self._stale:
            return
        parts = []
        for d, pid in self._stale:
            if pid:
                parts.append(f"(cd -- {quote(d)} 2>/dev/null && [ \"$(readlink /proc/{pid}/cwd)\" = \"$(pwd -P)\" ] "
                             f"&& kill -9 {pid}) 2>/dev/null")
            parts.append(f"rm -rf -- {quote(d)}")
        self._exec("; ".join(parts) + "; true", timeout=self.profile.timeout("connect"))
        self._stale.clear()

    # ---- remote primitives ------------------------------------------------------------------------------
    def _harness_command(self, arg: str) -> str:
        return self._program_command(self._workdir, HARNESS_NAME, [arg])

    def _program_command(self, cwd: str, executable: str, argv: Sequence[str]) -> str:
        wrapper = " ".join(quote(w) for w in self.profile.exec_wrapper)
        words = " ".join(quote(a) for a in argv)
        script = f"cd -- {quote(cwd)} && echo pid $$ && exec {wrapper} ./{quote(executable)} {words}"
        # through `sh -c`: $$ is then the PID the program gets by exec, whatever the login shell is
        return "sh -c " + quote(script)

    def _put(self, data: bytes, remote: str) -> None:
        self._sftp.putfo(io.BytesIO(data), remote, file_size=len(data), confirm=True)

    def _get(self, remote: str) -> bytes:
        buf = io.BytesIO()
        self._sftp.getfo(remote, buf)
        return buf.getvalue()

    def _exec(self, command: str, *, timeout: float, stdin: str | None = None) -> tuple[int, str, str]:
        transport = self._client.get_transport()
        chan = transport.open_session(timeout=self.profile.timeout("connect"))
        try:
            chan.settimeout(self.profile.timeout("connect"))
            chan.exec_command(command)
            if stdin:
                chan.sendall(stdin.encode())
            chan.shutdown_write()
            out, err = bytearray(), bytearray()
            deadline = time.monotonic() + timeout
            # until the exit status and the end of the stream: OpenSSH may send the status before the last
            # output (it is sent when the program is reaped, while its pipes may still hold data)
            while not (chan.status_event.is_set() and (chan.eof_received or chan.closed)):
                _drain(chan, out, err)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self._on_timeout(chan, bytes(out), command, timeout)
                wait = min(0.05, max(remaining, 0.001))
                if chan.eof_received or chan.closed:
                    chan.status_event.wait(wait)
                else:   # returns as soon as output (or the end of it) arrives
                    chan.settimeout(wait)
                    try:
                        out += chan.recv(65536)
                    except socket.timeout:
                        pass
            _drain(chan, out, err)
            rc = chan.exit_status
        finally:
            chan.close()
        if rc == -1 and not transport.is_active():
            raise _ConnectionLost("connection lost while a command ran")
        return rc, out.decode(errors="replace"), err.decode(errors="replace")

    def _on_timeout(self, chan, out: bytes, command: str, timeout: float):
        pid = None
        for line in out.decode(errors="replace").splitlines():
            if line.startswith("pid ") and line[4:].strip().isdigit():
                pid = int(line[4:])
                break
        chan.close()
        wd = self._workdir
        if pid is not None and wd:
            try:
                rc, _, _ = self._exec(f"cd -- {quote(wd)} && [ \"$(readlink /proc/{pid}/cwd)\" = \"$(pwd -P)\" ] "
                                      f"&& kill -9 {pid}", timeout=self.profile.timeout("connect"))
            except _TRANSIENT:
                rc = None
            if rc is not None:
                raise _Hung(f"no result within {timeout:.0f}s; killed the hung process (pid {pid}) on the board")
            self._stale.append((wd, pid))
            self._workdir = None
        raise _ConnectionLost(f"no answer within {timeout:.0f}s (board frozen or link down)")


def _drain(chan, out: bytearray, err: bytearray) -> None:
    while chan.recv_ready():
        out += chan.recv(65536)
    while chan.recv_stderr_ready():
        err += chan.recv_stderr(65536)


def _describe(e: BaseException | None) -> str:
    if e is None:
        return "no error recorded"
    if isinstance(e, (socket.timeout, TimeoutError)):
        return f"timed out ({e})" if str(e) else "timed out"
    return f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
