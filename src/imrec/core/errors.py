"""The errors imrec raises for bad input or a run that cannot go on; the CLI prints them."""

from __future__ import annotations


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated or not an imrec checkpoint."""


class TrainError(RuntimeError):
    """A run cannot start or continue (bad config, mismatched checkpoint, ...)."""


class DatasetError(RuntimeError):
    """A dataset cannot be found, fetched, verified or read; the message says how to fix it."""


class ExportError(RuntimeError):
    """A run cannot be exported, or its export failed the parity gate (the message says why)."""


class UnusableImage(ValueError):
    """An image that decodes but cannot be prepared for the model (e.g. no ink to find)."""
