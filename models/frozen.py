"""Frozen networks: used by a module but never trained (docs/adding_a_method.md, "Frozen networks").

CLIP, a frozen source generator, VGG/LPIPS/identity networks, a teacher: each is *held* by its owner with
:meth:`HoldsFrozen.hold` and then

* is not a submodule: absent from ``parameters()``, ``state_dict()`` (so from checkpoints) and optimizers,
  and invisible to DDP;
* has ``requires_grad=False`` on every parameter and stays in eval mode whatever ``owner.train()`` says;
* follows the owner's device moves (``.to(device)``, ``.cuda()``, Lightning's placement); its dtype follows
  the owner's casts unless the holder pins one (``dtype=torch.float32`` keeps e.g. CLIP in full precision
  under ``.half()`` / ``bf16-true``).

A held network is read as a plain attribute (``self.g_frozen``). Gradients still flow *through* it to its
inputs: freezing concerns its own weights only.

:func:`requires_grad` and :func:`trainable` are the one way to switch training of networks on and off.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
from torch import nn

__all__ = ["HoldsFrozen", "freeze", "requires_grad", "trainable"]


def freeze(module: nn.Module) -> nn.Module:
    """``module`` with ``requires_grad=False`` everywhere and in eval mode (returned for chaining)."""
    module.requires_grad_(False)
    return module.eval()


def requires_grad(modules: nn.Module | Iterable[nn.Module], flag: bool) -> None:
    """Set ``requires_grad`` of every parameter of ``modules`` (one module or several) to ``flag``."""
    for module in [modules] if isinstance(modules, nn.Module) else modules:
        module.requires_grad_(flag)


@contextmanager
def trainable(train: Iterable[nn.Module], frozen: Iterable[nn.Module] = ()) -> Iterator[None]:
    """``requires_grad`` on for ``train``, off for ``frozen`` inside the block; every flag restored after."""
    train, frozen = list(train), list(frozen)
    saved = [(p, p.requires_grad) for m in [*train, *frozen] for p in m.parameters()]
    try:
        requires_grad(frozen, False)
        requires_grad(train, True)
        yield
    finally:
        for p, flag in saved:
            p.requires_grad_(flag)


class HoldsFrozen(nn.Module):
    """Mixin for an ``nn.Module`` (a LightningModule included) that holds frozen networks.

    A wrapper that is itself a frozen network (e.g. ``models.clip.CLIPModel``) sets ``always_eval = True``.
    """

    always_eval = False

    def hold(self, name: str, module: nn.Module | None, dtype: torch.dtype | None = None) -> nn.Module | None:
        """Keep ``module`` frozen under attribute ``name`` (see the module docstring); ``None`` clears it.

        ``dtype`` pins the parameter dtype across the owner's casts (``None``: follow them).
        """
        held = self.__dict__.setdefault("_held_networks", {})
        if module is None:
            held.pop(name, None)
            self.__dict__.pop(name, None)
            return None
        if name in self._modules or name in self._parameters or name in self._buffers:
            raise AttributeError(f"{name!r} is already a submodule, parameter or buffer of {type(self).__name__}")
        freeze(module)
        if dtype is not None:
            module.to(dtype=dtype)
        held[name] = (module, dtype)
        object.__setattr__(self, name, module)  # a plain attribute, not registered as a submodule
        return module

    def held_networks(self) -> dict[str, nn.Module]:
        """The frozen networks held by this module (not those of its submodules), by name."""
        return {name: module for name, (module, _) in self.__dict__.get("_held_networks", {}).items()}

    def __setattr__(self, name: str, value) -> None:
        if name in self.__dict__.get("_held_networks", {}):
            if isinstance(value, nn.Module):
                self.hold(name, value, self._held_networks[name][1])
                return
            if value is None:
                self.hold(name, None)
                return
        super().__setattr__(name, value)

    def _apply(self, fn, recurse: bool = True):
        super()._apply(fn, recurse)
        for module, dtype in self.__dict__.get("_held_networks", {}).values():
            module._apply(fn)
            if dtype is not None:
                module.to(dtype=dtype)
        return self

    def train(self, mode: bool = True):
        super().train(False if self.always_eval else mode)
        for module, _ in self.__dict__.get("_held_networks", {}).values():
            module.eval()
        return self
