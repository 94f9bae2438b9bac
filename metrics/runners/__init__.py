"""The built-in metric kinds, one family per module: spec dataclass(es), runner(s) and their
:func:`metrics.registry.register_metric` calls. :mod:`metrics.registry` imports every module of this
package the first time it is read, so a new metric is one new file here (see that module's docstring).

* ``fid``: ``fid``, ``kid``; ``lpips``: ``intra_lpips``, ``lpips_diversity``, ``lpips_align``, ``nn_lpips``;
* ``reconstruction`` (paired samplers); ``smoothness``: ``latent_smoothness`` (path samplers);
* ``clip``: ``clip_text``, ``clip_direction``.
"""
