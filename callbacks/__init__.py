"""Lightning callbacks configured from the ``callbacks`` section; the registry maps names to import strings."""

CALLBACKS = {
    "samples": "callbacks.samples:SampleGridCallback",
    "metrics": "callbacks.metrics:MetricsCallback",
    "progress": "callbacks.progress:KimgProgressBar",
}
