"""The console script ends the process without Python's module teardown once a run is over
(:func:`bncheck.cli.exit_now`): the exit status, every byte on stdout/stderr and the atexit
handlers are those of a normal exit; a live thread or an unflushable stream takes Python's way."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

import bncheck.cli as cli

ROOT = Path(__file__).resolve().parents[2]
MODEL = ROOT / "sample_models" / "digits_cnn.onnx"
SHIFTED = ROOT / "sample_models" / "data" / "digits" / "shifted"


def _python(code: str, *args: str, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          timeout=300, **kwargs)


def test_a_run_keeps_its_status_output_and_atexit_handlers():
    """drift on the shifted sample exits 1 with its whole JSON report on stdout; an atexit
    handler registered before the run still runs, after the report."""
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('atexit handler ran', file=sys.stderr))\n"
        "from bncheck.cli import console\n"
        "sys.argv = ['bncheck', 'drift', sys.argv[1], sys.argv[2], '--format', 'json', '--mismatch-samples', '0']\n"
        "console()\n"
        "print('never reached')\n"
    )
    done = _python(code, str(MODEL), str(SHIFTED))
    assert done.returncode == 1, done.stderr
    report = json.loads(done.stdout)
    assert report["command"] == "drift" and report["findings"]
    assert "never reached" not in done.stdout
    assert done.stderr.strip().splitlines()[-1] == "atexit handler ran"


def test_python_dash_m_uses_the_console_entry():
    done = subprocess.run([sys.executable, "-m", "bncheck", "audit", str(MODEL), "--format", "json"], capture_output=True,
                          text=True, cwd=ROOT, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["command"] == "audit"


def test_a_refusal_keeps_exit_2_and_its_sentence(tmp_path):
    done = subprocess.run([sys.executable, "-m", "bncheck", "audit", str(tmp_path / "missing.onnx")], capture_output=True,
                          text=True, cwd=ROOT, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: model file {tmp_path / 'missing.onnx'} does not exist; check the path."]


@pytest.fixture
def exits(monkeypatch):
    """os._exit replaced: the statuses it was called with (no tracer seen, even under coverage)."""
    calls: list[int] = []
    monkeypatch.setattr(sys, "gettrace", lambda: None)
    monkeypatch.setattr(sys, "getprofile", lambda: None)
    monkeypatch.setattr(cli.os, "_exit", calls.append)
    monkeypatch.setattr(cli.atexit, "_run_exitfuncs", lambda: calls.append("atexit"))
    return calls


@pytest.mark.parametrize(("code", "status"), [(None, 0), (0, 0), (1, 1), (2, 2)])
def test_exit_statuses_read_as_sys_exit_reads_them(exits, code, status):
    cli.exit_now(code)
    assert exits == ["atexit", status]


def test_a_message_code_goes_to_stderr_with_status_1(exits, capsys):
    cli.exit_now("something went wrong")
    assert exits == ["atexit", 1]
    assert capsys.readouterr().err == "something went wrong\n"


def test_a_live_thread_means_python_s_own_exit(exits):
    release = threading.Event()
    worker = threading.Thread(target=release.wait)
    worker.start()
    try:
        with pytest.raises(SystemExit) as raised:
            cli.exit_now(3)
        assert raised.value.code == 3 and exits == []
    finally:
        release.set()
        worker.join()


def test_a_daemon_thread_does_not_hold_the_exit(exits):
    release = threading.Event()
    worker = threading.Thread(target=release.wait, daemon=True)
    worker.start()
    try:
        cli.exit_now(0)
        assert exits == ["atexit", 0]
    finally:
        release.set()


def test_a_profiler_gets_its_results(tmp_path):
    """``python -m cProfile -o FILE -m bncheck ...`` writes FILE after bncheck returns: the
    exit is Python's own while a profiler is on."""
    prof = tmp_path / "run.prof"
    done = subprocess.run([sys.executable, "-m", "cProfile", "-o", str(prof), "-m", "bncheck", "audit", str(MODEL), "--format", "json"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr
    assert prof.is_file() and prof.stat().st_size > 0


def test_a_tracer_means_python_s_own_exit(exits, monkeypatch):
    monkeypatch.setattr(sys, "gettrace", lambda: (lambda *a: None))
    with pytest.raises(SystemExit) as raised:
        cli.exit_now(0)
    assert raised.value.code == 0 and exits == []


class _ClosedPipe(io.StringIO):
    def flush(self):
        raise BrokenPipeError(32, "Broken pipe")


def test_a_stream_that_cannot_be_flushed_means_python_s_own_exit(exits, monkeypatch):
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    with pytest.raises(SystemExit) as raised:
        cli.exit_now(1)
    assert raised.value.code == 1 and exits == ["atexit"]


def test_a_reader_that_stops_early_gets_no_traceback():
    """``bncheck ... --format json | head -c 20``: the report stops at the closed pipe and the
    process says nothing on stderr beyond what Python says about the pipe (no bncheck traceback)."""
    proc = subprocess.Popen([sys.executable, "-m", "bncheck", "audit", str(MODEL), "--format", "json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    proc.stdout.read(20)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=300)
    assert "Traceback" not in err
