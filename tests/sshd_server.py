"""A real OpenSSH server for tests, on 127.0.0.1 or inside a network namespace, with fault injection.

Nothing under /etc/ssh is read or changed: each server has its own config, host key, authorized_keys and
pid file in a temporary directory. As root, sshd logs in a non-root user made for the tests (root's shell
start-up files can be slow); as another user, sshd runs unprivileged and logs in that user.
"""
from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"          # absolute: sshd re-executes itself
TEST_USER = "nasbnntest"


def have_sshd() -> bool:
    return Path(SSHD).is_file() and shutil.which("ssh-keygen") is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def keygen(path: Path, comment: str) -> Path:
    path.unlink(missing_ok=True)
    Path(str(path) + ".pub").unlink(missing_ok=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)], check=True)
    return path


def login_user() -> str:
    """The user tests log in as: a dedicated non-root user when root (created once), else ourselves."""
    if os.geteuid() != 0:
        return pwd.getpwuid(os.geteuid()).pw_name
    try:
        pwd.getpwnam(TEST_USER)
    except KeyError:
        subprocess.run(["useradd", "-m", "-s", "/bin/sh", TEST_USER], check=True)
    # '*': no password, but not locked ('!' would make sshd refuse the account with UsePAM no)
    subprocess.run(["usermod", "-p", "*", TEST_USER], check=True)
    return TEST_USER


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(Path(f"/proc/{d}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def user_pids(user: str, comm: str) -> list[int]:
    """PIDs of processes of `user` whose command name is `comm` (read from /proc)."""
    uid = pwd.getpwnam(user).pw_uid
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            if os.stat(f"/proc/{d}").st_uid == uid and Path(f"/proc/{d}/comm").read_text().strip() == comm:
                out.append(int(d))
        except OSError:
            continue
    return out


class SshServer:
    """One sshd. `crash()` = power loss (listener, sessions and their commands SIGKILLed), `freeze()` /
    `thaw()` = SIGSTOP / SIGCONT of all of them, `start()` again = reboot (same port and host key),
    `new_host_key()` = re-installed board."""

    def __init__(self, workdir: Path, client_pub: Path, user: str, host: str = "127.0.0.1",
                 netns: str | None = None, extra_config: str = "", sftp: bool = True):
        self.dir, self.user, self.host, self.netns = Path(workdir), user, host, netns
        self.port = free_port() if netns is None else 2222
        self.dir.chmod(0o755)
        self.host_key = keygen(self.dir / "host_ed25519", "test-host")
        self.authorized_keys = self.dir / "authorized_keys"
        shutil.copy(client_pub, self.authorized_keys)
        self.authorized_keys.chmod(0o644)
        self.log = self.dir / "sshd.log"
        self.config = self.dir / "sshd_config"
        self.config.write_text(f"""\
Port {self.port}
ListenAddress {self.host}
HostKey {self.host_key}
PidFile {self.dir / 'sshd.pid'}
AuthorizedKeysFile {self.authorized_keys}
StrictModes no
UsePAM no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
AllowUsers {user}
{"Subsystem sftp internal-sftp" if sftp else "# no SFTP subsystem"}
LogLevel VERBOSE
MaxStartups 100
{extra_config}
""")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 10.0) -> None:
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)    # privilege-separation dir
        cmd = [SSHD, "-D", "-e", "-f", str(self.config)]
        if self.netns:
            cmd = ["ip", "netns", "exec", self.netns] + cmd
        t0 = time.monotonic()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                                         start_new_session=True)
        while True:                                                # ready when the banner comes back
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                    if s.recv(64).startswith(b"SSH-2.0-"):
                        return
            except OSError:
                pass
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"sshd not ready: {self.log.read_text()[-2000:]}")
            time.sleep(0.02)

    def _signal_all(self, sig) -> None:
        if not self.proc or self.proc.poll() is not None:
            return
        for p in [self.proc.pid] + _descendants(self.proc.pid):
            try:
                os.kill(p, sig)
            except ProcessLookupError:
                pass

    def crash(self) -> None:
        self._signal_all(signal.SIGKILL)
        if self.proc:
            self.proc.wait(5)

    def freeze(self) -> None:
        self._signal_all(signal.SIGSTOP)

    def thaw(self) -> None:
        self._signal_all(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.thaw()
            self.crash()

    def new_host_key(self) -> None:
        """Replace the host key and restart (a re-installed board)."""
        self.stop()
        keygen(self.host_key, "test-host-2")
        self.start()

    def known_hosts_line(self) -> str:
        kind, b64 = Path(str(self.host_key) + ".pub").read_text().split()[:2]
        name = self.host if self.port == 22 else f"[{self.host}]:{self.port}"
        return f"{name} {kind} {b64}\n"
