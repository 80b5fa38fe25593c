"""The HTML report and ``--plot``: a self-contained, interactive page (inline SVG charts drawn in
Python, a little inline JavaScript, no network) that the core install renders without
matplotlib, under 1 MB for a ResNet-50; looked at in a real browser (headless Chromium,
Debian's ``chromium`` package): the screenshot checked for the verdict banner, the chart's
colours and an expanded layer's per-channel dots, the DOM for what the script did. The
matplotlib drift chart of ``--plot`` as PNG/SVG; a clear exit 2 for --plot without matplotlib."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from support.reports_support import DIGITS, ROOT, SAMPLES, invoke
from torch import nn

import bncheck
from bncheck.formats import plot, svg
from bncheck.report.report import Report

MODEL = SAMPLES / "digits_cnn.onnx"


def _rgb(hex_colour: str) -> tuple[int, int, int]:
    return tuple(int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))


def _count_near(image, colour, tolerance=40, box=None) -> int:
    """Pixels within ``tolerance`` (per channel) of ``colour`` inside ``box``."""
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


def _svgs(text: str) -> list[str]:
    return re.findall(r"<svg\b.*?</svg>", text, re.S)


def test_page_is_self_contained(digits_html):
    text = digits_html.read_text(encoding="utf-8")
    assert text.startswith("<!DOCTYPE html>")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text, re.I)
    assert "@import" not in text and "url(" not in text and "<link" not in text and "<img" not in text
    assert re.findall(r"<script[^>]*>", text) == ["<script>"]  # one inline script, nothing loaded
    charts = _svgs(text)
    assert len(charts) >= 4
    for chart in charts:  # every chart is well-formed SVG
        assert ET.fromstring(chart).tag.endswith("svg")


def test_page_holds_every_section(digits_html):
    text = digits_html.read_text(encoding="utf-8")
    for needle in (
        "FAILED", 'id="drift-chart"', 'id="channel-chart"', "Small-batch risk (BN201)", "Train/eval mismatch (BN301)",
        'id="findings"', "What the rules mean", "Why is this bad?", "How to fix", 'id="layers"', 'id="bn-filter"',
        "How this report was made", "bncheck drift", "onnxruntime", "first drifting layer",
    ):  # fmt: skip
        assert needle in text, needle
    # the exact command, as typed
    assert re.search(r"<pre>bncheck drift \S*digits_cnn.onnx \S*shifted --format html -o \S*report.html</pre>", text)
    chart = re.search(r'id="drift-chart">(<svg\b.*?</svg>)', text, re.S).group(1)
    assert ET.fromstring(chart).tag.endswith("svg")
    for needle in ("first drifting layer", "warning threshold 0.25", "error threshold 0.5", "mean |z| (mean shift)", "mean |r| (variance log-ratio)"):
        assert needle in chart, needle


def test_layers_are_grouped_with_their_findings(digits_html):
    text = digits_html.read_text(encoding="utf-8")
    report = bncheck.drift(MODEL, DIGITS / "shifted")
    groups = re.findall(r'<tbody id="layer-([^"]+)" class="grp( open)?" data-text="([^"]*)"([^>]*)>(.*?)</tbody>', text, re.S)
    assert [g[0] for g in groups] == ["model", "0", "1", "2"]
    for key, is_open, _, attrs, inner in groups:
        name = "(model)" if key == "model" else report.layers[int(key)].name
        mine = [f for f in report.findings if (f.layer or "(model)") == name]
        assert f'data-n="{len(mine)}"' in attrs and all(f.rule in inner for f in mine)
        assert ("<tr class=\"detail\" hidden>" in inner) != bool(is_open)
    opened = [g[0] for g in groups if g[1]]
    assert opened == ["model", str([layer.name for layer in report.layers].index(report.result.ranking[0]))]


def _chromium(url: str, tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (Debian: apt-get install chromium; .ci/run installs it)")
    command = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}", *extra, url,
    ]  # fmt: skip
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_screenshot_in_headless_chromium(digits_html, tmp_path):
    shot = tmp_path / "report.png"
    result = _chromium(digits_html.as_uri(), tmp_path, f"--screenshot={shot}", "--window-size=1280,4200")
    assert shot.exists(), result.stderr[-2000:]
    image = Image.open(shot)
    image.load()
    assert image.size == (1280, 4200)
    rgb = image.convert("RGB")
    assert len(rgb.getcolors(maxcolors=1 << 20) or []) > 200, "the page looks blank"
    # the verdict: a wide red FAILED banner near the top
    assert _count_near(rgb, (207, 34, 46), 12, box=(0, 0, 1280, 300)) > 30_000
    # the drift chart below it: mean |z| in blue, mean |r| in orange, the error line in red
    chart_box = (0, 300, 1280, 1100)
    assert _count_near(rgb, _rgb(plot.Z_COLOR), 30, chart_box) > 300
    assert _count_near(rgb, _rgb(plot.R_COLOR), 30, chart_box) > 300
    assert _count_near(rgb, _rgb(plot.ERROR_COLOR), 30, chart_box) > 200
    # lower down, the layers table with the top-scoring layer opened: its 64 channels as dots
    # in the two per-channel panels (the colours appear nowhere else below the charts)
    layers_box = (0, 2300, 1280, 4200)
    for colour in (plot.Z_COLOR, plot.R_COLOR):  # a dot over the detail row's #fbfcfd
        dot = tuple(round(svg.DOT_OPACITY * c + (1 - svg.DOT_OPACITY) * b) for c, b in zip(_rgb(colour), (251, 252, 253), strict=True))
        assert _count_near(rgb, dot, 20, layers_box) > 600, colour
    keep = os.environ.get("BNCHECK_SCREENSHOT_DIR")
    if keep:  # to look at it yourself: BNCHECK_SCREENSHOT_DIR=/some/folder pytest ...
        shutil.copy(shot, Path(keep) / "html_report_screenshot.png")


def test_the_script_runs_in_the_browser(digits_html, tmp_path):
    """The DOM after the script: the count of shown layers filled in, the #layer-1 link opened."""
    dom = _chromium(digits_html.as_uri() + "#layer-1", tmp_path, "--dump-dom").stdout
    assert '<span class="shown" id="bn-shown">4 of 4 layer(s) shown</span>' in dom
    group = re.search(r'<tbody id="layer-1" class="([^"]*)"[^>]*>(.*?)</tbody>', dom, re.S)
    assert "open" in group.group(1).split() and '<tr class="detail" hidden' not in group.group(2)
    assert 'aria-expanded="true"' in group.group(2)


