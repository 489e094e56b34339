"""PLRC (docs/plrc.md): the losses against a faithful transcription of the authors' code, the points and views, the
queue and the teacher centre over 2 gloo ranks, and the method's wiring.

The authors' code is github.com/facebookresearch/PLRC at 5fbd1cb: PLRC/models/builder.py (`PLRC.forward`),
PLRC/models/plrc_loss.py (`Memory_Loss`, `SelfDistillation`, `NCEAverage`, `SupConLoss`) and PLRC/models/utils.py
(`overlap`). The transcriptions below keep their statements, cited by file and line; only `.cuda()` and the
distributed calls are replaced by their single-process meaning (stated where they are).
"""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from sslcli.losses.plrc import (
    affinity_rows,
    distillation_pairs,
    match_key_points,
    point_features,
    point_region_contrast,
    self_distillation,
    teacher_temperature,
)
from sslcli.methods.base import StepInfo
from sslcli.spec import parse_spec


# ------------------------------------------------------------------------------------------- the authors' code
def authors_grid_sample(fx, masks, mask_size):
    """builder.py:142-149 (and 231-237): the (B, 16, 32, 2) point groups scaled to [-1, 1], sampled from the map
    (grid_sample's default, align_corners=False, written out)."""
    H, W = mask_size, mask_size
    grids = masks.clone()
    grids[:, :, :, 0], grids[:, :, :, 1] = (
        grids[:, :, :, 0] / (H - 1) * 2 - 1,
        grids[:, :, :, 1] / (W - 1) * 2 - 1,
    )
    return nn.functional.grid_sample(fx, grids, align_corners=False)


def authors_matched_key_points(pixel_feat_q, pixel_feat, keep_point):
    """builder.py:239 and 153-181: the key crop's kept point features (B, C, 1, keep_point)."""
    pixel_feat_q_arch = pixel_feat_q[:, :, 0:1, :]
    B_pf, C_pf, N_pf, P_pf = pixel_feat.shape
    pixel = F.normalize(pixel_feat_q_arch.permute(0, 1, 3, 2)[:, :, :, 0].permute(0, 2, 1), dim=-1, p=2)
    pixel_top = F.normalize(pixel_feat[:, :, 0:1, :].permute(0, 1, 3, 2)[:, :, :, 0].permute(0, 2, 1), dim=-1, p=2)
    m = torch.matmul(pixel_top, pixel.permute(0, 2, 1)).max(dim=2)[1].unsqueeze(-1).repeat(1, 1, C_pf)
    return (pixel_feat[:, :, 0:1, :].permute(0, 1, 3, 2)[:, :, :, 0].permute(0, 2, 1).gather(dim=1, index=m)
            .unsqueeze(0).permute(1, 3, 0, 2)[:, :, :, :keep_point])


def authors_supcon(p, q, temperature=0.2, base_temperature=0.07):
    """plrc_loss.py:498-555 (`SupConLoss.compute_cont_loss`, contrast_mode "all"; the masks on the CPU)."""
    B, C, N, P = p.shape
    features = torch.cat([p.permute(0, 2, 3, 1).reshape(-1, P, C), q.permute(0, 2, 3, 1).reshape(-1, P, C)], dim=1)
    batch_size = features.shape[0]
    mask = torch.eye(batch_size, dtype=torch.float32)
    contrast_count = features.shape[1]
    contrast_feature = torch.cat(torch.unbind(features, dim=1), dim=0)
    anchor_feature = contrast_feature
    anchor_count = contrast_count
    anchor_dot_contrast = torch.div(torch.matmul(anchor_feature, contrast_feature.T), temperature)
    logits_max, _ = torch.max(anchor_dot_contrast, dim=1, keepdim=True)
    logits = anchor_dot_contrast - logits_max.detach()
    mask = mask.repeat(anchor_count, contrast_count)
    logits_mask = torch.scatter(torch.ones_like(mask), 1, torch.arange(batch_size * anchor_count).view(-1, 1), 0)
    mask = mask * logits_mask
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
    loss = -(temperature / base_temperature) * mean_log_prob_pos
    return loss.view(anchor_count, batch_size).mean()


