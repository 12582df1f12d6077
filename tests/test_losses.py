"""Each loss against a direct element-by-element computation on small tensors, plus the
properties the training code relies on (zeros, reductions, ignore, gradient flow, finiteness)."""

import math

import pytest
import torch
import torch.nn.functional as F

from mgd import losses

B, N, H, W = 2, 3, 4, 4
IGNORE = 255


def randn(*shape, seed, requires_grad=False):
    generator = torch.Generator().manual_seed(seed)
    tensor = torch.randn(*shape, generator=generator, dtype=torch.float64)
    return tensor.requires_grad_(requires_grad)


def random_labels(seed, ignore_fraction=0.25):
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, N, (B, H, W), generator=generator)
    ignored = torch.rand(B, H, W, generator=generator) < ignore_fraction
    return labels.masked_fill(ignored, IGNORE)


# ---- element-by-element references -------------------------------------------------------


def softmax_list(values, temperature=1.0):
    exps = [math.exp(v / temperature) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def class_vector(logits, b, h, w):
    return [float(logits[b, c, h, w]) for c in range(logits.shape[1])]


def ref_ce(logits, target, ignore_index=IGNORE):
    total, count = 0.0, 0
    for b in range(logits.shape[0]):
        for h in range(logits.shape[2]):
            for w in range(logits.shape[3]):
                label = int(target[b, h, w])
                if label == ignore_index:
                    continue
                total -= math.log(softmax_list(class_vector(logits, b, h, w))[label])
                count += 1
    return total / count if count else 0.0


def ref_ohem(logits, target, threshold, min_kept_per_image, ignore_index=IGNORE):
    min_kept = min_kept_per_image * logits.shape[0]
    pixels = []  # (true-class probability, -log probability)
    for b in range(logits.shape[0]):
        for h in range(logits.shape[2]):
            for w in range(logits.shape[3]):
                label = int(target[b, h, w])
                if label != ignore_index:
                    prob = softmax_list(class_vector(logits, b, h, w))[label]
                    pixels.append((prob, -math.log(prob)))
    if len(pixels) <= min_kept:
        kept = pixels
    else:
        cut = max(threshold, sorted(p for p, _ in pixels)[min_kept - 1]) if min_kept else threshold
        kept = [pixel for pixel in pixels if pixel[0] <= cut]
    return sum(nll for _, nll in kept) / len(kept) if kept else 0.0


def ref_image_level(student, teacher, reduction, images_summed=2):
    per_image = []  # sum over classes of |pooled student - pooled teacher|, one per image
    for b in range(student.shape[0]):
        total = 0.0
        for c in range(student.shape[1]):
            s_mean = sum(float(student[b, c, h, w]) for h in range(H) for w in range(W)) / (H * W)
            t_mean = sum(float(teacher[b, c, h, w]) for h in range(H) for w in range(W)) / (H * W)
            total += abs(s_mean - t_mean)
        per_image.append(total)
    mean_per_image = sum(per_image) / len(per_image)
    if reduction == "mean":
        return mean_per_image / student.shape[1]
    # the public code: torch.sum over its per-GPU batch of `images_summed` images
    return images_summed * mean_per_image


def ref_adaptive_pool_regions(feat, b, grid_h, grid_w):
    """Region vectors v_1..v_{HvWv} (row-major), adaptive-pool bin bounds floor/ceil."""
    channels, height, width = feat.shape[1:]
    regions = []
    for i in range(grid_h):
        h0, h1 = (i * height) // grid_h, -((-(i + 1) * height) // grid_h)
        for j in range(grid_w):
            w0, w1 = (j * width) // grid_w, -((-(j + 1) * width) // grid_w)
            cells = [(h, w) for h in range(h0, h1) for w in range(w0, w1)]
            regions.append(
                [
                    sum(float(feat[b, c, h, w]) for h, w in cells) / len(cells)
                    for c in range(channels)
                ]
            )
    return regions


def ref_cosine(u, v):
    dot = sum(a * b for a, b in zip(u, v))
    return dot / (math.sqrt(sum(a * a for a in u)) * math.sqrt(sum(b * b for b in v)))


def ref_self_similarity(feat, b, grid_h, grid_w):
    regions = ref_adaptive_pool_regions(feat, b, grid_h, grid_w)
    return [[ref_cosine(u, v) for v in regions] for u in regions]


def ref_region_level(student, teacher, grid_h, grid_w):
    per_image = []
    for b in range(student.shape[0]):
        m_s = ref_self_similarity(student, b, grid_h, grid_w)
        m_t = ref_self_similarity(teacher, b, grid_h, grid_w)
        size = grid_h * grid_w
        per_image.append(
            sum((m_s[i][j] - m_t[i][j]) ** 2 for i in range(size) for j in range(size)) / size**2
        )
    return sum(per_image) / len(per_image)


def ref_kl(p, q):
    return sum(pi * (math.log(pi) - math.log(qi)) for pi, qi in zip(p, q))


def ref_kd(student, teacher, temperature):
    total = 0.0
    for b in range(B):
        for h in range(H):
            for w in range(W):
                p_t = softmax_list(class_vector(teacher, b, h, w), temperature)
                p_s = softmax_list(class_vector(student, b, h, w), temperature)
                total += ref_kl(p_t, p_s)
    return total / (B * H * W) * temperature**2


def ref_cwd(student, teacher, temperature):
    total = 0.0
    for b in range(B):
        for c in range(N):
            s_map = [float(student[b, c, h, w]) for h in range(H) for w in range(W)]
            t_map = [float(teacher[b, c, h, w]) for h in range(H) for w in range(W)]
            total += ref_kl(softmax_list(t_map, temperature), softmax_list(s_map, temperature))
    return temperature**2 * total / (B * N)


def ref_mean_teacher(student, teacher):
    total = 0.0
    for b in range(B):
        for h in range(H):
            for w in range(W):
                p_s = softmax_list(class_vector(student, b, h, w))
                p_t = softmax_list(class_vector(teacher, b, h, w))
                total += sum((a - c) ** 2 for a, c in zip(p_s, p_t))
    return total / (B * N * H * W)


def ref_skt_intra(student_feats, teacher_feats):
    total = 0.0
    for student, teacher in zip(student_feats, teacher_feats):
        batch, _, height, width = student.shape
        stage = 0.0
        for b in range(batch):
            for h in range(height):
                for w in range(width):
                    stage += 1 - ref_cosine(
                        class_vector(student, b, h, w), class_vector(teacher, b, h, w)
                    )
        total += stage / (batch * height * width)
    return total


def ref_flow_matrix(feat_a, feat_b, b):
    """Same spatial size assumed."""
    height, width = feat_a.shape[2:]
    return [
        [
            sum(
                float(feat_a[b, i, h, w] * feat_b[b, j, h, w])
                for h in range(height)
                for w in range(width)
            )
            / (height * width)
            for j in range(feat_b.shape[1])
        ]
        for i in range(feat_a.shape[1])
    ]


def ref_instance_norm(feat, eps=1e-5):
    """Per image and channel: subtract the mean over positions, divide by the biased std."""
    out = feat.clone()
    for b in range(feat.shape[0]):
        for c in range(feat.shape[1]):
            values = feat[b, c]
            mean = float(values.sum()) / values.numel()
            var = float(((values - mean) ** 2).sum()) / values.numel()
            out[b, c] = (values - mean) / (var + eps) ** 0.5
    return out


def ref_skt_inter(student_feats, teacher_feats):
    student_feats = [ref_instance_norm(feat) for feat in student_feats]
    teacher_feats = [ref_instance_norm(feat) for feat in teacher_feats]
    total = 0.0
    for k in range(len(student_feats) - 1):
        batch = student_feats[k].shape[0]
        squared, count = 0.0, 0
        for b in range(batch):
            g_s = ref_flow_matrix(student_feats[k], student_feats[k + 1], b)
            g_t = ref_flow_matrix(teacher_feats[k], teacher_feats[k + 1], b)
            for row_s, row_t in zip(g_s, g_t):
                for value_s, value_t in zip(row_s, row_t):
                    squared += (value_s - value_t) ** 2
                    count += 1
        total += squared / count
    return total


def stage_features(seed, channels=(3, 5), sizes=(4, 4)):
    return [randn(B, c, s, s, seed=seed + i) for i, (c, s) in enumerate(zip(channels, sizes))]


# ---- supervised CE and OHEM --------------------------------------------------------------


def test_supervised_ce_matches_reference_with_ignore():
    logits, target = randn(B, N, H, W, seed=0), random_labels(seed=1)
    assert (target == IGNORE).any() and (target != IGNORE).any()
    assert losses.supervised_ce_loss(logits, target).item() == pytest.approx(ref_ce(logits, target))


def test_supervised_ce_ignored_pixels_get_no_gradient():
    logits, target = randn(B, N, H, W, seed=0, requires_grad=True), random_labels(seed=1)
    losses.supervised_ce_loss(logits, target).backward()
    ignored = (target == IGNORE).unsqueeze(1).expand_as(logits)
    assert torch.all(logits.grad[ignored] == 0)
    assert torch.any(logits.grad[~ignored] != 0)


def test_supervised_ce_all_ignored_is_zero_with_grad():
    logits = randn(B, N, H, W, seed=0, requires_grad=True)
    target = torch.full((B, H, W), IGNORE, dtype=torch.int64)
    loss = losses.supervised_ce_loss(logits, target)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.all(logits.grad == 0)


def ohem_case():
    """One image, 2 classes, 7 pixels: true-class probabilities as listed, last one ignored."""
    probs = torch.tensor([0.1, 0.3, 0.5, 0.8, 0.9, 0.95, 0.2], dtype=torch.float64)
    logits = torch.stack([probs.log(), (1 - probs).log()]).view(1, 2, 1, 7)
    target = torch.tensor([[[0, 0, 0, 0, 0, 0, IGNORE]]])
    return logits, target, probs


@pytest.mark.parametrize(
    "min_kept, kept_pixels",
    [
        (2, [0, 1, 2]),  # threshold rule keeps more than min_kept
        (0, [0, 1, 2]),
        (4, [0, 1, 2, 3]),  # min_kept hardest: cut raised to the 4th smallest probability
        (5, [0, 1, 2, 3, 4]),
        (6, [0, 1, 2, 3, 4, 5]),  # as many valid pixels as min_kept: keep all
        (50, [0, 1, 2, 3, 4, 5]),
    ],
)
def test_ohem_threshold_and_min_kept_rules(min_kept, kept_pixels):
    logits, target, probs = ohem_case()
    expected = -probs[kept_pixels].log().mean().item()
    loss = losses.ohem_ce_loss(logits, target, threshold=0.7, min_kept_per_image=min_kept)
    assert loss.item() == pytest.approx(expected)
    assert loss.item() == pytest.approx(ref_ohem(logits, target, 0.7, min_kept))


@pytest.mark.parametrize("ignore_fraction", [0.0, 0.25, 0.9, 1.0])
@pytest.mark.parametrize("min_kept_per_image", [0, 1, 5, 10, 16, 50])
def test_ohem_matches_reference_on_random_batch(min_kept_per_image, ignore_fraction):
    # 16 = H * W: min_kept is every pixel of the batch; with ignored pixels |V| < min_kept
    logits, target = randn(B, N, H, W, seed=2) * 2, random_labels(seed=3, ignore_fraction=ignore_fraction)
    loss = losses.ohem_ce_loss(logits, target, threshold=0.4, min_kept_per_image=min_kept_per_image)
    assert loss.item() == pytest.approx(ref_ohem(logits, target, 0.4, min_kept_per_image))


def test_ohem_with_exactly_min_kept_valid_pixels_keeps_them_all():
    # one image (min_kept counts per image), threshold 0: only the min_kept rule keeps pixels
    logits, target = randn(1, N, H, W, seed=2) * 2, random_labels(seed=3)[:1]
    num_valid = int((target != IGNORE).sum())
    loss = losses.ohem_ce_loss(logits, target, threshold=0.0, min_kept_per_image=num_valid)
    assert loss.item() == pytest.approx(ref_ce(logits, target))
    fewer = losses.ohem_ce_loss(logits, target, threshold=0.0, min_kept_per_image=num_valid - 1)
    assert fewer.item() == pytest.approx(ref_ohem(logits, target, 0.0, num_valid - 1))
    assert fewer.item() != pytest.approx(loss.item())


def test_ohem_traces_without_graph_breaks():
    # fullgraph=True fails on any Python number or branch taken from tensor data (a host sync
    # on CUDA: int(), .item(), bool()); the eager backend only traces, so this stays fast.
    compiled = torch.compile(losses.ohem_ce_loss, backend="eager", fullgraph=True)
    logits, target = randn(B, N, H, W, seed=2) * 2, random_labels(seed=3)
    for min_kept in (0, 5, 50):
        loss = compiled(logits, target, threshold=0.4, min_kept_per_image=min_kept)
        assert loss.item() == pytest.approx(ref_ohem(logits, target, 0.4, min_kept))


def test_ohem_keeps_at_least_min_kept_pixels_per_image():
    logits, target = randn(B, N, H, W, seed=2, requires_grad=True), random_labels(seed=3)
    # threshold 0 alone would keep nothing; min_kept still forces 5 pixels per image of the batch.
    losses.ohem_ce_loss(logits, target, threshold=0.0, min_kept_per_image=5).backward()
    pixels_with_grad = (logits.grad.abs().sum(dim=1) > 0).sum().item()
    assert pixels_with_grad == 5 * B


@pytest.mark.parametrize("copies", [2, 4])
def test_ohem_min_kept_counts_per_image(copies):
    # min_kept decides here (4 of 6 valid pixels kept, 3 by the threshold alone): a batch of
    # copies of the image keeps 4 per copy, so the loss is the single image's.
    logits, target, probs = ohem_case()
    single = losses.ohem_ce_loss(logits, target, threshold=0.7, min_kept_per_image=4)
    batch = losses.ohem_ce_loss(logits.repeat(copies, 1, 1, 1), target.repeat(copies, 1, 1),
                                threshold=0.7, min_kept_per_image=4)
    assert single.item() == pytest.approx(-probs[[0, 1, 2, 3]].log().mean().item())
    assert batch.item() == pytest.approx(single.item())


def test_ohem_all_ignored_is_zero():
    logits = randn(B, N, H, W, seed=0, requires_grad=True)
    target = torch.full((B, H, W), IGNORE, dtype=torch.int64)
    loss = losses.ohem_ce_loss(logits, target, min_kept_per_image=3)
    assert loss.item() == 0.0
    loss.backward()


# ---- pixel consistency ---------------------------------------------------------------------


def test_pixel_consistency_uses_teacher_argmax():
    student, teacher = randn(B, N, H, W, seed=0), randn(B, N, H, W, seed=1)
    expected = ref_ce(student, teacher.argmax(dim=1))
    assert losses.pixel_consistency_loss(student, teacher).item() == pytest.approx(expected)


def test_pixel_consistency_against_itself_is_ce_to_own_argmax():
    student = randn(B, N, H, W, seed=0)
    loss = losses.pixel_consistency_loss(student, student)
    assert loss.item() > 0
    assert loss.item() == pytest.approx(ref_ce(student, student.argmax(dim=1)))


def test_pixel_consistency_accepts_label_map_with_ignore():
    student, pseudo_label = randn(B, N, H, W, seed=0), random_labels(seed=4)
    loss = losses.pixel_consistency_loss(student, pseudo_label)
    assert loss.item() == pytest.approx(ref_ce(student, pseudo_label))


# ---- image level -----------------------------------------------------------------------


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_image_level_matches_reference(reduction):
    student, teacher = randn(B, N, H, W, seed=0), randn(B, N, H, W, seed=1)
    loss = losses.image_level_loss(student, teacher, reduction=reduction)
    assert loss.item() == pytest.approx(ref_image_level(student, teacher, reduction))


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_image_level_sum_is_mean_times_summed_images_and_classes(batch):
    student, teacher = randn(batch, N, H, W, seed=0), randn(batch, N, H, W, seed=1)
    mean = losses.image_level_loss(student, teacher, reduction="mean")
    total = losses.image_level_loss(student, teacher, reduction="sum", images_summed=2)
    assert total.item() == pytest.approx(mean.item() * 2 * N)
    assert total.item() == pytest.approx(ref_image_level(student, teacher, "sum", images_summed=2))


def test_image_level_sum_at_two_images_is_the_codes_plain_sum():
    student, teacher = randn(2, N, H, W, seed=0), randn(2, N, H, W, seed=1)
    plain_sum = (student.mean(dim=(2, 3)) - teacher.mean(dim=(2, 3))).abs().sum()
    assert losses.image_level_loss(student, teacher, reduction="sum").item() == pytest.approx(plain_sum.item())


def test_image_level_sum_does_not_grow_with_batch():
    # The same per-image inputs at batch 2 and batch 8 (each image 4 times) give the same loss:
    # the weight of L_I relative to the mean-reduced CE terms does not depend on the batch size.
    student, teacher = randn(2, N, H, W, seed=0), randn(2, N, H, W, seed=1)
    at_two = losses.image_level_loss(student, teacher, reduction="sum")
    at_eight = losses.image_level_loss(student.repeat(4, 1, 1, 1), teacher.repeat(4, 1, 1, 1), reduction="sum")
    assert at_eight.item() == pytest.approx(at_two.item())


def test_image_level_uses_raw_logits_not_softmax():
    student = randn(B, N, H, W, seed=0)
    # Adding a constant per pixel leaves the softmax unchanged but shifts the pooled logits.
    assert losses.image_level_loss(student, student + 1.0).item() == pytest.approx(1.0)


def test_image_level_rejects_unknown_reduction():
    student = randn(B, N, H, W, seed=0)
    with pytest.raises(ValueError, match="reduction"):
        losses.image_level_loss(student, student, reduction="max")


# ---- region level ------------------------------------------------------------------------


def test_self_similarity_matches_reference():
    feat = randn(B, 5, 5, 6, seed=0)
    matrix = losses.self_similarity(feat, (3, 4))
    assert matrix.shape == (B, 12, 12)
    for b in range(B):
        expected = torch.tensor(ref_self_similarity(feat, b, 3, 4), dtype=torch.float64)
        torch.testing.assert_close(matrix[b], expected)


@pytest.mark.parametrize("grid", [(2, 2), (3, 3)])
def test_region_level_matches_reference(grid):
    student, teacher = randn(B, 5, 6, 6, seed=0), randn(B, 5, 6, 6, seed=1)
    loss = losses.region_level_loss(student, teacher, grid=grid)
    assert loss.item() == pytest.approx(ref_region_level(student, teacher, *grid))


def test_region_level_different_channels_and_sizes():
    student, teacher = randn(B, 3, 6, 6, seed=0), randn(B, 8, 5, 7, seed=1)
    loss = losses.region_level_loss(student, teacher, grid=(2, 3))
    assert loss.item() == pytest.approx(ref_region_level(student, teacher, 2, 3))


def test_region_level_default_grid_is_7x7():
    student, teacher = randn(1, 4, 8, 8, seed=0), randn(1, 6, 8, 8, seed=1)
    loss = losses.region_level_loss(student, teacher)
    assert loss.item() == pytest.approx(ref_region_level(student, teacher, 7, 7))


@pytest.mark.parametrize("teacher_is_zero", [False, True])
def test_region_level_finite_for_all_zero_features(teacher_is_zero):
    student = torch.zeros(B, 4, H, W, dtype=torch.float64, requires_grad=True)
    if teacher_is_zero:
        teacher = torch.zeros(B, 6, H, W, dtype=torch.float64)
    else:
        teacher = randn(B, 6, H, W, seed=1)
    loss = losses.region_level_loss(student, teacher, grid=(2, 2))
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.all(torch.isfinite(student.grad))


def test_region_level_finite_for_partly_zero_regions():
    student = randn(B, 4, H, W, seed=0, requires_grad=True)
    with torch.no_grad():
        student[:, :, :2, :2] = 0  # one zero region out of the 2x2 grid
    loss = losses.region_level_loss(student, randn(B, 4, H, W, seed=1), grid=(2, 2))
    loss.backward()
    assert torch.isfinite(loss) and torch.all(torch.isfinite(student.grad))


# ---- KD, CWD, MT ---------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kd_matches_reference(temperature):
    student, teacher = randn(B, N, H, W, seed=0), randn(B, N, H, W, seed=1)
    loss = losses.kd_loss(student, teacher, temperature)
    assert loss.item() == pytest.approx(ref_kd(student, teacher, temperature))


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_cwd_matches_reference(temperature):
    student, teacher = randn(B, N, H, W, seed=0), randn(B, N, H, W, seed=1)
    loss = losses.cwd_loss(student, teacher, temperature)
    assert loss.item() == pytest.approx(ref_cwd(student, teacher, temperature))


def test_mean_teacher_matches_reference():
    student, teacher = randn(B, N, H, W, seed=0), randn(B, N, H, W, seed=1)
    loss = losses.mean_teacher_consistency_loss(student, teacher)
    assert loss.item() == pytest.approx(ref_mean_teacher(student, teacher))


def test_kd_is_ifvd_criterion_times_classes():
    # IFVD (utils/criterion.py:37,48): KLDivLoss() at its PyTorch 0.4.1 default, a mean over all
    # B*N*H*W elements; mgd means over the B*H*W pixels, so IFVD's lambda_kd 10 is 10 / N here
    student, teacher = randn(B, N, H, W, seed=0), randn(B, N, H, W, seed=1)
    ifvd = F.kl_div(F.log_softmax(student, dim=1), F.softmax(teacher, dim=1), reduction="sum") / student.numel()
    assert (10 / N * losses.kd_loss(student, teacher, 1.0)).item() == pytest.approx(10 * ifvd.item())


@pytest.mark.parametrize("tau", [1.0, 4.0])
def test_cwd_is_mmrazor_channel_wise_divergence(tau):
    # mmrazor/models/losses/cwd.py:38-49, loss_weight 1
    student, teacher = randn(B, N, H, W, seed=0), randn(B, N, H, W, seed=1)
    soft_teacher = F.softmax(teacher.view(-1, W * H) / tau, dim=1)
    mmrazor = torch.sum(soft_teacher * F.log_softmax(teacher.view(-1, W * H) / tau, dim=1)
                        - soft_teacher * F.log_softmax(student.view(-1, W * H) / tau, dim=1)) * tau**2 / (N * B)
    assert losses.cwd_loss(student, teacher, tau).item() == pytest.approx(mmrazor.item())


@pytest.mark.parametrize("loss_fn", [losses.kd_loss, losses.cwd_loss])
def test_temperature_must_be_positive(loss_fn):
    student = randn(B, N, H, W, seed=0)
    with pytest.raises(ValueError, match="temperature"):
        loss_fn(student, student, 0.0)


# ---- SKT -----------------------------------------------------------------------------------


def test_skt_intra_layer_matches_reference():
    student_feats = stage_features(seed=0, channels=(3, 5), sizes=(4, 2))
    teacher_feats = stage_features(seed=10, channels=(3, 5), sizes=(4, 2))
    loss = losses.skt_intra_layer_loss(student_feats, teacher_feats)
    assert loss.item() == pytest.approx(ref_skt_intra(student_feats, teacher_feats))


def test_flow_matrix_matches_reference():
    feat_a, feat_b = randn(B, 3, H, W, seed=0), randn(B, 5, H, W, seed=1)
    matrix = losses.flow_matrix(feat_a, feat_b)
    assert matrix.shape == (B, 3, 5)
    for b in range(B):
        expected = torch.tensor(ref_flow_matrix(feat_a, feat_b, b), dtype=torch.float64)
        torch.testing.assert_close(matrix[b], expected)


def test_flow_matrix_resizes_second_stage_bilinearly():
    feat_a, feat_b = randn(B, 3, H, W, seed=0), randn(B, 5, H // 2, W // 2, seed=1)
    resized_b = F.interpolate(feat_b, size=(H, W), mode="bilinear", align_corners=False)
    torch.testing.assert_close(
        losses.flow_matrix(feat_a, feat_b), losses.flow_matrix(feat_a, resized_b)
    )


def test_skt_inter_layer_matches_reference():
    channels, sizes = (3, 4, 2), (4, 4, 4)
    student_feats = stage_features(seed=0, channels=channels, sizes=sizes)
    teacher_feats = stage_features(seed=10, channels=channels, sizes=sizes)
    loss = losses.skt_inter_layer_loss(student_feats, teacher_feats)
    assert loss.item() == pytest.approx(ref_skt_inter(student_feats, teacher_feats))


def test_skt_rejects_mismatched_stages():
    feats = stage_features(seed=0)
    with pytest.raises(ValueError, match="stage"):
        losses.skt_intra_layer_loss(feats, feats[:1])
    with pytest.raises(ValueError, match="stage 1"):
        losses.skt_inter_layer_loss(feats, [feats[0], randn(B, 6, 4, 4, seed=5)])
    with pytest.raises(ValueError, match="two stages"):
        losses.skt_inter_layer_loss(feats[:1], feats[:1])


# ---- properties shared by the distillation losses ----------------------------------------------

def two_stages(feat):
    """A feature and its 2x-subsampled copy, standing in for two consecutive stages."""
    return [feat, feat[:, :, ::2, ::2]]


LOGIT_LOSSES = {
    "image_level_mean": lambda s, t: losses.image_level_loss(s, t, "mean"),
    "image_level_sum": lambda s, t: losses.image_level_loss(s, t, "sum"),
    "kd": lambda s, t: losses.kd_loss(s, t, 2.0),
    "cwd": lambda s, t: losses.cwd_loss(s, t, 2.0),
    "mean_teacher": losses.mean_teacher_consistency_loss,
}
FEATURE_LOSSES = {
    "region_level": lambda s, t: losses.region_level_loss(s, t, grid=(2, 2)),
    "skt_intra": lambda s, t: losses.skt_intra_layer_loss(two_stages(s), two_stages(t)),
    "skt_inter": lambda s, t: losses.skt_inter_layer_loss(two_stages(s), two_stages(t)),
}
ZERO_FOR_IDENTICAL = {**LOGIT_LOSSES, **FEATURE_LOSSES}
ALL_LOSSES = {
    **ZERO_FOR_IDENTICAL,
    "pixel_consistency": losses.pixel_consistency_loss,
}


@pytest.mark.parametrize("name", sorted(ZERO_FOR_IDENTICAL))
def test_zero_for_identical_inputs(name):
    tensor = randn(B, N, H, W, seed=0)
    assert ZERO_FOR_IDENTICAL[name](tensor, tensor.clone()).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("teacher_requires_grad", [False, True])
@pytest.mark.parametrize("name", sorted(ALL_LOSSES))
def test_gradient_reaches_student_not_teacher(name, teacher_requires_grad):
    student = randn(B, N, H, W, seed=0, requires_grad=True)
    teacher = randn(B, N, H, W, seed=1, requires_grad=teacher_requires_grad)
    ALL_LOSSES[name](student, teacher).backward()
    assert student.grad is not None and torch.any(student.grad != 0)
    assert teacher.grad is None


# ---- float32 under autocast ----------------------------------------------------------------------

LABELS = random_labels(seed=3)
PRECISION_CASES = {
    "supervised_ce": lambda s, t: losses.supervised_ce_loss(s, LABELS),
    "ohem": lambda s, t: losses.ohem_ce_loss(s, LABELS, threshold=0.4, min_kept_per_image=5),
    "self_similarity": lambda s, t: losses.self_similarity(s, (2, 2)),
    "flow_matrix": lambda s, t: losses.flow_matrix(s, t[:, :, ::2, ::2]),
    **ALL_LOSSES,
}


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", sorted(PRECISION_CASES))
def test_losses_compute_in_float32_under_bf16_autocast(name, input_dtype):
    # float32 inputs, or bf16 ones as a model under autocast returns them: the result is float32
    # and equals the float32 computation on the same input values
    student = randn(B, N, H, W, seed=0).to(input_dtype)
    teacher = randn(B, N, H, W, seed=1).to(input_dtype)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast = PRECISION_CASES[name](student, teacher)
    full = PRECISION_CASES[name](student.float(), teacher.float())
    assert under_autocast.dtype == full.dtype == torch.float32
    torch.testing.assert_close(under_autocast, full, rtol=1e-3, atol=1e-6)

