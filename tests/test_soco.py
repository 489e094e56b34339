"""SoCo (sslcli/methods/soco/method.py): the loss against hand computations, RoIAlign geometry, training, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from sslcli.data.views.regions import RegionViews
from sslcli.losses.regression import soco_loss
from sslcli.methods.base import StepInfo
from sslcli.methods.soco.method import VIEW_PAIRS
from sslcli.models.backbone import build_backbone
from sslcli.models.region_pooling import align_rois, roi_features


# ------------------------------------------------------------------------------------------------------------ loss
def _tensors(rows):
    return [torch.tensor(r, dtype=torch.float32) for r in rows]


# Two boxes (rows), 2-d latents: predictions p1..p3 and target projections z1..z3 of views V1..V3.
P = _tensors([[[1, 0], [0, 2]], [[1, 1], [0, 1]], [[3, 0], [-1, 0]]])
Z = _tensors([[[0, 1], [0, 1]], [[1, 0], [0, 5]], [[1, 0], [1, 0]]])


def test_loss_matches_a_hand_computation():
    out = soco_loss(P, Z, VIEW_PAIRS["soco"])
    # V1↔V2: p1·z2 cosines (1, 1) → 0; p2·z1 cosines (1/√2, 1) → mean of (2 − √2, 0).
    assert out["loss_v1v2"].item() == pytest.approx((2 - math.sqrt(2)) / 2, abs=1e-6)
    # V1↔V3: p1·z3 cosines (1, 0) → mean of (0, 2) = 1; p3·z1 cosines (0, 0) → 2.
    assert out["loss_v1v3"].item() == pytest.approx(3.0, abs=1e-6)
    assert out["loss"].item() == pytest.approx(3 + (2 - math.sqrt(2)) / 2, abs=1e-6)
    assert "loss_v2v3" not in out
    # view_pairs: all adds V2↔V3: p2·z3 cosines (1/√2, 0) → (2 − √2 + 2)/2; p3·z2 cosines (1, 0) → 1.
    out = soco_loss(P, Z, VIEW_PAIRS["all"])
    assert out["loss_v2v3"].item() == pytest.approx((4 - math.sqrt(2)) / 2 + 1, abs=1e-6)
    assert out["loss"].item() == pytest.approx(3 + (2 - math.sqrt(2)) / 2 + (4 - math.sqrt(2)) / 2 + 1, abs=1e-6)


def numpy_soco_paper(p: list[np.ndarray], z: list[np.ndarray], batch: int, pairs) -> float:
    """SoCo's form: per direction −2·Σ_ij C_ij p̂_i·ẑ_j / ΣC per image (C = identity: correspondence by index),
    averaged over images; summed over directions and pairs."""
    def unit(x):
        return x / np.linalg.norm(x, axis=-1, keepdims=True)

    def direction(pa, zb):
        pa, zb = unit(pa).reshape(batch, -1, pa.shape[-1]), unit(zb).reshape(batch, -1, zb.shape[-1])
        sim = pa @ zb.transpose(0, 2, 1)                       # (B, K, K)
        corr = np.eye(sim.shape[1])[None]
        return float((-2 * (sim * corr).sum((1, 2)) / corr.sum((1, 2))).mean())

    return sum(direction(p[a], z[b]) + direction(p[b], z[a]) for a, b in pairs)


@pytest.mark.parametrize("pairs", ["soco", "all"])
def test_loss_is_socos_correspondence_form_plus_a_constant(pairs):
    gen = torch.Generator().manual_seed(0)
    batch, k, dim = 3, 4, 8
    p = [torch.randn(batch * k, dim, generator=gen) for _ in range(3)]
    z = [torch.randn(batch * k, dim, generator=gen) for _ in range(3)]
    ours = soco_loss(p, z, VIEW_PAIRS[pairs])["loss"].item()
    paper = numpy_soco_paper([x.numpy() for x in p], [x.numpy() for x in z], batch, VIEW_PAIRS[pairs])
    assert ours == pytest.approx(paper + 2 * 2 * len(VIEW_PAIRS[pairs]), abs=1e-5)  # 2 per direction


def test_targets_get_no_gradient():
    p = [x.clone().requires_grad_(True) for x in P]
    z = [x.clone().requires_grad_(True) for x in Z]
    soco_loss(p, z, VIEW_PAIRS["soco"])["loss"].backward()
    assert all(x.grad is not None for x in p) and all(x.grad is None for x in z)


# ---------------------------------------------------------------------------------------------------- RoI features
def test_roialign_reads_res4_at_stride_16_with_aligned_boxes():
    # With aligned=True, the pixel box [16a, 16c) maps onto res4 cells a..c−1 exactly: 2×2 bins of one cell each,
    # sampled at the cell centres (one sample per bin). aligned=False or another stride would shift or blur them.
    res4 = torch.randn(2, 5, 4, 4)
    boxes = torch.tensor([[[0.0, 0.0, 32.0, 32.0], [16.0, 32.0, 48.0, 64.0]],
                          [[32.0, 0.0, 64.0, 32.0], [0.0, 16.0, 32.0, 48.0]]])
    rois = align_rois(res4, boxes, 2, stride=16)
    assert rois.shape == (4, 5, 2, 2)
    want = [res4[0, :, 0:2, 0:2], res4[0, :, 2:4, 1:3], res4[1, :, 0:2, 2:4], res4[1, :, 1:3, 0:2]]
    for got, expected in zip(rois, want):
        assert torch.allclose(got, expected, atol=1e-6)


def test_roi_features_are_image_major_res5_vectors():
    torch.manual_seed(0)
    encoder = build_backbone("resnet18", 8).eval()  # eval: BN statistics do not couple the images
    images = torch.randn(2, 3, 64, 64)
    boxes = torch.tensor([[[0, 0, 64, 64], [8, 8, 40, 30], [30, 20, 60, 62]],
                          [[4, 4, 20, 20], [0, 0, 64, 64], [10, 30, 50, 60]]], dtype=torch.float32)
    with torch.no_grad():
        both = roi_features(encoder, images, boxes, 14)
        first = roi_features(encoder, images[:1], boxes[:1], 14)
        second = roi_features(encoder, images[1:], boxes[1:], 14)
    assert both.shape == (6, encoder.out_channels)
    assert torch.allclose(both[:3], first, atol=1e-5) and torch.allclose(both[3:], second, atol=1e-5)
    assert not torch.allclose(both[0], both[1])  # different boxes, different features


# -------------------------------------------------------------------------------------------------------- the method
def _spec(method: dict | None = None, **model):
    from sslcli.spec import parse_spec

    method = {"name": "soco", "boxes": "unused.h5", "dim": 16, "hidden_dim": 32, **(method or {})}
    return parse_spec({"data": {"root": "d", "image_size": 64, "workers": 0},
                       "model": {"arch": "resnet18", "width": 8, "c4": True, **model}, "method": method,
                       "batch_size": 4})


def _batch(n: int = 4, k: int = 3) -> dict:
    views = RegionViews(64, boxes_per_image=k)
    rng = np.random.default_rng(0)
    samples = []
    for i in range(n):
        torch.manual_seed(i)
        image = rng.integers(0, 255, (72, 96, 3), dtype=np.uint8)
        image[10:50, 20:70] = (200, 40, 40)
        boxes = np.array([[20, 10, 70, 50], [0, 0, 60, 72], [40, 30, 96, 72]], np.float32)
        samples.append(views(image, boxes))
    return default_collate(samples)


def _info(step: int) -> StepInfo:
    return StepInfo(step=step, epoch=0, steps_per_epoch=100, total_steps=100)


def test_method_trains_a_few_steps_and_the_loss_decreases():
    from sslcli.methods.soco.method import Soco

    torch.manual_seed(0)
    soco = Soco(_spec())
    batch = _batch()
    optimiser = torch.optim.SGD([p for p in soco.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    losses = []
    for step in range(6):
        out = soco(batch, _info(step))
        assert set(out) == {"loss", "loss_v1v2", "loss_v1v3"} and torch.isfinite(out["loss"])
        optimiser.zero_grad()
        out["loss"].backward()
        if step == 0:
            assert soco.encoder.conv1.weight.grad.abs().sum() > 0
            assert soco.encoder.layer4[0].conv1.weight.grad.abs().sum() > 0
            assert all(p.grad is None for p in soco.target_encoder.parameters())
        optimiser.step()
        before = [p.clone() for p in soco.target_projector.parameters()]
        soco.after_step(_info(step))
        tau = 1 - (1 - 0.99) * (math.cos(math.pi * step / 100) + 1) / 2
        for old, new, online in zip(before, soco.target_projector.parameters(), soco.projector.parameters()):
            assert torch.allclose(new, tau * old + (1 - tau) * online, atol=1e-6)
        losses.append(out["loss"].item())
    assert losses[-1] < losses[0]


def test_soco_needs_a_c4_model():
    from sslcli.errors import InputError
    from sslcli.methods.soco.method import Soco

    with pytest.raises(InputError, match="model.c4"):
        Soco(_spec(c4=False))


# --------------------------------------------------------------------------------- padding: the authors' correspondence
def _two_proposal_image() -> tuple[np.ndarray, np.ndarray, list]:
    """A 96×128 image with two flat proposals (red, green) on grey: a box's colour names its proposal."""
    image = np.full((96, 128, 3), 90, np.uint8)
    rects = [(10, 12, 60, 70), (70, 20, 120, 90)]
    colours = [(255, 0, 0), (0, 255, 0)]
    for (x0, y0, x1, y1), colour in zip(rects, colours):
        image[y0:y1, x0:x1] = colour
    return image, np.array(rects, np.float32), colours


