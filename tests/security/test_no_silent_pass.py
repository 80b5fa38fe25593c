"""Item 3: no silent pass. Each input below used to give exit 0 ("PASSED") or the exit code of
a user's sys.exit; now each is exit 2 with one sentence naming the layer, key or callable."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from security.process import ROOT, bncheck

SAMPLES = ROOT / "sample_models"
ONNX = SAMPLES / "digits_cnn.onnx"
DATA = SAMPLES / "data" / "digits" / "reference.npz"


def one_sentence(result) -> str:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "unexpected" not in result.stderr, result.stderr
    return result.stderr


def test_data_that_overflows_inside_the_model_is_not_a_pass(tmp_path):
    np.save(tmp_path / "big.npy", np.full((64, 1, 8, 8), 3e38, np.float32))
    message = one_sentence(bncheck("drift", str(ONNX), "big.npy", "--mismatch-samples", "0", cwd=tmp_path))
    assert "/bn1/BatchNormalization" in message and "not finite" in message
    message = one_sentence(bncheck("recalibrate", str(ONNX), "big.npy", "--out", "r.onnx", cwd=tmp_path))
    assert not (tmp_path / "r.onnx").exists()


@pytest.fixture
def shards(tmp_path):
    """Two real shards (drift --shard 1/2 and 2/2 --save-stats) of a two-file DATA folder."""
    folder = tmp_path / "data"
    folder.mkdir()
    with np.load(DATA) as archive:
        x = archive["x"]
    np.save(folder / "a.npy", x[:270])
    np.save(folder / "b.npy", x[270:])
    for k in (1, 2):
        args = ["drift", str(ONNX), "data", "--shard", f"{k}/2", "--save-stats", f"p{k}.npz", "--mismatch-samples", "0"]
        assert bncheck(*args, cwd=tmp_path).returncode == 0
    return tmp_path / "p1.npz", tmp_path / "p2.npz"


def forge(shard: Path, edit) -> Path:
    """The shard rewritten with one field changed (what an attacker or a bad copy does)."""
    with np.load(shard, allow_pickle=False) as archive:
        members = {key: archive[key] for key in archive.files}
    edit(members)
    forged = shard.with_name("forged.npz")
    np.savez(forged, **members)
    return forged


LAYER = "/bn1/BatchNormalization"
FORGERIES = {
    "nan-mean": lambda m: m[f"{LAYER}/data_mean"].__setitem__(0, np.nan),
    "negative-m2": lambda m: m[f"{LAYER}/data_m2"].__setitem__(0, -5.0),
    "negative-count": lambda m: m.__setitem__(f"{LAYER}/data_count", np.array(-64)),
    "other-width": lambda m: m.update({f"{LAYER}/data_mean": np.zeros(17), f"{LAYER}/data_m2": np.ones(17)}),
    "huge-count": lambda m: m.__setitem__(f"{LAYER}/data_count", np.array(1e300)),
    "matrix-mean": lambda m: m.update({f"{LAYER}/data_mean": np.zeros((4, 4)), f"{LAYER}/data_m2": np.ones((4, 4))}),
    "negative-even-count": lambda m: m.__setitem__(f"{LAYER}/even_count", np.array(-64)),
}
#: the field a refusal must name, where it is not data_*
NAMED = {"negative-even-count": "even_count", "matrix-mean": "shape [4, 4]"}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_forged_shards_are_refused_by_drift_stats_and_merge(shards, forgery):
    first, second = shards
    forged = forge(second, FORGERIES[forgery])
    message = one_sentence(bncheck("drift", str(ONNX), "--stats", str(forged), cwd=forged.parent))
    assert LAYER in message and NAMED.get(forgery, "") in message
    merged = bncheck("merge", str(first), str(forged), "--out", "m.npz", cwd=forged.parent)
    assert LAYER in one_sentence(merged)
    assert not (forged.parent / "m.npz").exists()


META_FORGERIES = {
    "layers-not-a-list": lambda meta: meta.update(layers="x"),
    "channels-not-a-count": lambda meta: meta["layers"][0].update(channels=-16),
    "ranges-not-pairs": lambda meta: meta.update(ranges=[[0, "all"]]),
    "samples-not-a-count": lambda meta: meta.update(samples=[1]),
}


@pytest.mark.parametrize("forgery", sorted(META_FORGERIES))
def test_forged_shard_metadata_is_refused(shards, forgery):
    """The JSON beside the arrays: merge read it unchecked (TypeError, "please report it")."""

    def edit(members):
        meta = json.loads(str(members["__meta__"]))
        META_FORGERIES[forgery](meta)
        members["__meta__"] = np.array(json.dumps(meta))

    first, second = shards
    forged = forge(second, edit)
    for args in (["merge", str(first), str(forged), "--out", "m.npz"], ["drift", str(ONNX), "--stats", str(forged)]):
        assert "metadata" in one_sentence(bncheck(*args, cwd=forged.parent))
    assert not (forged.parent / "m.npz").exists()


@pytest.fixture
def state_dict():
    state = torch.load(SAMPLES / "digits_cnn.pt", weights_only=True)
    return dict(state.get("state_dict", state))


def test_a_state_dict_without_running_var_names_the_key(tmp_path, state_dict):
    state_dict.pop("bn1.running_var")
    torch.save(state_dict, tmp_path / "novar.pt")
    message = one_sentence(bncheck("audit", "novar.pt", cwd=tmp_path))
    assert "bn1.running_var" in message


def test_a_running_mean_of_another_length_names_the_key(tmp_path, state_dict):
    state_dict["bn1.running_mean"] = torch.zeros(17)
    torch.save(state_dict, tmp_path / "m17.pt")
    message = one_sentence(bncheck("audit", "m17.pt", cwd=tmp_path))
    assert "bn1.running_mean" in message and "17" in message


CALLABLES = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    MARKER = Path(__file__).with_name("marker")

    def factory():
        sys.exit(0)

    def factory3():
        sys.exit(3)

    def preprocess(path):
        sys.exit(0)

    if Path(__file__).with_name("exit-on-import").exists():
        sys.exit(0)
    """
)


@pytest.mark.parametrize("name", ["factory", "factory3"])
def test_an_arch_factory_that_exits_is_caught(tmp_path, name):
    (tmp_path / "user.py").write_text(CALLABLES)
    result = bncheck("drift", str(SAMPLES / "digits_cnn.pt"), str(DATA), "--arch", f"user.py:{name}", cwd=tmp_path)
    message = one_sentence(result)
    assert f"{name}()" in message and "sys.exit" in message


def test_a_preprocess_that_exits_is_caught(tmp_path):
    (tmp_path / "user.py").write_text(CALLABLES)
    images = tmp_path / "imgs"
    images.mkdir()
    (images / "a.png").write_bytes((SAMPLES / "data" / "digits").joinpath("reference.npz").read_bytes()[:0] or b"x")
    message = one_sentence(bncheck("drift", str(ONNX), str(images), "--preprocess", "user.py:preprocess", cwd=tmp_path))
    assert "user.py:preprocess" in message and "sys.exit" in message


def test_a_module_that_exits_on_import_is_caught(tmp_path):
    (tmp_path / "user.py").write_text(CALLABLES)
    (tmp_path / "exit-on-import").write_text("")
    message = one_sentence(bncheck("audit", str(SAMPLES / "digits_cnn.pt"), "--arch", "user.py:factory", cwd=tmp_path))
    assert "sys.exit" in message
