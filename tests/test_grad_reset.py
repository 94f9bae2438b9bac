"""Adam on parameters that got no gradient in a step: the official implementations' ``zero_grad()`` (PyTorch
1.x) zeroes gradient tensors and keeps them, so Adam keeps stepping such a parameter once it had a gradient:
its second moment decays and its step count advances (``grad_reset: zero``, the default). ``grad_reset: none``
(``set_to_none``) skips it. Each test records the gradients our run feeds the optimizer and replays them
through a direct re-statement of Adam in float64 under the reference's rule."""
from __future__ import annotations

import itertools
import tempfile

import pytest
import pytorch_lightning as pl
import torch

import lightning_modules.nada as nada
from datamodules.latents import LatentDataModule
from tests.helpers_gan import one_thread  # noqa: F401 (autouse fixture)
from tests.test_mixdl_module import images, tiny, trainer
from tests.test_nada import make_module


def reference_adam(p0: torch.Tensor, grads: list[torch.Tensor | None], lr: float, betas, eps: float = 1e-8):
    """Adam (Kingma & Ba, with PyTorch's bias-corrected denominator) where a step is skipped only while the
    parameter never had a gradient; afterwards a step without one uses a zero gradient."""
    p, m, t, seen = p0.double().clone(), torch.zeros_like(p0, dtype=torch.float64), 0, False
    v = torch.zeros_like(m)
    for g in grads:
        seen = seen or g is not None
        if not seen:
            continue
        g = torch.zeros_like(m) if g is None else g.double()
        t += 1
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        denom = v.sqrt() / (1 - betas[1] ** t) ** 0.5 + eps
        p = p - lr / (1 - betas[0] ** t) * m / denom
    return p


class GradRecorder:
    """Before every ``optimizer.step``: a copy of ``param.grad`` (None when absent)."""

    def __init__(self, optimizer: torch.optim.Optimizer, param: torch.nn.Parameter):
        self.grads: list[torch.Tensor | None] = []
        self.handle = optimizer.register_step_pre_hook(
            lambda *_: self.grads.append(None if param.grad is None else param.grad.detach().clone()))


class RecordOn(pl.Callback):
    """Attach a :class:`GradRecorder` to optimizer ``index`` for ``param_of(module)`` when fit starts."""

    def __init__(self, index: int, param_of):
        self.index, self.param_of, self.recorder = index, param_of, None

    def on_train_start(self, trainer, pl_module):
        self.recorder = GradRecorder(trainer.optimizers[self.index], self.param_of(pl_module))


def test_nada_layer_unselected_in_a_step_keeps_its_adam_step(monkeypatch):
    """Code 0 (conv1) is selected in steps 1 and 3, code 2 (convs[0]) in step 2: the reference's Adam also
    steps conv1 in step 2 with a zero gradient, which changes the size of its step 3."""
    schedule = itertools.cycle([[0], [2], [0]])
    monkeypatch.setattr(nada, "top_codes", lambda *args, **kwargs: next(schedule))
    results = {}
    for mode in ("zero", "none"):
        module = make_module(auto_layer_k=1, grad_reset=mode)
        weight = module.g_train.conv1.conv.weight
        p0 = weight.detach().clone()
        recorder = RecordOn(0, lambda m: m.g_train.conv1.conv.weight)
        pl.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                   enable_progress_bar=False, enable_model_summary=False, callbacks=[recorder],
                   default_root_dir=tempfile.mkdtemp(prefix="styleshift-test-")).fit(
            module, datamodule=LatentDataModule(z_dim=32, batch_size=2, steps_per_epoch=3, seed=0))
        grads = recorder.recorder.grads
        assert len(grads) == 3 and grads[0] is not None and grads[2] is not None
        results[mode] = (p0, grads, weight.detach().clone())
    p0, grads, ours = results["zero"]
    assert torch.equal(grads[1], torch.zeros_like(grads[1]))  # kept and zeroed, not freed
    expected = reference_adam(p0, [grads[0], None, grads[2]], nada.REFERENCE_LR, nada.REFERENCE_BETAS)
    torch.testing.assert_close(ours.double(), expected, rtol=1e-6, atol=1e-7)
    # under set_to_none the step of step 2 is skipped: a different conv1 after step 3
    p0_none, grads_none, ours_none = results["none"]
    assert grads_none[1] is None
    skipped = reference_adam(p0_none, [grads_none[0], grads_none[2]], nada.REFERENCE_LR, nada.REFERENCE_BETAS)
    torch.testing.assert_close(ours_none.double(), skipped, rtol=1e-6, atol=1e-7)
    assert (ours.double() - ours_none.double()).abs().max() > 1e-6


@pytest.mark.parametrize("mode", ["zero", "none"])
def test_mixdl_projection_head_is_stepped_in_plain_iterations_as_the_reference(mode):
    """``sim_linear`` sits in D's optimizer but only mixup iterations use it: with the reference's rule the
    plain iterations still count as Adam steps for it (4 iterations: mixup, plain, mixup, plain)."""
    module = tiny(pl_weight=0.0, grad_reset=mode)
    weight = module.distance_head.sim_linear.weight
    p0 = weight.detach().clone()
    recorder = RecordOn(1, lambda m: m.distance_head.sim_linear.weight)
    trainer(max_epochs=1, callbacks=[recorder]).fit(module, images(batches=4))
    grads = recorder.recorder.grads
    unused = [g is None or not g.any() for g in grads]
    assert any(unused) and not all(unused)
    assert all((g is None) == (mode == "none") for g, u in zip(grads, unused) if u)
    lr, betas = module.d_opt_kwargs["lr"], module.d_opt_kwargs["betas"]
    replay = grads if mode == "zero" else [g for g in grads if g is not None]
    torch.testing.assert_close(weight.detach().double(), reference_adam(p0, replay, lr, betas), rtol=1e-6, atol=1e-7)


def test_mixdl_reference_and_skipping_rules_differ():
    finals = {}
    for mode in ("zero", "none"):
        module = tiny(pl_weight=0.0, grad_reset=mode)
        trainer(max_epochs=1).fit(module, images(batches=4))
        finals[mode] = module.distance_head.sim_linear.weight.detach().clone()
    assert (finals["zero"] - finals["none"]).abs().max() > 1e-6


def test_grad_reset_is_validated():
    with pytest.raises(ValueError, match="grad_reset"):
        tiny(grad_reset="keep")
