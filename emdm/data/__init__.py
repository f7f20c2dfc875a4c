r"""Data sets that the project generates."""

from .manifold import RandomManifold, observe, random_projections

__all__ = ["RandomManifold", "observe", "random_projections"]
