"""The linear probe's C search: sslcli (torch L-BFGS, warm starts, reduced search budget) vs scikit-learn
(LogisticRegression refitted from scratch for every C), same features, same grid, same validation split, one run.

    OMP_NUM_THREADS=1 .venv/bin/python bench/probe_linear.py [--rows 2000] [--dim 256] [--classes 20] [--grid 45]

Prints both wall times, their ratio, the C each picked and the test top-1 of each (they should agree within 0.5).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--grid", type=int, default=45)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from sklearn.linear_model import LogisticRegression

    from sslcli.eval.linear import c_grid, linear_probe, standardise, validation_split

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(args.classes, args.dim)) * 0.15
    y = rng.integers(0, args.classes, 2 * args.rows)
    x = centres[y] + rng.normal(size=(2 * args.rows, args.dim))
    train_x, train_y, test_x, test_y = x[:args.rows], y[:args.rows], x[args.rows:], y[args.rows:]

    start = time.perf_counter()
    ours = linear_probe(train_x, train_y, test_x, test_y, args.classes, multilabel=False, n_grid=args.grid)
    ours_s = time.perf_counter() - start

    start = time.perf_counter()
    xs, xt = standardise(train_x, test_x)
    val, fit = validation_split(len(xs), 0.2, 0, None)
    scores = [(LogisticRegression(C=C, max_iter=1000).fit(xs[fit], train_y[fit]).score(xs[val], train_y[val]), C)
              for C in c_grid(args.grid)]
    best_c = max(scores, key=lambda s: s[0])[1]
    sk_top1 = LogisticRegression(C=best_c, max_iter=1000).fit(xs, train_y).score(xt, test_y) * 100
    sk_s = time.perf_counter() - start

    print(f"rows={args.rows} dim={args.dim} classes={args.classes} grid={args.grid} threads={args.threads}")
    print(f"sslcli   : {ours_s:7.2f} s  C={ours['C']:.3g}  test top-1 {ours['top1']:.2f}")
    print(f"sklearn  : {sk_s:7.2f} s  C={best_c:.3g}  test top-1 {sk_top1:.2f}")
    print(f"speed-up (sklearn time / sslcli time): {sk_s / ours_s:.2f}x; top-1 difference {ours['top1'] - sk_top1:+.2f}")


if __name__ == "__main__":
    main()
