r"""Metrics between sample sets."""

from .ot import METHODS, ot_cost, ot_score

__all__ = ["METHODS", "ot_cost", "ot_score"]
