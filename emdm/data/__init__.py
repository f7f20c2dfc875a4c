r"""Data sets: those the project generates, and local image folders."""

from .cifar import cifar_observations, load_cifar10
from .images import load_images
from .manifold import RandomManifold, observe, random_projections

__all__ = [
    "RandomManifold",
    "cifar_observations",
    "load_cifar10",
    "load_images",
    "observe",
    "random_projections",
]
