"""finetune_lab: the helper package of Module 04's labs (LoRA / QLoRA fine-tuning of small chat models).

The notebooks in labs/ show the lesson's code; the plumbing they share with the CLI lives here, one module per
concern: data, models, training, checkpoints, generation, evaluation, plots, tracking."""

from .config import ConfigError, TrainConfig, quick_config
from .data import DatasetError, load_jsonl
from .runtime import ci_quick

__version__ = "0.1.0"
__all__ = ["ConfigError", "DatasetError", "TrainConfig", "ci_quick", "load_jsonl", "quick_config"]
