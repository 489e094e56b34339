"""Projection and prediction heads shared by the methods."""

from __future__ import annotations

from torch import nn


def mlp(in_dim: int, hidden_dim: int, out_dim: int, batch_norm: bool) -> nn.Sequential:
    """Linear → [BN] → ReLU → Linear.

    MoCo-v2 / SimCLR / DetCon_S heads: 2048→2048→128 without BN (METHODS.md §1, §3);
    BYOL / DetCon_B / SoCo projector and predictor: →4096→BN→ReLU→256 (METHODS.md §3–4).
    """
    layers: list[nn.Module] = [nn.Linear(in_dim, hidden_dim)]
    if batch_norm:
        layers.append(nn.BatchNorm1d(hidden_dim))
    layers += [nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim)]
    return nn.Sequential(*layers)


def simclr_projector(in_dim: int, hidden_dim: int = 2048, dim: int = 128) -> nn.Sequential:
    """The SimCLR / DetCon_S projector: in_dim → hidden_dim → ReLU → dim, no BN (METHODS.md §3)."""
    return mlp(in_dim, hidden_dim, dim, batch_norm=False)


def byol_heads(in_dim: int, hidden_dim: int = 4096, dim: int = 256) -> tuple[nn.Sequential, nn.Sequential]:
    """BYOL / DetCon_B / SoCo projector (in_dim → hidden → BN → ReLU → dim) and predictor (dim → hidden → BN → ReLU
    → dim)."""
    return mlp(in_dim, hidden_dim, dim, batch_norm=True), mlp(dim, hidden_dim, dim, batch_norm=True)


def conv_mlp(in_dim: int, hidden_dim: int, out_dim: int, batch_norm: bool) -> nn.Sequential:
    """`mlp` applied to every cell of a feature map: 1×1 conv → [BN] → ReLU → 1×1 conv, (N, in, H, W) → (N, out, H, W).

    DenseCL's dense projection head: 2048→2048→128 without BN (the authors' DenseCLNeck ``mlp2``); PixPro's projector
    and predictor: →4096→BN→ReLU→256 (the authors' MLP2d).
    """
    layers: list[nn.Module] = [nn.Conv2d(in_dim, hidden_dim, 1)]
    if batch_norm:
        layers.append(nn.BatchNorm2d(hidden_dim))
    layers += [nn.ReLU(inplace=True), nn.Conv2d(hidden_dim, out_dim, 1)]
    return nn.Sequential(*layers)
