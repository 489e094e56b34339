"""SoCo's box-carrying views (sslcli/data/views/regions.py): boxes move with the pixels, jitter bounds, sampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from sslcli.data.views.regions import RegionViews, downsample, jitter_boxes, overlapping, place_boxes, sample_indices

# An asymmetric layout (a missed flip or a wrong offset would land on another colour or on black), 120×90 image.
HEIGHT, WIDTH = 90, 120
RECTS = [(6, 8, 40, 38), (52, 4, 112, 30), (10, 50, 34, 84), (60, 44, 100, 86)]  # x0, y0, x1, y1; 8+ px apart
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 255)]


def painted_image() -> np.ndarray:
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    for (x0, y0, x1, y1), colour in zip(RECTS, COLOURS):
        image[y0:y1, x0:x1] = colour
    return image


def colour_of(view: torch.Tensor, box: torch.Tensor, margin: float = 2.0) -> int | None:
    """Index of the single colour filling ``box`` shrunk by ``margin`` px in a (3, s, s) uint8 view; None if too small
    to hold interior pixels; -1 if the interior is not one uniform colour of the palette."""
    x0, y0 = int(np.ceil(box[0] + margin)), int(np.ceil(box[1] + margin))
    x1, y1 = int(np.floor(box[2] - margin)), int(np.floor(box[3] - margin))
    if x1 <= x0 or y1 <= y0:
        return None
    pixels = view[:, y0:y1, x0:x1].reshape(3, -1).T.int()
    for i, colour in enumerate(COLOURS):
        if (pixels - torch.tensor(colour)).abs().max() <= 12:
            return i
    return -1


def ring_has_colour(view: torch.Tensor, box: torch.Tensor, colour: int, margin: float = 2.0, width: int = 2) -> bool:
    """Whether the band ``margin``..``margin + width`` px outside ``box`` (inside the view) shows ``colour``."""
    size = view.shape[-1]
    yy, xx = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")  # pixel centres
    dx = torch.maximum(box[0] - xx, xx - box[2]).clamp(min=0)
    dy = torch.maximum(box[1] - yy, yy - box[3]).clamp(min=0)
    distance = torch.maximum(dx, dy)
    band = (distance > margin) & (distance <= margin + width)
    target = torch.tensor(COLOURS[colour])[:, None]
    return bool(((view[:, band].int() - target).abs().max(0).values <= 12).any())


def test_boxes_follow_pixels_in_every_view():
    views = RegionViews(64, boxes_per_image=4, crop_scale=(0.3, 1.0), jitter_p=0.0)
    image, checked = painted_image(), 0
    for seed in range(30):
        torch.manual_seed(seed)
        view1, view2, boxes = views.geometry(image, np.array(RECTS, np.float32))
        view3 = downsample(view2, 32)
        assert boxes.shape == (3, 4, 4) and view1.shape == view2.shape == (3, 64, 64) and view3.shape == (3, 32, 32)
        for k in range(4):
            # V1 holds the whole image: the colour there names the proposal; every other view must show the same one.
            source = colour_of(view1, boxes[0, k])
            assert source is not None and source >= 0
            for view, box in ((view1, boxes[0, k]), (view2, boxes[1, k]), (view3, boxes[2, k])):
                side = view.shape[-1]
                assert (box >= 0).all() and (box <= side).all() and box[2] > box[0] and box[3] > box[1]
                found = colour_of(view, box)
                if found is not None:
                    assert found == source, f"seed {seed}, box {k}: colour {found} where {source} was expected"
                    assert not ring_has_colour(view, box, source), f"seed {seed}: box {k} is smaller than its region"
                    checked += 1
    assert checked > 250  # most boxes are large enough to be checked in every view


def test_the_two_flips_both_occur():
    views = RegionViews(64, boxes_per_image=4, jitter_p=0.0)
    flipped = set()
    for seed in range(20):
        torch.manual_seed(seed)
        _, _, boxes = views.geometry(painted_image(), np.array(RECTS[:1], np.float32))
        flipped.add(bool(boxes[0, 0, 0] > 32))  # the red box sits on the left of the image unless V1 is flipped
    assert flipped == {True, False}


def test_only_proposals_overlapping_both_views_are_kept():
    boxes = torch.tensor([[0, 0, 10, 10], [5, 5, 30, 30], [40, 40, 50, 50], [20, 0, 25, 20]], dtype=torch.float32)
    assert overlapping(boxes, (20, 20, 60, 60)).tolist() == [False, True, True, False]  # touching edges: no area


def test_sampling_pads_by_resampling_when_fewer_than_k():
    torch.manual_seed(0)
    idx = sample_indices(2, 5)
    assert len(idx) == 5 and set(idx.tolist()) == {0, 1}
    idx = sample_indices(7, 4)
    assert len(idx) == 4 and len(set(idx.tolist())) == 4 and max(idx.tolist()) < 7
    # Through the views: two proposals, K = 5 → both appear and each slot is one of them, the same in every view.
    views = RegionViews(64, boxes_per_image=5, crop_scale=(1.0, 1.0), jitter_p=0.0)
    image = painted_image()
    view1, view2, boxes = views.geometry(image, np.array(RECTS[:2], np.float32))
    colours1 = [colour_of(view1, b) for b in boxes[0]]
    colours2 = [colour_of(view2, b) for b in boxes[1]]
    assert set(colours1) == {0, 1} and colours1 == colours2


def test_an_image_without_proposals_uses_the_shared_region():
    views = RegionViews(64, boxes_per_image=3, jitter_p=0.0)
    torch.manual_seed(0)
    _, _, boxes = views.geometry(painted_image(), np.zeros((0, 4), np.float32))
    assert torch.allclose(boxes[1], torch.tensor([[0.0, 0.0, 64.0, 64.0]] * 3))  # the V2 crop = all of V2
    assert torch.allclose(boxes[2], torch.tensor([[0.0, 0.0, 32.0, 32.0]] * 3))


def random_boxes(n: int = 4000) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 4) seeded boxes inside [0, 150]² with sides 1–51 px, and their (n, 2) sizes."""
    torch.manual_seed(0)
    xy = torch.rand(n, 2) * 100
    wh = torch.rand(n, 2) * 50 + 1
    return torch.cat([xy, xy + wh], 1), wh


