"""Reduced-size JPEG decoding in CropViews: same crops drawn as from the decoded image, pixels within tolerance."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sslcli.data.readers.images import EncodedImage, load_image
from sslcli.data.views.colour import ColourAug
from sslcli.data.views.crops import CropViews, draft_reduction
from sslcli.errors import CorruptImageError

NO_COLOUR = ColourAug(jitter_p=0.0, gray_p=0.0, blur_p=0.0)  # normalisation only: outputs compare pixels


def _jpegs(root: Path, n: int) -> list[Path]:
    return sorted((root / "train2017").glob("*.jpg"))[:n]


@pytest.mark.photographs("the reduced JPEG decode must match on camera JPEGs (their encoders, chroma subsampling and sizes), not only OpenCV's own")
def test_header_size_matches_the_decode(tiny_coco):
    for path in _jpegs(tiny_coco, 5):
        enc = EncodedImage.read(path)
        full = load_image(path)
        assert enc.is_jpeg and (enc.height, enc.width) == full.shape[:2]
        assert np.array_equal(enc.decode(1), full)  # the same decoder as load_image
        half = enc.decode(2)
        assert half.shape[:2] == (-(-full.shape[0] // 2), -(-full.shape[1] // 2))


def test_reduction_hand_worked():
    enc = EncodedImage(Path("x.jpg"), b"", height=480, width=640, is_jpeg=True)
    whole = (0, 0, 640, 480)
    assert draft_reduction(enc, [whole], [224]) == 2   # 320×240 ≥ 224; 160×120 is not
    assert draft_reduction(enc, [whole], [64]) == 4    # 160×120 ≥ 64; 80×60 is not
    assert draft_reduction(enc, [whole], [60]) == 8    # 80×60
    assert draft_reduction(enc, [whole, (0, 0, 300, 300)], [64, 96]) == 2  # the smallest crop decides: 150 ≥ 96
    assert draft_reduction(enc, [(10, 10, 110, 110)], [96]) == 1
    png = EncodedImage(Path("x.png"), b"", height=480, width=640, is_jpeg=False)
    assert draft_reduction(png, [whole], [64]) == 1


@pytest.mark.photographs("the reduced-decode tolerance is about camera JPEGs (their encoders, chroma subsampling and 640x480 sizes)")
def test_crops_of_the_reported_boxes_within_tolerance(tiny_coco, monkeypatch):
    # The expected pixels: OpenCV's area resize of the full decode cut at the boxes the views report (full-image
    # coordinates), flipped or not, normalised with ImageNet's mean and std; no replay of the views' draws.
    views = CropViews(64, (0.2, 1.0), (NO_COLOUR, NO_COLOUR), small_size=32, n_small=2)
    used = []
    decode = EncodedImage.decode
    monkeypatch.setattr(EncodedImage, "decode", lambda self, r=1: used.append(r) or decode(self, r))
    mean, std = np.array((0.485, 0.456, 0.406)), np.array((0.229, 0.224, 0.225))
    diffs = []
    for k, path in enumerate(_jpegs(tiny_coco, 8)):
        torch.manual_seed(k)
        out = views({"image": EncodedImage.read(path), "index": 0})
        full = load_image(path)
        crops = [*out["views"], *out["small"]]
        assert out["boxes"].shape == (4, 4)
        for box, crop in zip(out["boxes"].tolist(), crops, strict=True):
            x0, y0, x1, y1 = (int(round(v)) for v in box)
            assert 0 <= x0 < x1 <= full.shape[1] and 0 <= y0 < y1 <= full.shape[0]
            side = crop.shape[-1]
            want = cv2.resize(full[y0:y1, x0:x1], (side, side), interpolation=cv2.INTER_AREA) / 255.0
            got = crop.permute(1, 2, 0).double().numpy() * std + mean  # back to [0, 1] pixel units
            diffs.append(min(np.abs(got - want).mean(), np.abs(got - want[:, ::-1]).mean()))
    assert max(used) > 1  # reduced decodes did happen (64 px crops from 640×480 images)
    # DCT scaling + rounding the box edges to the reduced grid (≤ half an output pixel) + another resize kernel:
    # mean |Δ| measured ≤ 0.034 (mean 0.013) over these 32 crops; the same crops mirrored differ by ≥ 0.07.
    assert max(diffs) < 0.045, diffs


def test_unreadable_file_names_its_path(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(CorruptImageError, match="bad.jpg"):
        EncodedImage.read(bad)
