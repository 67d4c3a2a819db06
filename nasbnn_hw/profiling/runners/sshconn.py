"""SSH connection settings and host-key policy for the SSH runner (paramiko).

Settings come from the device profile, completed by `~/.ssh/config` (HostName, User, Port, IdentityFile
of the profile's `host`, which may be an alias). Values written in the profile win. Authentication is by
key only: no agent, no guessing of key files, no passwords.

Host keys are checked against the profile's known_hosts file only. An unknown key is refused unless the
caller explicitly accepts new keys; then it is recorded (and its SHA256 fingerprint printed). A key that
differs from the recorded one is always refused.
"""
from __future__ import annotations

import base64
import getpass
import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import paramiko

from nasbnn_hw.profiling.runners.errors import DeviceSetupError, HostKeyError


@dataclass(frozen=True)
class SSHSettings:
    alias: str
    hostname: str
    port: int
    user: str
    identity_files: tuple[str, ...]
    known_hosts: Path

    @property
    def known_hosts_name(self) -> str:
        """The name this host has in known_hosts (OpenSSH writes `[host]:port` for ports other than 22)."""
        return self.hostname if self.port == 22 else f"[{self.hostname}]:{self.port}"

    def __str__(self) -> str:
        return f"{self.user}@{self.hostname}:{self.port}"


def resolve_ssh(profile) -> SSHSettings:
    opts: dict = {}
    cfg_path = Path(profile.ssh_config).expanduser() if profile.ssh_config else None
    if cfg_path and cfg_path.is_file():
        try:
            opts = paramiko.SSHConfig.from_path(str(cfg_path)).lookup(profile.host)
        except Exception as e:  # noqa: BLE001 - paramiko raises several parse errors
            raise DeviceSetupError(f"device '{profile.name}': cannot read SSH config {cfg_path}: {e}") from None
    hostname = opts.get("hostname", profile.host)
    try:
        port = profile.port or int(opts.get("port", 22))
    except ValueError:
        raise DeviceSetupError(f"device '{profile.name}': Port {opts.get('port')!r} in {cfg_path} is not a number") from None
    user = profile.user or opts.get("user") or getpass.getuser()
    ids = [profile.identity_file] if profile.identity_file else list(opts.get("identityfile", []))
    ids = [os.path.expanduser(i) for i in ids]
    if not ids:
        raise DeviceSetupError(f"device '{profile.name}': no SSH key; set identity_file in the profile or IdentityFile "
                          f"for Host {profile.host} in {profile.ssh_config} (key authentication only)")
    present = [i for i in ids if Path(i).is_file()]
    if not present:
        raise DeviceSetupError(f"device '{profile.name}': SSH key file {ids[0]} does not exist")
    return SSHSettings(profile.host, hostname, port, user, tuple(present),
                       Path(profile.known_hosts).expanduser())


def load_known_hosts(path: Path, into: paramiko.HostKeys) -> set[str]:
    """Add the plain entries of an OpenSSH known_hosts file to `into`; return the base64 blobs of keys
    marked `@revoked`. `@cert-authority` lines are skipped (certificates are not supported), as are
    lines paramiko cannot parse (other key types)."""
    revoked: set[str] = set()
    if not path.is_file():
        return revoked
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as e:
        raise DeviceSetupError(f"cannot read known_hosts file {path}: {e}") from None
    for n, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("@"):
            fields = line.split()
            if fields[0] == "@revoked" and len(fields) >= 4:
                revoked.add(fields[3])
            continue
        try:
            entry = paramiko.hostkeys.HostKeyEntry.from_line(line, n)
        except Exception:  # noqa: BLE001 - a malformed line is ignored, as OpenSSH does
            entry = None
        if entry is not None:
            for name in entry.hostnames:
                into.add(name, entry.key.get_name(), entry.key)
    return revoked


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's SHA256 fingerprint: `SHA256:` + unpadded base64 of the key blob's hash."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


class HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Refuse unknown host keys, or (accept_new) record them in known_hosts and say so."""

    def __init__(self, known_hosts: Path, accept_new: bool, notify: Callable[[str], None] | None = None):
        self.known_hosts = known_hosts
        self.accept_new = accept_new
        self.notify = notify or (lambda msg: print(msg, file=sys.stderr))

    revoked: set[str] = set()

    def missing_host_key(self, client, hostname, key):
        fp = fingerprint(key)
        if key.get_base64() in self.revoked:
            raise HostKeyError(f"host key of {hostname} ({key.get_name()} {fp}) is marked @revoked in "
                               f"{self.known_hosts}; refusing to connect")
        if not self.accept_new:
            raise HostKeyError(
                f"host key of {hostname} ({key.get_name()} {fp}) is not in {self.known_hosts}; refusing to "
                "connect. Compare it with `ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the board, then "
                "re-run with --accept-new-host-key (accept_new_host_key=True) to record it")
        self.known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        needs_newline = self.known_hosts.is_file() and not self.known_hosts.read_bytes().endswith(b"\n") \
            and self.known_hosts.stat().st_size > 0
        fd = os.open(self.known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a") as f:
            f.write(("\n" if needs_newline else "") + f"{hostname} {key.get_name()} {key.get_base64()}\n")
        client.get_host_keys().add(hostname, key.get_name(), key)
        self.notify(f"accepted new host key for {hostname}: {key.get_name()} {fp} (recorded in {self.known_hosts})")


def open_client(s: SSHSettings, *, timeout: float, accept_new: bool,
                notify: Callable[[str], None] | None = None) -> paramiko.SSHClient:
    """A connected, authenticated client; host-key and authentication problems raise RunnerErrors,
    network problems raise OSError / paramiko.SSHException (worth retrying)."""
    client = paramiko.SSHClient()
    revoked = load_known_hosts(s.known_hosts, client.get_host_keys())
    policy = HostKeyPolicy(s.known_hosts, accept_new, notify)
    policy.revoked = revoked
    client.set_missing_host_key_policy(policy)
    try:
        client.connect(s.hostname, s.port, username=s.user, key_filename=list(s.identity_files),
                       allow_agent=False, look_for_keys=False, timeout=timeout, banner_timeout=timeout,
                       auth_timeout=timeout, channel_timeout=timeout)
    except paramiko.BadHostKeyException as e:
        client.close()
        raise HostKeyError(
            f"host key of {s.known_hosts_name} CHANGED: it offers {e.key.get_name()} {fingerprint(e.key)}, "
            f"{s.known_hosts} has {fingerprint(e.expected_key)}; refusing to connect (a re-installed board or "
            f"someone in between). If the board was re-installed, remove the old key with "
            f"`ssh-keygen -R '{s.known_hosts_name}' -f {s.known_hosts}` and accept the new one") from None
    except paramiko.PasswordRequiredException:
        client.close()
        raise DeviceSetupError(f"SSH key {s.identity_files[0]} is encrypted; use a key without passphrase for "
                          "measurements (no agent is used)") from None
    except paramiko.AuthenticationException as e:
        client.close()
        raise DeviceSetupError(f"SSH key authentication as {s} failed ({e}); keys tried: "
                          f"{', '.join(s.identity_files)}") from None
    except BaseException:
        client.close()
        raise
    key = client.get_transport().get_remote_server_key()
    if key.get_base64() in revoked:      # listed as trusted too: @revoked wins, as in OpenSSH
        client.close()
        raise HostKeyError(f"host key of {s.known_hosts_name} ({key.get_name()} {fingerprint(key)}) is marked "
                           f"@revoked in {s.known_hosts}; refusing to connect")
    return client
