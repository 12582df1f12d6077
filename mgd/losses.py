"""Loss functions of MGD (Qin et al., ECCV 2022) and of the baselines in its tables.

Every loss is a pure function of tensors, computed in float32 (float64 stays float64) whatever
the autocast: under bf16 autocast (the CUDA default) the pooled, normalised and softmaxed values
and the matrix products would otherwise be bf16, whose 8-bit mantissa quantises e.g. L_R's cosine
entries (times lambda_2 = 100) to about 2^-8; pseudo-labels are the argmax of float32 logits. The
public code trains in float32 throughout. Shapes: logits B x N x H x W (float), features
B x C x H x W (float), labels B x H x W (int64, ``ignore_index`` = not supervised). Teacher
inputs are detached inside each function: a teacher tensor never receives gradient, whether or
not it requires grad. Each docstring names its equation (or source paper) and its reduction.
"""

import functools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

# Floor for vector norms: a zero vector gets cosine similarity 0 instead of NaN.
NORM_EPS = 1e-8


LOW_PRECISION = (torch.float16, torch.bfloat16)


def _upcast(value):
    """float16/bfloat16 tensors (alone or in a list/tuple) as float32; anything else unchanged."""
    if isinstance(value, torch.Tensor):
        return value.float() if value.dtype in LOW_PRECISION else value
    if isinstance(value, (list, tuple)) and any(isinstance(item, torch.Tensor) for item in value):
        return [_upcast(item) for item in value]
    return value


def _first_tensor(values) -> torch.Tensor:
    for value in values:
        if isinstance(value, torch.Tensor):
            return value
        if isinstance(value, (list, tuple)) and value and isinstance(value[0], torch.Tensor):
            return value[0]
    raise TypeError("a loss function needs at least one tensor argument")


def full_precision(loss: Callable) -> Callable:
    """Run ``loss`` with autocast disabled on its tensors' device and its low-precision float
    inputs cast to float32 (the casts are differentiable: gradients flow back in the input's
    dtype)."""

    @functools.wraps(loss)
    def wrapper(*args, **kwargs):
        device_type = _first_tensor((*args, *kwargs.values())).device.type
        with torch.autocast(device_type, enabled=False):
            return loss(*map(_upcast, args), **{key: _upcast(value) for key, value in kwargs.items()})

    return wrapper


def _check_same_shape(student: torch.Tensor, teacher: torch.Tensor, what: str) -> None:
    if student.shape != teacher.shape:
        raise ValueError(
            f"{what}: student shape {tuple(student.shape)} != teacher shape {tuple(teacher.shape)}"
        )


def _check_temperature(temperature: float) -> None:
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")


@full_precision
def supervised_ce_loss(
    logits: torch.Tensor, target: torch.Tensor, ignore_index: int = 255
) -> torch.Tensor:
    """Pixel-wise cross-entropy against labels, eq. (1).

    Reduction: sum of -log softmax(logits)[target] over the pixels whose label is not
    ``ignore_index`` (whole batch), divided by the number of those pixels. When every pixel is
    ignored the result is 0, still attached to ``logits``' graph (PyTorch's mean gives NaN).
    """
    summed = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="sum")
    num_valid = (target != ignore_index).sum().clamp(min=1)
    return summed / num_valid


