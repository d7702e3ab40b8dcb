"""scikit-learn's 8x8 digits as variable-length point sequences, a TFDS dataset built offline.

Each image becomes the sequence of its inked pixels (value >= ``INK`` of 16) in raster order,
one step per pixel with features ``(row / 7, col / 7, value / 16)``: a pen-point reading of the
digit whose length depends on the image (13..30 steps over the 1797 images). Same splits as
:class:`~gatezoo.tasks.builders.SklearnDigits`: ``train`` = the first 1437 images, ``test`` =
the last 360. Written as ``array_record`` so ``tfds.data_source`` reads it without TensorFlow.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from gatezoo.tasks.builders.sklearn_digits import SklearnDigits

__all__ = ["SklearnDigitsPoints", "INK", "digit_points"]

INK = 8  # of 16: about the half-inked pixels and darker, so each sequence traces the strokes


def digit_points(image: np.ndarray) -> np.ndarray:
    """One ``(8, 8)`` image with values 0..16 -> its ``(t, 3)`` float32 point sequence."""
    rows, cols = np.nonzero(image >= INK)  # row-major order: the raster order of the steps
    values = image[rows, cols]
    return np.stack([rows / 7.0, cols / 7.0, values / 16.0], axis=-1).astype(np.float32)


class SklearnDigitsPoints(SklearnDigits):
    """Variable-length ``(t, 3)`` float32 ``points`` with labels 0..9, from sklearn's digits
    (the splits of :class:`SklearnDigits`, its ``_split_generators``)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: inked pixels (>= 8 of 16) in raster order."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description="scikit-learn's 8x8 digits as sequences of inked pixel coordinates.",
            features=tfds.features.FeaturesDict(
                {
                    "points": tfds.features.Tensor(shape=(None, 3), dtype=np.float32),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("points", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html",
            disable_shuffling=True,  # keep sklearn's order, so the files are reproducible
        )

    def _generate_examples(self, part: slice):
        from sklearn.datasets import load_digits  # imported when preparing only

        digits = load_digits()
        for i in np.arange(len(digits.target))[part]:
            points = digit_points(digits.images[i])
            yield int(i), {"points": points, "label": int(digits.target[i])}
