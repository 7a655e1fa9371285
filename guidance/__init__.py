"""Guidance experimentation toolkit: guided diffusion training, sampling and fidelity/diversity metrics."""

__version__ = "0.1.0"
