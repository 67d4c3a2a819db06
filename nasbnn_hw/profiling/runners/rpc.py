"""RPCRunner: time kernel libraries through a TVM RPC server on the device (needed for GPU targets).

On the device: `python -m tvm.exec.rpc_server --host 127.0.0.1 --port 9090` (TVM runtime installed there),
reached through an SSH tunnel: the RPC server has no authentication (docs/devices.md).
Flow per kernel: upload → load_module → deterministic inputs → warm-up calls → time_evaluator. A lost or
unreachable server is retried with exponential backoff and reconnection, then `BoardUnavailable`.
"""
from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Sequence

from nasbnn_hw.profiling.runners.base import ArgSpec, ClosingRunner, Timing
from nasbnn_hw.profiling.runners.errors import BoardUnavailable, KernelError, RunnerError
from nasbnn_hw.profiling.runners.inputs import DEFAULT_SEED, input_arrays

log = logging.getLogger(__name__)


class RPCRunner(ClosingRunner):
    def __init__(self, profile, *, seed: int = DEFAULT_SEED):
        self.profile = profile
        self.device = profile.name
        self.host = profile.host
        self.port = profile.port or 9090
        self.seed = seed
        self.reconnects = 0
        self._remote = None
        self._sessions = 0
        self._uploaded: list[str] = []
        self._modules: dict = {}  # uploaded name -> module loaded in the current session

    def _connect(self):
        """`rpc.connect` within the profile's connect timeout. TVM's client has none: a server that accepts
        the TCP connection but never completes the handshake (its session process died, or a wrong service on
        the port) blocked it forever. The call runs in a daemon thread; past the timeout it is abandoned
        (the thread ends when the socket does) and the attempt fails like a refused connection."""
        import threading
        from tvm import rpc
        box: dict = {}

        def run():
            try:
                box["remote"] = rpc.connect(self.host, self.port,
                                            session_timeout=int(self.profile.timeout("command")) + 60)
            except Exception as e:  # noqa: BLE001 - handed to the caller's retry loop
                box["error"] = e

        t = threading.Thread(target=run, name=f"rpc-connect-{self.device}", daemon=True)
        t.start()
        t.join(self.profile.timeout("connect"))
        if t.is_alive():
            raise ConnectionError(f"no RPC handshake from {self.host}:{self.port} within "
                                  f"{self.profile.timeout('connect'):g}s (timeouts.connect)")
        if "error" in box:
            raise box["error"]
        return box["remote"]

    def _session(self):
        if self._remote is None:
            self._remote = self._connect()
            if self._sessions:
                self.reconnects += 1
            self._sessions += 1
            if self.profile.threads > 0 and self.profile.target["kind"] != "cuda":
                self._remote.get_function("runtime.config_threadpool")(1, self.profile.threads)
        return self._remote

    def _alive(self, error: Exception) -> bool:
        """Whether the session survived `error` (then the kernel is to blame, not the connection)."""
        if any(w in str(error) for w in ("kShutdown", "Connection", "connection", "Broken pipe", "Socket", "socket")):
            return False
        try:
            self._remote.listdir(".")     # a real round trip
            return True
        except Exception:  # noqa: BLE001 - any failure means the session is gone
            return False

    def time_library(self, lib_path: Path, args: Sequence[ArgSpec], *, warmup: int, repeat: int,
                     number: int = 1, return_outputs: bool = False) -> Timing:
        import tvm
        lib_path = Path(lib_path)
        if not lib_path.is_file():
            raise KernelError(f"kernel library {lib_path} does not exist")
        data = lib_path.read_bytes()
        name = f"nasbnn_{hashlib.sha256(data).hexdigest()[:16]}.so"
        arrays = input_arrays(args, self.seed)
        retries, delay, t0, last = self.profile.retries, self.profile.backoff, time.monotonic(), None
        for attempt in range(retries + 1):
            stage = "connect"
            try:
                remote = self._session()
                stage = "run"
                rlib = self._modules.get(name)
                if rlib is None:  # upload and load once per session (see `_load`)
                    rlib = self._modules[name] = self._load(remote, name, data)
                dev = remote.cuda(0) if self.profile.target["kind"] == "cuda" else remote.cpu(0)
                tensors = [tvm.runtime.tensor(a, dev) for a in arrays]
                fn = rlib["main"]
                for _ in range(warmup):
                    fn(*tensors)
                dev.sync()
                timer = rlib.time_evaluator("main", dev, number=number, repeat=repeat)
                samples = tuple(float(s) for s in timer(*tensors).results)
                outputs = None
                if return_outputs:
                    outputs = tuple(t.numpy() for t, a in zip(tensors, args) if a.is_output)
                return Timing(samples, outputs)
            except RunnerError:
                raise
            except Exception as e:  # noqa: BLE001 - TVM's RPC raises FFI errors of several types
                if stage == "run" and self._alive(e):
                    raise KernelError(f"device '{self.device}': kernel {lib_path.name} failed: {e}") from e
                last = e
                log.warning("%s: RPC attempt %d of %d failed: %s", self.device, attempt + 1, retries + 1, e)
                self._remote = None
                self._modules.clear()
            if attempt < retries:
                time.sleep(delay)
                delay = min(delay * 2, 60.0)
        raise BoardUnavailable(
            f"device '{self.device}' (TVM RPC {self.host}:{self.port}) unavailable: {retries + 1} attempts over "
            f"{time.monotonic() - t0:.0f}s (last: {str(last).strip().splitlines()[-1] if last else '-'}); "
            "measurements stored so far are kept, run again when the device is back to resume")

    def _load(self, remote, name: str, data: bytes):
        """Upload and load a library. Once per session and name (the name is its content's hash): uploading
        it again rewrote the file under the server's earlier dlopen of it, and the server's session process
        died in dlsym (SIGSEGV) after a dozen such loads while `tune` re-ran its candidates."""
        remote.upload(bytearray(data), target=name)
        self._uploaded.append(name)
        return remote.load_module(name)

    def close(self) -> None:
        if self._remote is not None:
            for name in self._uploaded:
                try:
                    self._remote.remove(name)
                except Exception:  # noqa: BLE001 - best effort; the server removes its temp dir anyway
                    pass
        self._uploaded.clear()
        self._modules.clear()
        self._remote = None
