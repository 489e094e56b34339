"""Momentum pairs (sslcli.models.ema, MomentumMethod): every momentum method declares its (online, target) networks
once; the targets start as frozen copies and after each step move to m·target + (1 − m)·online."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sslcli.methods import build_method
from sslcli.methods.base import StepInfo
from sslcli.models.ema import add_momentum_targets, update_momentum_targets
from sslcli.spec import parse_spec


class _TwoPairs(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4)), nn.Linear(4, 2)


def test_targets_start_as_frozen_copies_and_every_pair_is_averaged():
    torch.manual_seed(0)
    owner = _TwoPairs()
    add_momentum_targets(owner, (("a", "a_target"), ("b", "b_target")))
    for online, target in ((owner.a, owner.a_target), (owner.b, owner.b_target)):
        assert all(not p.requires_grad for p in target.parameters())
        assert all(torch.equal(t, o) for t, o in zip(target.state_dict().values(), online.state_dict().values()))
    before = {name: p.clone() for name, p in owner.named_parameters() if "target" in name}
    with torch.no_grad():
        for p in [*owner.a.parameters(), *owner.b.parameters()]:
            p.add_(1.0)
    owner.a(torch.randn(5, 3))  # moves the online BN statistics
    update_momentum_targets(owner, (("a", "a_target"), ("b", "b_target")), 0.75)
    for name, old in before.items():
        online = dict(owner.named_parameters())[name.replace("_target", "")]
        assert torch.allclose(dict(owner.named_parameters())[name], 0.75 * old + 0.25 * online)
    assert torch.equal(owner.a_target[1].running_mean, owner.a[1].running_mean)


def test_a_pair_naming_no_network_is_refused():
    with pytest.raises(AttributeError, match="_TwoPairs.c is not a network"):
        add_momentum_targets(_TwoPairs(), (("c", "c_target"),))


C4 = {"arch": "resnet18", "width": 8, "c4": True}
R18 = {"arch": "resnet18", "width": 8}
SMALL = {"dim": 8, "hidden_dim": 16}
METHODS = {  # method fields, model, the momentum of the first step (progress 0: τ₀ of the cosine schedule)
    "moco": ({"name": "moco", "queue_size": 64, "momentum": 0.9, **SMALL}, R18, 0.9),
    "byol": ({"name": "byol", "base_momentum": 0.8, **SMALL}, R18, 0.8),
    "detcon-B": ({"name": "detcon", "variant": "B", "base_momentum": 0.8, **SMALL}, R18, 0.8),
    "soco": ({"name": "soco", "boxes": "unused.h5", "base_momentum": 0.8, **SMALL}, C4, 0.8),
    "d3ssl": ({"name": "d3ssl", "boxes": "unused.h5", "base_momentum": 0.8, "bank_size": 256, **SMALL}, C4, 0.8),
}


@pytest.mark.parametrize("name", list(METHODS))
def test_each_momentum_method_averages_exactly_its_frozen_networks(name):
    fields, model, momentum = METHODS[name]
    torch.manual_seed(0)
    method = build_method(parse_spec({"data": {"root": "d", "image_size": 32, "workers": 0}, "model": model,
                                      "method": fields, "batch_size": 8}))
    targets = {target for _, target in method.momentum_pairs}
    frozen = {name.split(".")[0] for name, p in method.named_parameters() if not p.requires_grad}
    assert frozen == targets  # every frozen network is a declared target, every target is frozen
    online = {name: p for name, p in method.named_parameters() if p.requires_grad}
    before = {name: p.clone() for name, p in method.named_parameters() if not p.requires_grad}
    with torch.no_grad():
        for p in online.values():
            p.add_(0.5)
    method.after_step(StepInfo(step=0, epoch=0, steps_per_epoch=10, total_steps=10))
    pairs = dict((t, o) for o, t in method.momentum_pairs)
    parameters = dict(method.named_parameters())
    for name_, old in before.items():
        target, rest = name_.split(".", 1)
        expected = momentum * old + (1 - momentum) * online[f"{pairs[target]}.{rest}"]
        assert torch.allclose(parameters[name_], expected, atol=1e-6), name_


def test_detcon_s_has_no_momentum_networks():
    method = build_method(parse_spec({"data": {"root": "d", "image_size": 32, "workers": 0}, "model": R18,
                                      "method": {"name": "detcon", "variant": "S", **SMALL}, "batch_size": 8}))
    assert method.momentum_pairs == () and all(p.requires_grad for p in method.parameters())