def test_html_needs_no_matplotlib(tmp_path):
    """On the core install (matplotlib cannot be imported) --format html works; --plot says why not."""
    out = tmp_path / "r.html"
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from bncheck.cli import main\n"
        f"sys.argv = ['bncheck', 'drift', {str(MODEL)!r}, {str(DIGITS / 'shifted')!r}, '--format', 'html', '-o', {str(out)!r}]\n"
        "main()\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 1, result.stderr
    text = out.read_text(encoding="utf-8")
    assert len(_svgs(text)) >= 4 and 'id="channel-chart"' in text


class _Bottleneck(nn.Module):
    def __init__(self, inp: int, width: int, stride: int):
        super().__init__()
        out = width * 4
        self.conv1, self.bn1 = nn.Conv2d(inp, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2, self.bn2 = nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, out, 1, bias=False), nn.BatchNorm2d(out)
        self.down = nn.Sequential(nn.Conv2d(inp, out, 1, stride, bias=False), nn.BatchNorm2d(out)) if stride != 1 or inp != out else None

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        y = torch.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return torch.relu(y + (self.down(x) if self.down is not None else x))


def resnet50() -> nn.Module:
    """torchvision's ResNet-50 layout (53 BN layers, 26,560 BN channels) from torch.nn."""
    blocks, inp = [], 64
    for width, count, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        for i in range(count):
            blocks.append(_Bottleneck(inp, width, stride if i == 0 else 1))
            inp = width * 4
    return nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
                         *blocks, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2048, 10))  # fmt: skip


def test_a_resnet50_report_is_under_a_megabyte():
    torch.manual_seed(0)
    model = resnet50().eval()
    for m in model.modules():  # stored statistics that the data will not match: many findings
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = np.random.default_rng(0).normal(size=(16, 3, 32, 32)).astype(np.float32)
    report = bncheck.drift(model, x, options=bncheck.DriftOptions(channels=True, batch_size=8, train_batch_size=4, mismatch_samples=8, diagnosis_samples=8))
    assert len(report.layers) == 53 and sum(layer.num_features for layer in report.layers) == 26_560
    assert len(report.findings) > 30
    page = report.render("html")
    size = len(page.encode("utf-8"))
    assert size < 1_000_000, size
    assert page.count('<tbody id="layer-') == 53 + any(f.layer is None for f in report.findings)
    assert page.count("<svg") >= 53  # every layer's per-channel chart is in its detail row


def test_plot_png_and_svg(tmp_path):
    pytest.importorskip("matplotlib")
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
    pytest.importorskip("matplotlib")
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


def test_missing_matplotlib_is_a_clear_exit_2_for_plot_only(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    result = invoke("drift", MODEL, DIGITS / "shifted", "--plot", tmp_path / "p.png")
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "error: --plot and Report.plot() draw with matplotlib, which is not installed; "
        "install it with `pip install 'bncheck[report]'`."
    )
    assert list(tmp_path.iterdir()) == []
    assert invoke("audit", MODEL, "-o", tmp_path / "r.html").exit_code == 0
    assert 'id="bn-layers"' in (tmp_path / "r.html").read_text(encoding="utf-8")  # html still renders


def test_notebook_fragment_is_scoped(sample_runs):
    from bncheck.report.io import load_report

    fragment = load_report(sample_runs["drift_shifted"].path)._repr_html_()
    assert fragment.startswith('<div class="bncheck"><style>') and "<img" not in fragment
    styles = re.search(r"<style>(.*?)</style>", fragment, re.S).group(1)
    selectors = [block.split("{")[0].strip() for block in styles.split("}") if "{" in block]
    assert selectors and all(s.startswith(".bncheck") for sel in selectors for s in sel.split(", "))


def test_charts_read_only_serialised_figures():
    """A saved report draws the same charts as the live run (the same SVG, the same HTML)."""
    live = bncheck.drift(MODEL, DIGITS / "shifted", options=bncheck.DriftOptions(channels=True))
    saved = Report.from_dict(json.loads(live.to_json()))
    for chart in (svg.drift_chart, svg.small_batch_chart, svg.train_eval_chart):
        assert chart(live) == chart(saved), chart.__name__
    for layer in live.layers:
        assert svg.channel_chart(live, layer.name) == svg.channel_chart(saved, layer.name)
    pytest.importorskip("matplotlib")
    for figure in (plot.drift_figure, plot.small_batch_figure, plot.train_eval_figure):
        mine, theirs = figure(live), figure(saved)
        assert (mine is None) == (theirs is None), figure.__name__  # BN301 records without per-layer figures draw none
        if mine is not None:
            assert plot.figure_bytes(mine, "svg") == plot.figure_bytes(theirs, "svg"), figure.__name__
    assert b"first drifting layer" in plot.figure_bytes(plot.drift_figure(saved), "svg")
    fig = saved.plot(saved.layers[0].name)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    assert Image.open(io.BytesIO(buffer.getvalue())).size[0] > 500
