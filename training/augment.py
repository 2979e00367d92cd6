"""Batched train-time augmentation: one random affine warp (random resized crop, shift,
rotation, zoom) + flip.

Done on whole batches on the training device (one ``affine_grid`` + ``grid_sample``) rather
than per sample in the DataLoader: on 2 CPU cores per-sample Python transforms cost more than
the small CNN's step. Randomness comes from an explicit generator the caller seeds per step,
so a resumed run draws the same augmentations as an uninterrupted one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class AugmentConfig:
    shift_px: float = 0.0  # max translation per axis, pixels
    rotate_deg: float = 0.0  # max rotation, degrees
    scale: float = 0.0  # max zoom, fraction
    hflip: bool = False  # random horizontal flip
    crop_scale: float = 0.0  # random resized crop: min area fraction kept (0 = off)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # its aspect ratio range (w / h)

    @property
    def enabled(self) -> bool:
        return bool(self.shift_px or self.rotate_deg or self.scale or self.hflip or self.crop_scale)


def _crop_boxes(
    n: int, cfg: AugmentConfig, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per image: (width fraction, height fraction, centre x, centre y) of a random crop in
    affine_grid's [-1, 1] coordinates (torchvision's RandomResizedCrop, clamped, no retries)."""
    if not cfg.crop_scale:
        one, zero = torch.ones(n), torch.zeros(n)
        return one, one, zero, zero
    area = cfg.crop_scale + torch.rand(n, generator=generator) * (1.0 - cfg.crop_scale)
    lo, hi = math.log(cfg.crop_ratio[0]), math.log(cfg.crop_ratio[1])
    ratio = torch.exp(lo + torch.rand(n, generator=generator) * (hi - lo))
    fw = torch.sqrt(area * ratio).clamp(max=1.0)
    fh = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (torch.rand(n, generator=generator) * 2 - 1) * (1 - fw)
    cy = (torch.rand(n, generator=generator) * 2 - 1) * (1 - fh)
    return fw, fh, cx, cy


def augment_batch(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """Randomly warp a float batch ``[N, C, H, W]`` (any value range; borders filled with 0)."""
    if not cfg.enabled:
        return x
    n, _, h, w = x.shape

    def uniform(bound: float) -> torch.Tensor:
        return (torch.rand(n, generator=generator) * 2 - 1) * bound

    angle = uniform(math.radians(cfg.rotate_deg))
    zoom = 1.0 + uniform(cfg.scale)
    # affine_grid works in [-1, 1] coordinates: a shift of p pixels is 2p/size
    tx, ty = uniform(2 * cfg.shift_px / w), uniform(2 * cfg.shift_px / h)
    flip = (
        torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
        if cfg.hflip
        else torch.ones(n)
    )
    fw, fh, cx, cy = _crop_boxes(n, cfg, generator)
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    # output -> input coordinates: flip, rotate/zoom, then map into the crop box and shift
    theta = torch.stack(
        [
            torch.stack([cos * flip * fw, -sin * fw, tx + cx], 1),
            torch.stack([sin * flip * fh, cos * fh, ty + cy], 1),
        ],
        1,
    )
    theta = theta.to(device=x.device, dtype=torch.float32)
    grid = F.affine_grid(theta, [n, x.shape[1], h, w], align_corners=False)
    return F.grid_sample(
        x.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )


def step_seed(seed: int, global_step: int, rank: int) -> int:
    """A 63-bit seed that depends only on (run seed, optimiser step, rank)."""
    value = seed * 0x9E3779B97F4A7C15 + global_step * 0xBF58476D1CE4E5B9 + rank * 0x94D049BB133111EB
    return value % (2**63 - 1)


def reseed(seed: int, device: torch.device) -> None:
    """Seed the default generator of ``device`` (dropout, stochastic depth) for one step.

    Not ``torch.manual_seed``: on a machine without an initialised GPU it queues a lazy CUDA
    seeding call with a formatted stack trace every time (~1 ms per step on CPU, measured).
    """
    torch.default_generator.manual_seed(seed)
    if device.type == "cuda":
        torch.cuda.manual_seed(seed)  # current device only; CUDA is initialised here
