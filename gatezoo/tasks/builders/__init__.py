"""TFDS builders defined by gatezoo (prepared offline, read back without TensorFlow)."""

from gatezoo.tasks.builders.sklearn_digits import SklearnDigits

__all__ = ["SklearnDigits"]
