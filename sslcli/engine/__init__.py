"""The shared training engine: devices, DDP, AMP, schedules, LARS, EMA, checkpoint/resume, logging.

Modules: `launch` (processes and torch.distributed), `trainer` (the loop), `data` (dataset, seeded per-rank batch
sampler, DataLoader), `optim` (SGD, LARS, parameter groups), `schedules` (lr), `checkpoint` (format, atomic saves,
resume rules), `metrics` (JSON lines, TensorBoard, progress), `dist` (rank helpers and autograd-aware gathers).
EMA helpers for momentum encoders live in `sslcli.models.ema`. User documentation: docs/pretrain.md.
"""
