"""A tiny method for engine tests: two-layer conv net, no BatchNorm, EMA target, contrastive loss over all ranks.

It has no per-rank batch statistics, so a 2-process run and a 1-process run with the same global batch must give
the same weights. It is installed under the spec name ``simclr`` (its spec fields: dim, hidden_dim, temperature) by
`install`, which tests pass as ``init_hook`` to spawned processes.
"""

from __future__ import annotations

from dataclasses import replace

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sslcli import distributed as dist
from sslcli.method_registry import REGISTRY, method_entry
from sslcli.methods.base import Method, StepInfo
from sslcli.models.ema import ema_update, momentum_copy

SIZE = 24


class ToyTransform:
    """Two random 24 px crops (+ random flip) of the image resized to 32 px, as float CHW tensors in [0, 1]."""

    def __call__(self, sample: dict) -> dict:
        image = cv2.resize(sample["image"], (32, 32), interpolation=cv2.INTER_AREA)
        views = []
        for _ in range(2):
            y, x = (int(v) for v in torch.randint(0, 32 - SIZE + 1, (2,)))
            crop = image[y:y + SIZE, x:x + SIZE]
            if np.random.rand() < 0.5:
                crop = crop[:, ::-1]
            views.append(torch.from_numpy(np.ascontiguousarray(crop)).permute(2, 0, 1).float() / 255.0)
        return {"view1": views[0], "view2": views[1], "index": sample["index"]}


class ToyMethod(Method):
    def __init__(self, spec):
        super().__init__(spec)
        dim = spec.method.dim
        self.encoder = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
                                     nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                                     nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Sequential(nn.Linear(16, spec.method.hidden_dim), nn.ReLU(),
                                  nn.Linear(spec.method.hidden_dim, dim))
        self.target = momentum_copy(nn.Sequential(self.encoder, self.head))
        self.register_buffer("steps_seen", torch.zeros((), dtype=torch.long))

    def transform(self):
        return ToyTransform()

    def forward(self, batch: dict, step: StepInfo) -> dict[str, torch.Tensor]:
        q = F.normalize(self.head(self.encoder(batch["view1"])), dim=1)
        with torch.no_grad():
            k = F.normalize(self.target(batch["view2"]), dim=1)
        q_all, k_all = dist.gather_with_grad(q), dist.gather_no_grad(k)
        logits = q_all @ k_all.t() / self.spec.method.temperature
        loss = F.cross_entropy(logits, torch.arange(len(q_all), device=q.device))
        return {"loss": loss, "alignment": (q_all * k_all).sum(1).mean().detach()}

    @torch.no_grad()
    def after_step(self, step: StepInfo) -> None:
        ema_update(self.target, nn.Sequential(self.encoder, self.head), 0.9)
        self.steps_seen += 1


def use_as_simclr(method: type) -> None:
    """Put ``method`` in the method registry under the spec name 'simclr' (the built-ins registered first)."""
    REGISTRY["simclr"] = replace(method_entry("simclr"), method=method)


def install() -> None:
    """Register the toy under the spec name 'simclr' (after the real methods registered themselves)."""
    use_as_simclr(ToyMethod)


def spec_dict(root, output_dir, **overrides) -> dict:
    """A small run spec for the toy on a folder of images."""
    spec = {"name": "toy", "data": {"root": str(root), "format": "folder", "image_size": 32, "workers": 0,
                                    "pin_memory": False},
            "model": {"arch": "resnet18", "width": 8},
            "method": {"name": "simclr", "dim": 8, "hidden_dim": 16, "temperature": 0.5},
            "optimizer": {"name": "sgd", "base_lr": 0.4, "weight_decay": 1e-4},
            "schedule": {"name": "cosine", "warmup_epochs": 1, "warmup_start_factor": 0.1},
            "batch_size": 8, "epochs": 3, "precision": "fp32", "seed": 3, "output_dir": str(output_dir),
            "logging": {"every_steps": 1}}
    for key, value in overrides.items():
        node = spec
        parts = key.split("__")
        for part in parts[:-1]:
            node = node[part]
        node[parts[-1]] = value
    return spec


