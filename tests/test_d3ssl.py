"""D3SSL (METHODS.md §5): the composed loss, the views (de-coupling, de-positioning), training, the bank, start-up."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from sslcli.data.views.region_aug import MEAN_COLOUR, pixel_boxes
from sslcli.losses.region_nce import d3ssl_loss
from sslcli.methods.base import StepInfo
from sslcli.methods.d3ssl.method import D3ssl, compose_views
from sslcli.methods.d3ssl.views import D3sslViews


# --------------------------------------------------------------------------------------------------------- the loss
def _nce(s: np.ndarray, p: np.ndarray, bank: np.ndarray, tau: float) -> float:
    """Eq. 5 by hand, one region at a time, averaged."""
    losses = []
    for z, z_pos in zip(s.reshape(-1, s.shape[-1]), p.reshape(-1, p.shape[-1])):
        logits = [z @ z_pos / tau] + [z @ bank[:, j] / tau for j in range(bank.shape[1])]
        losses.append(-logits[0] + np.log(np.sum(np.exp(logits))))
    return float(np.mean(losses))


def _unit(*shape: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=shape)
    return x / np.linalg.norm(x, axis=-1 if len(shape) == 3 else 0, keepdims=True)


def test_loss_matches_a_hand_computation():
    s1, s2, s3, t1, t2 = (_unit(2, 3, 5, seed=i) for i in range(5))  # B 2, K 3, D 5
    bank = _unit(5, 7, seed=9)  # (D, N)
    tau = 0.2
    dc = _nce(s1, t2, bank, tau) + _nce(s2, t1, bank, tau)
    dp = _nce(s3, t2, bank, tau) + _nce(s3, t1, bank, tau)
    as_t = [torch.tensor(x, dtype=torch.float32) for x in (s1, s2, t1, t2, bank)]
    out = d3ssl_loss(*as_t, temperature=tau, s3=torch.tensor(s3, dtype=torch.float32))
    assert out["loss_dc"].item() == pytest.approx(dc, rel=1e-5)
    assert out["loss_dp"].item() == pytest.approx(dp, rel=1e-5)
    assert out["loss"].item() == pytest.approx(dc + dp, rel=1e-5)
    without = d3ssl_loss(*as_t, temperature=tau)
    assert set(without) == {"loss", "loss_dc"} and without["loss"].item() == pytest.approx(dc, rel=1e-5)


# -------------------------------------------------------------------------------------------------------- the views
def _image(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (72, 96, 3), dtype=np.uint8)
    image[10:50, 20:70] = (200, 40, 40)
    boxes = np.array([[20, 10, 70, 50], [0, 0, 60, 72], [40, 30, 96, 72]], np.float32)
    return image, boxes


def _batch(n: int = 4, k: int = 3, **options) -> dict:
    views = D3sslViews(64, boxes_per_image=k, **options)
    samples = []
    for i in range(n):
        torch.manual_seed(i)
        samples.append(views(*_image(i)))
    return default_collate(samples)


def test_depositioned_boxes_and_pixels_are_consistent():
    batch = _batch()
    x1, x2s, x3 = compose_views(batch)
    assert x1.shape == (4, 3, 64, 64) and x2s.shape == (4, 3, 32, 32) and x3.shape == (4, 3, 64, 64)
    for b in range(4):
        shift = batch["depositioned_boxes"][b] - batch["boxes"][b, 1]
        tx, ty = shift[0, 0].item(), shift[0, 1].item()
        assert torch.equal(shift, torch.tensor([tx, ty, tx, ty]).expand_as(shift)) and tx == int(tx) and ty == int(ty)
        tx, ty = int(tx), int(ty)
        mask = batch["depositioned_mask"][b]
        assert mask.any()
        union = torch.zeros(64, 64, dtype=torch.bool)  # m̂ lies inside the shifted boxes' pixels
        for x0, y0, x1_, y1 in pixel_boxes(batch["depositioned_boxes"][b].numpy(), 64, 64):
            union[y0:y1, x0:x1_] = True
        assert not (mask & ~union).any()
        ys, xs = torch.nonzero(mask, as_tuple=True)  # foreground: this image's x2 pixel p − t
        assert torch.equal(x3[b][:, ys, xs], batch["view2"][b][:, ys - ty, xs - tx])
        other = batch["view2"][(b - 1) % 4]  # elsewhere: the background image, another image of the batch
        assert torch.equal(x3[b][:, ~mask], other[:, ~mask])
        # PRM: x̂1 holds the background under its mask and the (cut) view elsewhere.
        prm = batch["prm1"][b]
        assert prm.any()
        assert torch.equal(x1[b][:, prm], other[:, prm]) and torch.equal(x1[b][:, ~prm], batch["view1"][b][:, ~prm])


def _fixed_regions(size: int = 64) -> tuple[dict, object]:
    """Fixed SoCo views and boxes, and a stand-in for the RegionViews inside D3sslViews that returns them: what D3SSL
    does on top (RBJ, PRC, PRM) is then measured against known inputs."""
    gen = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[4, 4, 40, 36], [20, 10, 60, 50], [0, 30, 30, 63]], dtype=torch.float32)
    fixed = {"view1": torch.randn(3, size, size, generator=gen), "view2": torch.randn(3, size, size, generator=gen),
             "view3": torch.randn(3, size // 2, size // 2, generator=gen),
             "boxes": torch.stack([boxes, boxes.flip(0), boxes / 2])}
    return fixed, lambda image, boxes: {key: value.clone() for key, value in fixed.items()}


def test_decoupling_false_gives_views_without_cutouts_or_masks():
    image, boxes = _image(0)
    fixed, regions = _fixed_regions()
    plain = D3sslViews(64, boxes_per_image=3, decoupling=False)
    plain.regions = regions
    torch.manual_seed(3)
    out = plain(image, boxes)
    assert torch.equal(out["view1"], fixed["view1"]) and torch.equal(out["view2"], fixed["view2"])
    assert torch.equal(out["view2s"], fixed["view3"])
    assert not out["prm1"].any() and not out["prm2s"].any()

    cut = D3sslViews(64, boxes_per_image=3)
    cut.regions = regions
    out = cut(image, boxes)
    changed = (out["view1"] != fixed["view1"]).any(dim=0)
    assert changed.any() and out["prm1"].any()  # PRC's holes, filled with the normalised mean colour, and PRM's mask
    mean = (torch.tensor(MEAN_COLOUR, dtype=torch.float32) / 255 - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor(
        [0.229, 0.224, 0.225])
    assert torch.allclose(out["view1"][:, changed], mean[:, None].expand(-1, int(changed.sum())), atol=1e-6)


def test_rbj_never_grows_a_box():
    image, boxes = _image(1)
    fixed, regions = _fixed_regions()
    views = D3sslViews(64, boxes_per_image=3)
    views.regions = regions
    torch.manual_seed(5)
    jittered, exact = views(image, boxes)["boxes"], fixed["boxes"]
    inside = ((jittered[..., :2] >= exact[..., :2] - 1e-5).all() and (jittered[..., 2:] <= exact[..., 2:] + 1e-5).all())
    assert inside and not torch.allclose(jittered, exact)


# -------------------------------------------------------------------------------------------------------- the method
def _spec(method: dict | None = None, batch_size: int = 4, **model):
    from sslcli.spec import parse_spec

    method = {"name": "d3ssl", "boxes": "unused.h5", "boxes_per_image": 3, "dim": 16, "hidden_dim": 32,
              "bank_size": 48, **(method or {})}
    return parse_spec({"data": {"root": "d", "image_size": 64, "workers": 0},
                       "model": {"arch": "resnet18", "width": 8, "c4": True, **model}, "method": method,
                       "batch_size": batch_size})


def _info(step: int) -> StepInfo:
    return StepInfo(step=step, epoch=0, steps_per_epoch=100, total_steps=100)


def test_a_few_steps_lower_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    method = D3ssl(_spec())
    batch = _batch()
    initial_bank = method.bank.features.clone()

    def evaluate() -> float:  # with the initial bank: on a repeated batch the bank fills with the positives' twins
        saved = method.bank.features.clone()
        method.bank.features.copy_(initial_bank)
        with torch.no_grad():
            loss = method(batch, _info(0))["loss"].item()
        method.bank.features.copy_(saved)
        return loss

    before = evaluate()
    optimiser = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    for step in range(6):
        out = method(batch, _info(step))
        assert set(out) == {"loss", "loss_dc", "loss_dp", "bank_cos"} and torch.isfinite(out["loss"])
        optimiser.zero_grad()
        out["loss"].backward()
        if step == 0:
            assert method.encoder.conv1.weight.grad.abs().sum() > 0
            assert all(p.grad is None for p in method.target_encoder.parameters())
        optimiser.step()
        method.after_step(_info(step))
    assert evaluate() < before


def test_teacher_features_of_both_views_are_enqueued_after_the_step():
    torch.manual_seed(0)
    method = D3ssl(_spec())
    batch = _batch()
    x1, _, _ = compose_views(batch)
    with torch.no_grad():
        t1 = method._embed(method.target_encoder, method.target_projector, x1, batch["boxes"][:, 0])
        t2 = method._embed(method.target_encoder, method.target_projector, batch["view2"], batch["boxes"][:, 1])
    before = method.bank.features.clone()
    out = method(batch, _info(0))
    assert torch.equal(method.bank.features, before)  # nothing written during the forward pass
    assert out["bank_cos"].item() == pytest.approx((before.T @ before).mean().item(), rel=1e-5)  # the bank it read
    method.after_step(_info(0))
    n = 2 * 4 * 3
    expected = torch.cat([t1, t2]).reshape(n, 16)
    assert torch.allclose(method.bank.features[:, :n].T, expected, atol=1e-5)
    assert torch.equal(method.bank.features[:, n:], before[:, n:]) and method.bank.ptr.item() == n
    assert torch.allclose(expected.norm(dim=1), torch.ones(n), atol=1e-5)
    method(batch, _info(1))
    method.after_step(_info(1))  # 48 slots: the second enqueue wraps around to the start
    assert method.bank.ptr.item() == 0


def test_depositioning_off_trains_on_l_dc_only():
    method = D3ssl(_spec({"depositioning": False}))
    batch = _batch(depositioning=False)
    assert "depositioned_mask" not in batch
    out = method(batch, _info(0))
    assert set(out) == {"loss", "loss_dc", "bank_cos"} and torch.equal(out["loss"], out["loss_dc"])


def test_bad_model_or_bank_is_an_input_error():
    from sslcli.errors import InputError

    with pytest.raises(InputError, match="model.c4"):
        D3ssl(_spec(c4=False))
    with pytest.raises(InputError, match="method.bank_size"):
        D3ssl(_spec({"bank_size": 16}))
