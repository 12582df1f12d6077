"""The uint8 input pipeline (issue 19): crops stay uint8 until the device, where they are normalised
and their padding set to 0. It must give the model exactly the tensors of the official order
(normalise the whole scaled image on the host, then crop and flip) for the same seed."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader
from torchvision import tv_tensors
from torchvision.transforms import v2

from mgd.data.base import Sample, SegmentationDataset
from mgd.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandomDiscreteScale,
    host_normalized_train_transform,
    images_to_device,
    train_transform,
)
from mgd.data.streams import AugmentedViews
from mgd.inference import infer_logits

CROP = 64
SEEDS = range(16)
CLASSES = tuple(f"class{index}" for index in range(6))


def textured_image(height: int, width: int, seed: int) -> np.ndarray:
    """A photo-like uint8 RGB image: gradients plus noise, so every resize and crop shows."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    base = np.stack([rows * 200 / height, cols * 200 / width, (rows + cols) * 100 / (height + width)], axis=-1)
    return (base + rng.normal(0, 25, (height, width, 3))).clip(0, 255).astype(np.uint8)


def label_map(height: int, width: int, seed: int) -> np.ndarray:
    """Blocks of classes 0..5 with a 255 (ignore) border between some, as VOC labels have."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, len(CLASSES), (height // 8 + 1, width // 8 + 1))
    labels = blocks.repeat(8, 0).repeat(8, 1)[:height, :width].astype(np.uint8)
    labels[::11, :] = 255
    return labels


def write_sample(folder, image_format: str, labeled: bool, height: int = 75, width: int = 100) -> Sample:
    """One sample in a real format: VOC-like JPEG + palette PNG label, or PNG + grey PNG label."""
    suffix = "jpg" if image_format == "JPEG" else "png"
    image_path = folder / f"image.{suffix}"
    Image.fromarray(textured_image(height, width, 0)).save(image_path, format=image_format, quality=90)
    label_path = None
    if labeled:
        label_path = folder / "label.png"
        labels = Image.fromarray(label_map(height, width, 1), mode="L")
        if image_format == "JPEG":  # VOC's SegmentationClass files are palette PNGs
            labels = labels.convert("P")
            labels.putpalette([channel for index in range(256) for channel in (index, 255 - index, index // 2)])
        labels.save(label_path)
    return Sample("image", image_path, label_path)


def host_reference(dataset: SegmentationDataset, labeled: bool, seed: int, antialias: bool = False):
    """The sample as the host-normalising pipeline made it: float image, int64 mask (unlabeled:
    zeros, so the crop padding shows as 255)."""
    if labeled:
        image, mask = dataset.load(0)
    else:
        image = dataset.load_image(0)
        mask = np.zeros(image.shape[:2], dtype=np.int64)
    image = tv_tensors.Image(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transform = host_normalized_train_transform(CROP, antialias=antialias)
        image, mask = transform(image, tv_tensors.Mask(torch.from_numpy(mask)))
    return image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)


@pytest.mark.parametrize("image_format, labeled", [("JPEG", True), ("PNG", True), ("PNG", False)],
                         ids=["jpeg+png-label", "png+png-label", "png-unlabeled"])
def test_device_normalisation_equals_normalising_before_the_crop(tmp_path, image_format, labeled):
    # 75 x 100 with crop 64: scales 0.5/0.75 pad, 1.5-2.0 crop, 1.0 does both (one side each)
    dataset = SegmentationDataset([write_sample(tmp_path, image_format, labeled)], CLASSES)
    views = AugmentedViews(dataset, train_transform(CROP), labeled)
    keys = [(0, seed, -1) for seed in SEEDS]
    batch = next(iter(DataLoader(views, batch_sampler=[keys])))  # collated, as the loop gets it
    assert batch["image"].dtype == torch.uint8 and batch["padding"].dtype == torch.bool
    device_images = images_to_device(batch["image"], torch.device("cpu"), batch["padding"])
    references = [host_reference(dataset, labeled, seed) for seed in SEEDS]
    reference_images = torch.stack([image for image, _ in references])
    reference_masks = torch.stack([mask for _, mask in references])
    # elementwise the same torchvision kernels on the same uint8 values: no rounding difference
    assert (device_images - reference_images).abs().max().item() == 0
    if labeled:
        assert batch["mask"].dtype == torch.uint8 and torch.equal(batch["mask"].long(), reference_masks)
        # padding is a subset of the ignore pixels; the label's own 255 pixels are image, not padding
        assert (reference_masks[batch["padding"]] == 255).all()
        assert ((reference_masks == 255) & ~batch["padding"]).any()
    else:
        assert "mask" not in batch and torch.equal(batch["padding"], reference_masks == 255)
    # the draws exercised padding and cropping
    assert batch["padding"].flatten(1).any(1).any() and not batch["padding"].flatten(1).any(1).all()


def test_training_rescale_has_no_antialiasing(tmp_path):
    # the official code resizes with cv2.INTER_LINEAR: a down-scaled view differs from an antialiased one
    dataset = SegmentationDataset([write_sample(tmp_path, "PNG", True)], CLASSES)
    views = AugmentedViews(dataset, train_transform(CROP, scales=(0.5,), flip=False), True)
    sample = views[(0, 0, -1)]
    new = images_to_device(sample["image"][None], torch.device("cpu"), sample["padding"][None])[0]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        image, mask = dataset.load(0)
        image, mask = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)), tv_tensors.Mask(torch.from_numpy(mask))
        aliased, _ = host_normalized_train_transform(CROP, scales=(0.5,), flip=False, antialias=False)(image, mask)
        smoothed, _ = host_normalized_train_transform(CROP, scales=(0.5,), flip=False, antialias=True)(image, mask)
    assert torch.equal(new, aliased) and not torch.equal(new, smoothed)


def test_views_are_deterministic_per_seed(tmp_path):
    dataset = SegmentationDataset([write_sample(tmp_path, "JPEG", True)], CLASSES)
    keys = [(0, seed, -1) for seed in (3, 4, 5, 6, 3)]

    def draw(workers: int) -> dict:
        views = AugmentedViews(dataset, train_transform(CROP), True)
        return next(iter(DataLoader(views, batch_sampler=[keys], num_workers=workers)))

    first, again, in_workers = draw(0), draw(0), draw(2)
    for name in ("image", "mask", "padding"):
        assert torch.equal(first[name], again[name]) and torch.equal(first[name], in_workers[name])
        assert torch.equal(first[name][0], first[name][4])  # seed 3 twice: the same view
    distinct = {(first["image"][index].sum().item(), first["padding"][index].sum().item()) for index in range(4)}
    assert len(distinct) > 1  # other seeds, other views


class PixelModel(nn.Module):
    """A 3x3 convolution: its logits at a pixel depend on the window's content around it."""

    num_classes = 4

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, self.num_classes, 3, padding=1)

    def forward(self, images):
        return self.conv(images)


