"""Bad input at the boundary: every loader answers a random, truncated or mistyped file with the project's own
error, every CLI count and path is checked before work starts (one line on stderr, exit status 2), and a
killed run leaves nothing behind. The store's and the deployment files' cases are in test_store_safety.py
and test_deploy_safety.py."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import torch

from _fuzz import byte_variants, toml_dumps, value_variants
from device_profiles import load_profile_file
from nasbnn_hw.core.arch import Arch
from nasbnn_hw.nn.checkpoint import import_official_search, load_official_candidate, load_supernet, save_supernet
from nasbnn_hw.cli import main
from nasbnn_hw.errors import NasBnnError
from nasbnn_hw.core.sampling import largest
from nasbnn_hw.core.space import SearchSpace, get_space, load_space
from nasbnn_hw.nn.supernet import SuperBNN

REPO = Path(__file__).resolve().parents[1]
SMALL16 = get_space("small16")


def _only_own_errors(load, variants):
    """Call `load` on every variant: it may succeed or raise a NasBnnError, nothing else."""
    n_err = 0
    for what, v in variants:
        try:
            load(v)
        except NasBnnError as e:
            assert str(e) and "\n" not in str(e), f"{what}: a multi-line message: {e!r}"
            n_err += 1
        except Exception as e:  # noqa: BLE001 - the point of the test
            raise AssertionError(f"variant {what!r}: {type(e).__name__}: {e}") from e
    return n_err


def _cli(argv, capsys) -> tuple[int, str]:
    try:
        rc = main(argv)
    except SystemExit as e:           # argparse
        rc = e.code
    err = capsys.readouterr().err.strip()
    return rc, err


# --- CLI counts and paths --------------------------------------------------------------------------
@pytest.mark.parametrize("argv, needle", [
    (["train", "--out", "OUT", "--threads", "-1"], "--threads: -1 is not allowed"),
    (["train", "--out", "OUT", "--epochs", "0"], "--epochs: 0 is not allowed"),
    (["train", "--out", "OUT", "--val-fraction", "1.5"], "--val-fraction: 1.5 is not allowed"),
    (["train", "--out", "OUT", "--lr", "nan"], "--lr: nan is not allowed"),
    (["train", "--out", "FILE"], "is an existing file; expected a directory"),
    (["eval", "--checkpoint", "x", "--calib-batches", "0"], "--calib-batches: 0 is not allowed"),
    (["eval", "--checkpoint", "x", "--calib-batch-size", "0"], "--calib-batch-size: 0 is not allowed"),
    (["sample", "-n", "-1"], "-n: -1 is not allowed"),
    (["ops", "--space", "small16", "--arch", "random:-3"], "random:N with N from 1"),
    (["profile", "--store", "s.db", "--active", "--budget", "-1"], "--budget: -1 is not allowed"),
    (["profile", "--store", "s.db", "--active", "--budget", "4", "--round-size", "0"], "--round-size: 0"),
    (["search", "--checkpoint", "x", "--out", "OUT", "--budgets", "1ms,fast"], "'fast' is not a cost"),
    (["search", "--checkpoint", "x", "--out", "FILE"], "is an existing file"),
    (["search", "--checkpoint", "x", "--out", "OUT", "--population", "0"], "--population: 0"),
    (["fit", "--device", "local", "--store", "s.db", "--out", "DIR"], "is a directory; expected a file"),
    (["fit", "--device", "local", "--store", "s.db", "--out", "FILE"], "exists already; pass --force"),
    (["fit", "--device", "local", "--store", "FILE", "--out", "FILE", "--force"], "same file as the measurement store"),
    (["convert-official", "--checkpoint", "FILE", "--out", "OLD"], "exists already; pass --force"),
    (["convert-official", "--checkpoint", "FILE", "--out", "FILE", "--force"], "same file as the official"),
    (["import-official-search", "FILE", "--out", "OLD"], "exists already; pass --force"),
    (["import-official-search", "FILE", "--out", "FILE", "--force"], "same file as the official search"),
    (["finetune", "--checkpoint", "FILE", "--arch", "largest", "--out", "OLD"], "exists already; pass --force"),
    (["finetune", "--checkpoint", "FILE", "--arch", "largest", "--out", "FILE", "--force"],
     "same file as the supernet checkpoint"),
    (["fit", "--device", "local", "--store", "s.db", "--out", "OUT/x/p.json"], "does not exist"),
    (["compare", "--device", "local", "--store", "s.db", "--out", "OUT", "--remeasure", "-2"], "--remeasure: -2"),
    (["quickstart", "--threads", "0"], "--threads: 0 is not allowed"),
])
def test_bad_counts_and_paths_end_in_one_line_before_any_work(tmp_path, capsys, argv, needle):
    (tmp_path / "FILE").write_text("keep me\n")
    (tmp_path / "OLD").write_text("an earlier output\n")
    (tmp_path / "DIR").mkdir()
    argv = [a.replace("FILE", str(tmp_path / "FILE")).replace("DIR", str(tmp_path / "DIR"))
            .replace("OUT", str(tmp_path / "out")).replace("OLD", str(tmp_path / "OLD")) for a in argv]
    t0 = time.monotonic()
    rc, err = _cli(argv, capsys)
    assert rc == 2 and len(err.splitlines()) == 1 and needle in err, err
    assert time.monotonic() - t0 < 5, "refused only after doing work"
    assert (tmp_path / "FILE").read_text() == "keep me\n" and not (tmp_path / "out").exists()
    assert (tmp_path / "OLD").read_text() == "an earlier output\n"


def test_every_option_of_every_command_says_what_it_does(capsys):
    """`nasbnn-hw COMMAND --help` explains every option and argument, and renders (a stray % in a help
    text would make argparse fail there)."""
    import argparse

    from nasbnn_hw.cli import build_parser
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    bare = [f"{name} {'/'.join(a.option_strings) or a.dest}" for name, p in sub.choices.items()
            for a in p._actions if not a.help and not isinstance(a, argparse._SubParsersAction)]
    assert not bare, f"options without a help text: {bare}"
    for name in sub.choices:
        assert main([name, "--help"]) == 0
        assert "usage: nasbnn-hw " + name in capsys.readouterr().out


# --- space files -----------------------------------------------------------------------------------
def test_space_values_are_typed_bounded_and_keys_known(tmp_path):
    good = get_space("small16").to_dict()
    cases = {
        "resolution": (dict(good, resolution=16.0), "resolution=16.0 must be an integer"),
        "bool stride": (dict(good, stage=[dict(good["stage"][0], stride=True)] + good["stage"][1:]),
                        "stride=True not allowed"),
        "typo": ({**{k: v for k, v in good.items() if k != "num_classes"}, "num_clases": 10},
                 "unknown key 'num_clases'"),
        "huge": (dict(good, stage=[good["stage"][0], dict(good["stage"][1], channels=[10**9])] + good["stage"][2:]),
                 "integers from 1 to 8192"),
        "stage type": (dict(good, stage="abc"), "stage must be a list"),
        "name type": (dict(good, name=5), "name=5 must be a non-empty string"),
    }
    for what, (d, needle) in cases.items():
        p = tmp_path / f"{what.replace(' ', '_')}.toml"
        p.write_text(toml_dumps(d))
        with pytest.raises(NasBnnError, match=needle.replace("(", r"\(").replace("[", r"\[")):
            load_space(p)
    p = tmp_path / "good.toml"
    p.write_text(toml_dumps(good))
    assert load_space(p) == get_space("small16")


def test_space_loader_fuzz(tmp_path):
    good = get_space("small16").to_dict()
    p = tmp_path / "s.toml"

    def load(d):
        p.write_text(toml_dumps(d) if isinstance(d, dict) else json.dumps(d))
        load_space(p)
        SearchSpace.from_dict(d, source="fuzz")
    assert _only_own_errors(load, value_variants(good, random.Random(0), 300)) > 200
    raw = toml_dumps(good).encode()

    def load_bytes(b):
        p.write_bytes(b)
        load_space(p)
    _only_own_errors(load_bytes, byte_variants(raw, random.Random(1), 100))


# --- arch files, official candidates and official search files -------------------------------------
def test_arch_and_official_loaders_fuzz(tmp_path):
    arch = largest(SMALL16)
    good = arch.to_dict()
    p = tmp_path / "a.json"

    def load_arch(d):
        p.write_text(json.dumps(d))
        Arch.load(p)
    assert _only_own_errors(load_arch, value_variants(good, random.Random(2), 300)) > 100
    _only_own_errors(lambda b: (p.write_bytes(b), Arch.load(p)), byte_variants(json.dumps(good).encode(),
                                                                               random.Random(3), 60))
    rows = arch.to_official(SMALL16)
    c = tmp_path / "cand.json"
    _only_own_errors(lambda d: (c.write_text(json.dumps(d)), load_official_candidate(c, SMALL16)),
                     ((w, v["rows"] if isinstance(v, dict) and "rows" in v else v)   # mutate inside the rows
                      for w, v in value_variants({"rows": rows}, random.Random(4), 200)))
    t = tmp_path / "cand.pt"
    for bad in (torch.tensor([[0.5] * 6] * len(rows)), torch.zeros(3), "abc", [["a"] * 6] * len(rows), [None]):
        torch.save(bad, t)
        with pytest.raises(NasBnnError):
            load_official_candidate(t, SMALL16)
    info = tmp_path / "info.pth.tar"
    cand = tuple(tuple(r) for r in rows)
    good_info = {"vis_dict": {cand: {"acc": 60.0, "ops": 1.0}}, "pareto_global": {1: cand}}
    torch.save(good_info, info)
    assert import_official_search(info, SMALL16)[0].acc == 60.0
    for bad in ({"vis_dict": []}, {"vis_dict": {cand: {"acc": "high"}}}, {"vis_dict": {cand: {"acc": float("nan")}}},
                {"vis_dict": {("x",): {}}}, {"vis_dict": {cand: {}}, "pareto_global": [cand]}, []):
        torch.save(bad, info)
        with pytest.raises(NasBnnError):
            import_official_search(info, SMALL16)


# --- checkpoints -----------------------------------------------------------------------------------
class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_checkpoint_refusals_name_the_problem(tmp_path):
    cases = {
        "empty": (b"", "is empty"),
        "junk": (b"not a checkpoint" * 10, "not a (readable )?torch.save file"),
    }
    for name, (data, needle) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(NasBnnError, match=needle):
            load_supernet(tmp_path / name)
    torch.save({"w": _Evil()}, tmp_path / "evil")
    with pytest.raises(NasBnnError, match=r"arbitrary unpickling \((posix|os|nt)\.system\)"):
        load_supernet(tmp_path / "evil")
    good = tmp_path / "good.pt"
    save_supernet(good, SuperBNN(SMALL16))
    obj = torch.load(good, weights_only=True)
    for bad, needle in ((dict(obj, config="x"), "'config' is missing or malformed"),
                        ({k: v for k, v in obj.items() if k != "config"}, "'config' is missing"),
                        (dict(obj, state_dict=[1]), "'state_dict' is missing or not a dict of tensors"),
                        (dict(obj, config=dict(obj["config"], space={"name": "x"})), "missing key 'resolution'"),
                        (dict(obj, config=dict(obj["config"], space=dict(obj["config"]["space"], resolution="16"))),
                         "resolution='16' must be an integer")):
        torch.save(bad, tmp_path / "bad.pt")
        with pytest.raises(NasBnnError, match=needle):
            load_supernet(tmp_path / "bad.pt")
    _only_own_errors(lambda b: ((tmp_path / "f.pt").write_bytes(b), load_supernet(tmp_path / "f.pt")),
                     byte_variants(good.read_bytes(), random.Random(5), 40))


# --- device profiles -------------------------------------------------------------------------------
def test_device_profile_loader_fuzz(tmp_path):
    good = tomllib.loads((REPO / "device_profiles" / "rpi4.toml").read_text())
    p = tmp_path / "board.toml"
    assert _only_own_errors(lambda d: (p.write_text(toml_dumps(d) if isinstance(d, dict) else "x = ["),
                                       load_profile_file(p)),
                            value_variants(good, random.Random(6), 300)) > 100
    _only_own_errors(lambda b: (p.write_bytes(b), load_profile_file(p)),
                     byte_variants((REPO / "device_profiles" / "rpi4.toml").read_bytes(), random.Random(7), 60))


# --- search state ----------------------------------------------------------------------------------
def test_search_state_missing_or_mistyped_keys_are_one_error(tmp_path):
    from searchers import SearchError, run_search
    from searchers.synthetic import SyntheticAccuracy
    kw = dict(constraints=["ops <= 250K"], seed=7, checkpoint_dir=tmp_path / "ck",
              searcher_params=dict(population_size=8, generations=2, mutations=4, crossovers=4))
    run_search("small", SyntheticAccuracy("small", seed=3), **kw)
    state = tmp_path / "ck" / "search_state.json"
    good = json.loads(state.read_text())
    n = 0
    for what, d in value_variants({k: v for k, v in good.items() if k not in ("format", "fingerprint")},
                                  random.Random(8), 120):
        doc = {"format": good["format"], "fingerprint": good["fingerprint"], **d} if isinstance(d, dict) else d
        state.write_text(json.dumps(doc))
        try:
            run_search("small", SyntheticAccuracy("small", seed=3), **kw)
        except SearchError as e:
            assert "\n" not in str(e)
            n += 1
        except NasBnnError:
            n += 1
        except Exception as e:  # noqa: BLE001
            raise AssertionError(f"{what}: {type(e).__name__}: {e}") from e
    assert n > 30
    state.write_text(json.dumps({k: v for k, v in good.items() if k != "history"}))
    with pytest.raises(SearchError, match="lacks history"):
        run_search("small", SyntheticAccuracy("small", seed=3), **kw)


# --- training and evaluation -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "run"
    rc = main(["train", "--space", "small16", "--data", "digits", "--epochs", "1", "--max-steps-per-epoch", "1",
               "--batch-size", "8", "--out", str(out), "--quiet"])
    assert rc == 0
    return out


def test_resume_with_another_space_is_refused_and_checkpoint_kept(tiny_run, capsys):
    ck = tiny_run / "checkpoint.pt"
    before = ck.read_bytes()
    rc, err = _cli(["train", "--space", "small", "--data", "digits", "--epochs", "1", "--max-steps-per-epoch", "1",
                    "--batch-size", "8", "--out", str(tiny_run), "--resume", "--quiet"], capsys)
    assert rc == 2 and "holds space 'small16' at 16x16" in err and "'small' at 28x28" in err, err
    rc, err = _cli(["train", "--space", "small16", "--resolution", "32", "--data", "digits", "--epochs", "1",
                    "--batch-size", "8", "--out", str(tiny_run), "--resume", "--quiet"], capsys)
    assert rc == 2 and "at 32x32" in err, err
    assert ck.read_bytes() == before


def test_recalibration_without_batches_is_refused(tiny_run):
    from nasbnn_hw.data.sets import load_splits
    from nasbnn_hw.train.evaluate import calibration_batches, recalibrate_bn
    ck = load_supernet(tiny_run / "checkpoint.pt")
    splits = load_splits("digits", 16, 1, 0.1, None)
    with pytest.raises(NasBnnError, match="needs >= 1 batch"):
        calibration_batches(splits.train, 0, 16)
    with pytest.raises(NasBnnError, match="got no batches"):
        recalibrate_bn(ck.supernet, largest(SMALL16), [])


# --- a killed run leaves nothing behind ------------------------------------------------------------
_HOLD = """
import sys, time
from nasbnn_hw.cli import sigterm_unwinds
from nasbnn_hw.utils import WorkDir
sigterm_unwinds()
try:
    with WorkDir("nasbnn-profile-") as d:
        print(d, flush=True)
        time.sleep(60)
