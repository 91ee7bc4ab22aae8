"""Multichannel phase segmentation with a trainable pixel classifier.

Seed 003's segmentation of serial-section BSE images: two backscatter detectors
imaged together (the sharp CBS ring detector and the noisier, topography-
insensitive through-lens TLD), optionally EDS maps, classified pixel by pixel by a
random forest trained on a few hand-labelled regions, using a bank of Gaussian
filters at several scales (intensity, gradient, Hessian texture) per channel. No
pre-filtering of the images; a threshold alone is discouraged for more than two
phases. Seed 003's classes: current collector, active material, carbon-binder
domain, Pt at pore edges, Pt at depth (the last two merged as pore).

Built on :func:`skimage.feature.multiscale_basic_features` and scikit-learn's
:class:`~sklearn.ensemble.RandomForestClassifier`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.feature import multiscale_basic_features

__all__ = ["PixelClassifier", "dice", "features", "paint_regions", "train_pixel_classifier"]

SIGMA_MIN, SIGMA_MAX = 0.5, 8.0  # px: from single pixels to particle-sized context


def features(channels, *, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX):
    """Filter-bank features ``(ny, nx, n_features)`` of co-registered ``channels``.

    Parameters
    ----------
    channels : sequence of 2-D arrays, or array (n_channels, ny, nx)
        Images of one face on one grid (e.g. CBS, TLD, EDS maps resampled), in the
        detectors' own units: no per-image scaling, so a face with other phase
        fractions gives the same features for the same phase (a random forest does
        not need features on one scale). NaN pixels (outside a drifted field) are
        filled with their channel's median for the filters; see :meth:`PixelClassifier.predict`.
    """
    stack = np.array(channels, dtype=np.float64)
    if stack.ndim == 2:
        stack = stack[None]
    if stack.ndim != 3:
        raise ValueError(f"channels must be (n, ny, nx) or one 2-D image, not {stack.shape}")
    for channel in stack:
        missing = ~np.isfinite(channel)
        if missing.all():
            raise ValueError("a channel has no finite pixel")
        channel[missing] = np.median(channel[~missing])
    return multiscale_basic_features(
        np.moveaxis(stack, 0, -1), sigma_min=sigma_min, sigma_max=sigma_max,
        channel_axis=-1, workers=1,
    )  # fmt: skip


def _valid(channels) -> np.ndarray:
    stack = np.asarray(channels, dtype=np.float64)
    stack = stack[None] if stack.ndim == 2 else stack
    return np.isfinite(stack).all(axis=0)


@dataclass
class PixelClassifier:
    """A trained classifier and the feature settings it was trained with."""

    forest: object
    n_channels: int
    classes: tuple[int, ...]
    sigma_min: float = SIGMA_MIN
    sigma_max: float = SIGMA_MAX

    def predict(self, channels) -> np.ndarray:
        """Label map ``(ny, nx)`` of ``channels`` (the same kinds, in the same order);
        0 where any channel is NaN (not imaged)."""
        stack = np.asarray(channels)
        if (stack.shape[0] if stack.ndim == 3 else 1) != self.n_channels:
            raise ValueError(f"trained on {self.n_channels} channel(s), given {stack.shape}")
        feats = features(stack, sigma_min=self.sigma_min, sigma_max=self.sigma_max)
        flat = feats.reshape(-1, feats.shape[-1])
        labels = self.forest.predict(flat).reshape(feats.shape[:2]).astype(np.int32)
        labels[~_valid(stack)] = 0
        return labels


def train_pixel_classifier(
    channels, labels, *, n_estimators: int = 60, max_depth: int | None = 12, seed: int = 0
) -> PixelClassifier:
    """Train a random forest on the labelled pixels of ``labels`` (0 = not labelled).

    Parameters
    ----------
    channels : array (n_channels, ny, nx) or 2-D
        The images the classifier will see.
    labels : array of int, (ny, nx)
        A few labelled regions per class (class ids >= 1); 0 elsewhere.
    n_estimators, max_depth, seed
        Forest size, tree depth (limits over-fitting to the labelled regions and
        keeps prediction fast), random seed (reproducible results).
    """
    from sklearn.ensemble import RandomForestClassifier

    labels = np.asarray(labels)
    stack = np.asarray(channels)
    feats = features(stack)
    if labels.shape != feats.shape[:2]:
        raise ValueError(f"labels {labels.shape} do not match the images {feats.shape[:2]}")
    taught = (labels > 0) & _valid(stack)
    classes = tuple(int(c) for c in np.unique(labels[taught]))
    if len(classes) < 2:
        raise ValueError(f"label at least two classes (found {list(classes)})")
    forest = RandomForestClassifier(
        n_estimators=n_estimators, max_depth=max_depth, random_state=seed, n_jobs=1
    )
    forest.fit(feats[taught], labels[taught])
    return PixelClassifier(forest, stack.shape[0] if stack.ndim == 3 else 1, classes)


def paint_regions(truth, rng, *, per_class: int = 4, size: int = 9, classes=None) -> np.ndarray:
    """Training labels as a user paints them: a few squares per class on a truth map.

    Each square of ``size`` px is centred on a random pixel of its class and keeps only
    that class's pixels (so edges are taught too); 0 elsewhere. For demos, benchmarks
    and tests that score a classifier against a known truth.

    Parameters
    ----------
    truth : array of int (ny, nx)
        Class ids (0: none).
    rng : numpy.random.Generator
    per_class : int
        Squares per class (fewer if the class has fewer pixels).
    size : int
        Side of a square (odd).
    classes : iterable of int, optional
        Classes to paint (default: every class id > 0 in ``truth``).
    """
    truth = np.asarray(truth)
    labels = np.zeros_like(truth)
    half = size // 2
    inner = truth[half:-half, half:-half] if half else truth
    wanted = sorted(int(k) for k in np.unique(truth) if k > 0) if classes is None else classes
    for k in wanted:
        rows, cols = np.nonzero(inner == k)
        for i in rng.choice(len(rows), min(per_class, len(rows)), replace=False):
            r, c = rows[i] + half, cols[i] + half
            window = (slice(r - half, r + half + 1), slice(c - half, c + half + 1))
            labels[window] = np.where(truth[window] == k, k, labels[window])
    return labels


def dice(result, truth, label: int) -> float:
    """Dice coefficient 2|A n B| / (|A| + |B|) of class ``label`` (1.0 if absent from both)."""
    a = np.asarray(result) == label
    b = np.asarray(truth) == label
    total = int(a.sum() + b.sum())
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / total
