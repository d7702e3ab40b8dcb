"""TFDS builders defined by gatezoo (prepared offline, read back without TensorFlow)."""

from gatezoo.tasks.builders.sklearn_digits import SklearnDigits
from gatezoo.tasks.builders.sklearn_digits_points import SklearnDigitsPoints

__all__ = ["SklearnDigits", "SklearnDigitsPoints"]