@full_precision
def ohem_ce_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    ignore_index: int = 255,
    threshold: float = 0.7,
    min_kept_per_image: int = 50000,
) -> torch.Tensor:
    """Cross-entropy over hard pixels only (online hard example mining), L_sup of eq. (1) on
    Cityscapes.

    The rule of ``ProbOhemCrossEntropy2d`` in the CPS/MGD code, applied to the whole batch at
    once, with ``min_kept = min_kept_per_image * B`` (the code builds the criterion with
    50,000 x its per-GPU batch). With p_i the softmax probability of pixel i's true class and V
    the non-ignored pixels:

    * if |V| <= min_kept, every pixel of V is kept;
    * otherwise the cut is ``max(threshold, p_(min_kept))``, p_(k) being the k-th smallest p_i
      over V, and a pixel of V is kept when p_i <= cut (ties at the cut are all kept, so slightly
      more than min_kept pixels may survive).

    So at least min(min_kept, |V|) pixels are kept, plus every pixel with p_i <= threshold.
    The selection is not differentiated through. Reduction: :func:`supervised_ce_loss` over the
    kept pixels (mean over kept pixels; 0 when none is valid).
    One deliberate difference: for ``min_kept_per_image=0`` the CPS code skips the selection
    entirely (keeps all of V); here the threshold rule still applies.

    No host synchronisation: the code's ``if num_valid > min_kept`` branch is folded into the
    cut. Ignored pixels get p = +inf, so the k-th smallest p over all pixels (k = min(min_kept,
    B*H*W), a number from shapes alone) is p_(min_kept) over V when |V| >= min_kept and +inf
    (keep all of V) when |V| < min_kept; no Python number is derived from tensor data.
    """
    min_kept = min_kept_per_image * logits.shape[0]
    valid = target != ignore_index
    with torch.no_grad():
        probs = logits.detach().softmax(dim=1)
        safe_target = target.masked_fill(~valid, 0)
        true_class_prob = probs.gather(1, safe_target.unsqueeze(1)).squeeze(1)
        true_class_prob = true_class_prob.masked_fill(~valid, float("inf"))
        cut = torch.tensor(threshold, dtype=true_class_prob.dtype, device=true_class_prob.device)
        if min_kept > 0:
            kth = true_class_prob.flatten().kthvalue(min(min_kept, true_class_prob.numel())).values
            cut = torch.maximum(cut, kth)
        kept = valid & (true_class_prob <= cut)
    target = target.masked_fill(~kept, ignore_index)
    return supervised_ce_loss(logits, target, ignore_index)


@full_precision
def pixel_consistency_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, ignore_index: int = 255
) -> torch.Tensor:
    """Pixel-level consistency loss, eq. (2), for one teacher (call once per teacher and add).

    ``teacher_logits`` is either float B x N x H x W, whose argmax over classes is the hard
    pseudo label, or an int64 B x H x W pseudo-label map used as is (e.g. a CutMix mix of two
    teachers' argmax maps), where ``ignore_index`` marks unsupervised pixels.
    Reduction: cross-entropy of the student against the pseudo label, mean over the
    non-ignored pixels of the batch (as :func:`supervised_ce_loss`; no temperature).
    """
    if teacher_logits.dtype == torch.int64:
        pseudo_label = teacher_logits
    elif teacher_logits.is_floating_point():
        _check_same_shape(student_logits, teacher_logits, "pixel_consistency_loss")
        pseudo_label = teacher_logits.detach().argmax(dim=1)
    else:
        raise ValueError(
            f"pixel_consistency_loss: teacher must be float logits or an int64 label map, "
            f"got dtype {teacher_logits.dtype}"
        )
    return supervised_ce_loss(student_logits, pseudo_label, ignore_index)


@full_precision
def image_level_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    reduction: str = "mean",
    images_summed: int = 2,
) -> torch.Tensor:
    """Image-level semantic-sensitive loss, eq. (3)-(4).

    Each class map of the RAW logits (no softmax) is global-average-pooled to one value per
    image and class, K in R^{B x N}; with d_b = sum over classes of |K^S_b - K^T_b|:

    * ``reduction="mean"``: mean of |K^S - K^T| over images and classes (eq. (4): 1/N sum,
      averaged over B), i.e. mean_b d_b / N;
    * ``reduction="sum"``: the public MGD code's ``torch.sum`` over its per-GPU batch of
      ``images_summed`` (2) images and the classes, as a single-process equivalent:
      ``images_summed * mean_b d_b``. Its weight relative to the mean-reduced cross-entropy
      terms is then the code's whatever the batch size B (summing over all B images would make
      it B / 2 times too strong); for B == ``images_summed`` it is the plain sum.
    """
    _check_same_shape(student_logits, teacher_logits, "image_level_loss")
    student_global = student_logits.mean(dim=(2, 3))
    teacher_global = teacher_logits.detach().mean(dim=(2, 3))
    per_image = (student_global - teacher_global).abs().sum(dim=1)
    if reduction == "mean":
        return per_image.mean() / student_global.shape[1]
    if reduction == "sum":
        return images_summed * per_image.mean()
    raise ValueError(f"image_level_loss: reduction must be 'mean' or 'sum', got {reduction!r}")


