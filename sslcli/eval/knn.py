"""Weighted k-nearest-neighbour probe (METHODS.md §7): cosine similarity, votes weighted by exp(sim / T), T = 0.07.

For each test row the ``k`` most similar training rows vote for their class with weight exp(sim/T); the class
scores are the summed votes. Multi-label training rows vote for every class they carry.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from sslcli.errors import InputError
from sslcli.eval.linear import mean_average_precision
from sslcli.eval.sampling import with_se

TEMPERATURE = 0.07


def parse_ks(text: str) -> list[int]:
    try:
        ks = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise InputError(f"--k {text!r}: expected comma-separated positive integers such as 10,20,100,200") from None
    if not ks or ks[0] < 1:
        raise InputError(f"--k {text!r}: expected comma-separated positive integers such as 10,20,100,200")
    return ks


@torch.no_grad()
def knn_scores(train: torch.Tensor, train_targets: torch.Tensor, test: torch.Tensor, ks: list[int], num_classes: int,
               temperature: float = TEMPERATURE, chunk: int = 1024) -> dict[int, torch.Tensor]:
    """{k: (N_test, num_classes) summed vote weights}.

    train: (N, D), test: (M, D) features (L2-normalised here); train_targets: (N,) int64 or (N, K) multi-hot.
    ``k`` larger than N is clamped to N.
    """
    train, test = F.normalize(train.float(), dim=1), F.normalize(test.float(), dim=1)
    multilabel = train_targets.ndim == 2
    kmax = min(max(ks), len(train))
    out = {k: [] for k in ks}
    for start in range(0, len(test), chunk):
        sim = test[start:start + chunk] @ train.T  # (m, N)
        top_sim, top_idx = sim.topk(kmax, dim=1)  # sorted, most similar first
        weights = (top_sim / temperature).exp()  # (m, kmax)
        if multilabel:
            votes = train_targets[top_idx].float() * weights[..., None]  # (m, kmax, K)
        for k in ks:
            kk = min(k, kmax)
            if multilabel:
                out[k].append(votes[:, :kk].sum(dim=1))
            else:  # scatter the weights into their classes: memory O(m·K), not O(N·K) or O(m·k·K)
                scores = torch.zeros(len(sim), num_classes, device=sim.device, dtype=weights.dtype)
                out[k].append(scores.scatter_add_(1, train_targets[top_idx[:, :kk]], weights[:, :kk]))
    return {k: torch.cat(parts) for k, parts in out.items()}


def voted_topk_accuracy(scores: torch.Tensor, y: torch.Tensor, k: int) -> float:
    """Percentage of rows whose true class got votes and is among the ``k`` best-voted classes.

    scores: (N, K) summed vote weights; y: (N,). Classes without a vote all score 0; which of them ``topk`` returns
    is an arbitrary tie-break (it depends on the class numbering), so a class nobody voted for is never a hit.
    """
    values, indices = scores.topk(min(k, scores.shape[1]), dim=1)
    return float(((indices == y[:, None]) & (values > 0)).any(dim=1).float().mean() * 100)


def knn_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, ks: list[int],
              num_classes: int, multilabel: bool, temperature: float = TEMPERATURE,
              device: torch.device | str = "cpu") -> dict:
    """{"k": {k: {"top1", "top5"}}} (single-label) or {"k": {k: {"mAP", "top1"}}} (multi-label: top1 = the best-voted
    class is one of the image's classes)."""
    scores = knn_scores(torch.as_tensor(train_x, device=device), torch.as_tensor(train_y, device=device),
                        torch.as_tensor(test_x, device=device), ks, num_classes, temperature)
    y = torch.as_tensor(test_y, device=device)
    result = {}
    for k, s in scores.items():
        if multilabel:
            hit = y.gather(1, s.argmax(dim=1, keepdim=True)).float().mean() * 100
            result[str(k)] = {"mAP": mean_average_precision(s.cpu().numpy(), test_y),
                              **with_se({"top1": float(hit)}, len(y))}
        else:
            result[str(k)] = with_se({"top1": voted_topk_accuracy(s, y, 1), "top5": voted_topk_accuracy(s, y, 5)},
                                     len(y))
    return {"k": result, "k_clamped_to": min(max(ks), len(train_x)), "temperature": temperature}
