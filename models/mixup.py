"""MixDL mixing coefficients and W-space mixing (docs/methods/mixdl.md, "Algorithm").

A coefficient sampler draws alpha [M, B]: row i holds the convex weights with which mix i combines
the B anchors (in MixDL M = B = batch size). Three samplers exist in the released code as ablation
switches:

- ``dirichlet``: each row ~ Dir(concentration * 1_B). The reference's ``--dir_div d`` means
  concentration = 1 / d; the default d = 1 is uniform on the simplex.
- ``gaussian``: softmax of a standard normal row (``--gaussian``).
- ``uniform``: U(0, 1) entries divided by their row sum (``--uniform``).

Every sampler accepts an optional ``torch.Generator`` so draws are reproducible.
"""
from __future__ import annotations

from typing import Callable

import torch

CoefficientSampler = Callable[..., torch.Tensor]


def _device(generator: torch.Generator | None, device: torch.device | str | None):
    return generator.device if generator is not None else device


def _check_dims(num_rows: int, num_anchors: int) -> None:
    if num_rows < 1 or num_anchors < 1:
        raise ValueError(f"need num_rows >= 1 and num_anchors >= 1, got {num_rows}, {num_anchors}")


def dirichlet_coefficients(num_rows: int, num_anchors: int, concentration: float = 1.0,
                           generator: torch.Generator | None = None,
                           device: torch.device | str | None = None) -> torch.Tensor:
    """Rows ~ Dir(concentration * 1_B), shape [num_rows, num_anchors]."""
    _check_dims(num_rows, num_anchors)
    if not concentration > 0:
        raise ValueError(f"Dirichlet concentration must be > 0, got {concentration}")
    conc = torch.full((num_rows, num_anchors), float(concentration), device=_device(generator, device))
    # torch.distributions.Dirichlet.sample() draws with this same op but takes no generator argument.
    alpha = torch._sample_dirichlet(conc, generator=generator)
    return alpha.to(device) if device is not None else alpha


def gaussian_softmax_coefficients(num_rows: int, num_anchors: int, generator: torch.Generator | None = None,
                                  device: torch.device | str | None = None) -> torch.Tensor:
    """Rows = softmax(N(0, I_B)) (the released code's ``--gaussian``), shape [num_rows, num_anchors]."""
    _check_dims(num_rows, num_anchors)
    g = torch.randn(num_rows, num_anchors, generator=generator, device=_device(generator, device))
    alpha = torch.softmax(g, dim=1)
    return alpha.to(device) if device is not None else alpha


def uniform_coefficients(num_rows: int, num_anchors: int, generator: torch.Generator | None = None,
                         device: torch.device | str | None = None) -> torch.Tensor:
    """Rows = U(0, 1)^B / row sum (the released code's ``--uniform``), shape [num_rows, num_anchors]."""
    _check_dims(num_rows, num_anchors)
    u = torch.rand(num_rows, num_anchors, generator=generator, device=_device(generator, device))
    alpha = u / u.sum(dim=1, keepdim=True)
    return alpha.to(device) if device is not None else alpha


COEFFICIENT_SAMPLERS: dict[str, CoefficientSampler] = {
    "dirichlet": dirichlet_coefficients,
    "gaussian": gaussian_softmax_coefficients,
    "uniform": uniform_coefficients,
}


def make_coefficient_sampler(kind: str = "dirichlet", concentration: float = 1.0) -> CoefficientSampler:
    """The sampler named ``kind`` as ``sample(num_rows, num_anchors, generator=None, device=None)``.

    ``concentration`` applies to ``dirichlet`` only; passing another value with a different kind is an
    error rather than being silently ignored.
    """
    if kind not in COEFFICIENT_SAMPLERS:
        raise ValueError(f"unknown coefficient sampler {kind!r}; choose one of {sorted(COEFFICIENT_SAMPLERS)}")
    if kind == "dirichlet":
        if not concentration > 0:
            raise ValueError(f"Dirichlet concentration must be > 0, got {concentration}")

        def sample(num_rows, num_anchors, generator=None, device=None):
            return dirichlet_coefficients(num_rows, num_anchors, concentration, generator, device)

        return sample
    if concentration != 1.0:
        raise ValueError(f"concentration={concentration} only applies to the 'dirichlet' sampler, not {kind!r}")
    return COEFFICIENT_SAMPLERS[kind]


def mix_latents(w_anchors: torch.Tensor, coeffs: torch.Tensor) -> torch.Tensor:
    """Mixed latents ``alpha @ w``: w_anchors [B, D], coeffs [M, B] -> [M, D] (docs/methods/mixdl.md, "Algorithm").

    Mixing happens on single W vectors [B, D], i.e. ``Generator.get_latent(z)``. The released
    ``train_mixdl.py`` passed the broadcast W+ [B, n_latent, D] here and crashed; W+ input is rejected.
    """
    if w_anchors.dim() != 2:
        raise ValueError(f"mix_latents expects W anchors of shape [B, D] (Generator.get_latent(z)), got "
                         f"{tuple(w_anchors.shape)}; MixDL mixes single W vectors, not W+ (docs/methods/mixdl.md)")
    if coeffs.dim() != 2 or coeffs.shape[1] != w_anchors.shape[0]:
        raise ValueError(f"coeffs must be [M, B={w_anchors.shape[0]}], got {tuple(coeffs.shape)}")
    return coeffs.to(w_anchors.dtype) @ w_anchors
