"""Linear probe (METHODS.md §7, after Ericsson et al.): L2-regularised logistic regression with L-BFGS on frozen features.

The objective is scikit-learn's: ``C · Σ_i loss_i + ½‖W‖²`` (bias unpenalised), divided by C·N as scikit-learn does
(same minimiser; gradient tolerances then mean the same for every C). Single-label data: multinomial cross-entropy. Multi-label data: one binary classifier per class;
their objectives are independent, so they are fitted jointly as a sum of per-class binary cross-entropies.
C is chosen among ``n_grid`` log-spaced values in [1e-5, 1e5] on a validation split (20 % of train, seeded),
walking the grid upwards with warm starts, a reduced iteration budget and a looser tolerance; the chosen C is refitted on train + val.
Features are standardised with the train + val mean and std (no labels involved).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from sslcli.console import current
from sslcli.errors import InputError
from sslcli.eval.sampling import with_se

# Gradient tolerance (max-norm, on the objective divided by C·N) while ranking C values: scikit-learn's default tol.
# The final refit uses 1e-5. bench/probe_linear.py times the whole search against scikit-learn and compares top-1.
SEARCH_TOL = 1e-4


@dataclass
class LinearModel:
    weight: torch.Tensor  # (K, D)
    bias: torch.Tensor  # (K,)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.T + self.bias


def fit_logistic(x: torch.Tensor, y: torch.Tensor, C: float, num_classes: int, multilabel: bool,
                 init: LinearModel | None = None, max_iter: int = 1000, tol: float = 1e-5) -> LinearModel:
    """Minimise ``(C·Σ loss + ½‖W‖²) / (C·N)`` (scikit-learn's scaling) with L-BFGS (strong Wolfe line search).

    x: (N, D) float; y: (N,) int64 class indices, or (N, K) {0,1} when ``multilabel``.
    """
    n, d = x.shape
    weight = (init.weight.clone() if init is not None else torch.zeros(num_classes, d, dtype=x.dtype, device=x.device))
    bias = init.bias.clone() if init is not None else torch.zeros(num_classes, dtype=x.dtype, device=x.device)
    weight.requires_grad_(True)
    bias.requires_grad_(True)
    target = y.to(x.dtype) if multilabel else y
    optimizer = torch.optim.LBFGS([weight, bias], lr=1, max_iter=max_iter, tolerance_grad=tol,
                                  tolerance_change=1e-12, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        logits = x @ weight.T + bias
        if multilabel:
            data = F.binary_cross_entropy_with_logits(logits, target, reduction="sum")
        else:
            data = F.cross_entropy(logits, target, reduction="sum")
        loss = data / n + weight.pow(2).sum() / (2 * C * n)  # = (C·Σloss + ½‖W‖²) / (C·N): gradients don't scale with C
        loss.backward()
        return loss

    optimizer.step(closure)
    return LinearModel(weight.detach(), bias.detach())


def topk_accuracy(scores: torch.Tensor, y: torch.Tensor, k: int) -> float:
    """Percentage of rows whose true class is among the ``k`` highest scores."""
    k = min(k, scores.shape[1])
    return float((scores.topk(k, dim=1).indices == y[:, None]).any(dim=1).float().mean() * 100)


def mean_average_precision(scores: np.ndarray, targets: np.ndarray) -> float:
    """mAP (%) over the classes with at least one positive: AP as scikit-learn's ``average_precision_score``."""
    from sklearn.metrics import average_precision_score

    present = targets.sum(axis=0) > 0
    if not present.any():
        raise InputError("the test split has no positive label for any class; cannot compute mAP")
    return float(np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in np.flatnonzero(present)]) * 100)


def evaluate(model: LinearModel, x: torch.Tensor, y: torch.Tensor, multilabel: bool) -> dict[str, float]:
    scores = model.scores(x)
    if multilabel:
        return {"mAP": mean_average_precision(scores.cpu().numpy(), y.cpu().numpy())}
    return with_se({"top1": topk_accuracy(scores, y, 1), "top5": topk_accuracy(scores, y, 5)}, len(y))


def c_grid(n: int = 45) -> np.ndarray:
    if n < 1:
        raise InputError(f"--c-grid {n}: expected at least 1 value")
    return np.logspace(-5, 5, n) if n > 1 else np.array([1.0])


