"""The continuous-time VP noise schedule shared by the SDA prior and sampler.

Rozet & Louppe (2023): ``x_t = mu(t) x + sigma(t) eps`` for ``t`` in [0, 1] with the cosine
schedule ``mu(t) = cos(arccos(sqrt(eta)) t)^2`` and ``sigma(t) = sqrt(1 - mu(t)^2 + eta^2)``.
``eta`` keeps ``sigma(0) > 0`` and ``mu(1) > 0`` so both ends are well conditioned.
"""

from __future__ import annotations

import math

import torch


class VPSchedule:
    """``mu(t)``, ``sigma(t)`` of the cosine VP schedule; ``t`` is a tensor in [0, 1]."""

    def __init__(self, eta: float = 1e-3):
        self.eta = float(eta)
        self.alpha = math.acos(math.sqrt(self.eta))

    def mu(self, t: torch.Tensor) -> torch.Tensor:
        return torch.cos(self.alpha * t) ** 2

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(1 - self.mu(t) ** 2 + self.eta**2)

    def perturb(self, x: torch.Tensor, t: torch.Tensor, eps: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(x_t, eps)`` for clean ``x`` ``(B, ...)`` and times ``t`` ``(B,)``."""
        if eps is None:
            eps = torch.randn_like(x)
        shape = (-1,) + (1,) * (x.ndim - 1)
        return self.mu(t).view(shape) * x + self.sigma(t).view(shape) * eps, eps

    @staticmethod
    def unet_timestep(t: torch.Tensor) -> torch.Tensor:
        """The value fed to a diffusers UNet's positional time embedding: ``1000 t``."""
        return t * 1000.0