@full_precision
def self_similarity(feat: torch.Tensor, grid: int | tuple[int, int]) -> torch.Tensor:
    """Self-correlation matrix M of eq. (5), one per image: B x (Hv*Wv) x (Hv*Wv).

    ``feat`` (B x C x H x W) is adaptive-average-pooled to ``grid`` = (Hv, Wv), flattened to
    C x HvWv (row-major over the grid), and m_ij = cos(v_i, v_j). Norms are floored at
    ``NORM_EPS``, so an all-zero region vector has similarity 0 with everything (itself included)
    and the value and gradient stay finite.
    """
    regions = F.adaptive_avg_pool2d(feat, grid).flatten(2)
    unit_regions = F.normalize(regions, dim=1, eps=NORM_EPS)
    return unit_regions.transpose(1, 2) @ unit_regions


@full_precision
def region_level_loss(
    student_feat: torch.Tensor,
    teacher_feat: torch.Tensor,
    grid: int | tuple[int, int] = (7, 7),
) -> torch.Tensor:
    """Region-level content-aware loss, eq. (5)-(6).

    Reduction: squared difference of the student's and teacher's :func:`self_similarity`
    matrices, mean over the (HvWv)^2 entries (eq. (6)) and over the batch. Channel counts and
    spatial sizes of the two features may differ; only the batch size must match.
    """
    if student_feat.dim() != 4 or teacher_feat.dim() != 4:
        raise ValueError("region_level_loss: features must be B x C x H x W")
    if student_feat.shape[0] != teacher_feat.shape[0]:
        raise ValueError(
            f"region_level_loss: batch sizes differ ({student_feat.shape[0]} vs "
            f"{teacher_feat.shape[0]})"
        )
    student_matrix = self_similarity(student_feat, grid)
    teacher_matrix = self_similarity(teacher_feat.detach(), grid)
    return F.mse_loss(student_matrix, teacher_matrix, reduction="mean")


