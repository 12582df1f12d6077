"""MGD and the KD / CWD / SKT baselines with two small trained teachers."""

from __future__ import annotations

import copy
import math

import pandas as pd
import pytest
import torch

from mgd.errors import CheckpointError, ConfigError
from mgd.models import build_model, load_model, save_model
from mgd.train.config import validate_config
from mgd.train.loop import Trainer


def run(cfg: dict) -> Trainer:
    trainer = Trainer(validate_config(cfg))
    trainer.run()
    return trainer


@pytest.fixture(scope="module")
def setup(tmp_path_factory, synthetic_with_split) -> dict:
    """A tiny synthetic dataset, a split, and two teachers trained briefly with Sup."""
    root = tmp_path_factory.mktemp("distill")
    synthetic_with_split(root, num_train=40, num_val=8)
    base = {
        "seed": 0,
        "output_dir": "",
        "data": {"dataset": {"name": "synthetic", "root": str(root / "data")}, "split": str(root / "split"),
                 "crop_size": 32, "scales": [1.0], "batch_labeled": 2, "batch_unlabeled": 2, "num_workers": 0},
        "model": {"backbone": "resnet18d"},
        "method": {"name": "sup"},
        "optim": {"lr": 0.02, "iterations": 15},
        "runtime": {"checkpoint_every": 100, "tensorboard": False},
    }
    teachers = []
    # MobileNetV2 at output stride 8: at its default 32 a 32-px crop leaves 1x1 maps whose batch
    # norm statistics over two values make the gradients explode.
    for name, model, seed in (("TD", {"backbone": "resnet18d"}, 1),
                              ("TW", {"backbone": "mobilenetv2_100", "output_stride": 8}, 2)):
        cfg = copy.deepcopy(base)
        cfg.update(seed=seed, output_dir=str(root / f"teacher_{name}"), model=model)
        run(cfg)
        teachers.append({"name": name, "model": str(root / f"teacher_{name}" / "model.pt")})
    return {"root": root, "base": base, "teachers": teachers}


def distill_config(setup: dict, out: str, method: dict, iterations: int = 2) -> dict:
    cfg = copy.deepcopy(setup["base"])
    cfg["output_dir"] = str(setup["root"] / out)
    cfg["method"] = {"teachers": setup["teachers"], **method}
    cfg["optim"]["iterations"] = iterations
    return cfg


def logged_terms(setup: dict, out: str) -> set[str]:
    columns = pd.read_csv(setup["root"] / out / "log.csv").columns
    return {column.removeprefix("loss/") for column in columns if column.startswith("loss/")}


def test_mgd_lowers_the_loss_and_keeps_teachers_frozen(setup):
    before = {t["name"]: load_model(t["model"]).state_dict() for t in setup["teachers"]}
    cfg = distill_config(setup, "mgd", {"name": "mgd", "lambda_region": 10.0}, iterations=30)
    cfg["optim"]["lr"] = 0.02
    trainer = run(cfg)
    losses = pd.read_csv(setup["root"] / "mgd" / "log.csv")["loss"].tolist()
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5]), losses
    for name in ("TD", "TW"):
        teacher = trainer.objective.teacher(name)
        assert all(parameter.grad is None and not parameter.requires_grad for parameter in teacher.parameters())
        for key, value in teacher.state_dict().items():
            assert torch.equal(value, before[name][key]), (name, key)
    assert logged_terms(setup, "mgd") == {
        "sup", "pixel_labeled_TD", "pixel_labeled_TW", "pixel_unlabeled_TD", "pixel_unlabeled_TW",
        "image_TD", "region_TW",
    }


def test_train_mode_teacher_bn_leaves_teachers_unchanged(setup):
    before = {t["name"]: load_model(t["model"]).state_dict() for t in setup["teachers"]}
    trainer = run(distill_config(setup, "mgd_bn_train", {"name": "mgd", "teacher_bn": "train"}))
    for name in ("TD", "TW"):
        for key, value in trainer.objective.teacher(name).state_dict().items():
            assert torch.equal(value, before[name][key]), (name, key)


