"""Image-classification datasets read as pixel sequences through ``tfds.data_source``.

No TensorFlow is imported: TFDS reads ``array_record`` files with plain numpy. Each split is
read once at construction and kept on device as uint8, so ``sample`` (uniform indices with
replacement, a gather and a rescale) jits like the synthetic tasks.

* ``smnist``: MNIST pixel by pixel (T = 784, one input, 10 classes, readout last).
* ``psmnist``: the same with the pixel order permuted by a fixed permutation drawn from a seed.
* ``digits``: scikit-learn's bundled 8x8 digits (a project-defined TFDS builder, prepared offline
  on first use), pixel by pixel (T = 64) or row by row (T = 8, eight inputs).

Sequence-classification datasets whose sequence feature has a variable length ``(t, features)``
(:func:`sequence_classification`; :func:`digits_points` is one, built offline) are zero-padded
to the task's ``seq_len`` and sampled as ``(x, Padded(label, lengths))``.

Nothing here downloads implicitly: a dataset that is not prepared raises
:class:`DatasetNotPrepared` with the command that prepares it.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds

from gatezoo.tasks.builders import SklearnDigits, SklearnDigitsPoints
from gatezoo.tasks.options import check_choice, check_int
from gatezoo.tasks.protocol import SPLITS, Padded, Task
from gatezoo.tasks.synthetic import split_key

__all__ = [
    "DatasetNotPrepared", "smnist", "psmnist", "digits", "read_split", "pixel_permutation",
    "LAYOUTS", "read_sequence_split", "pad_sequences", "sequence_classification",
    "digits_points",
]

LAYOUTS = ("pixels", "rows")
smnist_description = "MNIST read pixel by pixel (T=784, 1 input, 10 classes); needs tfds build"
psmnist_description = "MNIST pixel by pixel in a fixed permuted order (permutation_seed=0)"
digits_description = "sklearn's 8x8 digits pixel by pixel (T=64) or by rows; offline"
digits_points_description = "sklearn's digits as variable-length inked-pixel sequences; offline"


class DatasetNotPrepared(ValueError):
    """A TFDS dataset is not on disk in a format ``tfds.data_source`` can read."""


def _data_dir(data_dir: str | None) -> str:
    return str(data_dir) if data_dir is not None else tfds.core.constants.get_default_data_dir()


def read_split(
    name: str,
    split: str,
    data_dir: str | None = None,
    *,
    prepare: bool = False,
    builder_kwargs: dict[str, Any] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Reads every example of one split as ``(images, labels)`` numpy arrays.

    ``prepare=True`` lets TFDS generate the dataset first (only for builders that need no
    network, like gatezoo's own ``sklearn_digits``).

    Raises:
      DatasetNotPrepared: the split is not on disk in a random-access format (array_record).
    """
    source = _open_source(name, split, data_dir, prepare, builder_kwargs)
    examples = [source[i] for i in range(len(source))]
    images = np.stack([np.asarray(ex["image"]) for ex in examples])
    labels = np.asarray([int(ex["label"]) for ex in examples], np.int32)
    return images, labels


def _open_source(
    name: str, split: str, data_dir: str | None, prepare: bool, builder_kwargs: dict | None
) -> Any:
    """``tfds.data_source`` for one split, or DatasetNotPrepared if it is missing or empty."""
    try:
        source = tfds.data_source(
            name, split=split, data_dir=data_dir, download=prepare,
            builder_kwargs=builder_kwargs, try_gcs=False,
        )
        count = len(source)
    except (NotImplementedError, FileNotFoundError, KeyError, ValueError, AssertionError) as err:
        raise DatasetNotPrepared(_not_prepared(name, data_dir)) from err
    if count == 0:
        raise DatasetNotPrepared(_not_prepared(name, data_dir))
    return source


def _not_prepared(name: str, data_dir: str | None) -> str:
    where = _data_dir(data_dir)
    return (
        f"dataset {name!r} is not prepared as array_record in {where}; prepare it once (needs "
        f"network and tensorflow for the build only): tfds build {name} "
        f"--file_format=array_record --data_dir={where}"
    )


def pixel_permutation(seed: int, size: int) -> np.ndarray:
    """The fixed pixel order of ``psmnist``: a permutation of ``range(size)`` from ``seed``."""
    return np.random.default_rng(seed).permutation(size)


def _as_sequences(images: np.ndarray, layout: str) -> np.ndarray:
    """(N, H, W[, 1]) images -> (N, T, d): pixels -> (N, H*W, 1); rows -> (N, H, W)."""
    images = images.reshape(images.shape[0], images.shape[1], -1)
    if layout == "rows":
        return images
    return images.reshape(images.shape[0], -1, 1)


def _label_entropy(labels: np.ndarray, classes: int) -> float:
    freq = np.bincount(labels, minlength=classes) / labels.size
    return float(-sum(p * math.log(p) for p in freq if p > 0))


