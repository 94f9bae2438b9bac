"""Reconstruction quality of an inversion method: LPIPS, PSNR, SSIM and MSE between image ``i`` of a
reference set and image ``i`` of a paired sampler (one whose image ``i`` reconstructs reference image ``i``).

By default the metric runs on the samplers the module declares for it (``metric_samplers()``, e.g.
``{"reconstruction": ["reconstruction"]}``), else on every sampler of kind ``"paired"``; a module without
one logs nothing. Logged as four values sharing one protocol: ``recon_lpips``, ``recon_psnr``,
``recon_ssim`` and ``recon_mse``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch

from metrics import ddp
from metrics.lpips_family import reconstruction_scores
from metrics.registry import PAIRED_SAMPLER, register_metric
from metrics.runners.lpips import lpips_protocol
from metrics.specs import LPIPSSpecBase, check_choice
from metrics.streams import progress, render_uint8
from metrics.suite import MetricRun, MetricValue, reference_dict, renamed_key

SCORES = ("lpips", "psnr", "ssim", "mse")


@dataclass
class ReconstructionSpec(LPIPSSpecBase):
    """Reconstruction LPIPS/PSNR/SSIM/MSE of image ``i`` of ``reference`` vs sample ``i`` of the sampler."""

    kind: ClassVar[str] = "reconstruction"
    num_gen: int = 100
    resolution: int | None = None
    reference: str = "full"

    def validate(self) -> None:
        super().validate()
        check_choice(self, "reference", ("full", "train", "holdout"))


@register_metric("reconstruction", ReconstructionSpec, sampler_need=PAIRED_SAMPLER)
def run_reconstruction(run: MetricRun, spec: ReconstructionSpec, targets: list[str]) -> list[MetricValue]:
    if not targets:
        return []
    suite = run.suite
    dist = suite.lpips(spec)
    ref = run.reference(spec.reference, spec)
    n = min(spec.num_gen, len(ref))
    out = []
    for name in targets:
        sums = torch.zeros(len(SCORES) + 1, dtype=torch.float64)  # lpips, psnr, ssim, mse, count
        offset = 0
        for batch in progress(ref.batches(suite.batch_size), -(-n // suite.batch_size), f"reconstruction {name}",
                              suite.show_progress):
            idx = [i for i in range(offset, offset + batch.shape[0])
                   if i < n and i % ddp.world_size() == ddp.rank()]
            if idx:
                target = batch[[i - offset for i in idx]]
                scores = reconstruction_scores(dist, render_uint8(run.samplers[name], idx, spec.seed), target)
                sums += torch.stack([scores[k].sum() for k in SCORES]
                                    + [torch.tensor(float(len(idx)), dtype=torch.float64)])
            offset += batch.shape[0]
            if offset >= n:
                break
        sums = ddp.all_reduce_sum(sums)
        means = {k: float(sums[i] / sums[len(SCORES)]) for i, k in enumerate(SCORES)}
        spec_n = dataclasses.replace(spec, num_gen=n)
        proto = lpips_protocol(spec_n, dist, run.samplers[name], reference_dict(ref, spec.reference),
                               {"psnr_ssim_range": "[0,1]", "mse_range": "[-1,1]"})
        for k, v in means.items():  # keys recon_lpips<n>/..., recon_psnr<n>/..., ...
            key = renamed_key(proto, name, "reconstruction", f"recon_{k}")
            out.append(MetricValue(key, v, f"recon_{k}", name, proto))
    return out
