"""Fixtures for the engine tests: a local Ray (two CPUs, started once per test process) and a
real S3 API on loopback (moto's server, started by the test process on a free port) holding
a bucket of the sample digits as PNG images and as .npy arrays, and the cancer rows as CSV."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "sample_models" / "data" / "digits"
CANCER = ROOT / "sample_models" / "data" / "cancer"
#: images per class folder uploaded (10 classes)
PER_CLASS = 12


@pytest.fixture(scope="session")
def ray_local():
    """``ray.init(num_cpus=2)`` once for this test process; engines reuse it."""
    ray = pytest.importorskip("ray")
    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    yield ray
    ray.shutdown()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session")
def s3_data(tmp_path_factory):
    """``{"url": endpoint, "options": storage options, "local": {name: local folder or file}}``:
    the same files in a local folder and under ``s3://bncheck-data/<name>``."""
    pytest.importorskip("s3fs")
    boto3 = pytest.importorskip("boto3")
    server_module = pytest.importorskip("moto.server")
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    client.create_bucket(Bucket="bncheck-data")
    root = tmp_path_factory.mktemp("s3-mirror")
    local = {"images": root / "images", "arrays": root / "arrays", "table": root / "table.csv"}
    for folder in sorted((DIGITS / "reference").iterdir()):
        for image in sorted(folder.iterdir())[:PER_CLASS]:
            target = local["images"] / folder.name / image.name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(image.read_bytes())
    local["arrays"].mkdir()
    with np.load(DIGITS / "reference.npz") as archive:
        x, y = archive["x"], archive["y"]
    for i, start in enumerate(range(0, 200, 50)):
        np.savez(local["arrays"] / f"part{i}.npz", x=x[start : start + 50], y=y[start : start + 50])
    local["table"].write_bytes((CANCER / "reference.csv").read_bytes())
    for name, path in local.items():
        files = [p for p in sorted(path.rglob("*")) if p.is_file()] if path.is_dir() else [path]
        for file in files:
            key = f"{name}/{file.relative_to(path)}" if path.is_dir() else f"{name}/{file.name}"
            client.put_object(Bucket="bncheck-data", Key=key, Body=file.read_bytes())
    options = {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
    yield {"url": endpoint, "options": options, "local": local, "client": client}
    server.stop()
