"""ConfusionMatrix against a per-pixel Python reference, and sliding-window / flip inference."""

import math

import pytest
import torch
from torch import nn

from mgd.inference import _window_starts, infer_logits
from mgd.metrics import ConfusionMatrix, majority_baseline

IGNORE = 255


def reference_metrics(pairs, num_classes):
    """Brute force over pixels: pairs is a list of (pred, target) tensors."""
    counts = [[0] * num_classes for _ in range(num_classes)]
    for pred, target in pairs:
        for p, t in zip(pred.flatten().tolist(), target.flatten().tolist()):
            if t != IGNORE:
                counts[t][p] += 1
    iou, acc = [], []
    for c in range(num_classes):
        tp = counts[c][c]
        truth = sum(counts[c])
        predicted = sum(row[c] for row in counts)
        union = truth + predicted - tp
        iou.append(tp / union if union else math.nan)
        acc.append(tp / truth if truth else math.nan)
    present = [v for v in iou if not math.isnan(v)]
    present_acc = [v for v in acc if not math.isnan(v)]
    total = sum(map(sum, counts))
    return {
        "matrix": counts,
        "iou": iou,
        "miou": sum(present) / len(present),
        "mean_acc": sum(present_acc) / len(present_acc),
        "pixel_acc": sum(counts[c][c] for c in range(num_classes)) / total,
    }


def random_pairs(generator, num_classes, shapes, absent=()):
    """Random predictions/labels with ~20% ignore pixels; classes in ``absent`` never occur."""
    allowed = torch.tensor([c for c in range(num_classes) if c not in absent])
    pairs = []
    for shape in shapes:
        pred = allowed[torch.randint(len(allowed), shape, generator=generator)]
        target = allowed[torch.randint(len(allowed), shape, generator=generator)]
        target[torch.rand(shape, generator=generator) < 0.2] = IGNORE
        pairs.append((pred, target))
    return pairs


def assert_metrics_equal(result, expected):
    assert result["matrix"] == expected["matrix"]
    for got, want in zip(result["iou"], expected["iou"], strict=True):
        assert (math.isnan(got) and math.isnan(want)) or got == pytest.approx(want)
    for key in ("miou", "mean_acc", "pixel_acc"):
        assert result[key] == pytest.approx(expected[key]), key


def test_confusion_matrix_matches_per_pixel_reference():
    generator = torch.Generator().manual_seed(0)
    num_classes = 6
    pairs = random_pairs(generator, num_classes, [(17, 23), (31, 9), (2, 5, 7)], absent=(2, 5))
    matrix = ConfusionMatrix(num_classes)
    for pred, target in pairs:
        matrix.update(pred, target)
    result = matrix.compute()
    assert_metrics_equal(result, reference_metrics(pairs, num_classes))
    assert math.isnan(result["iou"][2]) and math.isnan(result["iou"][5])


def test_class_only_in_prediction_counts_with_zero_iou():
    matrix = ConfusionMatrix(3)
    matrix.update(torch.tensor([0, 1, 1, 0]), torch.tensor([0, 0, IGNORE, 0]))
    result = matrix.compute()
    assert result["iou"][0] == pytest.approx(2 / 3)
    assert result["iou"][1] == 0.0
    assert math.isnan(result["iou"][2])
    assert result["miou"] == pytest.approx(1 / 3)
    assert result["pixel_acc"] == pytest.approx(2 / 3)
    assert result["mean_acc"] == pytest.approx(2 / 3)


def test_merge_equals_single_matrix_over_all_pixels():
    generator = torch.Generator().manual_seed(1)
    pairs = random_pairs(generator, 4, [(8, 8)] * 4)
    whole, first, second = ConfusionMatrix(4), ConfusionMatrix(4), ConfusionMatrix(4)
    for index, (pred, target) in enumerate(pairs):
        whole.update(pred, target)
        (first if index % 2 else second).update(pred, target)
    first.merge(second)
    assert first.compute()["matrix"] == whole.compute()["matrix"]
    first.all_reduce()  # no process group: a no-op
    assert torch.equal(first.matrix, whole.matrix)
    with pytest.raises(ValueError, match="merge"):
        first.merge(ConfusionMatrix(5))