def _proposal_of(view: torch.Tensor, box: torch.Tensor, colours: list) -> int:
    """Which proposal a box shows: the palette colour at its centre pixel (boxes are never smaller than 2 px here)."""
    x, y = int((box[0] + box[2]) / 2), int((box[1] + box[3]) / 2)
    pixel = view[:, y, x].int()
    return next(i for i, c in enumerate(colours) if (pixel - torch.tensor(c)).abs().max() <= 40)


def numpy_authors_direction(p: np.ndarray, z: np.ndarray, owners_p: np.ndarray, owners_z: np.ndarray) -> float:
    """SoCo's ``regression_loss_bboxs`` from its description, + 2: per image −2·Σ_ij C_ij p̂_i·ẑ_j / ΣC with
    C_ij = [box i and box j show the same proposal]; averaged over images. p, z: (B, K, D); owners: (B, K)."""
    p = p / np.linalg.norm(p, axis=-1, keepdims=True)
    z = z / np.linalg.norm(z, axis=-1, keepdims=True)
    corr = (owners_p[:, :, None] == owners_z[:, None, :]).astype(np.float64)
    return float(np.mean(2 - 2 * (np.einsum("bid,bjd->bij", p, z) * corr).sum((1, 2)) / corr.sum((1, 2))))


@pytest.mark.parametrize("recipe", ["paper", "c4-code"])
def test_padded_image_loss_is_the_authors_correspondence(recipe):
    # Two proposals, K = 4: each view pads its two free slots with its own random copies. Which proposal a slot holds
    # is read from the pixels (not from the transform's ids); the loss must equal the numpy formula on those owners.
    from torchvision.transforms import v2

    from sslcli.data.views.regions import RegionViews, downsample
    from sslcli.methods.soco.method import SET_VIEWS, Soco, set_pairs

    image, rects, colours = _two_proposal_image()
    k, size = 4, 64
    views = RegionViews(size, boxes_per_image=k, crop_scale=(0.9, 1.0), jitter_p=0.0, recipe=recipe,
                        padding="authors")
    drawn = []
    for seed in range(2):
        torch.manual_seed(seed + 10)
        d = views.draw(image, rects)
        drawn.append(d)
    owners = np.array([[[_proposal_of(d.views[0 if v == 0 else 1], box, colours) for box in d.boxes[s]]
                        for s, v in enumerate(SET_VIEWS[recipe]) if v < 2] for d in drawn])    # (B, sets, K)
    # Both proposals in every view's first slots; at least one image whose two views padded differently.
    assert all(set(o[:2]) == {0, 1} for image_owners in owners for o in image_owners)
    uneven = sum(int(sorted(o[0]) != sorted(o[1])) for o in owners)
    assert uneven >= 1

    def as_float(x):
        return v2.functional.normalize(v2.functional.to_dtype(x, torch.float32, scale=True),
                                       [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])

    batch = {"view1": torch.stack([as_float(d.views[0]) for d in drawn]),
             "view2": torch.stack([as_float(d.views[1]) for d in drawn]),
             "boxes": torch.stack([d.boxes for d in drawn]), "box_ids": torch.stack([d.ids for d in drawn])}
    if recipe == "paper":
        batch["view3"] = downsample(batch["view2"], size // 2)
        owners = np.concatenate([owners, owners[:, 1:2]], axis=1)  # V3 = V2 downsampled: V2's slots
    torch.manual_seed(0)
    soco = Soco(_spec({"recipe": recipe, "boxes_per_image": k})).eval()  # eval: BN does not couple the boxes
    with torch.no_grad():
        loss = soco(batch, _info(0))["loss"].item()
        p, z = [], []
        for s, v in enumerate(SET_VIEWS[recipe]):
            key, boxes = ("view1", "view2", "view3")[v], batch["boxes"][:, s]
            p.append(soco.predictor(soco.projector(roi_features(soco.encoder, batch[key], boxes, 14))).view(2, k, -1))
            z.append(soco.target_projector(roi_features(soco.target_encoder, batch[key], boxes, 14)).view(2, k, -1))
    want = sum(numpy_authors_direction(p[a].numpy(), z[b].numpy(), owners[:, a], owners[:, b])
               + numpy_authors_direction(p[b].numpy(), z[a].numpy(), owners[:, b], owners[:, a])
               for a, b in set_pairs(recipe, "soco"))
    assert loss == pytest.approx(want, rel=1e-5)
    # The correspondence matters here: pairing slot k with slot k only gives another value.
    slots = sum(numpy_authors_direction(p[a].numpy(), z[b].numpy(), *(np.tile(np.arange(k), (2, 1)),) * 2)
                + numpy_authors_direction(p[b].numpy(), z[a].numpy(), *(np.tile(np.arange(k), (2, 1)),) * 2)
                for a, b in set_pairs(recipe, "soco"))
    assert abs(slots - want) > 1e-4 * abs(want)


@pytest.mark.parametrize("recipe", ["c4-code", "fpn-code"])
def test_code_recipes_train_and_log_their_pairs(recipe):
    from sslcli.data.views.regions import RegionViews
    from sslcli.methods.soco.method import Soco

    views = RegionViews(64, boxes_per_image=3, recipe=recipe, padding="authors")
    image, rects, _ = _two_proposal_image()
    samples = []
    for seed in range(4):
        torch.manual_seed(seed)
        samples.append(views(image, rects))
    batch = default_collate(samples)
    torch.manual_seed(0)
    soco = Soco(_spec({"recipe": recipe, "boxes_per_image": 3}))
    optimiser = torch.optim.SGD([p for p in soco.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    losses = []
    for step in range(4):
        out = soco(batch, _info(step))
        want = {"loss", "loss_v1v2"} | ({"loss_v1v3"} if recipe == "fpn-code" else set())
        assert set(out) == want and torch.isfinite(out["loss"])
        optimiser.zero_grad()
        out["loss"].backward()
        optimiser.step()
        soco.after_step(_info(step))
        losses.append(out["loss"].item())
    assert losses[-1] < losses[0]


def test_all_view_pairs_need_the_paper_recipe():
    from sslcli.spec import SpecError

    with pytest.raises(SpecError, match="method.view_pairs"):
        _spec({"recipe": "c4-code", "view_pairs": "all"})


def test_cutout_scale_must_be_a_range_of_area_fractions():
    from sslcli.spec import SpecError

    with pytest.raises(SpecError, match="method.cutout_scale"):
        _spec({"recipe": "c4-code", "cutout_scale": [0.3, 1.5]})
    with pytest.raises(SpecError, match="method.cutout_scale"):
        _spec({"recipe": "c4-code", "cutout_scale": [0.3, 0.1]})