def authors_overlap(q, k, coord_q, coord_k, mask_size, pos_ratio=0.5):
    """utils.py:72-120 (`overlap`)."""
    N, _, C = q.shape
    H, W = mask_size, mask_size
    x_array = torch.arange(0.0, float(W), dtype=coord_q.dtype).view(1, 1, -1).repeat(1, H, 1)
    y_array = torch.arange(0.0, float(H), dtype=coord_q.dtype).view(1, -1, 1).repeat(1, 1, W)
    q_bin_width = ((coord_q[:, 2] - coord_q[:, 0]) / W).view(-1, 1, 1)
    q_bin_height = ((coord_q[:, 3] - coord_q[:, 1]) / H).view(-1, 1, 1)
    k_bin_width = ((coord_k[:, 2] - coord_k[:, 0]) / W).view(-1, 1, 1)
    k_bin_height = ((coord_k[:, 3] - coord_k[:, 1]) / H).view(-1, 1, 1)
    q_start_x = coord_q[:, 0].view(-1, 1, 1)
    q_start_y = coord_q[:, 1].view(-1, 1, 1)
    k_start_x = coord_k[:, 0].view(-1, 1, 1)
    k_start_y = coord_k[:, 1].view(-1, 1, 1)
    q_bin_diag = torch.sqrt(q_bin_width**2 + q_bin_height**2)
    k_bin_diag = torch.sqrt(k_bin_width**2 + k_bin_height**2)
    max_bin_diag = torch.max(q_bin_diag, k_bin_diag)
    center_q_x = (x_array + 0.5) * q_bin_width + q_start_x
    center_q_y = (y_array + 0.5) * q_bin_height + q_start_y
    center_k_x = (x_array + 0.5) * k_bin_width + k_start_x
    center_k_y = (y_array + 0.5) * k_bin_height + k_start_y
    dist_center = torch.sqrt((center_q_x.view(-1, H * W, 1) - center_k_x.view(-1, 1, H * W)) ** 2
                             + (center_q_y.view(-1, H * W, 1) - center_k_y.view(-1, 1, H * W)) ** 2) / max_bin_diag
    return (dist_center < pos_ratio).float().detach()


class AuthorsSelfDistillation:
    """plrc_loss.py:409-464 (`SelfDistillation`; ``all_reduce`` and ``world_size`` passed in: identity and 1 in one
    process)."""

    def __init__(self, out_dim, warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs, nepochs,
                 student_temp=0.1, center_momentum=0.9, distill_dim=4096):
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.center = torch.zeros(1, out_dim + distill_dim)  # the authors' 4096, the tests' small head
        self.teacher_temp_schedule = np.concatenate((
            np.linspace(warmup_teacher_temp, teacher_temp, warmup_teacher_temp_epochs),
            np.ones(nepochs - warmup_teacher_temp_epochs) * teacher_temp))

    def forward(self, student_output, teacher_output, epoch, all_reduce=lambda x: x, world_size=1):
        student_out = student_output / self.student_temp
        temp = self.teacher_temp_schedule[epoch]
        teacher_out = F.softmax((teacher_output - self.center) / temp, dim=-1)
        teacher_out = teacher_out.detach()
        total_loss = 0
        loss = torch.sum(-teacher_out * F.log_softmax(student_out, dim=-1), dim=-1)
        total_loss += loss.mean()
        self.update_center(teacher_output, all_reduce, world_size)
        return total_loss

    @torch.no_grad()
    def update_center(self, teacher_output, all_reduce, world_size):
        batch_center = torch.sum(teacher_output, dim=0, keepdim=True)
        batch_center = all_reduce(batch_center)
        batch_center = batch_center / (len(teacher_output) * world_size)
        self.center = self.center * self.center_momentum + batch_center * (1 - self.center_momentum)


