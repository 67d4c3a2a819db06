import json
import random
import subprocess
import sys

import pytest

from nasbnn_hw import (Arch, ArchError, Block, SpaceError, count_ops, get_space, largest, load_space,
                       sample_in_range, sample_uniform, smallest, validate)
from nasbnn_hw.core.arch import is_valid
from nasbnn_hw.core.sampling import sample_widths


def test_official_ops_check_values():
    sp = get_space("imagenet")
    assert count_ops(largest(sp), sp).ops / 1e6 == pytest.approx(331.814248, abs=1e-6)
    assert count_ops(smallest(sp), sp).ops / 1e6 == pytest.approx(20.772760, abs=1e-6)


@pytest.mark.parametrize("name", ["imagenet", "small", "small16"])
def test_builtin_spaces_and_sampling_respect_nd(name):
    sp = get_space(name)
    rng = random.Random(1)
    for _ in range(200):
        a = sample_uniform(sp, rng)
        validate(a, sp)
        assert list(a.widths) == sorted(a.widths)
    validate(largest(sp), sp)
    validate(smallest(sp), sp)


def test_nd_width_sampling_is_uniform():
    choices = ((1, 2, 3),) * 3  # 10 non-decreasing sequences
    rng = random.Random(0)
    counts = {}
    for _ in range(20000):
        s = tuple(sample_widths(choices, rng))
        counts[s] = counts.get(s, 0) + 1
    assert len(counts) == 10
    assert max(counts.values()) / min(counts.values()) < 1.2


def test_json_and_official_roundtrip(tmp_path):
    sp = get_space("imagenet")
    a = sample_uniform(sp, random.Random(3))
    assert Arch.from_json(a.to_json()) == a
    a.save(tmp_path / "a.json")
    assert Arch.load(tmp_path / "a.json") == a
    rows = a.to_official(sp)
    assert len(rows) == 22 and all(len(r) == 6 for r in rows)
    assert sum(r[0] == -1 for r in rows) == 22 - sum(a.depths)
    assert Arch.from_official(rows, sp) == a


def test_validation_messages_name_field_value_and_choices():
    sp = get_space("imagenet")
    big = largest(sp)
    stages = [list(s) for s in big.stages]
    stages[2][1] = Block(100, 5, 1, 1)
    with pytest.raises(ArchError, match=r"stage 2 block 1: channels=100 not in allowed choices \[96, 128, 192\]"):
        validate(Arch(tuple(map(tuple, stages))), sp)
    stages = [list(s) for s in big.stages]
    stages[3][0] = Block(384, 7, 2, 1)
    with pytest.raises(ArchError, match=r"kernel=7 not in allowed choices \[3, 5\]"):
        validate(Arch(tuple(map(tuple, stages))), sp)
    stages = [list(s) for s in big.stages]
    stages[4] = stages[4][:5]
    with pytest.raises(ArchError, match=r"stage 4: depth=5 not in allowed choices \[8, 9\]"):
        validate(Arch(tuple(map(tuple, stages))), sp)
    # ND violation: a narrower block after a wider one
    stages = [list(s) for s in smallest(sp).stages]
    stages[2][0] = Block(192, 3, 2, 1)
    assert not is_valid(Arch(tuple(map(tuple, stages))), sp)
    with pytest.raises(ArchError, match="non-decreasing"):
        validate(Arch(tuple(map(tuple, stages))), sp)


def test_sample_in_cost_range():
    sp = get_space("imagenet")
    ops = lambda a: count_ops(a, sp).ops / 1e6
    rng = random.Random(0)
    for _ in range(10):
        assert 60 <= ops(sample_in_range(sp, ops, 60, 100, rng)) <= 100
    with pytest.raises(ArchError, match="spans about"):
        sample_in_range(sp, ops, 1, 2, rng, max_tries=50)


def test_space_file_errors(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("name = 'x'\nresolution = [")
    with pytest.raises(SpaceError, match="malformed TOML"):
        load_space(bad)
    bad.write_text("name='x'\nresolution=32\n[[stage]]\nchannels=[8]\ndepth=[1]\nkernel=[3]\ngroups1=[1]\n"
                   "groups2=[1]\nstride=3\n")
    with pytest.raises(SpaceError, match="stride=3 not allowed"):
        load_space(bad)
    with pytest.raises(SpaceError, match="unknown space 'nope'"):
        get_space("nope")
    # a custom space round-trips through TOML-like dicts
    sp = get_space("small")
    from nasbnn_hw.core.space import SearchSpace
    assert SearchSpace.from_dict(sp.to_dict()) == sp


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "nasbnn_hw.cli", *args], capture_output=True, text=True)


def test_cli_ops_and_bad_input(tmp_path):
    r = _cli("ops", "--space", "imagenet", "--arch", "largest")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ops_M"] == pytest.approx(331.814248)
    sp = get_space("imagenet")
    (tmp_path / "a.json").write_text(smallest(sp).to_json())
    r = _cli("ops", "--space", "imagenet", "--arch", str(tmp_path / "a.json"))
    assert json.loads(r.stdout)["ops_M"] == pytest.approx(20.772760)
    json.dump(smallest(sp).to_official(sp), open(tmp_path / "cand.json", "w"))
    r = _cli("ops", "--space", "imagenet", "--official-cand", str(tmp_path / "cand.json"))
    assert json.loads(r.stdout)["ops_M"] == pytest.approx(20.772760)
    for args, msg in [(("ops", "--space", "nope", "--arch", "largest"), "unknown space"),
                      (("ops", "--space", "small", "--arch", str(tmp_path / "a.json")), "stages")]:
        r = _cli(*args)
        assert r.returncode == 2
        assert msg in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
