"""Item 4: bounded work on hostile files. A few hundred bytes must not buy gigabytes: the
constant subgraph, the lying initializer and the decompression bomb are refused (exit 2, one
sentence) with the process's peak memory far below what they ask for."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto
from onnx import helper as h

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "sample_models" / "data" / "digits" / "reference.npz"
ONNX = ROOT / "sample_models" / "digits_cnn.onnx"
#: peak RSS allowed for a refused run (the attacks ask for 0.8-4 GB)
RSS_LIMIT_KB = 600_000


#: runs the CLI and records the process's own peak RSS (kB) in the file named by argv[1]. The
#: figure is VmHWM from /proc/self/status, the high-water mark of this process's address space:
#: getrusage's ru_maxrss survives execve on Linux, so a child of a 700 MB pytest worker would
#: report the worker's peak, not its own.
WRAPPER = """
import sys
from pathlib import Path
out = Path(sys.argv.pop(1))

def peak_kb():
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return line.split()[1]
    raise RuntimeError("no VmHWM in /proc/self/status")

try:
    from bncheck.cli.app import main
    sys.argv[0] = "bncheck"
    main()
finally:
    out.write_text(peak_kb())
"""


def bncheck_with_rss(*args: str, cwd: Path) -> tuple[subprocess.CompletedProcess, int]:
    """Run the CLI in a child; return its result and the child's own peak RSS in kB."""
    record = cwd / "rss.txt"
    result = subprocess.run(
        [sys.executable, "-c", WRAPPER, str(record), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return result, int(record.read_text())


def bn_model(nodes, initializers=()) -> onnx.ModelProto:
    x = h.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 2, 2])
    y = h.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = h.make_graph(nodes, "g", [x], [y], initializer=list(initializers))
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 15)])


def expand_bomb(path: Path) -> Path:
    """BN parameters = Expand(Constant 1.0, [200000000]): 200 bytes asking for 800 MB+."""
    nodes = [
        h.make_node("Constant", [], ["one"], value_float=1.0),
        h.make_node("Constant", [], ["shape"], value_ints=[200_000_000]),
        h.make_node("Expand", ["one", "shape"], ["p"]),
        h.make_node("BatchNormalization", ["x", "p", "p", "p", "p"], ["y"]),
    ]
    onnx.save(bn_model(nodes), path)
    assert path.stat().st_size < 300
    return path


def lying_initializer(path: Path) -> Path:
    """An initializer whose dims say 10**9 elements over 16 bytes of data."""
    tensor = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[1_000_000_000], raw_data=np.ones(4, np.float32).tobytes())
    onnx.save(bn_model([h.make_node("BatchNormalization", ["x", "w", "w", "w", "w"], ["y"])], [tensor]), path)
    return path


@pytest.mark.parametrize("build", [expand_bomb, lying_initializer])
def test_hostile_onnx_is_refused_cheaply(tmp_path, build):
    model = build(tmp_path / "evil.onnx")
    result, rss = bncheck_with_rss("audit", str(model), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "unexpected" not in result.stderr
    assert rss < RSS_LIMIT_KB


def png_bomb(path: Path, side: int) -> Path:
    """A valid grey PNG of side x side pixels, all zero: compresses ~1000:1."""
    compressor = zlib.compressobj(9)
    row = b"\x00" * (side + 1)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("side", [10_000, 20_000])
def test_decompression_bombs_are_refused_with_a_sentence(tmp_path, side):
    """10k x 10k is above Pillow's warning limit (decoded with only a warning before); 20k x 20k
    above its error limit (skipped as 'unreadable' before)."""
    folder = tmp_path / "imgs"
    folder.mkdir()
    png_bomb(folder / "bomb.png", side)
    result, rss = bncheck_with_rss("drift", str(ONNX), "imgs", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert "decompression bomb" in result.stderr and result.stderr.count("\n") == 1
    assert rss < RSS_LIMIT_KB
