"""Tiny launcher configs for the tests that run the ``train.py`` path end to end on the CPU in seconds."""
from __future__ import annotations

TOY_DATA = "{name: toy, resolution: 16, num_images: 8, batch_size: 2}"
QUIET_TRAINER = "accelerator: cpu, enable_progress_bar: false, enable_model_summary: false, log_every_n_steps: 1"


def tiny_stylegan2(total_kimg: float = 0.008, data: str = TOY_DATA, trainer: str = QUIET_TRAINER,
                   checkpoint: str | None = None, wandb: str = "disabled") -> str:
    """A 16 px StyleGAN2 run (no path length, no mixing) as config text; each argument is one section's
    flow mapping (without braces for ``trainer``)."""
    lines = ["method: stylegan2",
             "model:",
             "  generator: {resolution: 16, style_dim: 32, n_mlp: 2, channels: {4: 32, 8: 32, 16: 16}}",
             "  gan: {pl_weight: 0.0, mixing_prob: 0.0}",
             f"  total_kimg: {total_kimg}",
             f"data: {data}",
             f"trainer: {{{trainer}}}"]
    if checkpoint is not None:
        lines.append(f"checkpoint: {checkpoint}")
    lines.append(f"logger: {{wandb: {{mode: {wandb}}}}}")
    return "\n".join(lines) + "\n"


def dummy_gan(trainer: str = QUIET_TRAINER + ", limit_val_batches: 0") -> str:
    """The two-step dummy method and data of ``tests.test_train_cli`` as config text."""
    return ("method: tests.test_train_cli:DummyGAN\n"
            "data: {name: tests.test_train_cli:DummyData}\n"
            f"trainer: {{{trainer}}}\n"
            "logger: {wandb: {mode: disabled}}\n")
