"""D3SSL region augmentations (METHODS.md §5): invariants checked with masks and bounds computed here, independently."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sslcli.data.views.region_aug import (
    MEAN_COLOUR,
    depositioning_composite,
    fill_values,
    restricted_box_jitter,
    sample_prc_cutouts,
    sample_prm_rects,
)

H, W = 48, 64
SEEDS = range(12)


def _rect_mask(rect, height=H, width=W):
    """Pixels of an integer rectangle, clipped to the image (written here, not imported)."""
    m = np.zeros((height, width), dtype=bool)
    x0, y0, x1, y1 = (int(v) for v in rect)
    m[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = True
    return m


def _pixels(box):
    """A float box's pixel extent: edges rounded half up."""
    return tuple(int(math.floor(v + 0.5)) for v in box)


def _random_boxes(rng, k=4, height=H, width=W, min_side=10):
    boxes = []
    for _ in range(k):
        w = rng.uniform(min_side, width * 0.7)
        h = rng.uniform(min_side, height * 0.7)
        x0 = rng.uniform(0, width - w)
        y0 = rng.uniform(0, height - h)
        boxes.append((x0, y0, x0 + w, y0 + h))
    return np.array(boxes)


def _images(seed, height=H, width=W):
    rng = np.random.default_rng(1000 + seed)
    return (rng.integers(0, 256, (height, width, 3), dtype=np.uint8),
            rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


class _FixedDraws:
    """A stand-in Generator whose ``uniform`` returns prepared arrays in order (for hand-computed cases)."""

    def __init__(self, *draws):
        self.draws = list(draws)

    def uniform(self, lo, hi, size=None):
        return np.asarray(self.draws.pop(0), dtype=np.float64)


# ------------------------------------------------------------------------------------------------------------- RBJ
def test_rbj_hand_computed():
    # Box 10×20 centred (5, 10); scales (0.9, 1.0) → 9×20; shift (0.1, −0.05)·(10, 20) = (1, −1) → centre (6, 9);
    # jittered (1.5, −1, 10.5, 19) ∩ (0, 0, 10, 20) = (1.5, 0, 10, 19).
    out = restricted_box_jitter(np.array([[0.0, 0.0, 10.0, 20.0]]), _FixedDraws([[0.9, 1.0]], [[0.1, -0.05]]))
    np.testing.assert_allclose(out, [[1.5, 0.0, 10.0, 19.0]])


@pytest.mark.parametrize("seed", SEEDS)
def test_rbj_inside_original_and_not_too_small(seed):
    rng = np.random.default_rng(seed)
    boxes = _random_boxes(rng, k=16)
    before = boxes.copy()
    out = restricted_box_jitter(boxes, rng, scale=(0.9, 1.0), shift=0.1)
    np.testing.assert_array_equal(boxes, before)  # input untouched
    assert out.shape == boxes.shape
    eps = 1e-9
    assert np.all(out[:, :2] >= boxes[:, :2] - eps) and np.all(out[:, 2:] <= boxes[:, 2:] + eps)
    size, new = boxes[:, 2:] - boxes[:, :2], out[:, 2:] - out[:, :2]
    # A side scaled by 0.9 and shifted by 0.1 of its length loses another 0.05 to the intersection: ≥ 0.85.
    assert np.all(new >= (0.85 - 1e-9) * size)


def test_rbj_without_shift_keeps_scale_bounds():
    rng = np.random.default_rng(3)
    boxes = _random_boxes(rng, k=64)
    out = restricted_box_jitter(boxes, rng, scale=(0.9, 1.0), shift=0.0)
    ratio = (out[:, 2:] - out[:, :2]) / (boxes[:, 2:] - boxes[:, :2])
    assert ratio.min() >= 0.9 - 1e-9 and ratio.max() <= 1.0 + 1e-9
    assert ratio.min() < 0.92 and ratio.max() > 0.98  # the draw spans the range
    np.testing.assert_allclose((out[:, :2] + out[:, 2:]) / 2, (boxes[:, :2] + boxes[:, 2:]) / 2)


def test_rbj_never_larger_even_when_scale_allows_growth():
    rng = np.random.default_rng(4)
    boxes = _random_boxes(rng, k=64)
    out = restricted_box_jitter(boxes, rng, scale=(1.0, 1.5), shift=0.1)
    assert np.all(out[:, :2] >= boxes[:, :2]) and np.all(out[:, 2:] <= boxes[:, 2:])


# ------------------------------------------------------------------------------------------------------------- PRC
def _check_prc(boxes, cut, side_fraction, max_cover):
    pix = [_pixels(b) for b in boxes]
    regions = [_rect_mask(p) for p in pix]
    lo, hi = side_fraction
    for i, (rect, (x0, y0, x1, y1)) in enumerate(zip(cut.rects, pix)):
        w, h = x1 - x0, y1 - y0
        cw, ch = rect[2] - rect[0], rect[3] - rect[1]
        assert x0 <= rect[0] and rect[2] <= x1 and y0 <= rect[1] and rect[3] <= y1  # inside its proposal
        # One side fraction s ∈ [lo, hi] rounds to both sides (aspect ratio kept): the intervals must meet.
        s_lo = max(lo, (cw - 0.5) / w, (ch - 0.5) / h)
        s_hi = min(hi, (cw + 0.5) / w, (ch + 0.5) / h)
        assert s_lo <= s_hi + 1e-12, (rect, pix[i])
        rect_mask = _rect_mask(rect)
        assert not np.any(cut.pieces[i] & ~rect_mask)  # a piece is part of its rectangle
        others = np.any([regions[j] for j in range(len(pix)) if j != i], axis=0) if len(pix) > 1 else False
        assert not np.any(rect_mask & ~cut.pieces[i] & ~others)  # restored only inside other proposals
    for j, region in enumerate(regions):
        by_others = np.any([cut.pieces[i] for i in range(len(pix)) if i != j], axis=0) if len(pix) > 1 else 0
        assert np.count_nonzero(by_others & region) <= max_cover * region.sum()
    np.testing.assert_array_equal(cut.mask, cut.pieces.any(axis=0))


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("max_cover", [0.5, 0.1])
def test_prc_invariants_on_random_proposals(seed, max_cover):
    rng = np.random.default_rng(seed)
    boxes = _random_boxes(rng, k=5)
    cut = sample_prc_cutouts(boxes, H, W, rng, side_fraction=(0.2, 0.5), max_cover=max_cover)
    _check_prc(boxes, cut, (0.2, 0.5), max_cover)


def test_prc_restores_the_smaller_proposal():
    # A 36×36 cutout of the 40×40 box always covers the 10×10 box inside it entirely (100% > 50%): restored there;
    # the small box then gets only its own 9×9 cutout, which covers 81/1600 of the big box (allowed).
    boxes = np.array([[10.0, 10.0, 20.0, 20.0], [0.0, 0.0, 40.0, 40.0]])
    for seed in SEEDS:
        cut = sample_prc_cutouts(boxes, H, W, np.random.default_rng(seed), side_fraction=(0.9, 0.9), max_cover=0.5)
        small, big = _rect_mask((10, 10, 20, 20)), _rect_mask(cut.rects[1])
        np.testing.assert_array_equal(cut.mask & small, _rect_mask(cut.rects[0]))
        np.testing.assert_array_equal(cut.mask & ~small, big & ~small)
        _check_prc(boxes, cut, (0.9, 0.9), 0.5)


def test_prc_keeps_a_cutout_that_covers_little_of_another_proposal():
    # The boxes share columns 12–15: an 8×8 cutout of either 16×16 box covers at most 4·8 = 32 of the other's 256
    # pixels (12.5% ≤ 50%), so nothing is restored and every rectangle is cut whole.
    boxes = np.array([[0.0, 0.0, 16.0, 16.0], [12.0, 0.0, 28.0, 16.0]])
    for seed in SEEDS:
        cut = sample_prc_cutouts(boxes, H, W, np.random.default_rng(seed), side_fraction=(0.5, 0.5))
        np.testing.assert_array_equal(cut.mask, _rect_mask(cut.rects[0]) | _rect_mask(cut.rects[1]))


def test_prc_fill_colours():
    rng = np.random.default_rng(0)
    # ImageNet's mean (0.485, 0.456, 0.406) × 255 = (123.7, 116.3, 103.5), rounded.
    assert fill_values("mean", 5, rng).tolist() == [124, 116, 104] and MEAN_COLOUR.tolist() == [124, 116, 104]
    assert fill_values("zero", 5, rng).tolist() == [0, 0, 0]
    noise = fill_values("noise", 500, rng)
    assert noise.shape == (500, 3) and noise.dtype == np.uint8
    assert len(np.unique(noise, axis=0)) > 400  # 500 independent colours of 2^24: nearly all distinct


def test_prc_rejects_bad_input():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="boxes"):
        sample_prc_cutouts(np.array([[4.0, 4.0, 2.0, 6.0]]), 8, 8, rng)
    with pytest.raises(ValueError, match="fill"):
        fill_values("blur", 4, rng)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------------------- PRM
