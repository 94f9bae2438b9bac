"""Metric math shared by the metric callbacks and the test harness (no Lightning imports).

* ``protocol``: :class:`MetricProtocol` and the logged key; ``specs``: the config schema (base classes, parsing);
* ``registry``: the one registry of metric kinds (spec class, runner, assets, sampler need); ``runners/``:
  the built-in kinds, one family per module;
* ``features`` (quantization, clean resize, extractors), ``stats`` (float64 sums), ``streams`` (samplers and
  reference sets through an extractor), ``fid`` (FID, KID), ``refstats`` (reference-stat cache);
* ``lpips_family`` (intra-cluster LPIPS, diversity, alignment, reconstruction), ``clip_metrics``;
* ``suite`` runs configured metrics on named samplers; ``ddp`` holds the collective helpers;
* ``reference`` (:class:`ReferenceSet`), ``records`` (result files), ``jsonl`` (the ``metrics.jsonl``
  writer), ``memorization``, ``smoothness``.
"""