def authors_image_loss(q, p, queue_x, T=0.2):
    """plrc_loss.py:377-401 with NCEAverage.compute_cont_loss (467-476) for ONE query row (nq = 1): their targets are
    ``range(nq)``, so only row 0 has the positive as its label; docs/plrc.md. ``queue_x``: (K, C)."""
    nq, np_ = q.shape[0], p.shape[0]
    assert nq == 1
    ncrops = nq // np_
    out_pos = torch.einsum("nbc,nc->nb", [q.view(np_, ncrops, -1), p]).view(nq, 1)
    out_neg = torch.einsum("nc,kc->nk", [q, queue_x.clone().detach()])
    targets = torch.tensor(list(range(nq)), dtype=torch.long)
    out_x = torch.div(torch.cat([out_pos, out_neg], dim=1), T)
    return nn.CrossEntropyLoss()(out_x, targets)


def authors_update_memory(queue_x, ptr, ki):
    """plrc_loss.py:205-230 (`update_memory`), ``ki`` already `concat_all_gather`ed."""
    ptr_ = int(ptr.item())
    num_items = ki.size(0)
    K = queue_x.shape[0]
    if num_items > K - ptr_:
        num_items = K - ptr_
    queue_x[ptr_:(ptr_ + num_items), :] = ki[:num_items]
    ptr_ += num_items
    if ptr_ == K:
        ptr_ = 0
    ptr[0] = ptr_


def authors_point_losses(q_map, k_map, q_masks, k_masks, q_f, t_f, k_f, q_l, t_l, coord_q, coord_t, distill,
                         epoch, mask_size, keep_point=16, all_reduce=lambda x: x, world_size=1):
    """builder.py:226-324 after the encoders (grid_sample, interpolation) and plrc_loss.py:263-370
    (`forward_cont`, mode "point"): returns (loss_cl, loss_ts). ``q_map``/``k_map``: the point maps of crop 0 and
    crop 1; ``*_f`` the bottleneck maps (k_f L1-normalised), ``*_l`` the projections; ``t_*`` the teacher crop."""
    pixel_feat_q = authors_grid_sample(q_map, q_masks, mask_size)
    pixel_feat = authors_grid_sample(k_map, k_masks, mask_size)
    q = F.normalize(pixel_feat_q[:, :, 0:1, :keep_point], dim=1)  # fxs[0] (builder.py:243; plrc_loss.py:265)
    p = F.normalize(authors_matched_key_points(pixel_feat_q, pixel_feat, keep_point), dim=1)  # fxs_pre[2]
    loss_cl = authors_supcon(p, q)

    def flat(x):  # builder.py:245-251: interpolate to the mask size, then (B·H·W, C)
        x = torch.nn.functional.interpolate(x, size=(mask_size, mask_size), mode="bilinear")
        B, C, H, W = x.shape
        return x.permute(0, 2, 3, 1).reshape(B * H * W, C)

    q_ts, p_2_ts = flat(q_l), flat(t_l)
    q_ts_f, p_2_ts_f, p_ts_f = flat(q_f), flat(t_f), flat(k_f)
    _, c_ = q_ts.shape
    q_ts = q_ts.reshape(-1, mask_size * mask_size, c_)
    p_2_ts = p_2_ts.reshape(-1, mask_size * mask_size, c_)
    _, c_f = q_ts_f.shape
    q_ts_f = q_ts_f.reshape(-1, mask_size * mask_size, c_f)
    p_ts_f = p_ts_f.reshape(-1, mask_size * mask_size, c_f)
    p_2_ts_f = p_2_ts_f.reshape(-1, mask_size * mask_size, c_f)
    overlap_mask = authors_overlap(q_ts, p_2_ts, coord_q, coord_t, mask_size)
    b_, hw, hw_ = torch.nonzero(overlap_mask, as_tuple=True)
    out_pos_feat_f = torch.matmul(q_ts_f, p_ts_f.permute(0, 2, 1))[b_, hw, :] / 128.0
    out_pos_t_feat_f = torch.matmul(p_2_ts_f, p_ts_f.permute(0, 2, 1))[b_, hw_, :] / 128.0
    q_ts_feat = torch.cat([out_pos_feat_f, q_ts[b_, hw, :]], dim=-1)
    p_2_ts_feat = torch.cat([out_pos_t_feat_f, p_2_ts[b_, hw_, :]], dim=-1)
    loss_ts = distill.forward(q_ts_feat, p_2_ts_feat, epoch, all_reduce, world_size)
    return loss_cl, loss_ts


