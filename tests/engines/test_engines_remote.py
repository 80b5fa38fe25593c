"""DATA at an s3:// URL, read through fsspec/s3fs from a real S3 API (moto's server on
loopback, see conftest.py), against the same files in a local folder."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest
from support.statistics_match import assert_statistics_match
from typer.testing import CliRunner

from bncheck.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_models"
DIGITS_ONNX = SAMPLES / "digits_cnn.onnx"
CANCER_ONNX = SAMPLES / "cancer_mlp.onnx"
BUCKET = "s3://bncheck-data"


def run(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def storage(s3) -> list[str]:
    out = []
    for key, value in s3["options"].items():
        out += ["--storage-option", f"{key}={value}"]
    return out


def differences(a, b, path="") -> list[str]:
    """Where two JSON reports differ (floats to rtol 1e-9)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return [d for k in sorted(set(a) | set(b)) for d in differences(a.get(k), b.get(k), f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (u, v) in enumerate(zip(a, b, strict=True)) for d in differences(u, v, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float):
        return [] if math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12) else [f"{path}: {a} != {b}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def comparable(report: dict) -> dict:
    report = dict(report)
    report.pop("run", None)
    report["data"] = {k: v for k, v in report["data"].items() if k not in ("path",)}
    report["drift"] = {k: v for k, v in report["drift"].items() if k != "saved_stats"}
    return report


def arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as archive:
        return {k: archive[k] for k in archive.files if k != "__meta__"}


@pytest.mark.parametrize(
    "kind,model,extra",
    [("images", DIGITS_ONNX, []), ("arrays", DIGITS_ONNX, []), ("table", CANCER_ONNX, [])],
)
def test_s3_run_equals_the_local_folder_run(s3_data, tmp_path, kind, model, extra):
    local = s3_data["local"][kind]
    url = f"{BUCKET}/{kind}" if kind != "table" else f"{BUCKET}/table/table.csv"
    here = run("drift", model, local, "-f", "json", "--save-stats", tmp_path / "local.npz", *extra)
    there = run("drift", model, url, "-f", "json", "--save-stats", tmp_path / "s3.npz", *storage(s3_data), *extra)
    assert here.exit_code in (0, 1), here.output
    assert there.exit_code == here.exit_code, there.output
    a, b = json.loads(here.stdout), json.loads(there.stdout)
    assert b["data"]["path"] == url
    assert differences(comparable(a), comparable(b)) == []
    want, got = arrays(tmp_path / "local.npz"), arrays(tmp_path / "s3.npz")
    assert set(want) == set(got)
    for key in want:  # the same bytes, the same batches: the same statistics
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_s3_images_keep_class_folder_labels_and_stage_nothing_behind(s3_data, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where blocks are copied
    result = run("drift", DIGITS_ONNX, f"{BUCKET}/images", "-f", "json", *storage(s3_data))
    assert result.exit_code in (0, 1), result.output
    body = json.loads(result.stdout)
    assert body["data"]["labels"]["source"] == "folders" and body["drift"]["accuracy"] > 0.9
    assert body["data"]["samples"] == 120
    assert not [p for p in os.listdir(tmp_path) if p.startswith("bncheck-block-")]


def test_s3_shards_merge_to_the_local_run(s3_data, tmp_path):
    local = s3_data["local"]["images"]
    whole = tmp_path / "whole.npz"
    assert run("drift", DIGITS_ONNX, local, "--save-stats", whole, "-f", "json").exit_code in (0, 1)
    parts = []
    for k in (1, 2):
        part = tmp_path / f"p{k}.npz"
        result = run("drift", DIGITS_ONNX, f"{BUCKET}/images", "--shard", f"{k}/2", "--save-stats", part, "-f", "json", *storage(s3_data))
        assert result.exit_code in (0, 1), result.output
        parts.append(part)
    merged = tmp_path / "merged.npz"
    assert run("merge", *parts, "--out", merged).exit_code == 0
    assert_statistics_match(arrays(merged), arrays(whole))


def test_s3_and_other_url_problems_exit_2_with_one_sentence(s3_data):
    missing = run("drift", DIGITS_ONNX, f"{BUCKET}/nothing-here", *storage(s3_data))
    assert missing.exit_code == 2 and "does not exist" in missing.output and "Traceback" not in missing.output
    closed = f"http://127.0.0.1:{_closed_port()}"
    unreachable = run(
        "drift", DIGITS_ONNX, f"{BUCKET}/images", "--storage-option", f"endpoint_url={closed}",
        "--storage-option", "key=testing", "--storage-option", "secret=testing",
        "--storage-option", 'config_kwargs={"retries": {"max_attempts": 1}, "connect_timeout": 2}',
    )  # fmt: skip
    assert unreachable.exit_code == 2 and "cannot list DATA" in unreachable.output
    bad_option = run("drift", DIGITS_ONNX, f"{BUCKET}/images", "--storage-option", "endpoint_url")
    assert bad_option.exit_code == 2 and "KEY=VALUE" in bad_option.output
    unknown = run("drift", DIGITS_ONNX, "nosuchprotocol://bucket/data")
    assert unknown.exit_code == 2 and "nosuchprotocol" in unknown.output


def test_memory_urls_work_like_folders(tmp_path):
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    local = SAMPLES / "data" / "digits" / "shifted"
    for image in sorted(local.rglob("*.png"))[:64]:
        fs.pipe(f"/bncheck-test-{os.getpid()}/{image.relative_to(local)}", image.read_bytes())
        copy = tmp_path / "local" / image.relative_to(local)
        copy.parent.mkdir(parents=True, exist_ok=True)
        copy.write_bytes(image.read_bytes())
    # 64 images: the noise floor (3 x 0.14 on mean |r|) keeps the drift at warning level
    options = ("-f", "json", "--mismatch-samples", "0", "--fail-on", "warning")
    result = run("drift", DIGITS_ONNX, f"memory://bncheck-test-{os.getpid()}", *options)
    assert result.exit_code == 1, result.output  # the shifted digits drift
    body = json.loads(result.stdout)
    assert body["data"]["files"] == 64
    assert any(f["rule"] == "BN102" for f in body["findings"]), body["findings"]
    folder = json.loads(run("drift", DIGITS_ONNX, tmp_path / "local", *options).stdout)
    assert [(f["rule"], f["severity"], f["layer"]) for f in body["findings"]] == [(f["rule"], f["severity"], f["layer"]) for f in folder["findings"]]


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("method", ["exact", "cumulative"])
def test_recalibrate_from_s3_writes_what_the_local_folder_gives(s3_data, tmp_path, method):
    import onnx
    from onnx import numpy_helper

    written = []
    for data, extra in ((s3_data["local"]["images"], []), (f"{BUCKET}/images", storage(s3_data))):
        out = tmp_path / f"out{len(written)}.onnx"
        result = run("recalibrate", DIGITS_ONNX, data, "--out", out, "--method", method, "--no-verify", "-f", "json", *extra)
        assert result.exit_code in (0, 1), result.output
        written.append({t.name: numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer})
    names = [name for name in written[0] if name.endswith(("running_mean", "running_var"))]
    assert names
    for name in names:
        np.testing.assert_array_equal(written[1][name], written[0][name], err_msg=name)