def test_jitter_stays_within_its_bounds():
    boxes, wh = random_boxes()
    out = jitter_boxes(boxes, p=1.0, scale=0.1)
    centre, new_centre = (boxes[:, :2] + boxes[:, 2:]) / 2, (out[:, :2] + out[:, 2:]) / 2
    new_wh = out[:, 2:] - out[:, :2]
    assert ((new_centre - centre).abs() <= 0.1 * wh + 1e-4).all()
    assert ((new_wh / wh - 1).abs() <= 0.1 + 1e-5).all()
    # The bounds are reached, not merely respected: shifts and scales spread over the whole range.
    assert (new_centre - centre).div(wh).abs().max() > 0.09 and (new_wh / wh - 1).abs().max() > 0.09
    assert torch.equal(jitter_boxes(boxes, p=0.0, scale=0.1), boxes)
    changed = (jitter_boxes(boxes, p=0.5, scale=0.1) != boxes).any(1).float().mean()
    assert 0.45 < changed < 0.55


def test_placed_boxes_are_clipped_and_keep_an_area():
    torch.manual_seed(0)
    # Boxes hanging over every border and a sliver barely inside: clipped to [0, 64], never left without area.
    boxes = torch.tensor([[-10, -10, 20, 20], [50, 50, 80, 80], [63.9, 10, 90, 20], [-5, 30, 0.05, 40]])
    for _ in range(50):
        out = place_boxes(boxes, 64, jitter_p=1.0, jitter_scale=0.1)
        assert (out >= 0).all() and (out <= 64).all()
        assert (out[:, 2] > out[:, 0]).all() and (out[:, 3] > out[:, 1]).all()


def collated_batch(views) -> dict:
    """Four images with 0, 1, 4 and 9 proposals (fewer and more than K = 4), viewed and collated."""
    samples = []
    for seed, n in enumerate((0, 1, 4, 9)):
        torch.manual_seed(seed)
        rects = np.array((RECTS * 3)[:n], np.float32).reshape(-1, 4)
        samples.append(views(painted_image(), rects))
    return default_collate(samples)