# ------------------------------------------------------------------------------------------------- helpers
def _masks(points, gen, mask_size):
    """The authors' (B, 16, 32, 2) point groups: group 0 = ``points`` (the only group their loss reads), the 15
    other groups random grid pixels."""
    others = torch.randint(0, mask_size, (points.shape[0], 15, points.shape[1], 2), generator=gen).float()
    return torch.cat([points.unsqueeze(1), others], dim=1)


def _coords(gen, n):
    """Random crop coordinates (x_left, y_top, x_right, y_bottom) in [0, 1], some mirrored (x swapped)."""
    corner = torch.rand(n, 2, generator=gen) * 0.5
    size = 0.3 + torch.rand(n, 2, generator=gen) * 0.5
    coords = torch.cat([corner, corner + size], dim=1)
    return torch.where(torch.rand(n, 1, generator=gen) < 0.5, coords[:, [2, 1, 0, 3]], coords)


def _spec(**method):
    return parse_spec({"data": {"root": "unused", "image_size": 64, "workers": 0},
                       "model": {"arch": "resnet18", "width": 8},
                       "method": {"name": "plrc", "queue_size": 16, "hidden_dim": 32, "dim": 8, "bottleneck_dim": 16,
                                  "distill_dim": 24, "mask_size": 6, **method},
                       "batch_size": 4, "epochs": 1, "output_dir": "unused"})


def _method(seed=0, **method):
    from sslcli.methods.plrc.method import PLRC

    torch.manual_seed(seed)
    return PLRC(_spec(**method))


def _batch(n, seed, same_boxes=False):
    """A batch as the views make it: crops 0 and 1, the teacher crop, boxes (crop 0 and the teacher crop
    overlapping), flips and the image size."""
    gen = torch.Generator().manual_seed(seed)
    views = torch.randn(n, 2, 3, 64, 64, generator=gen)
    small = torch.randn(n, 1, 3, 64, 64, generator=gen)
    boxes = torch.tensor([[[0, 0, 80, 60], [40, 30, 120, 100], [10, 5, 90, 70]],
                          [[30, 10, 110, 90], [0, 40, 70, 100], [20, 0, 100, 80]]], dtype=torch.float32)
    boxes = boxes[torch.zeros(n, dtype=torch.long) if same_boxes else torch.arange(n) % 2]
    flips = torch.tensor([[False, True, False], [True, False, True]])[torch.arange(n) % 2 * (not same_boxes)]
    return {"views": views, "small": small, "boxes": boxes, "flips": flips,
            "image_size": torch.tensor([100, 120]).expand(n, 2).clone()}