def _image_task(
    *,
    name: str,
    description: str,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    scale: float,
    layout: str,
    seq_len: int | None,
    options: dict[str, Any],
    permutation: np.ndarray | None = None,
    classes: int = 10,
) -> Task:
    arrays = {}
    for split, (images, labels) in splits.items():
        x = _as_sequences(images.astype(np.uint8), layout)
        if permutation is not None:
            x = x[:, permutation]
        arrays[split] = (x, labels)
    _, T, d = arrays["train"][0].shape
    if seq_len is not None and seq_len != T:
        raise ValueError(
            f"task {name!r} has a fixed seq_len {T} (layout {layout!r}), got {seq_len}"
        )
    data = {s: (jnp.asarray(x), jnp.asarray(y)) for s, (x, y) in arrays.items()}

    def sampler(data, key, batch_size, split):
        xs, ys = data[split]
        index = jax.random.randint(split_key(key, split), (batch_size,), 0, xs.shape[0])
        return xs[index].astype(jnp.float32) / scale, ys[index]

    return Task(
        name=name,
        description=description,
        input_dim=int(d),
        output_dim=classes,
        seq_len=int(T),
        readout="last",
        loss_kind="xent",
        baseline=_label_entropy(arrays["train"][1], classes),
        baseline_note="empirical: cross-entropy of predicting the training class frequencies "
        "(about log 10)",
        options=tuple(sorted(options.items())),
        sampler=sampler,
        data=data,
    )


