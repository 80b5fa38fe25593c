"""`--engine ray` on a local Ray with two CPUs (started by the ``ray_local`` fixture) against
the local engine on the same data: the same report, statistics to rtol 1e-9."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from support.statistics_match import assert_statistics_match
from typer.testing import CliRunner

from bncheck.cli.app import app

pytest.importorskip("ray")

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_models"
ONNX = SAMPLES / "digits_cnn.onnx"
STATE_DICT = SAMPLES / "digits_cnn.pt"
ARCH = f"{SAMPLES / 'architectures.py'}:digits_cnn"
REFERENCE = SAMPLES / "data" / "digits" / "reference"
SHIFTED = SAMPLES / "data" / "digits" / "shifted"


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


#: the local engine merges the subsample's eval-mode moments from the per-sample moments of its
#: main pass (float32 per-sample means, merged in float64), Ray measures them again in batches
#: (float32 batch means): BN301's refinement movement, a difference of the two in channel
#: standard deviations, agrees to float32 rounding only
ABS_TOL = {".drift.train_eval.refinement_movement": 1e-6}


def differences(a, b, path="") -> list[str]:
    """Where two JSON reports differ (floats to rtol 1e-5: statistics and outputs of the two
    routes agree to float32 rounding, see statistics_match.py, and the figures derived from
    them a little less closely)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in differences(a.get(k), b.get(k), f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (u, v) in enumerate(zip(a, b, strict=True)) for d in differences(u, v, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float):
        return [] if math.isclose(a, b, rel_tol=1e-5, abs_tol=ABS_TOL.get(path, 1e-7)) else [f"{path}: {a} != {b}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def comparable(report: dict) -> dict:
    report = dict(report)
    report.pop("run", None)
    report["data"] = {k: v for k, v in report["data"].items() if k not in ("engine", "workers")}
    report["drift"] = {k: v for k, v in report["drift"].items() if k != "saved_stats"}
    return report


def arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as archive:
        return {k: archive[k] for k in archive.files if k != "__meta__"}


def both(tmp_path: Path, *args) -> tuple[dict, dict]:
    """The drift report and saved statistics of a local run and a Ray run with two actors."""
    local = run("drift", *args, "-f", "json", "--save-stats", tmp_path / "local.npz")
    on_ray = run("drift", *args, "-f", "json", "--save-stats", tmp_path / "ray.npz", "--engine", "ray", "--workers", "2")
    assert local.exit_code in (0, 1), local.output
    assert on_ray.exit_code == local.exit_code, on_ray.output
    a, b = json.loads(local.stdout), json.loads(on_ray.stdout)
    assert b["data"]["engine"] == {"name": "ray", "workers": 2}
    assert_statistics_match(arrays(tmp_path / "ray.npz"), arrays(tmp_path / "local.npz"))
    return a, b


def test_ray_report_equals_the_local_report_with_the_train_mode_analyses(ray_local, tmp_path):
    local, on_ray = both(tmp_path, ONNX, SHIFTED)
    assert differences(comparable(local), comparable(on_ray)) == []
    # the subsample analyses ran, on the same subsample
    assert on_ray["drift"]["small_batch"] and on_ray["drift"]["train_eval"]
    assert on_ray["drift"]["accuracy"] == local["drift"]["accuracy"]


def test_ray_workers_load_a_state_dict_with_its_architecture_and_honour_limit(ray_local, tmp_path):
    local, on_ray = both(tmp_path, STATE_DICT, REFERENCE, "--arch", ARCH, "--limit", "300", "--mismatch-samples", "64")
    assert on_ray["data"]["samples"] == local["data"]["samples"] == 300
    assert differences(comparable(local), comparable(on_ray)) == []


def test_ray_shards_merge_like_local_shards(ray_local, tmp_path):
    parts = []
    for k in (1, 2):
        part = tmp_path / f"p{k}.npz"
        result = run("drift", ONNX, REFERENCE, "--shard", f"{k}/2", "--save-stats", part, "--engine", "ray", "--mismatch-samples", "0", "-f", "json")
        assert result.exit_code == 0, result.output
        parts.append(part)
    assert run("merge", *parts, "--out", tmp_path / "merged.npz").exit_code == 0
    whole = tmp_path / "whole.npz"
    assert run("drift", ONNX, REFERENCE, "--save-stats", whole, "--mismatch-samples", "0", "-f", "json").exit_code == 0
    assert_statistics_match(arrays(tmp_path / "merged.npz"), arrays(whole))


def test_ray_reads_s3_like_the_local_folder(ray_local, s3_data, tmp_path):
    options = [x for key, value in s3_data["options"].items() for x in ("--storage-option", f"{key}={value}")]
    local = run("drift", ONNX, s3_data["local"]["images"], "-f", "json", "--save-stats", tmp_path / "local.npz")
    on_ray = run(
        "drift", ONNX, "s3://bncheck-data/images", "-f", "json", "--save-stats", tmp_path / "ray.npz",
        "--engine", "ray", "--workers", "2", *options,
    )  # fmt: skip
    assert on_ray.exit_code == local.exit_code, on_ray.output
    a, b = comparable(json.loads(local.stdout)), comparable(json.loads(on_ray.stdout))
    a["data"].pop("path")
    assert b["data"].pop("path") == "s3://bncheck-data/images"
    assert differences(a, b) == []
    assert_statistics_match(arrays(tmp_path / "ray.npz"), arrays(tmp_path / "local.npz"))


def test_errors_in_ray_workers_exit_2_with_the_local_message(ray_local, tmp_path):
    """An image of another size deep in DATA is found by a worker, not by the driver."""
    from PIL import Image

    data = tmp_path / "mixed"
    for i, image in enumerate(sorted(REFERENCE.rglob("*.png"))[:100]):
        target = data / image.parent.name / image.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(image.read_bytes())
        if i == 90:
            Image.new("L", (9, 9)).save(data / image.parent.name / "zz_odd.png")
    local = run("drift", ONNX, data)
    on_ray = run("drift", ONNX, data, "--engine", "ray", "--workers", "2")
    assert local.exit_code == on_ray.exit_code == 2
    assert "zz_odd.png" in local.output and "zz_odd.png" in on_ray.output
    assert "Traceback" not in on_ray.output and on_ray.output.count("\n") == 1


def test_ray_options_are_checked(ray_local):
    assert run("drift", ONNX, REFERENCE, "--engine", "ray", "--workers", "0").exit_code == 2
    wrong = run("drift", ONNX, REFERENCE, "--ray-address", "auto")
    assert wrong.exit_code == 2 and "--engine ray" in wrong.output


def test_recalibrate_exact_on_ray_writes_the_local_statistics(ray_local, tmp_path):
    """Every pass of the exact method (the train-mode start, the eval-mode refinements, the
    drift before and after) runs on the actors; the written running statistics are those of a
    local run."""
    import onnx
    from onnx import numpy_helper

    written = {}
    for engine in ("local", "ray"):
        out = tmp_path / f"{engine}.onnx"
        result = run("recalibrate", ONNX, SHIFTED, "--out", out, "--engine", engine, "--workers", "2", "-f", "json", "--holdout", "0")
        assert result.exit_code in (0, 1), result.output
        body = json.loads(result.stdout)
        assert body["recalibration"]["method"] == "exact" and body["recalibration"]["estimation_passes"] >= 2
        written[engine] = ({t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}, body)
    local, on_ray = written["local"][0], written["ray"][0]
    stats = [name for name in local if name.endswith(("running_mean", "running_var"))]
    assert stats
    for name in stats:
        # local runs the staged estimate, Ray the whole-model passes (its passes run in other
        # processes): both write what the written model's layers see to 1e-4 per channel
        np.testing.assert_allclose(on_ray[name], local[name], rtol=2e-4, atol=1e-7, err_msg=name)
    assert [p["mode"] for p in written["local"][1]["recalibration"]["passes"]][:1] == ["staged"]
    assert "staged" not in [p["mode"] for p in written["ray"][1]["recalibration"]["passes"]]
    refused = run("recalibrate", ONNX, SHIFTED, "--out", tmp_path / "ema.onnx", "--method", "ema", "--engine", "ray")
    assert refused.exit_code == 2 and "--engine local" in refused.output
    split = run("recalibrate", ONNX, SHIFTED, "--out", tmp_path / "split.onnx", "--engine", "ray", "--holdout", "0.2")
    assert split.exit_code == 2 and "--engine local" in split.output and not (tmp_path / "split.onnx").exists()
