"""Shared losses against hand-computed values, and device-side batch augmentation."""

import math

import pytest
import torch

from dfcil.augment import Normalizer, random_crop_flip
from dfcil.losses import cross_entropy_seen, local_cross_entropy, soft_cross_entropy


def test_soft_cross_entropy_hand_value():
    # teacher logits (0, ln 3) at T = 1 -> p = (1/4, 3/4); student uniform -> log p_s = ln(1/2)
    student = torch.tensor([[0.0, 0.0]])
    teacher = torch.tensor([[0.0, math.log(3.0)]])
    assert torch.isclose(soft_cross_entropy(student, teacher, temperature=1.0), torch.tensor(math.log(2.0)))
    # at T = 2 the teacher becomes softmax(0, ln3 / 2) = (1, sqrt 3) / (1 + sqrt 3)
    p = torch.tensor([1.0, math.sqrt(3.0)]) / (1.0 + math.sqrt(3.0))
    expected = -(p * torch.log(torch.tensor([0.5, 0.5]))).sum()
    assert torch.isclose(soft_cross_entropy(student, teacher, temperature=2.0), expected)


def test_soft_cross_entropy_is_entropy_when_equal_and_batch_mean():
    logits = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    p = torch.softmax(logits / 2, dim=1)
    entropy = -(p * p.log()).sum(1).mean()
    assert torch.isclose(soft_cross_entropy(logits, logits, 2.0), entropy)


def test_cross_entropies_restrict_columns():
    logits = torch.tensor([[0.0, 0.0, math.log(2.0), 0.0]])  # 4 seen classes
    # seen = 3: softmax over (1, 1, 2) -> p(label 2) = 2/4
    assert torch.isclose(cross_entropy_seen(logits, torch.tensor([2]), 3), torch.tensor(math.log(2.0)))
    # local over classes [2, 4): (2, 1) -> p(label 2) = 2/3
    assert torch.isclose(local_cross_entropy(logits, torch.tensor([2]), 2, 4), torch.tensor(math.log(1.5)))


def test_crop_flip_matches_per_image_reference():
    images = torch.randint(0, 256, (16, 8, 8, 3), dtype=torch.uint8)
    generator = torch.Generator().manual_seed(3)
    out = random_crop_flip(images, padding=2, flip=True, generator=generator)
    # replay the same random numbers to build the reference one image at a time
    replay = torch.Generator().manual_seed(3)
    top = torch.randint(0, 5, (16,), generator=replay)
    left = torch.randint(0, 5, (16,), generator=replay)
    flip = torch.rand(16, generator=replay) < 0.5
    for i in range(16):
        padded = torch.zeros(12, 12, 3, dtype=torch.uint8)
        padded[2:10, 2:10] = images[i]
        crop = padded[top[i] : top[i] + 8, left[i] : left[i] + 8]
        if flip[i]:
            crop = crop.flip(1)
        assert torch.equal(out[i], crop)
    assert out.dtype == torch.uint8 and out.shape == images.shape


def test_no_augmentation_is_identity_and_normalizer_inverts():
    images = torch.randint(0, 256, (4, 6, 6, 3), dtype=torch.uint8)
    assert torch.equal(random_crop_flip(images, 0, False), images)
    norm = Normalizer((0.5, 0.4, 0.3), (0.2, 0.25, 0.3), channels_last=True)
    x = norm(images)
    assert x.shape == (4, 3, 6, 6) and x.is_contiguous(memory_format=torch.channels_last)
    back = norm.denormalize(x) * 255
    assert torch.allclose(back, images.permute(0, 3, 1, 2).float(), atol=1e-3)
    # channel 0 of pixel value 255: (1 - 0.5) / 0.2 = 2.5
    assert torch.isclose(norm(torch.full((1, 1, 1, 3), 255, dtype=torch.uint8))[0, 0, 0, 0], torch.tensor(2.5))
    # the constants are made once per device (on a GPU, each copy from the host would wait for it)
    mean, std = norm.constants(torch.device("cpu"))
    assert norm.constants(torch.device("cpu"))[0] is mean and mean.flatten().tolist() == pytest.approx([0.5, 0.4, 0.3])
