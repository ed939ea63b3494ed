"""Batched device augmentation and the trainer's batch preparation."""

from __future__ import annotations

import pytest
import torch

from alz_monai.data import BatchAugmentation, DeviceBatch

OFF = {"flip_prob": 0.0, "affine_prob": 0.0, "noise_prob": 0.0, "bias_prob": 0.0, "contrast_prob": 0.0}


def test_no_augmentation_is_the_identity() -> None:
    images = torch.randn(3, 1, 12, 14, 16)
    torch.testing.assert_close(BatchAugmentation(**OFF)(images), images, atol=1e-4, rtol=0)


def test_flip_mirrors_the_left_right_axis() -> None:
    images = torch.randn(2, 1, 12, 14, 16)
    flipped = BatchAugmentation(**{**OFF, "flip_prob": 1.0})(images)
    torch.testing.assert_close(flipped, images.flip(2), atol=1e-4, rtol=0)


def test_each_augmentation_changes_the_batch_and_keeps_it_finite() -> None:
    images = torch.randn(4, 1, 16, 16, 16)
    for name in ("affine_prob", "noise_prob", "bias_prob", "contrast_prob"):
        out = BatchAugmentation(**{**OFF, name: 1.0})(images)
        assert out.shape == images.shape and torch.isfinite(out).all()
        assert not torch.allclose(out, images, atol=1e-3), name


def test_augmentation_is_reproducible_from_its_state() -> None:
    augmentation = BatchAugmentation(seed=3)
    images = torch.randn(3, 1, 12, 12, 12)
    state = augmentation.state_dict()
    first = augmentation(images)
    augmentation.load_state_dict(state)
    torch.testing.assert_close(augmentation(images), first, rtol=0, atol=0)
    assert not torch.equal(augmentation(images), first)  # the stream moves on


def test_probabilities_are_validated() -> None:
    with pytest.raises(ValueError, match="noise_prob"):
        BatchAugmentation(noise_prob=1.5)


def test_device_batch_augments_and_converts_layout() -> None:
    batch = {"image": torch.randn(2, 1, 8, 8, 8), "label": torch.tensor([0, 1])}
    images, labels = DeviceBatch(BatchAugmentation(**{**OFF, "flip_prob": 1.0}), channels_last=True)(batch, "cpu")
    assert images.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(images, batch["image"].flip(2), atol=1e-4, rtol=0)
    assert torch.equal(labels, batch["label"])
    images, labels = DeviceBatch()({"image": batch["image"]}, "cpu")  # inference: no labels
    assert labels is None and torch.equal(images, batch["image"])