@full_precision
def kd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Pixel-wise knowledge distillation (Hinton et al., 2015), the "KD" baseline.

    KL(softmax(t / T) || softmax(s / T)) over the classes at each pixel, summed over classes,
    mean over the B*H*W pixels, times T^2 (keeps gradient magnitudes comparable across T).
    """
    _check_same_shape(student_logits, teacher_logits, "kd_loss")
    _check_temperature(temperature)
    student_log_probs = F.log_softmax(student_logits / temperature, dim=1)
    teacher_log_probs = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    batch, _, height, width = student_logits.shape
    kl_sum = F.kl_div(student_log_probs, teacher_log_probs, reduction="sum", log_target=True)
    return kl_sum / (batch * height * width) * temperature**2


@full_precision
def cwd_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """Channel-wise distillation (Shu et al., ICCV 2021), the "CWD" baseline.

    Each channel map is turned into a distribution over its H*W positions, softmax(x / T);
    per channel, KL(teacher || student) summed over the positions. Reduction: T^2 times the sum
    over all B*C channel maps divided by B*C (the official code's ``loss / (N * C)`` with N the
    batch size), i.e. the mean over channel maps of T^2 * KL.
    """
    _check_same_shape(student_logits, teacher_logits, "cwd_loss")
    _check_temperature(temperature)
    batch, channels = student_logits.shape[:2]
    student_log_probs = F.log_softmax(student_logits.flatten(2) / temperature, dim=2)
    teacher_log_probs = F.log_softmax(teacher_logits.detach().flatten(2) / temperature, dim=2)
    kl_sum = F.kl_div(student_log_probs, teacher_log_probs, reduction="sum", log_target=True)
    return kl_sum * temperature**2 / (batch * channels)


@full_precision
def mean_teacher_consistency_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor
) -> torch.Tensor:
    """Mean Teacher consistency (Tarvainen & Valpola, NeurIPS 2017), the "MT" baseline.

    Squared difference of the class-softmax probabilities, mean over all B*N*H*W elements: the
    ``nn.MSELoss(reduction='mean')`` on softmax outputs of TorchSemiSeg's MeanTeacher experiment
    (which applies it to the labeled and unlabeled images together).
    """
    _check_same_shape(student_logits, teacher_logits, "mean_teacher_consistency_loss")
    student_probs = student_logits.softmax(dim=1)
    teacher_probs = teacher_logits.detach().softmax(dim=1)
    return F.mse_loss(student_probs, teacher_probs, reduction="mean")


def _check_stage_pairs(
    student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor], what: str
) -> None:
    if len(student_feats) != len(teacher_feats) or not student_feats:
        raise ValueError(
            f"{what}: need the same non-zero number of student and teacher stages, got "
            f"{len(student_feats)} and {len(teacher_feats)}"
        )
    for stage, (student, teacher) in enumerate(zip(student_feats, teacher_feats)):
        _check_same_shape(student, teacher, f"{what} stage {stage}")


@full_precision
def skt_intra_layer_loss(
    student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]
) -> torch.Tensor:
    """SKT intra-layer pattern transfer (Liu et al., ACM MM 2020, "Efficient crowd counting via
    structured knowledge transfer").

    For each stage pair (student feature already mapped to the teacher's channels, e.g. by the
    1x1 convolution SKT uses), 1 - cos(s(b, :, h, w), t(b, :, h, w)) at every position, the
    cosine over channels. Reduction: mean over the B*H*W positions of each stage, summed over
    the stages. SKT sums over positions as well; the mean here keeps the scale independent of
    resolution (absorbed by the loss weight). Norms are floored at ``NORM_EPS``.
    """
    _check_stage_pairs(student_feats, teacher_feats, "skt_intra_layer_loss")
    stage_losses = [
        (1 - F.cosine_similarity(student, teacher.detach(), dim=1, eps=NORM_EPS)).mean()
        for student, teacher in zip(student_feats, teacher_feats)
    ]
    return torch.stack(stage_losses).sum()


@full_precision
def flow_matrix(feat_a: torch.Tensor, feat_b: torch.Tensor) -> torch.Tensor:
    """FSP flow matrix between two stages (Yim et al., CVPR 2017), as in SKT's inter-layer
    relation transfer: B x C_a x C_b.

    ``feat_b`` is bilinearly resized to ``feat_a``'s H x W, then
    G[b, i, j] = sum_{h,w} F_a[b, i, h, w] * F_b[b, j, h, w] / (H * W).
    """
    height, width = feat_a.shape[2:]
    if feat_b.shape[2:] != feat_a.shape[2:]:
        feat_b = F.interpolate(feat_b, size=(height, width), mode="bilinear", align_corners=False)
    return feat_a.flatten(2) @ feat_b.flatten(2).transpose(1, 2) / (height * width)


@full_precision
def skt_inter_layer_loss(
    student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]
) -> torch.Tensor:
    """SKT inter-layer relation transfer (Liu et al., ACM MM 2020).

    For each consecutive stage pair (k, k+1), the :func:`flow_matrix` of the student and of the
    teacher (student features already channel-adapted, so both matrices are C_k x C_{k+1}).
    Reduction: squared difference, mean over the B*C_k*C_{k+1} entries of each pair, summed
    over the pairs. Differences from SKT's code: SKT uses dense FSP (all pairs i < j, not only
    consecutive ones), max-pools the features to a common resolution before the Gram product
    (here the second stage is resized bilinearly), and sums (not averages) the squared
    differences.
    Needs at least two stages.

    As in SKT's code, every feature is first instance-normalised (zero mean, unit variance per
    image and channel over its positions, eps 1e-5): raw Gram products grow with the square of
    the activations, and without the normalisation the loss diverges within a few steps.
    """
    _check_stage_pairs(student_feats, teacher_feats, "skt_inter_layer_loss")
    if len(student_feats) < 2:
        raise ValueError("skt_inter_layer_loss: needs at least two stages")
    student_feats = [F.instance_norm(feat) for feat in student_feats]
    teacher_feats = [F.instance_norm(feat.detach()) for feat in teacher_feats]
    pair_losses = [
        F.mse_loss(
            flow_matrix(student_feats[k], student_feats[k + 1]),
            flow_matrix(teacher_feats[k], teacher_feats[k + 1]),
        )
        for k in range(len(student_feats) - 1)
    ]
    return torch.stack(pair_losses).sum()
