"""Item 2: one output guard for every path a command writes.

Each case is the careless (or hostile) command line from issue 11; the input it names as an
output must come out byte-identical, with exit 2 and one sentence.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import onnx
import pytest

from security.process import ROOT, bncheck

SAMPLES = ROOT / "sample_models"


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def work(tmp_path):
    shutil.copy(SAMPLES / "digits_cnn.onnx", tmp_path / "m.onnx")
    shutil.copy(SAMPLES / "data" / "digits" / "reference.npz", tmp_path / "ref.npz")
    model = onnx.load(str(tmp_path / "m.onnx"))
    onnx.save_model(model, str(tmp_path / "x.onnx"), save_as_external_data=True, location="w.onnx", size_threshold=0)
    assert bncheck("audit", "m.onnx", "-f", "json", "-o", "run.json", cwd=tmp_path).returncode == 0
    return tmp_path


CASES = {
    "audit report over the model": (["audit", "m.onnx", "-o", "m.onnx"], "m.onnx"),
    "drift report over DATA": (["drift", "m.onnx", "ref.npz", "-o", "ref.npz"], "ref.npz"),
    "statistics over DATA": (["drift", "m.onnx", "ref.npz", "--save-stats", "ref.npz"], "ref.npz"),
    "report over its own input": (["report", "run.json", "-o", "run.json"], "run.json"),
    "baseline over itself": (["audit", "m.onnx", "--baseline", "run.json", "-o", "run.json"], "run.json"),
    "recalibrate over external data": (["recalibrate", "x.onnx", "ref.npz", "--out", "w.onnx", "--force"], "w.onnx"),
    "fold report over external data": (["fold", "x.onnx", "--out", "f.onnx", "--output", "w.onnx"], "w.onnx"),
    "merge over a part": (["merge", "ref.npz", "--out", "ref.npz", "--force"], "ref.npz"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_an_input_is_never_an_output(work, case):
    args, victim = CASES[case]
    before = digest(work / victim)
    result = bncheck(*args, cwd=work)
    assert result.returncode == 2, result.stderr
    assert digest(work / victim) == before
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


@pytest.mark.parametrize("command", ["fold", "recalibrate"])
def test_two_outputs_never_share_a_path(work, command):
    data = ["ref.npz"] if command == "recalibrate" else []
    result = bncheck(command, "m.onnx", *data, "--out", "f.onnx", "--output", "f.onnx", cwd=work)
    assert result.returncode == 2
    assert "both name f.onnx" in result.stderr
    assert not (work / "f.onnx").exists()


def test_dash_means_stdout(work):
    result = bncheck("audit", "m.onnx", "-f", "json", "-o", "-", cwd=work)
    assert result.returncode == 0
    assert result.stdout.startswith("{")
    assert not (work / "-").exists()


def test_a_model_cannot_go_to_stdout(work):
    result = bncheck("fold", "m.onnx", "--out", "-", cwd=work)
    assert result.returncode == 2
    assert not (work / "-").exists()


def test_a_fifo_is_written_into_not_replaced(work):
    fifo = work / "pipe"
    os.mkfifo(fifo)
    received: list[bytes] = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_bytes()))
    reader.start()
    result = bncheck("audit", "m.onnx", "-f", "json", "-o", str(fifo), cwd=work)
    reader.join(timeout=60)
    assert result.returncode == 0, result.stderr
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert b'"schema_version"' in received[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can replace /dev/null")
def test_dev_null_stays_a_device(work):
    assert bncheck("audit", "m.onnx", "-o", "/dev/null", cwd=work).returncode == 0
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_sigterm_during_a_write_leaves_no_temporary_file(tmp_path):
    """A writer that is half-way through a 1 MB file when SIGTERM arrives: the target never
    appears, the hidden temporary file is gone, and the process says 'interrupted'."""
    script = tmp_path / "slow.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import sys, time
            from pathlib import Path
            from bncheck.backends.output import write_atomically
            from bncheck.backends.output_guard import interrupt_on_sigterm
            interrupt_on_sigterm()
            def writer(tmp):
                Path(tmp).write_bytes(b"x" * 1_000_000)
                print("writing", flush=True)
                time.sleep(60)
            try:
                write_atomically(Path({str(tmp_path / "out.bin")!r}), writer)
            except KeyboardInterrupt:
                sys.exit(2)
            """
        )
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)}
    )
    assert proc.stdout.readline().strip() == b"writing"
    assert any(p.name.startswith(".out.bin.") for p in tmp_path.iterdir())
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 2
    time.sleep(0.1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["slow.py"]


@pytest.mark.parametrize(
    "args, option",
    [
        (["fold", "m.onnx", "--out", "outdir"], "--out"),
        (["recalibrate", "m.onnx", "ref.npz", "--out", "outdir"], "--out"),
        (["drift", "m.onnx", "ref.npz", "-o", "outdir"], "--output"),
        (["drift", "m.onnx", "ref.npz", "--save-stats", "outdir"], "--save-stats"),
        (["audit", "m.onnx", "-o", "outdir"], "--output"),
    ],
)
def test_an_output_that_is_a_directory_is_refused_before_any_work(work, args, option):
    """`fold --out existing_folder` said "cannot tell the output format from OUT's extension
    (none)"; `drift -o folder` ran the whole analysis, then "cannot write folder: Is a directory"."""
    (work / "outdir").mkdir()
    result = bncheck(*args, cwd=work)
    assert result.returncode == 2, result.stderr
    assert result.stderr == f"error: {option} outdir is a directory; name a file in it to write.\n"
    assert result.stdout == "" and list((work / "outdir").iterdir()) == []


def test_python_api_names_a_directory_given_as_out(work):
    import bncheck as api

    with pytest.raises(api.BncheckError, match="is a directory; name the file to write in it"):
        api.fold(str(work / "m.onnx"), str(work))
    with pytest.raises(api.BncheckError, match="is a directory"):
        api.drift(str(work / "m.onnx"), str(work / "ref.npz")).save(str(work))
