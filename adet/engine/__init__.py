"""Training and evaluation: Detectron2's trainer and launcher, set up for adet."""
from .launch import launch
from .trainer import Trainer, check_datasets

__all__ = ["Trainer", "check_datasets", "launch"]
