"""The launcher behind ``train.py`` (docs/architecture.md, "Run directories").

``config`` merges ``configs/base.yaml``, the experiment file and CLI overrides; ``schema`` validates every
key against the constructors it feeds; ``run`` builds the objects, the run directory, the loggers and the
Trainer; ``checkpointing``, ``run_state`` and ``interrupt`` are the callbacks that make runs resumable.
"""