@pytest.mark.parametrize("mode, size", [("whole", (40, 52)), ("slide", (40, 52)), ("slide", (20, 30))],
                         ids=["whole", "slide", "slide-padded"])
def test_inference_on_uint8_equals_host_normalised_input(mode, size):
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (2, 3, *size), dtype=torch.uint8, generator=generator)
    # the evaluation transform before issue 19: ToDtype + Normalize on the host
    host = v2.Normalize(list(IMAGENET_MEAN), list(IMAGENET_STD))(v2.ToDtype(torch.float32, scale=True)(images))
    options = {"mode": mode, "window": 24 if mode == "slide" else None, "flip": True}
    model = PixelModel()
    assert torch.equal(infer_logits(model, images, **options), infer_logits(model, host, **options))


@pytest.mark.parametrize("width", [64, 37], ids=["width-multiple-of-8", "other-width"])
def test_cached_class_maps_decode_exactly(width):
    from mgd.teachers.storage import decode_label_map, encode_label_map

    labels = label_map(48, width, 2)
    decoded = decode_label_map(encode_label_map(labels), labels.shape)
    assert decoded.dtype == np.uint8 and np.array_equal(decoded, labels)
    # one class everywhere (a single run) and every pixel its own run
    for plain in (np.full((48, width), 7, np.uint8), np.arange(48 * width, dtype=np.uint8).reshape(48, width)):
        assert np.array_equal(decode_label_map(encode_label_map(plain), plain.shape), plain)


def test_a_cached_class_map_of_another_size_is_refused_not_misread():
    import zlib

    from mgd.teachers.storage import decode_label_map, encode_label_map

    record = encode_label_map(label_map(48, 64, 3))
    with pytest.raises(ValueError, match="48 x 65 map"):
        decode_label_map(record, (48, 65))
    with pytest.raises(ValueError, match="runs do not make"):  # a cut-off run table
        decode_label_map(zlib.compress(zlib.decompress(record)[:-1]), (48, 64))


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_mask_resize_by_index_picks_torchvision_nearest_pixels(dtype):
    # every CPS scale of VOC-, Cityscapes- and CamVid-sized labels, plus odd sizes both ways
    sizes = [(375, 500), (1024, 2048), (360, 480), (37, 53)]
    targets = [(int(h * scale), int(w * scale)) for h, w in sizes for scale in (0.5, 0.75, 1.0, 1.5, 1.75, 2.0)]
    targets += [(1, 1), (3, 997), (999, 7)]
    generator = torch.Generator().manual_seed(0)
    for height, width in sizes:
        mask = tv_tensors.Mask(torch.randint(0, 256, (height, width), generator=generator).to(dtype))
        for size in targets:
            fast = RandomDiscreteScale((1.0,)).transform(mask, {"size": list(size)})
            expected = v2.functional.resize(mask, list(size), interpolation=v2.InterpolationMode.NEAREST)
            assert isinstance(fast, tv_tensors.Mask) and fast.dtype == dtype and torch.equal(fast, expected), size


def test_label_maps_beyond_uint8_are_refused(tmp_path):
    from mgd.errors import DatasetError

    dataset = SegmentationDataset([write_sample(tmp_path, "PNG", True)], [f"class{index}" for index in range(300)])
    with pytest.raises(DatasetError, match="300 classes"):
        AugmentedViews(dataset, train_transform(CROP), labeled=True)
    AugmentedViews(dataset, train_transform(CROP), labeled=False)  # unlabeled views carry no labels


def test_loader_benchmark_tiny_measures_both_paths(tmp_path):
    """benchmarks/loader.py --tiny: one row per kind, old and new path timed side by side."""
    out = tmp_path / "loader.json"
    repo = Path(__file__).resolve().parents[1]
    subprocess.run([sys.executable, str(repo / "benchmarks" / "loader.py"), "--tiny", "--workers", "0",
                    "--json", str(out)], check=True, capture_output=True, text=True, timeout=300)
    rows = json.loads(out.read_text())["rows"]
    assert {row["kind"] for row in rows} == {"labeled", "unlabeled", "mgd"}
    for row in rows:
        assert row["old_per_s"] > 0 and row["new_per_s"] > 0
        assert row["ratio"] == pytest.approx(row["new_per_core"] / row["old_per_core"], rel=1e-2)