@pytest.mark.parametrize("seed", SEEDS)
def test_prm_rectangles_adjacent_with_scale_and_ratio(seed):
    rng = np.random.default_rng(seed)
    boxes = _random_boxes(rng, k=4, min_side=12)
    drawn = sample_prm_rects(boxes, H, W, rng, scale=(0.2, 0.6), ratio=(3 / 4, 4 / 3))
    union = np.zeros((H, W), dtype=bool)
    for rect, side, box in zip(drawn.rects, drawn.sides, boxes):
        x0, y0, x1, y1 = _pixels(box)
        if side < 0:
            assert (x0, y0, x1, y1) == (0, 0, W, H)
            continue
        rx0, ry0, rx1, ry1 = (int(v) for v in rect)
        rw, rh = rx1 - rx0, ry1 - ry0
        # Touches the chosen side from outside and faces the box's span along it.
        if side in (0, 1):
            assert (rx1 == x0) if side == 0 else (rx0 == x1)
            assert min(ry1, y1) - max(ry0, y0) == min(rh, y1 - y0)
        else:
            assert (ry1 == y0) if side == 2 else (ry0 == y1)
            assert min(rx1, x1) - max(rx0, x0) == min(rw, x1 - x0)
        assert not np.any(_rect_mask(rect) & _rect_mask((x0, y0, x1, y1)))  # outside its own box
        assert np.any(_rect_mask(rect))  # a side with room was chosen
        # Some area ∈ [0.2, 0.6]·box and aspect ∈ [3/4, 4/3] round to (rw, rh) (each side within ½ pixel).
        area_lo, area_hi = (rw - 0.5) * (rh - 0.5), (rw + 0.5) * (rh + 0.5)
        box_area = (x1 - x0) * (y1 - y0)
        assert area_lo <= 0.6 * box_area and area_hi >= 0.2 * box_area
        assert (rw - 0.5) / (rh + 0.5) <= 4 / 3 and (rw + 0.5) / (rh - 0.5) >= 3 / 4
        union |= _rect_mask(rect)
    np.testing.assert_array_equal(drawn.mask, union)