def write_images(folder, n: int = 20, seed: int = 0) -> None:
    """``n`` random 40×48 PNG images with smooth blobs (so crops differ)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        small = rng.integers(0, 256, size=(5, 6, 3), dtype=np.uint8)
        image = cv2.resize(small, (48, 40), interpolation=cv2.INTER_CUBIC)
        cv2.imwrite(str(folder / f"img_{i:03d}.png"), image)


class PoisonedToy(ToyMethod):
    """The toy whose loss turns NaN at step index 3 (the 4th step)."""

    def forward(self, batch: dict, step: StepInfo) -> dict[str, torch.Tensor]:
        losses = super().forward(batch, step)
        if step.step == 3:
            losses["loss"] = losses["loss"] * float("nan")
        return losses


def install_poisoned() -> None:
    use_as_simclr(PoisonedToy)


class SlowToy(ToyMethod):
    """The toy sleeping a second per step from the 3rd step on: leaves time to kill a run after epoch 1."""

    def forward(self, batch: dict, step: StepInfo) -> dict[str, torch.Tensor]:
        if step.step >= 2:
            import time

            time.sleep(1.0)
        return super().forward(batch, step)


def main_slow() -> None:
    """``python -c 'import engine_toy; engine_toy.main_slow()' pretrain ...``: the CLI with the slow toy installed."""
    use_as_simclr(SlowToy)
    from sslcli.cli import main

    main()


def main_killed_writing(name: str) -> None:
    """The CLI with the toy, SIGKILLed by the kernel while ``name`` (e.g. epoch_0001.pt) is half written."""
    import os
    import signal

    import sslcli.engine.trainer as trainer
    from sslcli.io import atomic_path

    use_as_simclr(ToyMethod)
    save = trainer.save_checkpoint

    def save_or_die(path, state):
        if path.name == name:
            with atomic_path(path) as tmp:
                tmp.write_bytes(b"half a checkpoint")
                os.kill(os.getpid(), signal.SIGKILL)
        save(path, state)

    trainer.save_checkpoint = save_or_die
    from sslcli.cli import main

    main()


class FailingToy(ToyMethod):
    """The toy whose rank 1 raises at its 2nd step while rank 0 waits in the all-reduce."""

    def forward(self, batch: dict, step: StepInfo) -> dict[str, torch.Tensor]:
        if step.step == 1 and dist.rank() == 1:
            raise RuntimeError("rank 1 broke on purpose")
        return super().forward(batch, step)


def install_failing() -> None:
    use_as_simclr(FailingToy)


class LauncherSignallingToy(ToyMethod):
    """The toy whose rank 0 sends SIGTERM to its launcher (its parent) during step index 2 and then sleeps a second,
    so the launcher's forwarded signal reaches every rank inside that step: all must stop after step 3."""

    def forward(self, batch: dict, step: StepInfo) -> dict[str, torch.Tensor]:
        if step.step == 2 and dist.rank() == 0:
            import os
            import signal
            import time

            os.kill(os.getppid(), signal.SIGTERM)
            time.sleep(1.0)
        return super().forward(batch, step)


def install_signalling_launcher() -> None:
    use_as_simclr(LauncherSignallingToy)


class RankSignallingToy(ToyMethod):
    """The toy whose rank 1 alone sends SIGTERM to itself during step index 2: rank 0 learns of it only through the
    ranks' agreement after the step."""

    def forward(self, batch: dict, step: StepInfo) -> dict[str, torch.Tensor]:
        if step.step == 2 and dist.rank() == 1:
            import os
            import signal

            os.kill(os.getpid(), signal.SIGTERM)
        return super().forward(batch, step)


def install_rank_signalling() -> None:
    use_as_simclr(RankSignallingToy)


def tensors(state) -> list[torch.Tensor]:
    """Every tensor of a nested state (dicts in key order, lists in order): for bit-identity checks."""
    if isinstance(state, torch.Tensor):
        return [state]
    if isinstance(state, dict):
        return [t for k in sorted(state, key=str) for t in tensors(state[k])]
    if isinstance(state, (list, tuple)):
        return [t for v in state for t in tensors(v)]
    return []