def test_outputs_have_fixed_shapes_and_collate():
    views = RegionViews(64, boxes_per_image=4)
    batch = collated_batch(views)
    assert batch["view1"].shape == (4, 3, 64, 64) and batch["view2"].shape == (4, 3, 64, 64)
    assert batch["view3"].shape == (4, 3, 32, 32) and batch["boxes"].shape == (4, 3, 4, 4)
    assert batch["view1"].dtype == torch.float32 and batch["boxes"].dtype == torch.float32


def test_picklable():
    import pickle

    views = pickle.loads(pickle.dumps(RegionViews(32, boxes_per_image=2)))
    torch.manual_seed(0)
    out = views(painted_image(), np.array(RECTS, np.float32))
    assert out["boxes"].shape == (3, 2, 4)


@pytest.mark.parametrize("size", [64, 65])
def test_v3_boxes_are_v2_boxes_scaled(size):
    views = RegionViews(size, boxes_per_image=4, jitter_p=0.0)
    torch.manual_seed(3)
    _, _, boxes = views.geometry(painted_image(), np.array(RECTS, np.float32))
    assert torch.allclose(boxes[2], boxes[1] * (size // 2) / size, atol=1e-5)


def test_jitter_moves_v1_boxes_only_and_within_bounds():
    image = np.zeros((128, 128, 3), np.uint8)
    rects = np.array([[30, 30, 60, 70], [70, 40, 100, 90]], np.float32)  # far enough from the borders: no clipping
    # V1 is the whole image at 64/128; with crop scale 1 on a square image V2 is too (an aspect ratio off 1 makes a
    # side longer than 128 and is redrawn, then torchvision's fallback is the whole image). Each proposal in a 64 px
    # view: the rect halved, or mirrored (x → 64 − x) when the view is flipped.
    halved = torch.tensor(rects / 2)
    exact = [{tuple(b) for b in halved.tolist()},
             {(64 - x1, y0, 64 - x0, y1) for x0, y0, x1, y1 in halved.tolist()}]
    jittered = RegionViews(64, boxes_per_image=2, crop_scale=(1.0, 1.0), jitter_p=1.0, jitter_scale=0.1)
    moved = 0
    for seed in range(20):
        torch.manual_seed(seed)
        _, _, boxes = jittered.geometry(image, rects)
        v2 = {tuple(b) for b in boxes[1].tolist()}
        assert v2 in exact  # V2: the exact proposals (V3 is V2 scaled: test_v3_boxes_are_v2_boxes_scaled)
        a = boxes[0]
        for unflipped in (True, False):  # V1 is flipped or not: its jittered boxes lie around one of the two sets
            b = torch.tensor(sorted(exact[0 if unflipped else 1]))
            order = torch.cdist(a[:, :2] + a[:, 2:], b[:, :2] + b[:, 2:]).argmin(1)
            b = b[order]
            wh = b[:, 2:] - b[:, :2]
            centre_shift = ((a[:, :2] + a[:, 2:]) - (b[:, :2] + b[:, 2:])).abs() / 2
            if (centre_shift <= 0.1 * wh + 1e-4).all() and (((a[:, 2:] - a[:, :2]) / wh - 1).abs() <= 0.1 + 1e-5).all():
                break
        else:
            raise AssertionError(f"seed {seed}: V1 boxes {a.tolist()} are not within 10 % of {exact}")
        moved += int({tuple(x) for x in a.tolist()} not in exact)
    assert moved == 20


# ----------------------------------------------------------------------------------------------- the code recipes
@pytest.mark.parametrize("recipe, sets, has_v3", [("paper", 3, True), ("c4-code", 2, False), ("fpn-code", 4, True)])
def test_recipes_have_fixed_shapes_and_collate(recipe, sets, has_v3):
    views = RegionViews(64, boxes_per_image=4, recipe=recipe, padding="authors")
    batch = collated_batch(views)
    assert batch["boxes"].shape == (4, sets, 4, 4) and batch["box_ids"].shape == (4, sets, 4)
    assert ("view3" in batch) == has_v3
    if has_v3:
        assert batch["view3"].shape == (4, 3, 32, 32)


def test_c4_code_never_jitters_and_boxes_follow_pixels():
    views = RegionViews(64, boxes_per_image=4, crop_scale=(0.3, 1.0), jitter_p=1.0, recipe="c4-code")
    image, checked = painted_image(), 0
    for seed in range(20):
        torch.manual_seed(seed)
        drawn = views.draw(image, np.array(RECTS, np.float32))
        view1, view2 = drawn.views
        for k in range(4):
            # V1 is the whole image, unjittered: box k is its proposal's rectangle scaled (mirrored when flipped).
            x0, y0, x1, y1 = (drawn.boxes[0, k] * torch.tensor([WIDTH, HEIGHT, WIDTH, HEIGHT]) / 64).tolist()
            source = colour_of(view1, drawn.boxes[0, k])
            rx0, ry0, rx1, ry1 = RECTS[source]
            assert np.allclose([y0, y1], [ry0, ry1], atol=1e-3)
            assert np.allclose([x0, x1], [rx0, rx1], atol=1e-3) or np.allclose([x0, x1], [WIDTH - rx1, WIDTH - rx0],
                                                                                 atol=1e-3)
            found = colour_of(view2, drawn.boxes[1, k])
            if found is not None:
                assert found == source
                checked += 1
    assert checked > 40


def test_fpn_code_v3_is_its_own_crop_with_its_own_boxes():
    views = RegionViews(64, boxes_per_image=4, crop_scale=(0.3, 1.0), jitter_p=0.0, recipe="fpn-code")
    image, checked, different = painted_image(), 0, 0
    for seed in range(20):
        torch.manual_seed(seed)
        drawn = views.draw(image, np.array(RECTS, np.float32))
        view1, view2, view3 = drawn.views
        assert view3.shape == (3, 32, 32)
        different += int(not torch.equal(view3, downsample(view2, 32)))
        for v1_set, other_set, view in ((0, 1, view2), (2, 3, view3)):  # each pair: V1's box k ↔ the view's box k
            for k in range(4):
                source = colour_of(view1, drawn.boxes[v1_set, k])
                found = colour_of(view, drawn.boxes[other_set, k], margin=1.0)
                if found is not None and drawn.ids[v1_set, k] == drawn.ids[other_set, k]:
                    assert found == source
                    checked += 1
    assert different == 20 and checked > 40


def test_corner_jitter_is_anchored_at_the_corner():
    from sslcli.data.views.regions import jitter_corners

    boxes, wh = random_boxes()
    out = jitter_corners(boxes, p=1.0, scale=0.1)
    corner_shift = (out[:, :2] - boxes[:, :2]) / wh
    new_wh = (out[:, 2:] - out[:, :2]) / wh
    assert (corner_shift.abs() <= 0.1 + 1e-5).all() and ((new_wh - 1).abs() <= 0.1 + 1e-5).all()
    assert corner_shift.abs().max() > 0.09 and (new_wh - 1).abs().max() > 0.09
    # Anchored at the corner, the centre moves by the corner shift plus half the size change: up to 0.15·w.
    centre_shift = ((out[:, :2] + out[:, 2:]) - (boxes[:, :2] + boxes[:, 2:])).abs() / 2 / wh
    assert centre_shift.max() > 0.11
    changed = (jitter_corners(boxes, p=0.5, scale=0.1) != boxes).any(1).float().mean()
    assert 0.45 < changed < 0.55


def test_cutout_removes_a_square_of_the_drawn_share_of_each_box():
    from sslcli.data.views.regions import cutout_in_boxes

    torch.manual_seed(0)
    view = torch.ones(3, 64, 64)
    box = torch.tensor([[20.0, 20.0, 44.0, 44.0]])  # 24×24, far enough from the borders for any cut (≤ 13 px) to fit
    shares = []
    for _ in range(400):
        out = cutout_in_boxes(view, box, p=1.0, scale=(0.1, 0.3))
        cut = out[0] == 0
        assert torch.equal(out[1] == 0, cut) and cut.any()
        rows, cols = cut.any(1).nonzero(), cut.any(0).nonzero()
        assert len(rows) == len(cols)  # a square
        cy, cx = (rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2
        assert 20 <= cx < 44 and 20 <= cy < 44  # centred inside the box
        shares.append(cut.sum().item() / 576)
    # Side 2·⌊round(√(U·area))/2⌋ + 1: the share stays within [0.1, 0.3] up to about one pixel of side.
    assert 0.08 < min(shares) and max(shares) < 0.33 and 0.17 < np.mean(shares) < 0.23
    assert torch.equal(cutout_in_boxes(view, box, p=0.0, scale=(0.1, 0.3)), view)
