"""PixPro (docs/pixpro.md): the PPM and the losses against a faithful transcription of the authors' code, the
positive pairs and coordinates by hand, and the method's wiring (its forward is the authors' forward).

The authors' code is github.com/zdaxie/PixPro at e390d6b: contrast/models/PixPro.py (`regression_loss`, lines 44-89;
`PixPro.featprop`, lines 178-202; `PixPro.regression_loss`, lines 204-205; `PixPro.forward`, lines 207-265). The
transcriptions keep their statements, cited by line; `self.*` attributes become arguments.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sslcli.losses.pixpro import instance_consistency, pixel_consistency, pixel_propagation, positive_pairs
from sslcli.methods.base import StepInfo
from sslcli.spec import parse_spec


# ------------------------------------------------------------------------------------------- the authors' code
def authors_regression_loss(q, k, coord_q, coord_k, pos_ratio=0.5):
    """PixPro.py:44-89, statement for statement."""
    N, C, H, W = q.shape
    q = q.view(N, C, -1)
    k = k.view(N, C, -1)
    x_array = torch.arange(0., float(W), dtype=coord_q.dtype, device=coord_q.device).view(1, 1, -1).repeat(1, H, 1)
    y_array = torch.arange(0., float(H), dtype=coord_q.dtype, device=coord_q.device).view(1, -1, 1).repeat(1, 1, W)
    q_bin_width = ((coord_q[:, 2] - coord_q[:, 0]) / W).view(-1, 1, 1)
    q_bin_height = ((coord_q[:, 3] - coord_q[:, 1]) / H).view(-1, 1, 1)
    k_bin_width = ((coord_k[:, 2] - coord_k[:, 0]) / W).view(-1, 1, 1)
    k_bin_height = ((coord_k[:, 3] - coord_k[:, 1]) / H).view(-1, 1, 1)
    q_start_x = coord_q[:, 0].view(-1, 1, 1)
    q_start_y = coord_q[:, 1].view(-1, 1, 1)
    k_start_x = coord_k[:, 0].view(-1, 1, 1)
    k_start_y = coord_k[:, 1].view(-1, 1, 1)
    q_bin_diag = torch.sqrt(q_bin_width ** 2 + q_bin_height ** 2)
    k_bin_diag = torch.sqrt(k_bin_width ** 2 + k_bin_height ** 2)
    max_bin_diag = torch.max(q_bin_diag, k_bin_diag)
    center_q_x = (x_array + 0.5) * q_bin_width + q_start_x
    center_q_y = (y_array + 0.5) * q_bin_height + q_start_y
    center_k_x = (x_array + 0.5) * k_bin_width + k_start_x
    center_k_y = (y_array + 0.5) * k_bin_height + k_start_y
    dist_center = torch.sqrt((center_q_x.view(-1, H * W, 1) - center_k_x.view(-1, 1, H * W)) ** 2
                             + (center_q_y.view(-1, H * W, 1) - center_k_y.view(-1, 1, H * W)) ** 2) / max_bin_diag
    pos_mask = (dist_center < pos_ratio).float().detach()
    logit = torch.bmm(q.transpose(1, 2), k)
    loss = (logit * pos_mask).sum(-1).sum(-1) / (pos_mask.sum(-1).sum(-1) + 1e-6)
    return -2 * loss.mean()


def authors_featprop(feat, value_transform, pixpro_clamp_value, pixpro_p):
    """PixPro.py:178-202 (`PixPro.featprop`)."""
    N, C, H, W = feat.shape
    feat_value = value_transform(feat)
    feat_value = F.normalize(feat_value, dim=1)
    feat_value = feat_value.view(N, C, -1)
    feat = F.normalize(feat, dim=1)
    feat = feat.view(N, C, -1)
    attention = torch.bmm(feat.transpose(1, 2), feat)
    attention = torch.clamp(attention, min=pixpro_clamp_value)
    if pixpro_p < 1.:
        attention = attention + 1e-6
    attention = attention ** pixpro_p
    feat = torch.bmm(feat_value, attention.transpose(1, 2))
    return feat.view(N, C, H, W)


def authors_instance_regression_loss(x, y):
    """PixPro.py:204-205 (`PixPro.regression_loss`)."""
    return -2. * torch.einsum('nc, nc->n', [x, y]).mean()


def authors_forward(model, im_1, im_2, coord1, coord2, args):
    """PixPro.py:215-265 (`PixPro.forward`) with the authors' modules named as sslcli's: ``encoder`` (their ResNet
    with head_type='early_return' returns the res5 map: `forward_map`), ``projector``, ``value``,
    ``target_encoder`` / ``target_projector`` (their encoder_k / projector_k; the momentum update at line 237
    is the method's after_step), ``instance_projector``, ``predictor``; ``self.avgpool`` (AvgPool2d(7) on 7×7 res5
    maps) is the mean over the map."""
    def featprop(x):
        return authors_featprop(x, model.value, args["clamp"], args["sharpness"])

    def avgpool(x):
        return x.mean(dim=(2, 3), keepdim=True)

    feat_1 = model.encoder.forward_map(im_1)
    proj_1 = model.projector(feat_1)
    pred_1 = featprop(proj_1)
    pred_1 = F.normalize(pred_1, dim=1)
    feat_2 = model.encoder.forward_map(im_2)
    proj_2 = model.projector(feat_2)
    pred_2 = featprop(proj_2)
    pred_2 = F.normalize(pred_2, dim=1)
    if args["instance_weight"] > 0.:
        proj_instance_1 = model.instance_projector(feat_1)
        pred_instacne_1 = model.predictor(proj_instance_1)
        pred_instance_1 = F.normalize(avgpool(pred_instacne_1).view(pred_instacne_1.size(0), -1), dim=1)
        proj_instance_2 = model.instance_projector(feat_2)
        pred_instance_2 = model.predictor(proj_instance_2)
        pred_instance_2 = F.normalize(avgpool(pred_instance_2).view(pred_instance_2.size(0), -1), dim=1)
    with torch.no_grad():
        feat_1_ng = model.target_encoder.forward_map(im_1)
        proj_1_ng = model.target_projector(feat_1_ng)
        proj_1_ng = F.normalize(proj_1_ng, dim=1)
        feat_2_ng = model.target_encoder.forward_map(im_2)
        proj_2_ng = model.target_projector(feat_2_ng)
        proj_2_ng = F.normalize(proj_2_ng, dim=1)
        if args["instance_weight"] > 0.:
            proj_instance_1_ng = model.target_instance_projector(feat_1_ng)
            proj_instance_1_ng = F.normalize(avgpool(proj_instance_1_ng).view(proj_instance_1_ng.size(0), -1), dim=1)
            proj_instance_2_ng = model.target_instance_projector(feat_2_ng)
            proj_instance_2_ng = F.normalize(avgpool(proj_instance_2_ng).view(proj_instance_2_ng.size(0), -1), dim=1)
    loss = authors_regression_loss(pred_1, proj_2_ng, coord1, coord2, args["threshold"]) \
        + authors_regression_loss(pred_2, proj_1_ng, coord2, coord1, args["threshold"])
    if args["instance_weight"] > 0.:
        loss_instance = authors_instance_regression_loss(pred_instance_1, proj_instance_2_ng) + \
            authors_instance_regression_loss(pred_instance_2, proj_instance_1_ng)
        loss = loss + args["instance_weight"] * loss_instance
    return loss


# ------------------------------------------------------------------------------------------------- helpers
def _coords(gen, n):
    """Crops inside [0, 1]², a random half of them mirrored (x swapped, as RandomHorizontalFlipCoord)."""
    lo = torch.rand(n, 2, generator=gen) * 0.5
    hi = lo + 0.2 + torch.rand(n, 2, generator=gen) * 0.3
    coords = torch.stack([lo[:, 0], lo[:, 1], hi[:, 0], hi[:, 1]], dim=1)
    flip = torch.rand(n, generator=gen) < 0.5
    return torch.where(flip[:, None], coords[:, [2, 1, 0, 3]], coords)


def _spec(**method):
    return parse_spec({"data": {"root": "unused", "image_size": 64, "workers": 0},
                       "model": {"arch": "resnet18", "width": 8, "stem": "small"},
                       "method": {"name": "pixpro", "hidden_dim": 32, "dim": 16, **method},
                       "batch_size": 4, "epochs": 1, "output_dir": "unused"})


# ------------------------------------------------------------------------------------------------ the losses
@pytest.mark.parametrize("threshold", [0.7, 1.5, 0.3])
def test_pixel_loss_equals_the_authors_regression_loss(threshold):
    gen = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(6, 16, 5, 4, generator=gen), dim=1)
    k = F.normalize(torch.randn(6, 16, 5, 4, generator=gen), dim=1)
    coord_q, coord_k = _coords(gen, 6), _coords(gen, 6)
    want = authors_regression_loss(q, k, coord_q, coord_k, threshold)
    got = pixel_consistency(q, k, positive_pairs(coord_q, coord_k, 5, 4, threshold))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    assert positive_pairs(coord_q, coord_k, 5, 4, threshold).sum() > 0  # the comparison covers positive pairs


@pytest.mark.parametrize(("sharpness", "clamp"), [(2.0, 0.0), (1.0, -1.0), (0.5, 0.1)])
@pytest.mark.parametrize("layers", [0, 1, 2])
def test_propagation_equals_the_authors_featprop(sharpness, clamp, layers):
    from sslcli.methods.pixpro.method import value_transform

    torch.manual_seed(0)
    g = value_transform(layers, 16)
    x = torch.randn(3, 16, 4, 4)
    want = authors_featprop(x, g, clamp, sharpness)
    torch.testing.assert_close(pixel_propagation(x, g(x), sharpness, clamp), want, rtol=1e-5, atol=1e-6)


def test_instance_loss_equals_the_authors():
    gen = torch.Generator().manual_seed(1)
    x, y = F.normalize(torch.randn(5, 8, generator=gen), dim=1), F.normalize(torch.randn(5, 8, generator=gen), dim=1)
    torch.testing.assert_close(instance_consistency(x, y), authors_instance_regression_loss(x, y))


def test_positive_pairs_by_hand():
    # The same crop in both views: cell centres coincide, neighbours are one cell apart. With square cells the
    # distance to a side neighbour is 1/√2 of the cell diagonal (0.707): above T = 0.7, so only cell i ↔ cell i.
    crop = torch.tensor([[0.2, 0.2, 0.6, 0.6]])
    assert torch.equal(positive_pairs(crop, crop, 3, 3, 0.7)[0], torch.eye(9))
    # T = 0.75 takes the 4 side neighbours too (0.707 < 0.75) but not the diagonal ones (1.0).
    centre = positive_pairs(crop, crop, 3, 3, 0.75)[0][4].view(3, 3)
    assert torch.equal(centre, torch.tensor([[0.0, 1, 0], [1, 1, 1], [0, 1, 0]]))
    # The mirrored crop: its cell (r, c) lies where the unmirrored crop's cell (r, W − 1 − c) lies.
    mirrored = crop[:, [2, 1, 0, 3]]
    expected = torch.eye(9).view(9, 3, 3).flip(-1).reshape(9, 9)
    assert torch.equal(positive_pairs(crop, mirrored, 3, 3, 0.7)[0], expected)
    # Disjoint crops share no positive.
    assert positive_pairs(crop, torch.tensor([[0.7, 0.7, 0.9, 0.9]]), 3, 3, 0.7).sum() == 0


def test_crop_coordinates_normalise_by_the_image_and_swap_x_when_mirrored():
    from sslcli.methods.pixpro.method import crop_coordinates

    boxes = torch.tensor([[10.0, 20.0, 50.0, 60.0], [0.0, 0.0, 100.0, 80.0]])
    coords = crop_coordinates(boxes, torch.tensor([True, False]), torch.tensor([[80, 100], [80, 100]]))
    torch.testing.assert_close(coords, torch.tensor([[0.5, 0.25, 0.1, 0.75], [0.0, 0.0, 1.0, 1.0]]))


def test_views_report_the_flip_they_applied():
    # A horizontal ramp: an unmirrored crop gets brighter to the right, a mirrored one to the left.
    import numpy as np

    from sslcli.data.views.colour import ColourAug
    from sslcli.data.views.crops import CropViews

    plain = ColourAug(0, 0, 0, 0, jitter_p=0.0, gray_p=0.0, blur_p=0.0)
    views = CropViews(32, (0.3, 1.0), colours=(plain, plain))
    ramp = np.broadcast_to(np.linspace(0, 255, 120).astype(np.uint8)[None, :, None], (90, 120, 3)).copy()
    seen = set()
    for i in range(16):
        out = views({"image": ramp, "index": i})
        assert out["image_size"].tolist() == [90, 120]
        for v in range(2):
            rightward = out["views"][v, 0, :, -1].mean() > out["views"][v, 0, :, 0].mean()
            assert bool(out["flips"][v]) != bool(rightward)
            seen.add(bool(out["flips"][v]))
    assert seen == {True, False}


# --------------------------------------------------------------------------------------------- the method
def _batch(n, seed):
    gen = torch.Generator().manual_seed(seed)
    boxes = torch.tensor([[0.0, 0.0, 60.0, 50.0], [20.0, 10.0, 80.0, 70.0]]).expand(n, 2, 4).clone()
    boxes += torch.randint(0, 10, (n, 2, 4), generator=gen).float()
    return {"views": torch.randn(n, 2, 3, 32, 32, generator=gen), "boxes": boxes,
            "flips": torch.rand(n, 2, generator=gen) < 0.5, "image_size": torch.tensor([[90, 100]]).expand(n, 2)}


@pytest.mark.parametrize("instance_weight", [0.0, 1.0])
def test_method_forward_is_the_authors_forward(instance_weight):
    from sslcli.methods.pixpro.method import PixPro, crop_coordinates

    torch.manual_seed(0)
    method = PixPro(_spec(instance_weight=instance_weight))
    with torch.no_grad():  # perturb the targets so the online and target networks differ
        for p in method.target_encoder.parameters():
            p.add_(0.01 * torch.randn_like(p))
    batch = _batch(4, seed=1)
    coords = [crop_coordinates(batch["boxes"][:, v], batch["flips"][:, v], batch["image_size"]) for v in (0, 1)]
    args = {"clamp": 0.0, "sharpness": 2.0, "threshold": 0.7, "instance_weight": instance_weight}
    with torch.no_grad():
        want = authors_forward(method, batch["views"][:, 0], batch["views"][:, 1], coords[0], coords[1], args)
        got = method(batch, StepInfo(0, 0, 1, 1))
    torch.testing.assert_close(got["loss"], want, rtol=1e-5, atol=1e-6)
    assert ("loss_instance" in got) == (instance_weight > 0)


def test_momentum_follows_the_authors_cosine_schedule():
    # PixPro.py:165: m = 1 − (1 − m₀)(cos(πk/K) + 1)/2; the targets move towards the online networks by 1 − m.
    from sslcli.methods.pixpro.method import PixPro

    torch.manual_seed(0)
    method = PixPro(_spec(base_momentum=0.9, instance_weight=0.5))
    assert {t for _, t in method.momentum_pairs} == {"target_encoder", "target_projector", "target_instance_projector"}
    with torch.no_grad():
        for p in method.projector.parameters():
            p.add_(1.0)
    before = [p.clone() for p in method.target_projector.parameters()]
    online = list(method.projector.parameters())
    method.after_step(StepInfo(step=25, epoch=0, steps_per_epoch=100, total_steps=100))
    import math

    m = 1 - (1 - 0.9) * (math.cos(math.pi * 25 / 100) + 1) / 2
    for t, b, o in zip(method.target_projector.parameters(), before, online, strict=True):
        torch.testing.assert_close(t, m * b + (1 - m) * o)