@pytest.mark.parametrize(
    "switches, expected",
    [
        # Table 5a rows
        ({"pixel_labeled": False, "pixel_unlabeled": False, "image_level_teachers": [], "region_level_teachers": []},
         {"sup"}),
        ({"image_level_teachers": [], "region_level_teachers": []},
         {"sup", "pixel_labeled_TD", "pixel_labeled_TW", "pixel_unlabeled_TD", "pixel_unlabeled_TW"}),
        ({"region_level_teachers": []},
         {"sup", "pixel_labeled_TD", "pixel_labeled_TW", "pixel_unlabeled_TD", "pixel_unlabeled_TW", "image_TD"}),
        ({"image_level_teachers": [0, 1], "region_level_teachers": [0, 1]},
         {"sup", "pixel_labeled_TD", "pixel_labeled_TW", "pixel_unlabeled_TD", "pixel_unlabeled_TW",
          "image_TD", "image_TW", "region_TD", "region_TW"}),
        # Table 5b: labeled-only distillation
        ({"pixel_unlabeled": False, "image_level_teachers": [], "region_level_teachers": []},
         {"sup", "pixel_labeled_TD", "pixel_labeled_TW"}),
    ],
)
def test_each_switch_changes_exactly_its_terms(setup, switches, expected):
    out = "switch_" + "_".join(f"{k}{v}" for k, v in switches.items()).replace(" ", "")
    run(distill_config(setup, out, {"name": "mgd", **switches}, iterations=1))
    assert logged_terms(setup, out) == expected


def test_grid_and_weights_scale_only_their_terms(setup):
    reference = distill_config(setup, "w_ref", {"name": "mgd"}, iterations=1)
    doubled = distill_config(setup, "w_double", {"name": "mgd", "lambda_region": 200.0, "lambda_image": 0.004},
                             iterations=1)
    run(reference)
    run(doubled)
    ref = pd.read_csv(setup["root"] / "w_ref" / "log.csv").iloc[0]
    dbl = pd.read_csv(setup["root"] / "w_double" / "log.csv").iloc[0]
    assert dbl["loss/region_TW"] == pytest.approx(2 * ref["loss/region_TW"], rel=1e-5)
    assert dbl["loss/image_TD"] == pytest.approx(2 * ref["loss/image_TD"], rel=1e-5)
    assert dbl["loss/sup"] == pytest.approx(ref["loss/sup"], rel=1e-6)
    run(distill_config(setup, "grid3", {"name": "mgd", "grid": 3}, iterations=1))
    grid3 = pd.read_csv(setup["root"] / "grid3" / "log.csv").iloc[0]
    assert grid3["loss/region_TW"] != pytest.approx(ref["loss/region_TW"])
    assert grid3["loss/pixel_unlabeled_TD"] == pytest.approx(ref["loss/pixel_unlabeled_TD"], rel=1e-6)


def test_same_architecture_teacher_pair(setup, tmp_path):
    # Table 4: T_D + T_D is two teachers of one architecture trained with different seeds.
    second = copy.deepcopy(setup["teachers"][0])
    second["name"] = "TD2"
    teachers = [setup["teachers"][0], second]
    cfg = distill_config(setup, "td_td", {"name": "mgd"}, iterations=1)
    cfg["method"]["teachers"] = teachers
    run(cfg)
    assert {"image_TD", "region_TD2"} <= logged_terms(setup, "td_td")


