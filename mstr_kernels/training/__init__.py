"""Training: the trainer, metrics, checkpoints, batching, seeds and DDP (issue 6)."""
from .checkpoint import load_checkpoint, load_model, save_checkpoint
from .metrics import classification_metrics, summarize
from .trainer import RunResult, TrainConfig, evaluate_model, train_run

__all__ = ["RunResult", "TrainConfig", "classification_metrics", "evaluate_model",
           "load_checkpoint", "load_model", "save_checkpoint", "summarize", "train_run"]
