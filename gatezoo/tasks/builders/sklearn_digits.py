"""scikit-learn's bundled 8x8 handwritten digits as a TFDS dataset (no download, no TensorFlow).

The data ship inside scikit-learn (1797 images of 8x8 pixels with values 0..16, UCI optdigits),
so ``download_and_prepare`` works offline. Files are written as ``array_record``, the format
``tfds.data_source`` reads without TensorFlow.

Splits: ``train`` = the first 1437 images, ``test`` = the last 360 (about 20%). The file is
ordered by writer blocks, so the split holds out later writers rather than random images.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

__all__ = ["SklearnDigits", "TEST_SIZE"]

TEST_SIZE = 360


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
    """8x8 digit images (uint8, 0..16) with labels 0..9, from ``sklearn.datasets.load_digits``."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release: train = first 1437 images, test = last 360."}

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description="scikit-learn's bundled 8x8 handwritten digits (UCI optdigits test set).",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=(8, 8), dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=10),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html",
            disable_shuffling=True,  # keep sklearn's order, so the files are reproducible
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {
            "train": self._generate_examples(slice(None, -TEST_SIZE)),
            "test": self._generate_examples(slice(-TEST_SIZE, None)),
        }

    def _generate_examples(self, part: slice):
        from sklearn.datasets import load_digits  # imported when preparing only

        digits = load_digits()
        index = np.arange(len(digits.target))[part]
        for i in index:
            image = digits.images[i].astype(np.uint8)  # integer counts 0..16
            yield int(i), {"image": image, "label": int(digits.target[i])}
