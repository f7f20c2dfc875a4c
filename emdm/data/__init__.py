r"""Data sets: those the project generates, and local image folders."""

from .cifar import cifar_observations, load_cifar10, write_fake_cifar
from .fastmri import (
    line_mask,
    load_fastmri,
    mri_observations,
    phantoms,
    write_fake_fastmri,
    zero_filled,
)
from .images import load_images, write_fake_images
from .manifold import (
    ManifoldProblem,
    RandomManifold,
    manifold_problem,
    observe,
    random_projections,
)
from .shapes import color_shapes

__all__ = [
    "ManifoldProblem",
    "RandomManifold",
    "cifar_observations",
    "color_shapes",
    "line_mask",
    "load_cifar10",
    "load_fastmri",
    "load_images",
    "manifold_problem",
    "mri_observations",
    "observe",
    "phantoms",
    "random_projections",
    "write_fake_cifar",
    "write_fake_fastmri",
    "write_fake_images",
    "zero_filled",
]