def test_invalid_labels_and_shapes_rejected():
    matrix = ConfusionMatrix(3)
    with pytest.raises(ValueError, match=r"target values \[3\]"):
        matrix.update(torch.tensor([0, 1]), torch.tensor([3, 1]))
    with pytest.raises(ValueError, match="shape"):
        matrix.update(torch.tensor([0, 1]), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="prediction"):
        matrix.update(torch.tensor([7, 1]), torch.tensor([0, 1]))


def test_empty_matrix_gives_nan_metrics():
    result = ConfusionMatrix(2).compute()
    assert math.isnan(result["miou"]) and math.isnan(result["pixel_acc"])


class PixelwiseModel(nn.Module):
    """A 1x1 conv: each output pixel depends only on its input pixel, so any tiling is exact."""

    def __init__(self, num_classes=5):
        super().__init__()
        self.num_classes = num_classes
        self.classifier = nn.Conv2d(3, num_classes, 1)
        self.sizes_seen = []

    def forward(self, x):
        self.sizes_seen.append(tuple(x.shape[-2:]))
        return self.classifier(x)


@pytest.mark.parametrize(
    "size, window, stride",
    [((37, 50), 16, None), ((37, 50), (20, 12), (9, 7)), ((9, 13), 16, None), ((16, 40), 16, 16)],
)
def test_slide_equals_whole_for_pixelwise_model(size, window, stride):
    torch.manual_seed(0)
    model = PixelwiseModel()
    images = torch.randn(2, 3, *size)
    whole = infer_logits(model, images, mode="whole")
    model.sizes_seen.clear()
    slide = infer_logits(model, images, mode="slide", window=window, stride=stride)
    assert slide.shape == (2, 5, *size)
    torch.testing.assert_close(slide, whole)
    window_hw = (window, window) if isinstance(window, int) else window
    assert set(model.sizes_seen) == {window_hw}


def test_window_starts_cover_the_image_with_last_window_at_the_border():
    assert _window_starts(50, 16, 11) == [0, 11, 22, 33, 34]
    assert _window_starts(16, 16, 11) == [0]
    assert _window_starts(48, 16, 16) == [0, 16, 32]


def test_flip_averages_with_mirrored_prediction():
    torch.manual_seed(0)
    # A 3x3 conv is not mirror-symmetric, so flip averaging changes its output.
    model = nn.Conv2d(3, 4, 3, padding=1)
    images = torch.randn(1, 3, 10, 12)
    plain = infer_logits(model, images)
    mirrored = model(images.flip(-1)).flip(-1).detach()
    torch.testing.assert_close(infer_logits(model, images, flip=True), (plain + mirrored) / 2)
    slide = infer_logits(model, images, mode="slide", window=(10, 12), flip=True)
    torch.testing.assert_close(slide, (plain + mirrored) / 2)


def test_infer_restores_training_mode_and_checks_channels():
    model = PixelwiseModel(num_classes=5)
    model.train()
    logits = infer_logits(model, torch.randn(1, 3, 8, 8))
    assert model.training and logits.shape == (1, 5, 8, 8)
    with pytest.raises(ValueError, match="expected 3"):
        infer_logits(model, torch.randn(1, 3, 8, 8), num_classes=3)
    with pytest.raises(ValueError, match="window"):
        infer_logits(model, torch.randn(1, 3, 8, 8), mode="slide")


def test_majority_baseline_is_the_best_constant_predictor() -> None:
    target = torch.tensor([0, 0, 0, 1, 1, 2, 255])  # class 0 most frequent; 255 ignored
    matrix = ConfusionMatrix(4)
    matrix.update(torch.zeros(7, dtype=torch.long), target)
    baseline = majority_baseline(matrix.matrix)
    assert baseline["class_index"] == 0
    assert baseline["pixel_acc"] == pytest.approx(3 / 6)
    # IoU 3/6 for class 0 and 0 for classes 1 and 2 (class 3 is absent): mean over three classes
    assert baseline["miou"] == pytest.approx(0.5 / 3) == pytest.approx(matrix.compute()["miou"])
    assert math.isnan(majority_baseline(ConfusionMatrix(3).matrix)["miou"])
