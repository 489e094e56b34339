"""The shared training engine: devices, DDP, AMP, schedules, LARS, checkpoint/resume, logging.

Modules: `launch` (processes and torch.distributed), `trainer` (the loop, split into named steps), `data` (dataset,
seeded per-rank batch sampler, DataLoader), `optim` (SGD, LARS, parameter groups), `schedules` (lr),
`training_checkpoint` (the engine's own checkpoint: format, atomic saves, RNG states, resume rules), `metrics` (JSON
lines, TensorBoard, progress), `threads` (compute threads per rank). Rank helpers and autograd-aware gathers live in
`sslcli.distributed`, EMA helpers for momentum encoders in `sslcli.models.ema`; reading a backbone out of a
checkpoint for evaluation is `sslcli.backbone_checkpoints`. User documentation: docs/pretrain.md.
"""
