"""Segmentation metrics from one confusion matrix accumulated over a whole split.

IoU, mIoU and accuracies are computed from the summed matrix (the protocol of the paper's code),
not averaged over images: rows are ground-truth classes, columns predicted classes.
"""

from __future__ import annotations

import math

import torch


class ConfusionMatrix:
    """An int64 ``num_classes`` x ``num_classes`` count matrix, ``matrix[truth, prediction]``."""

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if num_classes < 1:
            raise ValueError(f"num_classes must be positive, got {num_classes}")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(num_classes, num_classes, dtype=torch.int64)

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Count the pixels of ``pred`` (class indices) against ``target`` (labels or ignore)."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        pred = pred.reshape(-1).long()
        target = target.reshape(-1).to(device=pred.device, dtype=torch.long)
        labeled = target != self.ignore_index
        pred, target = pred[labeled], target[labeled]
        n = self.num_classes
        if target.numel() and (target.min() < 0 or target.max() >= n):
            bad = target[(target < 0) | (target >= n)].unique().tolist()
            raise ValueError(
                f"target values {bad[:10]} outside [0, {n}) and not the ignore index {self.ignore_index}"
            )
        if pred.numel() and (pred.min() < 0 or pred.max() >= n):
            raise ValueError(f"prediction values outside [0, {n})")
        # Counting on the tensors' device keeps GPU evaluation free of per-image host copies.
        if self.matrix.device != pred.device:
            self.matrix = self.matrix.to(pred.device)
        counts = torch.bincount(target * n + pred, minlength=n * n)
        self.matrix += counts.reshape(n, n)

    def merge(self, other: "ConfusionMatrix") -> None:
        """Add the counts of ``other`` (e.g. another shard of the split) into this matrix."""
        if (other.num_classes, other.ignore_index) != (self.num_classes, self.ignore_index):
            raise ValueError(
                f"cannot merge a {other.num_classes}-class matrix (ignore {other.ignore_index}) into a "
                f"{self.num_classes}-class one (ignore {self.ignore_index})"
            )
        self.matrix += other.matrix.to(self.matrix.device)

    def all_reduce(self) -> None:
        """Sum the matrices of all processes when torch.distributed is initialised (else no-op)."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return
        matrix = self.matrix
        if dist.get_backend() == "nccl" and matrix.device.type != "cuda":
            matrix = matrix.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(matrix, op=dist.ReduceOp.SUM)
        self.matrix = matrix.to(self.matrix.device)

    def compute(self) -> dict:
        """IoU per class (NaN where a class is in neither prediction nor truth), mIoU over the
        classes that occur, pixel accuracy, mean class accuracy and the raw matrix (list of rows)."""
        matrix = self.matrix.cpu().double()
        true_positive = matrix.diag()
        truth_count = matrix.sum(dim=1)
        pred_count = matrix.sum(dim=0)
        union = truth_count + pred_count - true_positive
        iou = torch.where(union > 0, true_positive / union.clamp(min=1), torch.nan)
        class_acc = torch.where(truth_count > 0, true_positive / truth_count.clamp(min=1), torch.nan)
        total = matrix.sum()
        return {
            "iou": iou.tolist(),
            "miou": _nanmean(iou),
            "pixel_acc": (true_positive.sum() / total).item() if total > 0 else math.nan,
            "mean_acc": _nanmean(class_acc),
            "matrix": self.matrix.cpu().tolist(),
        }


def majority_baseline(matrix: torch.Tensor) -> dict:
    """Metrics of the best constant predictor of a split: every pixel labeled with the split's
    most frequent ground-truth class (``matrix[truth, prediction]`` gives the truth counts).

    Its IoU is that class's pixel share, the other classes present get IoU 0, so its mIoU is the
    share divided by the number of classes present: the floor every trained model must clear.
    Returns ``class_index``, ``miou`` and ``pixel_acc`` (fractions; NaN without labeled pixels).
    """
    truth_count = matrix.cpu().double().sum(dim=1)
    total = truth_count.sum()
    if total == 0:
        return {"class_index": None, "miou": math.nan, "pixel_acc": math.nan}
    majority = int(truth_count.argmax())
    share = (truth_count[majority] / total).item()
    return {"class_index": majority, "miou": share / int((truth_count > 0).sum()), "pixel_acc": share}


def _nanmean(values: torch.Tensor) -> float:
    present = values[~values.isnan()]
    return present.mean().item() if present.numel() else math.nan