def test_prm_uses_every_side_and_skips_sides_without_room():
    rng = np.random.default_rng(0)
    seen = {int(s) for _ in range(40) for s in sample_prm_rects(np.array([[20.0, 15.0, 40.0, 30.0]]), H, W, rng).sides}
    assert seen == {0, 1, 2, 3}
    # Touching the left and top borders: only right (1) or bottom (3).
    seen = {int(s) for _ in range(40) for s in sample_prm_rects(np.array([[0.0, 0.0, 20.0, 20.0]]), H, W, rng).sides}
    assert seen == {1, 3}
    assert sample_prm_rects(np.array([[0.0, 0.0, W, H]]), H, W, rng).sides.tolist() == [-1]


def test_prm_rejects_bad_boxes():
    with pytest.raises(ValueError, match="boxes"):
        sample_prm_rects(np.array([[2.0, 2.0, 5.0]]), 8, 8, np.random.default_rng(0))


# ---------------------------------------------------------------------------------------------------- de-positioning
@pytest.mark.parametrize("seed", SEEDS)
def test_depositioning_composite(seed):
    image, background = _images(seed)
    rng = np.random.default_rng(seed)
    boxes = _random_boxes(rng, k=4, min_side=6)
    boxes = boxes * 0.6  # room to move
    comp = depositioning_composite(image, boxes, background, rng)
    tx, ty = comp.shift
    # One shift for every box; every box stays inside the image.
    np.testing.assert_allclose(comp.boxes, boxes + np.array([tx, ty, tx, ty]))
    assert comp.boxes[:, :2].min() >= 0 and comp.boxes[:, 2].max() <= W and comp.boxes[:, 3].max() <= H
    # m̂ = shifted union of boxes minus PRC's holes; PRC's invariants hold on the shifted boxes.
    union = np.any([_rect_mask(_pixels(b)) for b in comp.boxes], axis=0)
    np.testing.assert_array_equal(comp.mask, union & ~comp.cutouts.mask)
    _check_prc(comp.boxes, comp.cutouts, (0.2, 0.5), 0.5)
    # Pixels under b̂ (outside the holes) are the source's under b; the background everywhere else.
    ys, xs = np.nonzero(comp.mask)
    np.testing.assert_array_equal(comp.image[ys, xs], image[ys - ty, xs - tx])
    np.testing.assert_array_equal(comp.image[~comp.mask], background[~comp.mask])