@pytest.mark.parametrize("method, terms", [
    ("kd", {"sup", "kd_labeled_TD", "kd_unlabeled_TD", "kd_labeled_TW", "kd_unlabeled_TW"}),
    ("cwd", {"sup", "cwd_labeled_TD", "cwd_unlabeled_TD", "cwd_labeled_TW", "cwd_unlabeled_TW"}),
    ("skt", {"sup", "skt_intra", "skt_inter"}),
])
def test_baselines_train(setup, method, terms):
    cfg = distill_config(setup, method, {"name": method}, iterations=12)
    trainer = run(cfg)
    assert logged_terms(setup, method) == terms
    log = pd.read_csv(setup["root"] / method / "log.csv")
    losses = log["loss"].tolist()
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-3:]) < sum(losses[:3]), losses
    # every distillation term is live (a teacher that gave the student's own outputs would log 0),
    # and the total is the sum of the logged terms, so none is computed but left out of the loss
    for term in terms - {"sup"}:
        assert (log[f"loss/{term}"] > 0).all() and log[f"loss/{term}"].map(math.isfinite).all(), term
    assert log[[f"loss/{term}" for term in terms]].sum(axis=1).to_numpy() == pytest.approx(log["loss"].to_numpy(), rel=1e-4)
    exported = load_model(setup["root"] / method / "model.pt")
    assert exported.num_classes == trainer.num_classes


def test_teacher_errors(setup, tmp_path):
    missing = distill_config(setup, "err", {"name": "mgd"})
    missing["method"]["teachers"] = [{"name": "TD", "model": str(tmp_path / "nowhere.pt")}]
    with pytest.raises(CheckpointError, match="nowhere.pt"):
        run(missing)
    wrong_classes = tmp_path / "three_classes.pt"
    save_model(wrong_classes, build_model("resnet18d", num_classes=3))
    mismatch = distill_config(setup, "err", {"name": "mgd"})
    mismatch["method"]["teachers"] = [{"name": "TD", "model": str(wrong_classes)}]
    with pytest.raises(ConfigError, match=r"method.teachers\[0\].*3 classes"):
        run(mismatch)
    with pytest.raises(ConfigError, match="method.region_level_teachers"):
        run(distill_config(setup, "err", {"name": "mgd", "region_level_teachers": [5]}))
    with pytest.raises(ConfigError, match="method.teachers"):
        run(distill_config(setup, "err", {"name": "kd", "teachers": []}))


def test_teacher_class_names_must_be_the_datasets(setup, tmp_path):
    from mgd.data.synthetic import CLASSES

    # an imported checkpoint recording another class order: refused, naming the file and both lists
    swapped = (CLASSES[1], CLASSES[0], *CLASSES[2:])
    renamed = tmp_path / "swapped.pt"
    save_model(renamed, build_model("resnet18d", num_classes=len(CLASSES)), classes=swapped)
    cfg = distill_config(setup, "names", {"name": "kd"})
    cfg["method"]["teachers"] = [{"name": "TD", "model": str(renamed)}]
    with pytest.raises(ConfigError, match=rf"method.teachers\[0\]: teacher .*swapped.pt was trained on classes "
                                          rf"\({', '.join(swapped)}\) but the dataset has \({', '.join(CLASSES)}\)"):
        Trainer(validate_config(cfg))
    # the same names, or a file recording none (class count only): accepted
    for classes, name in ((CLASSES, "same.pt"), (None, "unnamed.pt")):
        save_model(tmp_path / name, build_model("resnet18d", num_classes=len(CLASSES)), classes=classes)
        cfg["method"]["teachers"] = [{"name": "TD", "model": str(tmp_path / name)}]
        Trainer(validate_config(cfg))


def running_statistics(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in model.named_buffers() if "running_" in name}


def objective_and_batch(setup: dict, out: str, method: dict):
    trainer = Trainer(validate_config(distill_config(setup, out, method)))
    trainer.objective.set_modes()
    return trainer.objective, next(trainer.batches())


