"""Trainable multichannel pixel classifier: trained on a few regions, scored by Dice."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from multiscope.analysis.pixel_classifier import (
    dice,
    features,
    paint_regions,
    train_pixel_classifier,
)

PORE, BINDER, ACTIVE = 1, 2, 3


def _face(seed, shape=(192, 192), pore=0.15, active=0.45):
    """Active particles, binder between them, pores (bright Pt after kintsugi), and the two
    BSE channels: CBS sharp, TLD noisier with a different phase contrast."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.random(shape), 8)
    truth = np.full(shape, BINDER)
    truth[field > np.quantile(field, 1 - active)] = ACTIVE
    truth[field < np.quantile(field, pore)] = PORE
    cbs_level = {PORE: 1.0, BINDER: 0.2, ACTIVE: 0.6}
    tld_level = {PORE: 0.9, BINDER: 0.35, ACTIVE: 0.55}
    cbs = np.choose(truth - 1, [cbs_level[k] for k in (1, 2, 3)]).astype(float)
    tld = np.choose(truth - 1, [tld_level[k] for k in (1, 2, 3)]).astype(float)
    cbs = ndimage.gaussian_filter(cbs, 0.7) + rng.normal(0, 0.08, shape)
    tld = ndimage.gaussian_filter(tld, 1.2) + rng.normal(0, 0.15, shape)
    return truth, np.stack([cbs, tld])


def _few_regions(truth, rng):
    """A few painted patches per class, as a user paints them (4 squares of 9 px)."""
    return paint_regions(truth, rng, per_class=4, size=9, classes=(PORE, BINDER, ACTIVE))


def test_trained_on_one_face_segments_another_at_dice_0_9():
    truth, channels = _face(1)
    classifier = train_pixel_classifier(channels, _few_regions(truth, np.random.default_rng(0)))
    assert classifier.classes == (PORE, BINDER, ACTIVE)
    # A face the classifier never saw, with other phase fractions (e.g. more pores).
    other_truth, other = _face(2, pore=0.40, active=0.30)
    result = classifier.predict(other)
    scores = {k: dice(result, other_truth, k) for k in (PORE, BINDER, ACTIVE)}
    assert min(scores.values()) >= 0.9, scores


def test_pixels_outside_the_field_are_left_unclassified():
    truth, channels = _face(5)
    labels = _few_regions(truth, np.random.default_rng(2))
    channels[:, :, :6] = np.nan  # a drifted slice's uncovered edge (stack.apply_shifts)
    result = train_pixel_classifier(channels, labels).predict(channels)
    assert (result[:, :6] == 0).all()
    assert min(dice(result[:, 6:], truth[:, 6:], k) for k in (1, 2, 3)) >= 0.9


def test_two_channels_beat_the_noisy_one_alone():
    truth, channels = _face(3)
    labels = _few_regions(truth, np.random.default_rng(1))
    both = train_pixel_classifier(channels, labels).predict(channels)
    tld_only = train_pixel_classifier(channels[1], labels).predict(channels[1])
    mean = lambda r: np.mean([dice(r, truth, k) for k in (1, 2, 3)])  # noqa: E731
    assert mean(both) > mean(tld_only)


def test_bad_training_input_is_refused():
    truth, channels = _face(4, shape=(40, 40))
    with pytest.raises(ValueError, match="two classes"):
        train_pixel_classifier(channels, (truth == 1).astype(int))
    with pytest.raises(ValueError, match="do not match"):
        train_pixel_classifier(channels, truth[:20])
    classifier = train_pixel_classifier(channels, truth)
    with pytest.raises(ValueError, match="channel"):
        classifier.predict(channels[0])
    assert features(channels).shape[:2] == (40, 40)
    assert dice(np.zeros(3), np.zeros(3), 5) == 1.0
