import numpy as np
import pytest
import torch
from torch.nn.functional import max_pool2d
from torchvision import tv_tensors
from torchvision.transforms import v2

from mgd.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Padding,
    box_mask,
    cutmix_box_masks,
    cutmix_boxes,
    denormalize,
    normalize,
    pad_constant,
    train_transform,
)
from mgd.errors import ConfigError

LABEL_STEP = 20  # image intensity that encodes label value 1 in the alignment tests


def random_pair(height=40, width=50, labels=(0, 3, 7), seed=0):
    generator = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=generator)
    choice = torch.randint(len(labels), (height, width), generator=generator)
    mask = torch.tensor(labels)[choice].long()
    return tv_tensors.Image(image), tv_tensors.Mask(mask)


def encoded_pair(height=24, width=36, block=4, seed=0):
    """A mask of labels 1..9 in square blocks; every image channel is label * LABEL_STEP."""
    generator = torch.Generator().manual_seed(seed)
    blocks = torch.randint(1, 10, (height // block, width // block), generator=generator)
    mask = blocks.repeat_interleave(block, 0).repeat_interleave(block, 1).long()
    image = (mask * LABEL_STEP).to(torch.uint8).expand(3, -1, -1).clone()
    return tv_tensors.Image(image), tv_tensors.Mask(mask)


def no_padding(image):
    return Padding(torch.zeros(image.shape[-2:], dtype=torch.bool))


def normalised(transform, image, mask):
    """The training pipeline as the loop completes it: uint8 geometry, then normalize on the device."""
    out_image, out_mask, padding = transform(image, mask, no_padding(image))
    return normalize(out_image, padding), out_mask


def test_train_output_types_and_shapes():
    image, mask = random_pair()
    out_image, out_mask, padding = train_transform(32)(image, mask, no_padding(image))
    assert isinstance(out_image, tv_tensors.Image) and isinstance(out_mask, tv_tensors.Mask)
    assert isinstance(padding, Padding) and padding.dtype == torch.bool and padding.shape == (32, 32)
    assert out_image.dtype == torch.uint8 and out_image.shape == (3, 32, 32)
    assert out_mask.dtype == torch.int64 and out_mask.shape == (32, 32)
    out_image, out_mask = train_transform((16, 24))(image, mask)
    assert out_image.shape == (3, 16, 24) and out_mask.shape == (16, 24)
    assert normalize(out_image).dtype == torch.float32


def test_small_images_are_padded_with_the_mean_colour():
    # As the CPS/MGD code: padded pixels are 0 after normalisation (the mean colour), not the
    # normalised black; the mask is padded with 255 and the Padding marker with True.
    image, mask = random_pair(height=20, width=30)
    out_image, out_mask, padding = train_transform(64, scales=(1.0,), flip=False)(image, mask, no_padding(image))
    assert (out_mask == 255).sum() == 64 * 64 - 20 * 30 and torch.equal(padding, out_mask == 255)
    out_image = normalize(out_image, padding)
    assert torch.equal(out_image[:, out_mask == 255], torch.zeros(3, 64 * 64 - 20 * 30))
    # Centred padding (half before, the rest after), as the code's pad_image_to_shape.
    assert torch.equal(out_mask[22:42, 17:47], mask)
    expected = (image.float() / 255 - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)
    torch.testing.assert_close(out_image[:, 22:42, 17:47], expected)


def test_labels_are_never_interpolated():
    image, mask = random_pair(labels=(0, 3, 7, 255))
    transform = train_transform(48)
    torch.manual_seed(0)
    for _ in range(12):
        _, out_mask = transform(image, mask)
        assert out_mask.dtype == torch.int64
        assert set(out_mask.unique().tolist()) <= {0, 3, 7, 255}


@pytest.mark.parametrize("seed", range(6))
def test_image_and_mask_stay_aligned_under_crop_and_flip(seed):
    image, mask = encoded_pair()
    torch.manual_seed(seed)
    # Crop taller and narrower than the image: both padding and a random offset are exercised.
    out_image, out_mask = normalised(train_transform((32, 20), scales=(1.0,)), image, mask)
    pixels = torch.from_numpy(denormalize(out_image)).long()[..., 0]
    # padding is 0 after normalisation: the mean colour once denormalised
    mean_red = round(IMAGENET_MEAN[0] * 255)
    expected = torch.where(out_mask == 255, mean_red, out_mask * LABEL_STEP)
    assert torch.equal(pixels, expected)


def test_image_and_mask_stay_aligned_under_scaling():
    image, mask = encoded_pair(height=48, width=48, block=8)
    torch.manual_seed(1)
    for _ in range(6):
        out_image, out_mask = normalised(train_transform(40, scales=(0.5, 0.75, 1.5, 2.0)), image, mask)
        pixels = torch.from_numpy(denormalize(out_image)).float()[..., 0]
        decoded = (pixels / LABEL_STEP).round().long()
        labels = out_mask[None].float()
        highest, lowest = max_pool2d(labels, 3, 1, 1), -max_pool2d(-labels, 3, 1, 1)
        near_border = (highest != labels) | (lowest != labels)
        # Bilinear mixing may only blur pixels next to a label border of the mask.
        mismatch = (decoded != out_mask) & (out_mask != 255)
        assert not (mismatch & ~near_border[0]).any()
        assert mismatch.float().mean() < 0.3


def test_flip_happens_and_is_seeded():
    image, mask = encoded_pair()
    transform = train_transform((24, 36), scales=(1.0,))
    outputs = []
    for _ in range(2):
        torch.manual_seed(123)
        outputs.append([transform(image, mask) for _ in range(8)])
    flipped = 0
    for (image_a, mask_a), (image_b, mask_b) in zip(*outputs):
        assert torch.equal(image_a, image_b) and torch.equal(mask_a, mask_b)
        flipped += torch.equal(mask_a, mask.flip(-1))
    assert 0 < flipped < 8
    no_flip = train_transform((24, 36), scales=(1.0,), flip=False)
    assert all(torch.equal(no_flip(image, mask)[1], mask) for _ in range(4))


def test_normalize_and_denormalize_round_trip():
    image, _ = random_pair()
    out_image = normalize(image, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert out_image.dtype == torch.float32 and out_image.shape == image.shape
    batched = normalize(torch.stack([image, image.flip(-1)]), torch.zeros(2, 40, 50, dtype=torch.bool))
    assert torch.equal(batched[0], out_image) and torch.equal(batched[1], out_image.flip(-1))
    with pytest.raises(ValueError, match="uint8"):
        normalize(out_image)
    restored = denormalize(out_image, IMAGENET_MEAN, IMAGENET_STD)
    assert restored.dtype == np.uint8 and restored.shape == (40, 50, 3)
    assert np.array_equal(restored, image.permute(1, 2, 0).numpy())
    with pytest.raises(ValueError, match="3xHxW"):
        denormalize(out_image[None])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"crop_size": 0}, "crop_size"),
        ({"crop_size": (32, 32, 3)}, "crop_size"),
        ({"crop_size": 32, "scales": ()}, "scales"),
        ({"crop_size": 32, "scales": (1.0, -0.5)}, "scales"),
    ],
)
def test_bad_transform_settings(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        train_transform(**kwargs)


@pytest.mark.parametrize("kwargs, message", [({"std": (0.2, 0.0, 0.2)}, "std"), ({"mean": (0.5, 0.5)}, "mean/std")])
def test_bad_normalization_settings(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        normalize(random_pair()[0], **kwargs)


def test_box_masks_shape_coverage_and_bounds():
    masks = cutmix_box_masks(64, 60, 80, torch.Generator().manual_seed(0))
    assert masks.shape == (64, 1, 60, 80) and masks.dtype == torch.float32
    assert set(masks.unique().tolist()) == {0.0, 1.0}
    coverage = masks.mean(dim=(1, 2, 3))
    # 3 boxes of p/3 each, p in [0.25, 0.5], overlaps XOR-ed: at most 0.5 (plus rounding).
    assert coverage.max() < 0.5 + 0.03
    assert 0.2 < coverage.mean() < 0.45
    boxes = cutmix_boxes(64, 60, 80, torch.Generator().manual_seed(0))
    assert boxes.shape == (64, 3, 4)
    assert (boxes[..., :2] >= 0).all() and (boxes[..., 2] <= 60).all() and (boxes[..., 3] <= 80).all()
    generator = torch.Generator().manual_seed(1)
    single = cutmix_box_masks(32, 50, 50, generator, n_boxes=1, area=(0.3, 0.3))
    coverage = single.mean(dim=(1, 2, 3))
    torch.testing.assert_close(coverage, torch.full((32,), 0.3), atol=0.04, rtol=0)


def test_box_masks_depend_on_the_generator_only():
    torch.manual_seed(0)
    first = cutmix_box_masks(4, 32, 32, torch.Generator().manual_seed(5))
    torch.manual_seed(1)
    again = cutmix_box_masks(4, 32, 32, torch.Generator().manual_seed(5))
    other = cutmix_box_masks(4, 32, 32, torch.Generator().manual_seed(6))
    assert torch.equal(first, again) and not torch.equal(first, other)
    generator = torch.Generator().manual_seed(2)
    square = cutmix_box_masks(8, 40, 40, generator, n_boxes=1, random_aspect=False)
    heights, widths = square.amax(dim=3).sum(dim=(1, 2)), square.amax(dim=2).sum(dim=(1, 2))
    assert torch.equal(heights, widths)


def reference_box_mask(boxes, height, width):
    """The CPS/MGD rule, one box at a time: start at 0, flip every pixel a box covers."""
    masks = torch.zeros(boxes.shape[0], 1, height, width)
    for index, image_boxes in enumerate(boxes.tolist()):
        for top, left, bottom, right in image_boxes:
            masks[index, 0, top:bottom, left:right] = 1 - masks[index, 0, top:bottom, left:right]
    return masks


def test_box_overlaps_are_xored():
    # Two boxes overlapping in rows 3..5 x cols 4..6: the overlap is 0, as are pixels no box covers.
    boxes = torch.tensor([[[0, 0, 6, 7], [3, 4, 9, 10]]])
    mask = box_mask(boxes, 10, 12)
    assert mask[0, 0, 4, 5] == 0 and mask[0, 0, 1, 1] == 1 and mask[0, 0, 8, 8] == 1 and mask[0, 0, 9, 11] == 0
    assert mask.sum() == 6 * 7 + 6 * 6 - 2 * 3 * 3
    assert torch.equal(mask, reference_box_mask(boxes, 10, 12))


def test_box_masks_follow_the_documented_rule():
    generator = torch.Generator().manual_seed(3)
    boxes = cutmix_boxes(16, 30, 40, generator)
    assert torch.equal(box_mask(boxes, 30, 40), reference_box_mask(boxes, 30, 40))
    # cutmix_box_masks is that mask of those boxes
    again = cutmix_box_masks(16, 30, 40, torch.Generator().manual_seed(3))
    assert torch.equal(again, reference_box_mask(boxes, 30, 40))
    # with three boxes of up to a sixth of the image each, some masks have XOR-ed overlaps
    covered_by_two = [
        sum(1 for top, left, bottom, right in image_boxes if top <= y < bottom and left <= x < right) == 2
        for image_boxes in boxes.tolist() for y in range(30) for x in range(40)
    ]
    assert any(covered_by_two)


@pytest.mark.parametrize(
    "kwargs", [{"area": (0.0, 0.5)}, {"area": (0.6, 0.5)}, {"area": (0.5, 1.5)}, {"n_boxes": 0}]
)
def test_bad_box_settings(kwargs):
    with pytest.raises(ConfigError, match="cutmix"):
        cutmix_box_masks(2, 8, 8, torch.Generator(), **kwargs)


@pytest.mark.parametrize("layout", ["channels_last", "contiguous", "mask", "marker"])
def test_pad_constant_equals_torchvision_pad_and_keeps_the_layout(layout):
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (7, 9, 3), dtype=torch.uint8, generator=generator)
    tensor, fill = {
        "channels_last": (image.permute(2, 0, 1), 0),  # PIL's HxWx3 viewed as 3xHxW, as the loader reads it
        "contiguous": (image.permute(2, 0, 1).contiguous(), 0),
        "mask": (image[..., 0], 255),
        "marker": (torch.zeros((), dtype=torch.bool).expand(7, 9), True),
    }[layout]
    padding = [2, 1, 3, 4]  # left, top, right, bottom
    padded = pad_constant(tensor, padding, fill)
    reference = tensor.contiguous() if tensor.ndim == 3 else tv_tensors.Mask(tensor.contiguous())
    assert torch.equal(padded, v2.functional.pad(reference, padding=padding, fill=fill).as_subclass(torch.Tensor))
    assert (padded.permute(1, 2, 0) if layout == "channels_last" else padded).is_contiguous()