def _read_mnist(data_dir: str | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {s: read_split("mnist", s, data_dir) for s in SPLITS}


def smnist(seq_len: int | None = None, *, data_dir: str | None = None) -> Task:
    """Sequential MNIST: 784 steps of one pixel in [0, 1], label read at the last step.

    Reads ``mnist`` from ``data_dir`` (default: TFDS's, ``$TFDS_DATA_DIR`` or
    ``~/tensorflow_datasets``); it must be prepared as array_record beforehand.
    """
    return _image_task(
        name="smnist", description=smnist_description, splits=_read_mnist(data_dir),
        scale=255.0, layout="pixels", seq_len=seq_len, options={"data_dir": data_dir},
    )


def psmnist(
    seq_len: int | None = None, *, data_dir: str | None = None, permutation_seed: int = 0
) -> Task:
    """Permuted sequential MNIST: :func:`smnist` with the pixels in the fixed order
    :func:`pixel_permutation` ``(permutation_seed, 784)`` (the same for both splits)."""
    permutation_seed = check_int("psmnist", "permutation_seed", permutation_seed, 0)
    return _image_task(
        name="psmnist", description=psmnist_description, splits=_read_mnist(data_dir),
        scale=255.0, layout="pixels", seq_len=seq_len,
        options={"data_dir": data_dir, "permutation_seed": permutation_seed},
        permutation=pixel_permutation(permutation_seed, 28 * 28),
    )


def digits(
    seq_len: int | None = None, *, data_dir: str | None = None, layout: str = "pixels"
) -> Task:
    """scikit-learn's 8x8 digits (values 0..16 scaled to [0, 1]) as sequences: ``layout="pixels"``
    gives T = 64 steps of one pixel, ``"rows"`` T = 8 steps of one 8-pixel row.

    The project's TFDS builder ``sklearn_digits`` is prepared into ``data_dir`` on first use
    (offline: the data ship with scikit-learn). Splits: the first 1437 images train, the last
    360 test.
    """
    layout = check_choice("digits", "layout", layout, LAYOUTS)
    splits = {
        s: read_split(
            SklearnDigits.name, s, data_dir, prepare=True,
            builder_kwargs={"file_format": "array_record"},
        )
        for s in SPLITS
    }
    return _image_task(
        name="digits", description=digits_description, splits=splits, scale=16.0,
        layout=layout, seq_len=seq_len, options={"data_dir": data_dir, "layout": layout},
    )


def read_sequence_split(
    name: str,
    split: str,
    data_dir: str | None = None,
    *,
    sequence_key: str = "sequence",
    label_key: str = "label",
    prepare: bool = False,
    builder_kwargs: dict[str, Any] | None = None,
) -> tuple[list[np.ndarray], np.ndarray, int | None]:
    """Reads one split of a sequence-classification dataset as ``(sequences, labels, classes)``:
    a list of ``(t_i, features)`` float32 arrays (a ``(t_i,)`` feature becomes ``(t_i, 1)``),
    int32 labels ``(N,)``, and the number of classes if the label is a ``ClassLabel`` (else None).

    Raises:
      DatasetNotPrepared: the split is not on disk in a random-access format (array_record).
      ValueError: the examples have no ``sequence_key`` or ``label_key`` feature.
    """
    source = _open_source(name, split, data_dir, prepare, builder_kwargs)
    first = source[0]
    for key in (sequence_key, label_key):
        if key not in first:
            raise ValueError(
                f"dataset {name!r} has no feature {key!r} (features: {', '.join(sorted(first))})"
            )
    sequences, labels = [], []
    for i in range(len(source)):
        example = source[i]
        seq = np.asarray(example[sequence_key], np.float32)
        sequences.append(seq.reshape(seq.shape[0], -1))
        labels.append(int(example[label_key]))
    features = getattr(getattr(source, "dataset_info", None), "features", None) or {}
    classes = getattr(features[label_key], "num_classes", None) if label_key in features else None
    return sequences, np.asarray(labels, np.int32), classes


def pad_sequences(sequences: list[np.ndarray], seq_len: int) -> tuple[np.ndarray, np.ndarray]:
    """``(t_i, features)`` arrays -> zero-padded ``(N, seq_len, features)`` float32 and int32
    lengths ``(N,)``; every ``t_i`` must lie in ``1..seq_len`` (sequences are never cut)."""
    lengths = np.asarray([len(seq) for seq in sequences], np.int32)
    widths = {seq.shape[1:] for seq in sequences}
    if len(widths) != 1:
        raise ValueError(f"sequences must share one feature shape, got {sorted(widths)}")
    if lengths.min() < 1 or lengths.max() > seq_len:
        raise ValueError(
            f"sequence lengths must lie in 1..{seq_len}, got {lengths.min()}..{lengths.max()}"
        )
    out = np.zeros((len(sequences), seq_len, *widths.pop()), np.float32)
    for row, seq in zip(out, sequences, strict=True):
        row[: len(seq)] = seq
    return out, lengths


def _sequence_sampler(data, key, batch_size, split):
    xs, labels, lengths = data[split]
    index = jax.random.randint(split_key(key, split), (batch_size,), 0, xs.shape[0])
    return xs[index], Padded(labels[index], lengths[index])


def sequence_classification(
    name: str,
    seq_len: int | None = None,
    *,
    data_dir: str | None = None,
    sequence_key: str = "sequence",
    label_key: str = "label",
    prepare: bool = False,
    builder_kwargs: dict[str, Any] | None = None,
    task_name: str | None = None,
    description: str = "",
) -> Task:
    """A variable-length classification task over a TFDS dataset ``name`` with a ``(t, features)``
    feature ``sequence_key`` and an integer ``label_key``, read at each sequence's last step.

    Both splits are read once, zero-padded to ``seq_len`` (default: the longest sequence in
    either split) and kept on device; ``sample`` gives ``x`` ``(B, seq_len, features)`` float32
    and ``Padded(labels (B,) int32, lengths (B,) int32)``. The baseline is the entropy of the
    training labels. ``prepare=True`` builds the dataset first (offline builders only).

    Raises:
      DatasetNotPrepared: a split is not on disk as array_record.
      ValueError: ``seq_len`` shorter than the longest sequence, or a missing feature.
    """
    task_name = task_name or name
    read = {
        s: read_sequence_split(name, s, data_dir, sequence_key=sequence_key,
                               label_key=label_key, prepare=prepare,
                               builder_kwargs=builder_kwargs)
        for s in SPLITS
    }
    longest = max(len(seq) for seqs, _, _ in read.values() for seq in seqs)
    T = check_int(task_name, "seq_len", longest if seq_len is None else seq_len, longest,
                  "the longest sequence; sequences are padded, never cut")
    classes = read["train"][2] or 1 + max(int(labels.max()) for _, labels, _ in read.values())
    data = {}
    for split, (seqs, labels, _) in read.items():
        xs, lengths = pad_sequences(seqs, T)
        data[split] = (jnp.asarray(xs), jnp.asarray(labels), jnp.asarray(lengths))
    return Task(
        name=task_name, description=description or f"TFDS {name!r}: variable-length sequences",
        input_dim=int(data["train"][0].shape[-1]), output_dim=int(classes), seq_len=T,
        readout="last", loss_kind="xent",
        baseline=_label_entropy(read["train"][1], int(classes)),
        baseline_note="empirical: cross-entropy of predicting the training class frequencies",
        options=(("data_dir", data_dir), ("dataset", name), ("label_key", label_key),
                 ("sequence_key", sequence_key)),
        variable_length=True, sampler=_sequence_sampler, data=data,
    )


def digits_points(seq_len: int | None = None, *, data_dir: str | None = None) -> Task:
    """scikit-learn's digits as variable-length sequences of inked pixels, ``(row/7, col/7,
    value/16)`` per step in raster order (:class:`~gatezoo.tasks.builders.SklearnDigitsPoints`,
    prepared into ``data_dir`` on first use, offline). Default ``seq_len``: the longest, 30."""
    return sequence_classification(
        SklearnDigitsPoints.name, seq_len, data_dir=data_dir, sequence_key="points",
        prepare=True, builder_kwargs={"file_format": "array_record"}, task_name="digits-points",
        description=digits_points_description,
    )
