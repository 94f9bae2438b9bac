"""DualStyleGAN's sampling network N: random extrinsic styles from noise (docs/methods/dualstylegan.md,
"Sampling network"; Yang et al. 2022, after GLANN's IMLE of Hoshen et al. 2019).

Two independent maps from 128-d Gaussian noise, one to the structure rows (``<= res_index``) and one to the
colour rows of an extrinsic W+ code, each ``Linear(128, 128) - BN - ReLU - Linear(128, 128) - BN - ReLU -
Linear(128, rows · D)`` without biases. Training is implicit maximum likelihood (IMLE)::

    data    the extrinsic codes, flattened, repeated max(1, 1000 // N) times, each copy jittered once by N(0, σ²)
    epoch   generate M = 2 ⌊n / 128⌋ batches of 128: T(noise); match every data point to its nearest generated
            sample (L2); one pass of MSE regression T(matched noise) -> data point, batches of 128;
            Adam re-created each epoch, lr 1e-3 · 0.5^⌊epoch / 50⌋, betas (0.5, 0.999), weight decay 1e-5
    epochs  ⌊500000 / n⌋

The repetition is ``max(1, 1000 // N)``: the official ``1000 // N`` leaves no data at all for more than 1000
style images. At inference the networks run in eval mode (the official script leaves BatchNorm in train mode,
so its samples depend on the batch: ``batch_stats=True`` reproduces that).
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["ICPNet", "StyleSampler", "repeat_and_jitter", "train_imle", "train_style_sampler", "FORMAT"]

FORMAT = "styleshift-style-sampler/1"
NOISE_DIM = 128


class ICPNet(nn.Module):
    """Noise [B, 128] -> a flattened code [B, out_dim]."""

    def __init__(self, out_dim: int, noise_dim: int = NOISE_DIM, hidden: int = 128):
        super().__init__()
        self.noise_dim, self.out_dim = noise_dim, out_dim
        self.net = nn.Sequential(nn.Linear(noise_dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(),
                                 nn.Linear(hidden, out_dim, bias=False))

    def forward(self, noise: Tensor) -> Tensor:
        return self.net(noise)


def repeat_and_jitter(codes: Tensor, sigma: float, generator: torch.Generator, target: int = 1000) -> Tensor:
    """Rows of ``codes`` [N, F] repeated ``max(1, target // N)`` times, each copy jittered once by N(0, σ²)."""
    copies = codes.repeat(max(1, target // codes.shape[0]), 1)
    return copies + sigma * torch.randn(copies.shape, generator=generator)


def _lr(epoch: int, base: float = 1e-3) -> float:
    return base * 0.5 ** (epoch // 50)


def train_imle(net: ICPNet, data: Tensor, epochs: int, generator: torch.Generator, batch: int = 128,
               progress: Any = None) -> list[float]:
    """IMLE of ``net`` on ``data`` [n, out_dim] (see the module docstring); the mean loss of each epoch."""
    n = data.shape[0]
    losses = []
    for epoch in range(epochs):
        m = max(1, 2 * (n // batch))
        noise = torch.randn(m * batch, net.noise_dim, generator=generator)
        net.eval()
        with torch.no_grad():
            samples = torch.cat([net(chunk) for chunk in noise.split(batch)])
            nearest = torch.cdist(data, samples).argmin(dim=1)
        matched = noise[nearest]
        net.train()
        opt = torch.optim.Adam(net.parameters(), lr=_lr(epoch), betas=(0.5, 0.999), weight_decay=1e-5)
        order = torch.randperm(n, generator=generator)
        total = 0.0
        for rows in order.split(batch):
            if len(rows) < 2:  # BatchNorm needs two samples
                continue
            loss = (net(matched[rows]) - data[rows]).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(rows)
        losses.append(total / n)
        if progress is not None:
            progress(epoch, losses[-1])
    net.eval()
    return losses


class StyleSampler(nn.Module):
    """Random extrinsic W+ codes: ``sample(n, generator) -> [n, n_latent, D]`` from the two IMLE maps."""

    def __init__(self, n_latent: int, style_dim: int, res_index: int):
        super().__init__()
        self.n_latent, self.style_dim, self.res_index = int(n_latent), int(style_dim), int(res_index)
        n_structure = self.res_index + 1
        self.structure = ICPNet(n_structure * style_dim)
        self.colour = ICPNet((n_latent - n_structure) * style_dim)

    def split(self, codes: Tensor) -> tuple[Tensor, Tensor]:
        """W+ [N, n_latent, D] -> flattened structure and colour rows."""
        cut = self.res_index + 1
        return codes[:, :cut].flatten(1), codes[:, cut:].flatten(1)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator | None = None, batch_stats: bool = False) -> Tensor:
        """``n`` codes; ``batch_stats`` uses BatchNorm in train mode as the official script (needs n >= 2)."""
        was = self.training
        self.train(batch_stats)
        device = next(self.parameters()).device
        z_s = torch.randn(n, NOISE_DIM, generator=generator).to(device)
        z_c = torch.randn(n, NOISE_DIM, generator=generator).to(device)
        structure = self.structure(z_s).view(n, self.res_index + 1, self.style_dim)
        colour = self.colour(z_c).view(n, self.n_latent - self.res_index - 1, self.style_dim)
        self.train(was)
        return torch.cat([structure, colour], dim=1)

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"format": FORMAT, "config": {"n_latent": self.n_latent, "style_dim": self.style_dim,
                                                 "res_index": self.res_index},
                    "state_dict": self.state_dict()}, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, map_location: Any = "cpu") -> "StyleSampler":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"style sampler {path} does not exist (python -m launch.style_sampler writes it)")
        try:
            data = torch.load(path, map_location=map_location, weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unreadable file is the same user-facing error
            raise ValueError(f"{path}: not a readable style sampler ({type(err).__name__})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{path}: not a style sampler (no '{FORMAT}' format tag)")
        model = cls(**data["config"])
        model.load_state_dict(data["state_dict"])
        return model.eval()


def train_style_sampler(extrinsic: Tensor, res_index: int, *, sigma: float = 0.05, epochs: int | None = None,
                        seed: int = 0, progress: Any = None) -> tuple[StyleSampler, dict[str, list[float]]]:
    """The sampling network N of a code table's extrinsic codes [N, n_latent, D] (module docstring)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = StyleSampler(extrinsic.shape[1], extrinsic.shape[2], res_index)
    structure, colour = model.split(extrinsic.float())
    losses = {}
    for name, net, codes in (("structure", model.structure, structure), ("colour", model.colour, colour)):
        data = repeat_and_jitter(codes, sigma, generator)
        n_epochs = epochs if epochs is not None else max(1, math.floor(500000 / data.shape[0]))
        losses[name] = train_imle(net, data, n_epochs, generator, progress=progress)
    return model.eval(), losses
