"""Model-inversion synthesis shared by DeepInversion-KD, ABD, R-DFCIL and MFGR.

A generator is trained before a task against the frozen model of the previous task (no data),
sampled during the task, and discarded when the task ends.
"""

from dfcil.synthesis.generator import Generator, build_generator
from dfcil.synthesis.losses import (
    bn_statistics_kl,
    content_loss,
    gaussian_blur,
    image_prior_loss,
    label_diversity_loss,
)
from dfcil.synthesis.synthesizer import SynthesisOptions, Synthesizer, SyntheticBatch

__all__ = [
    "Generator",
    "SynthesisOptions",
    "Synthesizer",
    "SyntheticBatch",
    "bn_statistics_kl",
    "build_generator",
    "content_loss",
    "gaussian_blur",
    "image_prior_loss",
    "label_diversity_loss",
]