def test_mgd_separate_forward_is_the_official_sequence(setup):
    from mgd.losses import image_level_loss, pixel_consistency_loss, region_level_loss, supervised_ce_loss

    objective, batch = objective_and_batch(setup, "mgd_separate", {"name": "mgd"})
    initial = copy.deepcopy(objective.trainable["student"])
    terms = objective.losses(batch)
    # V18/train.py written out for the student: u0, u1 without gradients (:243-244), the mixed
    # image (:273), the labeled crops (:314); teachers in eval mode give the same targets
    student = copy.deepcopy(initial)
    with torch.no_grad():
        for view in batch.unlabeled:
            student(view.image)
    mixed = student(batch.mixed_image())
    labeled = student(batch.labeled_image)
    params = objective.params
    td = objective.teacher_targets("TD", batch, unlabeled=True)
    tw = objective.teacher_targets("TW", batch, unlabeled=True)
    expected = {
        "sup": supervised_ce_loss(labeled.logits, batch.labeled_mask),
        "pixel_labeled_TD": pixel_consistency_loss(labeled.logits, td.labeled),
        "pixel_unlabeled_TW": pixel_consistency_loss(mixed.logits, tw.unlabeled_pseudo),
        "image_TD": params["lambda_image"] * image_level_loss(
            mixed.logits, td.mixed_logits, reduction="sum", images_summed=params["image_sum_images"]),
        "region_TW": params["lambda_region"] * region_level_loss(mixed.feature, tw.mixed_feature, grid=(7, 7)),
    }
    for name, value in expected.items():
        torch.testing.assert_close(terms[name], value, msg=name)
    separate = running_statistics(objective.trainable["student"])
    official = running_statistics(student)
    assert all(torch.allclose(separate[name], official[name], rtol=1e-5, atol=1e-6) for name in official)
    # without the two no-grad forwards the running statistics are others: they count
    skipped = copy.deepcopy(initial)
    skipped(batch.mixed_image()), skipped(batch.labeled_image)
    assert not all(torch.allclose(separate[name], value) for name, value in running_statistics(skipped).items())
    # joint: one forward on labeled + mixed, other running statistics and losses
    objective.trainable["student"] = copy.deepcopy(initial)
    objective.separate = False
    joint_terms = objective.losses(batch)
    joint = running_statistics(objective.trainable["student"])
    assert not all(torch.allclose(separate[name], joint[name], rtol=1e-5, atol=1e-6) for name in joint)
    assert not torch.allclose(joint_terms["sup"], terms["sup"])


@pytest.mark.parametrize("method", ["mgd", "skt"])
def test_joint_forward_trains(setup, method):
    out = f"{method}_joint"
    run(distill_config(setup, out, {"name": method, "forward": "joint"}, iterations=3))
    losses = pd.read_csv(setup["root"] / out / "log.csv")["loss"].tolist()
    assert len(losses) == 3 and all(torch.isfinite(torch.tensor(losses)))


@pytest.mark.parametrize("mixed_targets", ["teacher", "views"])
def test_train_mode_teacher_bn_normalises_each_group(setup, mixed_targets):
    from mgd.teachers.targets import reduce_outputs

    objective, batch = objective_and_batch(
        setup, f"bn_groups_{mixed_targets}", {"name": "mgd", "teacher_bn": "train", "mixed_targets": mixed_targets})
    source = objective.teachers.sources["TD"]
    assert source.per_group
    teacher = objective.teacher("TD")
    groups = [batch.labeled_image, *(view.image for view in batch.unlabeled), batch.mixed_image()]
    with torch.no_grad():
        once_per_group = [teacher(images) for images in groups]
        concatenated = teacher(torch.cat(groups)).logits.split([images.shape[0] for images in groups])
    # batch statistics of a group are not those of the concatenation
    assert not torch.allclose(once_per_group[0].logits, concatenated[0], atol=1e-4)
    if mixed_targets == "teacher":
        targets = objective.teacher_targets("TD", batch, unlabeled=True)
        torch.testing.assert_close(targets.labeled, once_per_group[0].logits)
        torch.testing.assert_close(targets.mixed_logits, once_per_group[3].logits)
        torch.testing.assert_close(targets.mixed_feature, once_per_group[3].feature)
        assert torch.equal(targets.unlabeled_pseudo, batch.mix_labels(once_per_group[1].logits.argmax(1),
                                                                      once_per_group[2].logits.argmax(1)))
    else:
        views = source.stored_views(batch, unlabeled=True)
        for view, images in zip(views, groups[:3]):
            expected = reduce_outputs(teacher, images, source.layout, source.fields)
            for field, value in vars(expected).items():
                if value is not None:
                    assert torch.equal(getattr(view, field), value), field
