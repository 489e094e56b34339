"""Reduced-size JPEG decoding in CropViews: same crops drawn as from the decoded image, pixels within tolerance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sslcli.data.color import ColorAug
from sslcli.data.images import EncodedImage, load_image
from sslcli.data.transforms import CropViews, draft_reduction
from sslcli.errors import CorruptImageError

NO_COLOUR = ColorAug(jitter_p=0.0, gray_p=0.0, blur_p=0.0)  # normalisation only: outputs compare pixels


def _jpegs(root: Path, n: int) -> list[Path]:
    return sorted((root / "train2017").glob("*.jpg"))[:n]


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


def test_same_draws_and_pixels_within_tolerance(tiny_coco, monkeypatch):
    views = CropViews(64, (0.2, 1.0), (NO_COLOUR, NO_COLOUR), small_size=32, n_small=2)
    used = []
    decode = EncodedImage.decode
    monkeypatch.setattr(EncodedImage, "decode", lambda self, r=1: used.append(r) or decode(self, r))
    diffs = []
    for k, path in enumerate(_jpegs(tiny_coco, 8)):
        torch.manual_seed(k)
        ref = views({"image": load_image(path), "index": 0})
        after_ref = torch.rand(1)
        torch.manual_seed(k)
        out = views({"image": EncodedImage.read(path), "index": 0})
        assert torch.equal(torch.rand(1), after_ref)  # the same number of draws
        assert torch.equal(out["boxes"], ref["boxes"])  # the same crops, in full-image coordinates
        std = torch.tensor((0.229, 0.224, 0.225)).view(3, 1, 1)
        for key in ("views", "small"):
            diffs.append(((out[key] - ref[key]) * std).abs().mean().item())  # back to [0, 1] pixel units
    assert max(used) > 1  # reduced decodes did happen (64 px crops from 640×480 images)
    # DCT scaling + rounding the box edges to the reduced grid (≤ half an output pixel) vs a full decode +
    # antialiased resize: mean |Δ| measured ≤ 0.020 over these images; the same crops flipped differ by ≥ 0.10.
    assert max(diffs) < 0.03, diffs


def test_unreadable_file_names_its_path(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(CorruptImageError, match="bad.jpg"):
        EncodedImage.read(bad)
