"""A small RGB CNN whose BN statistics were accumulated on PNG images under a known
preprocessing (``TRAIN_MEAN`` / ``TRAIN_STD`` on 0-1 pixels), saved as TorchScript and ONNX,
and image folders with known preprocessing slips, for BN103's tests."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import nn

TRAIN_MEAN = (0.55, 0.42, 0.30)
TRAIN_STD = (0.20, 0.26, 0.31)
OPTIONS = ["--mean", ",".join(map(str, TRAIN_MEAN)), "--std", ",".join(map(str, TRAIN_STD))]


def smooth_images(count: int, size: int = 24, seed: int = 0) -> np.ndarray:
    """(count, size, size, 3) uint8: upsampled colour noise around per-channel levels, so
    neighbouring pixels and the colour channels are correlated as in photographs."""
    rng = np.random.default_rng(seed)
    low = rng.normal(0, 1, (count, 3, size // 4, size // 4)).astype(np.float32)
    up = torch.nn.functional.interpolate(torch.from_numpy(low), size=(size, size), mode="bilinear", align_corners=False).numpy()
    common = up.mean(axis=1, keepdims=True)
    levels = np.array([150.0, 110.0, 80.0]).reshape(1, 3, 1, 1)
    spread = np.array([40.0, 50.0, 60.0]).reshape(1, 3, 1, 1)
    pixels = levels + spread * (0.7 * common + 0.5 * up) + rng.normal(0, 6, up.shape)
    return np.clip(pixels, 0, 255).round().astype(np.uint8).transpose(0, 2, 3, 1)


def preprocess(images: np.ndarray) -> np.ndarray:
    x = images.astype(np.float32).transpose(0, 3, 1, 2) / 255.0
    return (x - np.array(TRAIN_MEAN, np.float32).reshape(1, 3, 1, 1)) / np.array(TRAIN_STD, np.float32).reshape(1, 3, 1, 1)


class RgbCnn(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv3, self.bn3 = nn.Conv2d(8, 8, 3, padding=1, stride=2), nn.BatchNorm2d(8)
        self.head = nn.Linear(8, 4)
        self.calls_after_bn3 = 0

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.head(x.mean(dim=(2, 3)))


def trained(images: np.ndarray) -> RgbCnn:
    """The network with BN statistics of ``images`` (cumulative averages, as update_bn does)."""
    torch.manual_seed(0)
    model = RgbCnn()
    for bn in (model.bn1, model.bn2, model.bn3):
        bn.momentum = None
    model.train()
    with torch.no_grad():
        x = torch.from_numpy(preprocess(images))
        for start in range(0, len(x), 32):
            model(x[start : start + 32])
    return model.eval()


def write_images(folder: Path, images: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for k, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{k:03d}.png")
    return folder


def save_models(model: RgbCnn, folder: Path) -> dict[str, Path]:
    example = torch.zeros(2, 3, 24, 24)
    ts = folder / "rgb_cnn.ts"
    torch.jit.script(model).save(str(ts))
    onnx_path = folder / "rgb_cnn.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, example, str(onnx_path), input_names=["x"], output_names=["y"], dynamic_axes={"x": {0: "N"}},
            do_constant_folding=False, opset_version=17, dynamo=False,
        )  # fmt: skip
    return {"torch": ts, "onnx": onnx_path}
