"""Item 1: a model file never runs code without --trust-pickle.

Each case is a real sample model edited the way an attacker would (tests/security/crafted.py);
its payload writes a marker file. bncheck must refuse it (exit 2, one sentence naming
--trust-pickle) and the marker must never appear, for every command that loads a model.
"""

from __future__ import annotations

import pytest

from bncheck.backends.torch.pt2_inspect import unsafe_expression
from security import crafted
from security.process import ROOT, bncheck

DATA = ROOT / "sample_models" / "data" / "digits" / "reference.npz"


@pytest.mark.parametrize("attack", sorted(crafted.PT2_ATTACKS))
def test_crafted_pt2_is_refused_before_any_payload_runs(tmp_path, attack):
    marker = tmp_path / "marker"
    model = crafted.PT2_ATTACKS[attack](tmp_path / "evil.pt2", marker)
    result = bncheck("audit", str(model), "-f", "json", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert not marker.exists()
    assert "--trust-pickle" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("command", ["fold", "recalibrate", "drift"])
def test_fold_recalibrate_and_drift_refuse_a_pickled_weight(tmp_path, command):
    marker = tmp_path / "marker"
    model = crafted.pt2_pickled_weight(tmp_path / "evil.pt2", marker)
    args = {
        "fold": ["fold", str(model), "--out", str(tmp_path / "out.pt2")],
        "recalibrate": ["recalibrate", str(model), str(DATA), "--out", str(tmp_path / "out.pt2")],
        "drift": ["drift", str(model), str(DATA)],
    }[command]
    result = bncheck(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert not marker.exists()
    assert not (tmp_path / "out.pt2").exists()


def test_torchscript_that_writes_files_is_refused(tmp_path):
    marker = tmp_path / "marker"
    model = crafted.torchscript_from_file(tmp_path / "evil.ts", marker)
    result = bncheck("drift", str(model), str(DATA), "--mismatch-samples", "0", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert not marker.exists()
    assert "aten::from_file" in result.stderr and "--trust-pickle" in result.stderr


@pytest.mark.parametrize("command", ["audit", "drift"])
def test_plain_pickle_payload_is_refused_before_it_runs(tmp_path, command):
    """pickle.dump output named model.pt: refused as a plain pickle (not as a damaged file),
    and the payload runs only once the user passes --trust-pickle."""
    marker = tmp_path / "marker"
    model = tmp_path / "model.pt"
    model.write_bytes(crafted.payload_pickle(marker))
    args = [command, str(model), *([str(DATA)] if command == "drift" else [])]
    result = bncheck(*args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert not marker.exists()
    assert "plain Python pickle" in result.stderr and "--trust-pickle" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    bncheck(*args, "--trust-pickle", cwd=tmp_path)
    assert marker.exists()


def test_trust_pickle_is_what_lets_a_payload_run(tmp_path):
    """The check is the only thing in the way: with the flag, torch runs the payload (so the
    crafted file is a real attack, and the refusals above are not an accident of damage)."""
    marker = tmp_path / "marker"
    model = crafted.pt2_opaque_constant(tmp_path / "evil.pt2", marker)
    bncheck("audit", str(model), "--trust-pickle", cwd=tmp_path)
    assert marker.exists()


def test_genuine_archives_still_load(tmp_path):
    for name in ("digits_cnn.pt2", "digits_cnn.ts"):
        result = bncheck("audit", str(crafted.SAMPLES / name), "-q", cwd=tmp_path)
        assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    ("expression", "safe"),
    [
        ("Symbol('s77', positive=True, integer=True)", True),
        ("FloorDiv(s0, 2) + Max(s1, 3)*4", True),
        ("__import__('os').system('id')", False),
        ("eval(chr(95))", False),
        ("open", False),
        ("s0.__class__", False),
        ("Symbol('a b')", False),
    ],
)
def test_symbolic_size_grammar(expression, safe):
    assert (unsafe_expression(expression) is None) is safe