except KeyboardInterrupt:
    sys.exit(130)
"""


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_work_directory_of_a_killed_run_is_removed(tmp_path, sig):
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", _HOLD], env=env, stdout=subprocess.PIPE, text=True)
    work = Path(proc.stdout.readline().strip())
    assert work.is_dir() and work.parent == tmp_path
    proc.send_signal(sig)
    proc.wait(20)
    if sig == signal.SIGTERM:    # the CLI turns a kill into a normal unwinding
        assert proc.returncode == 130 and not work.exists()
    else:                        # SIGKILL: the next run sweeps it
        assert work.exists()
        subprocess.run([sys.executable, "-c", "from nasbnn_hw.utils import WorkDir\nWorkDir('nasbnn-profile-')"
                        ".cleanup()"], env=env, check=True)
        assert not work.exists()


# --- measurement stores ----------------------------------------------------------------------------
def test_store_loader_fuzz(tmp_path):
    from nasbnn_hw.profiling.store import Measurement, MeasurementStore
    good = tmp_path / "good.db"
    with MeasurementStore(good) as st:
        for i in range(40):
            st.add(Measurement("dev", "t", "0.27", "layer", f"k{i}", {"i": i}, 1e-3 * (i + 1), 1e-5, 3,
                               (1e-3, 1.1e-3, 0.9e-3), 0.0))
    data = good.read_bytes()
    p = tmp_path / "fuzz.db"

    def load(b):
        for suffix in ("-wal", "-shm"):
            Path(str(p) + suffix).unlink(missing_ok=True)
        p.write_bytes(b)
        with MeasurementStore(p, readonly=True) as st:
            st.summary()
            st.query(device="dev")
    assert _only_own_errors(load, byte_variants(data, random.Random(9), 80)) > 20


def test_progress_bars_in_a_log_redraw_at_most_every_30_s(monkeypatch):
    """Outside a terminal (a CI log, `> file`) every redraw of a bar stays in the file as text: the
    project's bars then redraw at most every 30 s; in a terminal they keep tqdm's own interval."""
    import io

    from nasbnn_hw.utils import LOG_PROGRESS_INTERVAL_S, progress_bar

    class Tty(io.StringIO):
        def isatty(self):
            return True
    for stream, interval in ((io.StringIO(), LOG_PROGRESS_INTERVAL_S), (Tty(), 0.1)):
        monkeypatch.setattr("sys.stderr", stream)
        with progress_bar(total=1000, desc="x", file=stream) as bar:
            assert bar.mininterval == interval
            for i in range(1000):
                bar.update(1)
                bar.set_postfix(step=i)          # tqdm forces a redraw here
                if i % 100 == 0:
                    bar.total += 1               # as the profiler does when an item gets more rounds
                    bar.refresh()
        with progress_bar(total=10, disable=True, file=stream) as bar:   # --quiet
            bar.set_postfix(step=1)
            bar.refresh()
        text = stream.getvalue()
        if interval == LOG_PROGRESS_INTERVAL_S:   # the first and the last line only, the last one complete
            assert text.count("x:") <= 3, text.count("x:")
            assert "step=999" in text and "1000/1010" in text
        else:
            assert text.count("x:") > 100
