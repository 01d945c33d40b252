"""Rectified flow in two lines, plus the ODE steps the samplers integrate with.

Convention: t = 0 is pure noise, t = 1 is data; x_t = t * x1 + (1 - t) * x0 and the velocity
to predict is v = x1 - x0, so integrating dx/dt = v from 0 to 1 turns noise into data.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def noised(x1: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(x_t, target velocity) for data x1, noise x0 and per-row times t (broadcast over the last dim)."""
    t = t.to(x1.dtype).unsqueeze(-1)
    return t * x1 + (1 - t) * x0, x1 - x0


Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t, t) -> v


def integrate(velocity: Velocity, x0: torch.Tensor, steps: int, method: str = "euler") -> torch.Tensor:
    """Solve dx/dt = v(x, t) from t=0 to 1 in `steps` uniform steps; Heun costs two calls a step."""
    if method not in ("euler", "heun"):
        raise ValueError(f"unknown ODE method {method!r}; use 'euler' or 'heun'")
    x, dt = x0, 1.0 / steps
    for i in range(steps):
        t = torch.full(x.shape[:-1], i * dt, device=x.device)
        v = velocity(x, t)
        if method == "heun" and i < steps - 1:  # the last Heun step would evaluate at t=1: plain Euler there
            v = 0.5 * (v + velocity(x + dt * v, t + dt))
        x = x + dt * v
    return x


def guided(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance; scale 1 returns the conditional prediction exactly."""
    return cond if scale == 1.0 else uncond + scale * (cond - uncond)