def test_depositioning_shift_spans_the_free_range():
    # One 10×10 box at (5, 5) in a 48×64 image: tx ∈ [−5, 49], ty ∈ [−5, 33], drawn uniformly.
    image, background = _images(0)
    rng = np.random.default_rng(0)
    shifts = np.array([depositioning_composite(image, np.array([[5.0, 5.0, 15.0, 15.0]]), background, rng).shift
                       for _ in range(300)])
    assert shifts[:, 0].min() == -5 and shifts[:, 0].max() == 49
    assert shifts[:, 1].min() == -5 and shifts[:, 1].max() == 33


def test_depositioning_rejects_boxes_outside_the_image_and_bad_images():
    image, background = _images(0)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="inside"):
        depositioning_composite(image, np.array([[50.0, 5.0, 70.0, 15.0]]), background, rng)
    box = np.array([[2.0, 2.0, 5.0, 5.0]])
    with pytest.raises(ValueError, match="image"):
        depositioning_composite(image[..., 0], box, background, rng)
    with pytest.raises(ValueError, match="background"):
        depositioning_composite(image, box, background[:, :-1], rng)


def test_depositioning_with_a_sliver_box_at_the_edge_pastes_only_pixels_it_has():
    # A box 0.1 px wide on the right edge (a proposal cut to a sliver by the view crop) still covers one pixel; after
    # a shift to the left that pixel's source would be column 64 of a 64-wide image (an IndexError in training).
    image = np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3)
    background = np.zeros_like(image)
    boxes = np.array([[63.9, 10.0, 64.0, 20.0], [2.0, 2.0, 30.0, 30.0]])
    for seed in range(20):
        comp = depositioning_composite(image, boxes, background, np.random.default_rng(seed))
        tx, ty = comp.shift
        ys, xs = np.nonzero(comp.mask)
        assert ((xs - tx >= 0) & (xs - tx < 64) & (ys - ty >= 0) & (ys - ty < 64)).all()
        assert (comp.image[ys, xs] == image[ys - ty, xs - tx]).all()
        assert (comp.image[~comp.mask] == 0).all()
