r"""Data sets: those the project generates, and local image folders."""

from .images import load_images
from .manifold import RandomManifold, observe, random_projections

__all__ = ["RandomManifold", "load_images", "observe", "random_projections"]
