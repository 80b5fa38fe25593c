"""``run.versions`` in every report: the same as the packages' metadata, whether a package was
imported (its ``__version__``) or not (metadata, without importing it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

from bncheck.formats.common import package_versions

ROOT = Path(__file__).resolve().parents[2]
NAMES = ("bncheck", "numpy", "onnx", "onnxruntime", "torch", "matplotlib")


def _metadata(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def test_versions_match_the_metadata_of_imported_packages():
    import numpy  # noqa: F401
    import onnx  # noqa: F401

    versions = package_versions()
    assert {name: versions[name] for name in NAMES} == {name: _metadata(name) for name in NAMES}


def test_versions_of_packages_not_imported_come_from_metadata_without_importing_them():
    code = (
        "import json, sys\n"
        "from bncheck.formats.common import package_versions\n"
        "v = package_versions()\n"
        "print(json.dumps({'versions': v, 'imported': sorted(n for n in ('torch', 'matplotlib', 'onnxruntime') if n in sys.modules)}))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = json.loads(subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, check=True, timeout=120).stdout)
    assert out["imported"] == []
    assert {name: out["versions"][name] for name in NAMES} == {name: _metadata(name) for name in NAMES}
