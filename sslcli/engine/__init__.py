"""The shared training engine: devices, DDP, AMP, schedules, LARS, EMA, checkpoint/resume, logging."""
