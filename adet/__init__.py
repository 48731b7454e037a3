"""adet: single-shot instance segmentation on Detectron2."""
__version__ = "0.1.0"
