"""The HTML report and ``--plot``: a self-contained page (no network), rendered by a real
browser (headless Chromium, Debian's ``chromium`` package) for the sample digits drift run, the
screenshot checked for the verdict banner and the chart's colours; the drift chart as PNG/SVG;
a clear exit 2 when matplotlib is missing."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from support.reports_support import DIGITS, SAMPLES, invoke

pytest.importorskip("matplotlib")
Image = pytest.importorskip("PIL.Image")

from bncheck.formats import plot  # noqa: E402

MODEL = SAMPLES / "digits_cnn.onnx"


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))


def _count_near(image, colour, tolerance=40, box=None) -> int:
    """Pixels within ``tolerance`` (per channel) of ``colour`` inside ``box``."""
    import numpy as np

    pixels = np.asarray(image.convert("RGB").crop(box) if box else image.convert("RGB"), dtype=np.int16)
    return int(np.all(np.abs(pixels - np.array(colour, dtype=np.int16)) <= tolerance, axis=-1).sum())


@pytest.fixture(scope="module")
def digits_html(tmp_path_factory):
    """The sample digits drift run as the user types it: --format html -o report.html."""
    folder = tmp_path_factory.mktemp("html")
    out = folder / "report.html"
    result = invoke("drift", MODEL, DIGITS / "shifted", "--format", "html", "-o", out)
    assert result.exit_code == 1, result.output  # the shifted data drifts: the gate fails
    return out


def test_page_is_self_contained(digits_html):
    text = digits_html.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text, re.I)
    assert "@import" not in text and "url(" not in text and "<script" not in text and "<link" not in text
    images = re.findall(r'<img src="([^"]+)"', text)
    assert len(images) >= 4 and all(src.startswith(("data:image/svg+xml;base64,", "data:image/png;base64,")) for src in images)


def test_page_holds_every_section(digits_html):
    text = digits_html.read_text(encoding="utf-8")
    for needle in (
        "FAILED", 'id="drift-chart"', 'id="channel-chart"', "Small-batch risk (BN201)", "Train/eval mismatch (BN301)",
        'id="findings"', "What the rules mean", "Why is this bad?", "How to fix", 'id="layers"',
        "How this report was made", "bncheck drift", "onnxruntime", "first drifting layer",
    ):  # fmt: skip
        assert needle in text, needle
    # the exact command, as typed
    assert re.search(r"<pre>bncheck drift \S*digits_cnn.onnx \S*shifted --format html -o \S*report.html</pre>", text)
    chart = re.search(r'id="drift-chart"><img src="data:image/svg\+xml;base64,([^"]+)"', text)
    svg = base64.b64decode(chart.group(1)).decode("utf-8")
    root = ET.fromstring(svg)
    assert root.tag.endswith("svg")
    for needle in ("first drifting layer", "warning threshold 0.25", "error threshold 0.5", "mean |z| (mean shift)", "mean |r| (variance log-ratio)"):
        assert needle in svg, needle


def test_screenshot_in_headless_chromium(digits_html, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")
    shot = tmp_path / "report.png"
    profile = tmp_path / "profile"
    command = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={profile}", f"--screenshot={shot}", "--window-size=1280,2000", digits_html.as_uri(),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert shot.exists(), result.stderr[-2000:]
    image = Image.open(shot)
    image.load()
    assert image.size == (1280, 2000)
    rgb = image.convert("RGB")
    assert len(rgb.getcolors(maxcolors=1 << 20) or []) > 200, "the page looks blank"
    # the verdict: a wide red FAILED banner near the top
    assert _count_near(rgb, (207, 34, 46), 12, box=(0, 0, 1280, 300)) > 30_000
    # the drift chart below it: mean |z| in blue, mean |r| in orange, the error line in red
    chart_box = (0, 300, 1280, 1100)
    assert _count_near(rgb, _rgb(plot.Z_COLOR), 30, chart_box) > 300
    assert _count_near(rgb, _rgb(plot.R_COLOR), 30, chart_box) > 300
    assert _count_near(rgb, _rgb(plot.ERROR_COLOR), 30, chart_box) > 200
    keep = os.environ.get("BNCHECK_SCREENSHOT_DIR")
    if keep:  # to look at it yourself: BNCHECK_SCREENSHOT_DIR=/some/folder pytest ...
        shutil.copy(shot, Path(keep) / "html_report_screenshot.png")


def test_plot_png_and_svg(tmp_path):
    png, svg = tmp_path / "drift.png", tmp_path / "drift.svg"
    assert invoke("drift", MODEL, DIGITS / "shifted", "--plot", png, "--quiet", "--mismatch-samples", "0").exit_code == 1
    image = Image.open(png)
    image.load()
    assert image.format == "PNG" and image.size[0] >= 800 and image.size[1] >= 400
    assert _count_near(image, _rgb(plot.R_COLOR), 30) > 200 and _count_near(image, _rgb(plot.Z_COLOR), 30) > 200
    saved = tmp_path / "run.json"
    invoke("drift", MODEL, DIGITS / "shifted", "-f", "json", "-o", saved, "--quiet", "--mismatch-samples", "0")
    assert invoke("report", saved, "--plot", svg, "--quiet").exit_code == 1
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg") and "first drifting layer" in svg.read_text(encoding="utf-8")


def test_plot_errors(tmp_path):
    audit = tmp_path / "audit.json"
    invoke("audit", MODEL, "-f", "json", "-o", audit)
    for args, needle in (
        (["report", audit, "--plot", tmp_path / "a.png"], "drift chart"),
        (["drift", MODEL, DIGITS / "shifted", "--plot", tmp_path / "a.pdf"], ".png or .svg"),
        (["report", audit, "-o", tmp_path / "same.png", "--plot", tmp_path / "same.png", "-f", "json"], "own file"),
    ):
        result = invoke(*args)
        assert result.exit_code == 2 and needle in result.stderr, result.output
        assert result.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == [audit]


def test_missing_matplotlib_is_a_clear_exit_2(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    out = tmp_path / "r.html"
    for args in (
        ["drift", MODEL, DIGITS / "shifted", "--format", "html", "-o", out],
        ["drift", MODEL, DIGITS / "shifted", "--plot", tmp_path / "p.png"],
        ["audit", MODEL, "-o", out],
    ):
        result = invoke(*args)
        assert result.exit_code == 2
        assert result.stderr.strip() == (
            "error: charts (--format html, --plot) need matplotlib, which is not installed; "
            "install it with `pip install 'bncheck[report]'`."
        )
    assert list(tmp_path.iterdir()) == []


def test_notebook_fragment_is_scoped(sample_runs):
    from bncheck.report.io import load_report

    fragment = load_report(sample_runs["drift_shifted"].path)._repr_html_()
    assert fragment.startswith('<div class="bncheck"><style>') and "<img" not in fragment
    styles = re.search(r"<style>(.*?)</style>", fragment, re.S).group(1)
    selectors = [block.split("{")[0].strip() for block in styles.split("}") if "{" in block]
    assert selectors and all(s.startswith(".bncheck") for sel in selectors for s in sel.split(", "))


def test_charts_read_only_serialised_figures():
    """A saved report draws the same charts as the live run (the same SVG bytes)."""
    import bncheck
    from bncheck.report.report import Report

    live = bncheck.drift(MODEL, DIGITS / "shifted", options=bncheck.DriftOptions(channels=True))
    saved = Report.from_dict(json.loads(live.to_json()))
    for figure in (plot.drift_figure, plot.small_batch_figure, plot.train_eval_figure):
        first = plot.figure_bytes(figure(live), "svg")
        assert first == plot.figure_bytes(figure(saved), "svg"), figure.__name__
    assert b"first drifting layer" in plot.figure_bytes(plot.drift_figure(saved), "svg")
    report = saved
    fig = report.plot(report.layers[0].name)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    assert Image.open(io.BytesIO(buffer.getvalue())).size[0] > 500
