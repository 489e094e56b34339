"""PLRC's run-spec fields (torch-free). Defaults: the authors' released code (github.com/facebookresearch/PLRC,
main_plrc.py, PLRC/models/builder.py, plrc_loss.py, resnet.py, datasets/imagenet.py), where most values are
hard-coded constants rather than options; each field names where its default is written."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from sslcli.spec import Strict


class PlrcSpec(Strict):
    """PLRC (docs/plrc.md): a MoCo image loss, a point-level region contrast between points sampled in a shared
    pseudo-region of two crops, and a self-distillation of point affinities, weighted im/cl/ts."""

    name: Literal["plrc"] = "plrc"
    dim: int = Field(128, ge=1, description="Output size of the point head (the authors' fcs, feat_dim 128).")
    hidden_dim: int = Field(2048, ge=1, description="Hidden size of the point head and the distillation head.")
    bottleneck_dim: int = Field(256, ge=1, description="Bottleneck of the distillation head (ProjHead).")
    distill_dim: int = Field(4096, ge=1, description="Output size of the distillation head's weight-normalised last "
                                                     "layer (ProjHead out_dim).")
    queue_size: int = Field(65536, ge=1, description="K of the image-level queue (Memory_Loss Ks); divisible by the "
                                                     "global batch size.")
    momentum: float = Field(0.999, ge=0.0, le=1.0, description="Constant momentum of the key network (--moco-m).")
    shuffle_bn: bool = Field(True, description="Encode the key crops in a shuffled batch (MoCo's shuffle-BN).")
    image_weight: float = Field(0.7, ge=0.0, description="Weight of the image-level InfoNCE (--im_ratio).")
    point_weight: float = Field(0.3, ge=0.0, description="Weight of the point-level region contrast (--cl_ratio).")
    distill_weight: float = Field(0.3, ge=0.0, description="Weight of the affinity self-distillation (--ts_ratio).")
    image_temperature: float = Field(0.2, gt=0.0, description="τ of the image InfoNCE (NCEAverage T).")
    point_temperature: float = Field(0.2, gt=0.0, description="τ of the point SupCon loss (SupConLoss temperature).")
    point_base_temperature: float = Field(0.07, gt=0.0, description="The SupCon loss is scaled by τ / this "
                                                                     "(SupConLoss base_temperature).")
    grid: int = Field(4, ge=2, description="Pseudo-regions: a grid × grid partition of the image (mask_grid_num).")
    mask_size: int = Field(56, ge=2, description="Side of the point grid of each crop (mask_size; 224 px / 4).")
    points: int = Field(32, ge=1, description="Points sampled in the shared region of each point crop "
                                              "(mask_area_avgnum).")
    kept_points: int = Field(16, ge=1, description="Of them, the first this many enter the point loss (keep_point).")
    min_overlap: float = Field(0.5, ge=0.0, le=1.0, description="The teacher crop is redrawn until its overlap with "
                                                               "crop 0 is ≥ this × the larger area (datasets/imagenet.py).")
    overlap_tries: int = Field(101, ge=1, description="Draws of that crop pair before the last is kept (iii > 100).")
    pair_ratio: float = Field(0.5, gt=0.0, description="Distillation pairs: cells closer than this × the larger cell "
                                                        "diagonal (utils.overlap pos_ratio).")
    affinity_divisor: float = Field(128.0, gt=0.0, description="Point affinities are divided by this before the "
                                                               "distillation (builder: / 128.0).")
    student_temperature: float = Field(0.1, gt=0.0, description="Student temperature of the self-distillation.")
    teacher_temperature: float = Field(0.07, gt=0.0, description="Teacher temperature after the warm-up.")
    warmup_teacher_temperature: float = Field(0.04, gt=0.0, description="Teacher temperature at epoch 0.")
    warmup_teacher_epochs: int = Field(30, ge=0, description="Epochs of the linear teacher-temperature warm-up (the "
                                                            "authors' schedule is a 100-epoch table).")
    center_momentum: float = Field(0.9, ge=0.0, le=1.0, description="Momentum of the teacher's centre.")


def problems(spec) -> list[str]:
    """The image queue advances by the global batch at every step (as MoCo's); kept points are a subset."""
    out = []
    if spec.method.queue_size % spec.batch_size:
        out.append(f"method.queue_size: must be divisible by the global batch size {spec.batch_size}")
    if spec.method.kept_points > spec.method.points:
        out.append(f"method.kept_points: {spec.method.kept_points} is more than method.points "
                   f"{spec.method.points}")
    return out