# ------------------------------------------------------------------------------------------------ the losses
def test_point_sampling_and_matching_equal_the_authors_code():
    gen = torch.Generator().manual_seed(0)
    n, c, m, p = 3, 8, 7, 32
    q_map, k_map = torch.randn(n, c, 3, 3, generator=gen), torch.randn(n, c, 3, 3, generator=gen)
    q_points = torch.randint(0, m, (n, p, 2), generator=gen).float()
    k_points = torch.randint(0, m, (n, p, 2), generator=gen).float()
    want_q = authors_grid_sample(q_map, _masks(q_points, gen, m), m)
    want_k = authors_grid_sample(k_map, _masks(k_points, gen, m), m)
    got_q, got_k = point_features(q_map, q_points, m), point_features(k_map, k_points, m)
    torch.testing.assert_close(got_q, want_q[:, :, 0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(got_k, want_k[:, :, 0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(match_key_points(got_q, got_k, 16), authors_matched_key_points(want_q, want_k, 16)[:, :, 0])


def test_a_point_is_sampled_where_the_authors_normalisation_puts_it():
    # A map whose value is its column index: grid pixel x = 3 of a 7-pixel grid is -1 + 2·3/6 = 0 in grid_sample's
    # coordinates, the centre of a 3-wide map without aligned corners (column 1.0); x = 6 is +1, half a column
    # beyond the last centre (zero padding halves it: 2 · 0.5 = 1.0).
    columns = torch.arange(3.0).expand(1, 1, 3, 3)
    values = point_features(columns, torch.tensor([[[3.0, 3.0], [6.0, 3.0]]]), 7)
    torch.testing.assert_close(values, torch.tensor([[[1.0, 1.0]]]))


@pytest.mark.parametrize("temperature", [0.2, 0.5])
def test_point_region_contrast_equals_the_authors_supcon(temperature):
    gen = torch.Generator().manual_seed(1)
    p = F.normalize(torch.randn(4, 8, 1, 16, generator=gen), dim=1)
    q = F.normalize(torch.randn(4, 8, 1, 16, generator=gen), dim=1)
    want = authors_supcon(p, q, temperature)
    got = point_region_contrast(p[:, :, 0], q[:, :, 0], temperature)
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_point_region_contrast_by_hand():
    # 2 images, 1 point per crop, 1-D features: image 0's points e, e; image 1's −e, −e. Each anchor's logits to the
    # other three rows are (1, −1, −1)/τ with the positive first: loss = −(τ/τ_b) · (1/τ − log(e^{1/τ} + 2e^{−1/τ})).
    e = torch.ones(2, 1, 1)
    e[1] = -1
    t, tb = 0.5, 0.07
    want = -(t / tb) * (1 / t - np.log(np.exp(1 / t) + 2 * np.exp(-1 / t)))
    assert point_region_contrast(e, e, t, tb).item() == pytest.approx(want, rel=1e-5)  # float32


def test_distillation_pairs_equal_the_authors_overlap():
    gen = torch.Generator().manual_seed(2)
    coords_q, coords_t = _coords(gen, 4), _coords(gen, 4)
    want = torch.nonzero(authors_overlap(torch.zeros(4, 36, 1), None, coords_q, coords_t, 6), as_tuple=True)
    got = distillation_pairs(coords_q, coords_t, 6, 0.5)
    assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True)) and len(got[0]) > 0


def test_teacher_temperature_is_the_authors_table_and_holds_after_it():
    table = np.concatenate((np.linspace(0.04, 0.07, 30), np.ones(70) * 0.07))
    assert [teacher_temperature(e) for e in range(100)] == pytest.approx(list(table), rel=1e-12)
    assert teacher_temperature(250) == 0.07 and teacher_temperature(0, 0.04, 0.07, 1) == 0.04


def test_self_distillation_and_centre_equal_the_authors_code():
    gen = torch.Generator().manual_seed(3)
    n, m, cb, d = 2, 5, 6, 7
    cells = [F.normalize(torch.randn(n, cb, m, m, generator=gen), dim=1) for _ in range(2)]
    key = F.normalize(torch.randn(n, cb, m, m, generator=gen), dim=1, p=1)
    proj = [torch.randn(n, d, m, m, generator=gen) for _ in range(2)]
    coords_q, coords_t = _coords(gen, n), _coords(gen, n)
    image, cell_q, cell_t = distillation_pairs(coords_q, coords_t, m, 0.5)

    def flat(x):
        return x.flatten(2).transpose(1, 2)

    student = affinity_rows(flat(cells[0]), flat(proj[0]), flat(key), image, cell_q)
    teacher = affinity_rows(flat(cells[1]), flat(proj[1]), flat(key), image, cell_t)
    distill = AuthorsSelfDistillation(m * m, 0.04, 0.07, 30, 100, distill_dim=d)
    distill.center = torch.randn(1, m * m + d, generator=gen)
    center = distill.center.clone()
    # The maps are already M × M: the authors' interpolation to the mask size is the identity here.
    _, want = authors_point_losses(torch.zeros(n, 1, 2, 2), torch.zeros(n, 1, 2, 2), torch.zeros(n, 16, 32, 2),
                                   torch.zeros(n, 16, 32, 2), cells[0], cells[1], key, proj[0], proj[1], coords_q,
                                   coords_t, distill, epoch=7, mask_size=m)
    got = self_distillation(student, teacher, center, 0.1, teacher_temperature(7))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(center * 0.9 + teacher.mean(dim=0, keepdim=True) * 0.1, distill.center)


# --------------------------------------------------------------------------------------------- points, views
def test_region_labels_of_a_known_crop():
    from sslcli.methods.plrc.views import region_labels

    # A 100 × 100 image, a 4 × 4 grid (regions 25 px); crop (0, 0)-(50, 50) on a 4 × 4 point grid: pixel centres at
    # 6.25, 18.75, 31.25, 43.75 px → regions 0, 0, 1, 1 along each axis; mirrored, the columns run 1, 1, 0, 0.
    box, size = torch.tensor([[0.0, 0.0, 50.0, 50.0]]), torch.tensor([[100, 100]])
    plain = region_labels(box, torch.tensor([False]), size, 4, 4)[0]
    assert plain.tolist() == [[0, 0, 1, 1], [0, 0, 1, 1], [4, 4, 5, 5], [4, 4, 5, 5]]
    mirrored = region_labels(box, torch.tensor([True]), size, 4, 4)[0]
    assert mirrored.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [5, 5, 4, 4], [5, 5, 4, 4]]


def test_points_lie_in_one_shared_region_or_each_crop_in_its_own():
    from sslcli.methods.plrc.views import sample_region_points

    torch.manual_seed(0)
    query = torch.tensor([[[0, 1], [0, 1]], [[2, 2], [2, 2]]]).repeat_interleave(3, 1).repeat_interleave(3, 2)
    key = torch.tensor([[[1, 3], [3, 3]], [[0, 1], [1, 0]]]).repeat_interleave(3, 1).repeat_interleave(3, 2)
    q_points, k_points = sample_region_points(query, key, 4, 50)

    for image, (q_want, k_want) in enumerate([({1}, {1}), (None, None)]):
        q_regions = {int(query[image, int(y), int(x)]) for x, y in q_points[image]}
        k_regions = {int(key[image, int(y), int(x)]) for x, y in k_points[image]}
        if q_want is not None:  # image 0: region 1 is the only one both crops show
            assert q_regions == q_want and k_regions == k_want
        else:  # image 1: crop 0 shows a single region (the authors' flag −1): each crop one region of its own
            assert q_regions == {2} and len(k_regions) == 1
    assert q_points.shape == k_points.shape == (2, 50, 2)


def test_crop_coordinates_follow_the_authors_convention():
    from sslcli.methods.plrc.views import crop_coordinates

    # transforms.py resized_crop: (j/(W−1), i/(H−1), (j+w−1)/(W−1), (i+h−1)/(H−1)); a mirrored crop swaps the x.
    box = torch.tensor([[10.0, 20.0, 60.0, 70.0]])  # j=10, i=20, w=h=50 in an image of H 101, W 201
    size = torch.tensor([[101, 201]])
    plain = crop_coordinates(box, torch.tensor([False]), size)
    torch.testing.assert_close(plain, torch.tensor([[10 / 200, 20 / 100, 59 / 200, 69 / 100]]))
    torch.testing.assert_close(crop_coordinates(box, torch.tensor([True]), size), plain[:, [2, 1, 0, 3]])


def test_teacher_crop_overlaps_crop_0_by_half_the_larger_area():
    from sslcli.data.views.crops import box_area, box_intersection
    from sslcli.methods.plrc.views import plrc_views

    views = plrc_views(_spec())
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        query, key, teacher = views.sample_boxes(120, 160, gen)
        assert box_intersection(query, teacher) >= 0.5 * max(box_area(query), box_area(teacher))
    out = views({"image": np.zeros((120, 160, 3), np.uint8), "index": 3})
    assert out["views"].shape == (2, 3, 64, 64) and out["small"].shape == (1, 3, 64, 64)
    assert out["boxes"].shape == (3, 4) and out["flips"].shape == (3,)


# --------------------------------------------------------------------------------------------- the method
def _outputs(method, batch):
    """The networks' maps the authors' forward starts from: point maps and bottleneck cells of crop 0 (online) and
    crop 1 (key network, L1), bottleneck cells and projections of crop 0 (online) and the teacher crop (key)."""
    with torch.no_grad():
        grid = method.encoder.forward_map(batch["views"][:, 0])
        q_map, q_f = method.point_head(grid), method.distill_head.bottleneck(grid)
        k_map, k_f = method._key_crop(batch["views"][:, 1])
        t_f, t_l = method._teacher_crop(batch["small"][:, 0])
    return q_map, k_map, q_f, t_f, k_f, method.distill_head.project(q_f).detach(), t_l


def _spy_points(monkeypatch, store):
    from sslcli.methods.plrc import method as plrc_method

    real = plrc_method.sample_region_points

    def spy(*args):
        store.append(real(*args))
        return store[-1]

    monkeypatch.setattr(plrc_method, "sample_region_points", spy)


def _authors_losses(method, batch, points, rows=slice(None), world=1, all_reduce=lambda x: x, distill=None):
    """The authors' three losses (image per row, point, distillation) on the method's own outputs and points."""
    from sslcli.methods.plrc.views import crop_coordinates

    # Each rank's rows through the networks on their own, as the rank computes them: the same shapes, so the same
    # kernels and float sums (a sum in another order can flip the arg-max of a near tie in the point matching).
    q_map, k_map, q_f, t_f, k_f, q_l, t_l = _outputs(method, {key: value[rows] for key, value in batch.items()})
    gen = torch.Generator().manual_seed(9)
    m = method.spec.method.mask_size
    coords = [crop_coordinates(batch["boxes"][rows, c], batch["flips"][rows, c], batch["image_size"][rows])
              for c in (0, 2)]
    distill = distill or AuthorsSelfDistillation(m * m, 0.04, 0.07, 30, 100, distill_dim=24)
    loss_cl, loss_ts = authors_point_losses(q_map, k_map, _masks(points[0], gen, m), _masks(points[1], gen, m), q_f,
                                            t_f, k_f, q_l, t_l, coords[0], coords[1], distill, 0, m,
                                            all_reduce=all_reduce, world_size=world)
    q, k = F.normalize(q_map.mean(dim=(2, 3)), dim=1), F.normalize(k_map.mean(dim=(2, 3)), dim=1)
    queue_x = method.queue.T
    loss_image = torch.stack([authors_image_loss(q[i:i + 1], k[i:i + 1], queue_x) for i in range(len(q))]).mean()
    return torch.stack([loss_image, loss_cl, loss_ts]), distill, k


def test_method_losses_are_the_authors_on_its_own_outputs(monkeypatch):
    method = _method(shuffle_bn=False).eval()
    batch = _batch(4, seed=1)
    points: list = []
    _spy_points(monkeypatch, points)
    with torch.no_grad():
        out = method(batch, StepInfo(0, 0, 1, 1))
    want, distill, _ = _authors_losses(method, batch, points[0])
    got = torch.stack([out["loss_image"], out["loss_point"], out["loss_distill"]])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss"], 0.7 * want[0] + 0.3 * want[1] + 0.3 * want[2], rtol=1e-5, atol=1e-6)
    method.after_step(StepInfo(0, 0, 1, 1))
    torch.testing.assert_close(method.center, distill.center, rtol=1e-5, atol=1e-7)


def test_a_training_step_sends_gradients_to_the_online_networks_only():
    method = _method()
    method(_batch(4, seed=2), StepInfo(0, 0, 1, 1))["loss"].backward()
    assert method.encoder.layer1[0].conv1.weight.grad.abs().sum() > 0
    assert method.point_head[0].weight.grad.abs().sum() > 0 and method.distill_head.last.grad.abs().sum() > 0
    assert all(p.grad is None for p in method.key_encoder.parameters())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _gloo_worker(rank: int, world: int, port: int, batch, out_path: str):
    import torch.distributed as torch_dist
    from _pytest.monkeypatch import MonkeyPatch

    torch.set_num_threads(1)
    torch_dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    patch, points = MonkeyPatch(), []
    try:
        _spy_points(patch, points)
        method = _method(shuffle_bn=True).eval()  # BN on running statistics: a key does not depend on its batch
        b = batch["views"].shape[0] // world
        with torch.no_grad():
            out = method({k: v[rank * b:(rank + 1) * b] for k, v in batch.items()}, StepInfo(0, 0, 1, 1))
        method.after_step(StepInfo(0, 0, 1, 1))
        losses = [torch.zeros(3) for _ in range(world)]
        torch_dist.all_gather(losses, torch.stack([out["loss_image"], out["loss_point"], out["loss_distill"]]))
        drawn = [[torch.zeros_like(p) for p in points[0]] for _ in range(world)]
        for i in range(2):
            torch_dist.all_gather([d[i] for d in drawn], points[0][i])
        if rank == 0:
            torch.save({"losses": torch.stack(losses), "points": drawn, "queue": method.queue,
                        "queue_ptr": method.queue_ptr, "center": method.center}, out_path)
    finally:
        patch.undo()
        torch_dist.destroy_process_group()
    # The authors' losses on this rank's rows, computed in this process (one method, no process group) rather than in
    # the test's: the very process state of the rank's own forward, so a near tie in the point matching falls the same
    # way. (In the pytest process, after other tests had trained in-process, one loss came out 1e-3 apart.)
    want = _authors_losses(_method(shuffle_bn=True).eval(), batch, points[0], slice(rank * b, (rank + 1) * b), world)[0]
    torch.save(want, f"{out_path}.want{rank}")


def test_two_gloo_ranks_shuffle_gather_and_centre_as_the_authors(tmp_path):
    # The batch split over 2 ranks (the same crop boxes in both halves, so both ranks have as many distillation
    # pairs, where the authors' centre divides by this rank's count × the world size): shuffle-BN sends every key
    # crop through another rank and back, each rank's losses are the authors' on its rows, the queue receives every
    # rank's keys in rank order (concat_all_gather, update_memory) and the centre the all-reduced teacher rows.
    import torch.multiprocessing as mp

    batch = _batch(4, seed=4, same_boxes=True)
    mp.spawn(_gloo_worker, args=(2, _free_port(), batch, str(tmp_path / "r.pt")), nprocs=2)
    got = torch.load(tmp_path / "r.pt")
    method = _method(shuffle_bn=True).eval()
    queue_x, ptr = method.queue.T.clone(), torch.zeros(1)
    m = method.spec.method.mask_size
    keys, sums = [], []  # the authors' all_reduce of the centre: each rank's teacher-row sum, added up below
    for rank, rows in enumerate((slice(0, 2), slice(2, 4))):
        def all_reduce(x):
            sums.append(x.clone())
            return x

        _, _, k = _authors_losses(method, batch, got["points"][rank], rows, 2, all_reduce)
        want = torch.load(tmp_path / f"r.pt.want{rank}")  # the authors' losses, computed in that rank's process
        torch.testing.assert_close(got["losses"][rank], want, rtol=1e-5, atol=1e-6)
        keys.append(k)
    authors_update_memory(queue_x, ptr, torch.cat(keys))
    torch.testing.assert_close(got["queue"], queue_x.T, rtol=1e-5, atol=1e-6)
    assert int(got["queue_ptr"]) == int(ptr) == 4
    # update_center from a zero centre: 0.9 · 0 + 0.1 · (Σ over ranks) / (this rank's count × 2)
    torch.testing.assert_close(got["center"], (sums[0] + sums[1]) / (_pairs_per_rank(batch, m) * 2) * 0.1,
                               rtol=1e-5, atol=1e-7)


def _pairs_per_rank(batch, m) -> int:
    from sslcli.methods.plrc.views import crop_coordinates

    coords = [crop_coordinates(batch["boxes"][:2, c], batch["flips"][:2, c], batch["image_size"][:2]) for c in (0, 2)]
    return len(distillation_pairs(coords[0], coords[1], m, 0.5)[0])
