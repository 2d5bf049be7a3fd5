"""Training and evaluation machinery."""

from fsslib.engine.evaluator import Evaluator, episode_iou

__all__ = ["Evaluator", "episode_iou"]
