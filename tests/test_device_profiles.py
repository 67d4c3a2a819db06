"""Device profiles: shipped files load, user files and directories are found, bad values are named."""
from __future__ import annotations

import platform

import pytest

from device_profiles import (ENV_VAR, ProfileError, list_profiles, load_profile, normalize_arch,
                             validate_profile)
from nasbnn_hw.errors import NasBnnError

SHIPPED = {"local", "rpi4", "aarch64-generic", "jetson-orin"}


def test_shipped_profiles_load_and_make_tvm_targets():
    profiles = list_profiles()
    assert SHIPPED <= set(profiles)
    rpi = profiles["rpi4"]
    assert (rpi.runner, rpi.arch, rpi.cross_compiler) == ("ssh", "aarch64", "aarch64-linux-gnu-gcc")
    t = rpi.tvm_target()
    assert str(t.attrs["mcpu"]) == "cortex-a72" and "+neon" in [str(a) for a in t.attrs["mattr"]]
    local = profiles["local"]
    assert local.arch == normalize_arch(platform.machine()) and not local.is_cross
    assert local.target_dict()["mcpu"] not in ("native", "")        # resolved to the host CPU name
    jet = profiles["jetson-orin"]
    assert jet.runner == "tvm-rpc" and jet.arch == "aarch64"
    tj = jet.tvm_target()
    assert tj.kind.name == "cuda" and tj.host.kind.name == "llvm"
    assert load_profile("rpi4").target_key() == load_profile("rpi4").target_key()


def _write(d, name, text):
    p = d / f"{name}.toml"
    p.write_text(text)
    return p


GOOD = 'runner = "ssh"\nhost = "board"\ntarget = {kind = "llvm", mtriple = "aarch64-linux-gnu"}\n'


def test_user_directory_env_var_and_override(tmp_path, monkeypatch):
    d1, d2 = tmp_path / "a", tmp_path / "b"
    d1.mkdir()
    d2.mkdir()
    _write(d1, "myboard", GOOD)
    _write(d2, "rpi4", GOOD.replace('"board"', '"my-pi"'))        # replaces the shipped rpi4
    assert "myboard" not in list_profiles()
    assert load_profile("myboard", [d1]).host == "board"
    monkeypatch.setenv(ENV_VAR, str(d2))
    assert load_profile("rpi4").host == "my-pi"
    assert load_profile("rpi4", [d1]).host == "my-pi"
    assert load_profile(str(d1 / "myboard.toml")).name == "myboard"
    with pytest.raises(ProfileError, match="unknown device 'nope'.*rpi4"):
        load_profile("nope")
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "missing"))
    with pytest.raises(ProfileError, match="missing.*does not exist"):
        list_profiles()


@pytest.mark.parametrize("text, key, allowed", [
    (GOOD.replace('"ssh"', '"sshh"'), "runner", "local, ssh, tvm-rpc"),
    (GOOD + "threads = -1\n", "threads", "integer from 0"),
    (GOOD + "repeat = 0\n", "repeat", "integer from 1"),
    (GOOD + "rounds = 0\n", "rounds", "integer from 1"),
    (GOOD + "subnet_reference = 1\n", "subnet_reference", "true or false"),
    (GOOD + "reference = true\nprecision = 1.5\n", "precision", "fraction from 0"),
    (GOOD + "precision = 0.01\n", "precision", "needs reference = true"),
    (GOOD + "reference = true\nrounds = 20\nprecision = 0.01\nmax_rounds = 10\n", "max_rounds", "at least rounds"),
    (GOOD + 'port = "22"\n', "port", "integer"),
    (GOOD + "colour = 1\n", "colour", "known keys"),
    (GOOD.replace('"llvm"', '"opencl"'), "target.kind", "llvm, c, cuda"),
    (GOOD + 'timeouts = {connect = 0}\n', "timeouts.connect", "more than 0"),
    (GOOD + 'timeouts = {conect = 3}\n', "timeouts.conect", "connect, command, transfer"),
    (GOOD + 'exec_wrapper = "qemu-aarch64"\n', "exec_wrapper", "list"),
    (GOOD.replace("}", ', mattr = "neon"}'), "target.mattr", '["+neon"]'),
    ('runner = "local"\ntarget = {kind = "llvm", mtriple = "riscv64-linux-gnu"}\n', "target.mtriple", "runner 'local'"),
    ('runner = "ssh"\ntarget = {kind = "cuda"}\nhost_target = {kind = "llvm"}\nhost = "x"\n', "runner", "tvm-rpc"),
    # a remote path that would become an option of the first remote command (`find -delete ...`)
    (GOOD + 'remote_dir = "-delete"\n', "remote_dir", "absolute path"),
    (GOOD + 'remote_dir = "tmp/work"\n', "remote_dir", "absolute path"),
    (GOOD + 'remote_dir = "/tmp\\n-delete"\n', "remote_dir", "control characters"),
    (GOOD.replace('host = "', 'host = "-oProxyCommand=x\\n'), "host", "control characters"),
])
def test_bad_values_name_key_value_and_allowed(tmp_path, text, key, allowed):
    p = _write(tmp_path, "bad", text)
    with pytest.raises(ProfileError) as e:
        load_profile(p)
    msg = str(e.value)
    assert isinstance(e.value, NasBnnError) and "\n" not in msg
    assert str(p) in msg and f"'{key}'" in msg and allowed in msg