def standardise(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean, std = train.mean(axis=0), train.std(axis=0)
    std[std < 1e-8] = 1.0  # constant features stay zero instead of exploding
    return [(a - mean) / std for a in (train, *others)]


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, num_classes: int,
                 multilabel: bool, n_grid: int = 45, val_fraction: float = 0.2, seed: int = 0,
                 search_max_iter: int = 100, max_iter: int = 1000, device: torch.device | str = "cpu",
                 groups: np.ndarray | None = None, val_rows: np.ndarray | None = None) -> dict:
    """Choose C on a seeded validation split of train, refit on all of train, score the test split.

    ``groups`` (N,): rows sharing a group (objects of one image) go to the same side of the validation split.
    ``val_rows``: a predefined validation split (indices into train); the seeded split is then not drawn.

    Returns {"C", "val_score", "top1"/"top5" or "mAP", "grid": [[C, val score], ...], "C_at_grid_edge"}.
    """
    if len(train_x) < 2:
        raise InputError(f"linear probe: {len(train_x)} training rows; need at least 2")
    train_x, test_x = standardise(train_x, test_x)
    dtype = torch.float64 if torch.device(device).type == "cpu" else torch.float32
    as_x = lambda a: torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
    as_y = lambda a: torch.as_tensor(a, dtype=torch.int64, device=device)  # noqa: E731
    if val_rows is None:
        val, fit = validation_split(len(train_x), val_fraction, seed, groups)
    else:
        val = np.asarray(val_rows)
        fit = np.setdiff1d(np.arange(len(train_x)), val)
        if len(val) == 0 or len(fit) == 0:
            raise InputError("linear probe: the predefined validation split and the training split must both be non-empty")
    xf, yf, xv, yv = as_x(train_x[fit]), as_y(train_y[fit]), as_x(train_x[val]), as_y(train_y[val])
    key = "mAP" if multilabel else "top1"
    grid, model, best = [], None, (-1.0, None)
    for C in c_grid(n_grid):
        model = fit_logistic(xf, yf, float(C), num_classes, multilabel, init=model, max_iter=search_max_iter,
                             tol=SEARCH_TOL)
        score = _safe_score(model, xv, yv, multilabel, key)
        grid.append([float(C), score])
        if score > best[0]:
            best = (score, float(C))
    C = best[1]
    final = fit_logistic(as_x(train_x), as_y(train_y), C, num_classes, multilabel, max_iter=max_iter)
    result = {"C": C, "val_score": best[0], **evaluate(final, as_x(test_x), as_y(test_y), multilabel)}
    result["grid"] = grid
    result["C_at_grid_edge"] = _warn_at_edge(C, [c for c, _ in grid])
    return result


def _warn_at_edge(C: float, grid: list[float]) -> bool:
    """Whether C is the grid's smallest or largest value (a better C may lie beyond it); warns when it is. A grid
    of one value searched nothing, so it has no edge to warn about."""
    if len(grid) < 2 or C not in (grid[0], grid[-1]):
        return False
    side = "smallest" if C == grid[0] else "largest"
    current().warn(f"linear probe: the chosen C {C:g} is the {side} of the grid [{grid[0]:g}, {grid[-1]:g}] "
                   f"({len(grid)} values): a better C may lie beyond it")
    return True


def validation_split(n: int, fraction: float, seed: int, groups: np.ndarray | None = None):
    """(val rows, fit rows): a seeded ``fraction`` of the groups (default: of the rows), at least one of each side."""
    groups = np.arange(n) if groups is None else np.asarray(groups)
    unique = np.unique(groups)
    if len(unique) < 2:
        raise InputError(f"linear probe: the training split has {len(unique)} image(s); need at least 2 to validate C")
    chosen = np.random.default_rng(seed).permutation(unique)[:min(len(unique) - 1, max(1, round(fraction * len(unique))))]
    is_val = np.isin(groups, chosen)
    return np.flatnonzero(is_val), np.flatnonzero(~is_val)


def _safe_score(model: LinearModel, x: torch.Tensor, y: torch.Tensor, multilabel: bool, key: str) -> float:
    if multilabel and not bool((y.sum(dim=0) > 0).any()):
        return 0.0  # a tiny validation split without positives cannot rank C values
    return evaluate(model, x, y, multilabel)[key]