def test_missing_keys_and_bad_toml(tmp_path):
    with pytest.raises(ProfileError, match="'host' is missing"):
        load_profile(_write(tmp_path, "nohost", 'runner = "ssh"\ntarget = {kind = "llvm"}\n'))
    with pytest.raises(ProfileError, match="'target' is missing"):
        load_profile(_write(tmp_path, "notarget", 'runner = "local"\n'))
    with pytest.raises(ProfileError, match="'host_target' is missing"):
        load_profile(_write(tmp_path, "cuda", 'runner = "tvm-rpc"\nhost = "x"\ntarget = {kind = "cuda"}\n'))
    with pytest.raises(ProfileError, match="not valid TOML"):
        load_profile(_write(tmp_path, "broken", "runner = \n"))
    with pytest.raises(ProfileError, match="does not exist"):
        load_profile(tmp_path / "absent.toml")


def test_ssh_config_alias_is_honoured(tmp_path):
    from nasbnn_hw.profiling.runners.sshconn import resolve_ssh
    key = tmp_path / "id_test"
    key.write_text("not read here")
    cfg = tmp_path / "ssh_config"
    cfg.write_text(f"Host pi\n  HostName 192.0.2.7\n  User alice\n  Port 2200\n  IdentityFile {key}\n")
    prof = validate_profile({"runner": "ssh", "host": "pi", "ssh_config": str(cfg), "known_hosts": str(tmp_path / "kh"),
                             "target": {"kind": "llvm", "mtriple": "aarch64-linux-gnu"}}, "test", "pi")
    s = resolve_ssh(prof)
    assert (s.hostname, s.user, s.port, s.identity_files) == ("192.0.2.7", "alice", 2200, (str(key),))
    assert s.known_hosts_name == "[192.0.2.7]:2200"
    over = validate_profile({**prof.to_dict(), "user": "bob", "port": 22}, "test")
    s2 = resolve_ssh(over)                                       # the profile's own values win
    assert (s2.user, s2.port, s2.known_hosts_name) == ("bob", 22, "192.0.2.7")
    nokey = validate_profile({**prof.to_dict(), "host": "other"}, "test")
    with pytest.raises(NasBnnError, match="no SSH key"):
        resolve_ssh(nokey)


def test_inputs_are_deterministic_and_sane():
    import numpy as np
    from nasbnn_hw.profiling.runners.inputs import random_input
    a = random_input(0, (4, 5), "uint64")
    assert np.array_equal(a, random_input(0, (4, 5), "uint64")) and not np.array_equal(a, random_input(1, (4, 5), "uint64"))
    f = random_input(2, (1000,), "float32")
    assert np.all(np.isfinite(f)) and np.all((np.abs(f) >= 0.5) & (np.abs(f) < 1)) and (f < 0).any() and (f > 0).any()
    h = random_input(2, (1000,), "float16")
    assert np.all((np.abs(h) >= 0.5) & (np.abs(h) < 1))
    with pytest.raises(NasBnnError, match="not supported"):
        random_input(0, (2,), "complex64")


def test_get_runner_by_name_and_cli_errors(tmp_path, capsys):
    from nasbnn_hw.cli import main
    from nasbnn_hw.profiling.runners import get_runner
    from nasbnn_hw.profiling.runners.local import LocalRunner
    r = get_runner("local")
    assert isinstance(r, LocalRunner) and r.device == "local"
    _write(tmp_path, "bad", GOOD + "repeat = 0\n")
    assert main(["devices", "--devices-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'repeat' = 0" in err and "integer from 1" in err
    assert main(["devices", "check", "nope"]) == 2
    assert "unknown device 'nope'" in capsys.readouterr().err
    assert main(["devices", "check", "local"]) == 0
    assert "matches" in capsys.readouterr().out


def test_runner_errors_are_one_line():
    from nasbnn_hw.profiling.runners import BoardUnavailable, KernelError
    e = KernelError("kernel failed: line one\nline two\n\ttraceback...")
    assert str(e) == "kernel failed: line one line two traceback..." and isinstance(e, NasBnnError)
    assert len(str(BoardUnavailable("x" * 5000))) <= 1200
