"""Dataset adapters on tiny files written per test, CamVid on the shared copy, and every error path."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torchvision import tv_tensors

from mgd.cli import main as cli_main
from mgd.data import build_dataset, read_dataset_config, sample_id
from mgd.data.base import Sample, SampleError, SegmentationDataset, default_palette
from mgd.errors import ConfigError, DatasetError
from mgd.splits import read_split


def write_image(path: Path, height: int = 8, width: int = 12, seed: int = 0) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def write_label(path: Path, values: np.ndarray, palette: bool = False) -> None:
    label = Image.fromarray(values.astype(np.uint8), mode="L")
    if palette:
        label = label.convert("P")
        label.putpalette([channel for colour in default_palette(256) for channel in colour])
    path.parent.mkdir(parents=True, exist_ok=True)
    label.save(path)


def label_values(height: int = 8, width: int = 12, top: int = 3) -> np.ndarray:
    return np.arange(height * width).reshape(height, width) % top


@pytest.fixture
def folder_root(tmp_path: Path) -> Path:
    """Three 8x12 pairs in a CamVid-like layout with values 0..2 and 11 (void)."""
    for index in range(3):
        write_image(tmp_path / "img" / f"s{index}.png", seed=index)
        values = label_values()
        values[0, 0] = 11
        write_label(tmp_path / "ann" / f"s{index}.png", values)
    return tmp_path


def folder_config(root: Path, **changes) -> dict:
    cfg = {
        "name": "folder",
        "root": str(root),
        "classes": ["a", "b", "c"],
        "value_map": {11: 255},
        "train": {"images": "img/*.png", "labels": "ann/*.png"},
    }
    cfg.update(changes)
    return cfg


# --- adapters ----------------------------------------------------------------------------------


def test_voc_reads_crlf_path_pair_lists_and_palette_labels(tmp_path: Path) -> None:
    for index, item in enumerate(["2007_000032", "2007_000039"]):
        write_image(tmp_path / "JPEGImages" / f"{item}.jpg", seed=index)
        values = label_values(top=21)
        values[-1, -1] = 255
        write_label(tmp_path / "SegmentationClassAug" / f"{item}.png", values, palette=index == 0)
    (tmp_path / "train_aug.txt").write_bytes(
        b"/JPEGImages/2007_000039.jpg /SegmentationClassAug/2007_000039.png\r\n"
        b"/JPEGImages/2007_000032.jpg /SegmentationClassAug/2007_000032.png\r\n\r\n"
    )
    (tmp_path / "val.txt").write_text("2007_000032\n")

    train = build_dataset({"name": "voc", "root": str(tmp_path)}, "train")
    assert train.ids == ["2007_000039", "2007_000032"]
    assert train.num_classes == 21 and train.classes[0] == "background" and train.classes[-1] == "tvmonitor"
    assert train.palette[:3] == [(0, 0, 0), (128, 0, 0), (0, 128, 0)]
    image, mask = train.load(1)  # the palette PNG: indices, not colours
    assert image.dtype == np.uint8 and image.shape == (8, 12, 3)
    expected = label_values(top=21)
    expected[-1, -1] = 255
    assert mask.dtype == np.int64 and np.array_equal(mask, expected)

    val = build_dataset({"name": "voc", "root": str(tmp_path)}, "val")
    assert val.ids == ["2007_000032"]
    (tmp_path / "lists").mkdir()
    (tmp_path / "lists" / "few.txt").write_text("2007_000039\n")
    custom = build_dataset({"name": "voc", "root": str(tmp_path), "val_list": "lists/few.txt"}, "val")
    assert custom.ids == ["2007_000039"]


def write_cityscapes_pair(image_path: Path, label_path: Path) -> None:
    write_image(image_path)
    values = label_values(top=19)
    values[0, :] = 255
    write_label(label_path, values)


@pytest.mark.parametrize("layout", ["cps", "official"])
def test_cityscapes_layouts_share_ids(tmp_path: Path, layout: str) -> None:
    items = [("jena", "jena_000078_000019"), ("aachen", "aachen_000001_000019")]
    for city, item in items:
        if layout == "cps":
            image_path = tmp_path / "images" / "train" / f"{item}.png"
            label_path = tmp_path / "segmentation" / "train" / f"{item}_gtFine.png"
        else:
            image_path = tmp_path / "leftImg8bit" / "train" / city / f"{item}_leftImg8bit.png"
            label_path = tmp_path / "gtFine" / "train" / city / f"{item}_gtFine_labelTrainIds.png"
        write_cityscapes_pair(image_path, label_path)

    dataset = build_dataset({"name": "cityscapes", "root": str(tmp_path), "layout": layout}, "train")
    assert dataset.ids == ["aachen_000001_000019", "jena_000078_000019"]
    assert dataset.num_classes == 19 and dataset.classes[-1] == "bicycle"
    cps_line = "/images/train/jena_000078_000019.png\t/segmentation/train/jena_000078_000019_gtFine.png"
    subset = dataset.subset([sample_id(cps_line.split()[0])])
    _, mask = subset.load(0)
    assert set(np.unique(mask)) == set(range(19)) | {255}


def test_cityscapes_rejects_unknown_layout_and_empty_folders(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'layout'"):
        build_dataset({"name": "cityscapes", "root": str(tmp_path), "layout": "coarse"}, "train")
    with pytest.raises(DatasetError, match="no cityscapes images"):
        build_dataset({"name": "cityscapes", "root": str(tmp_path)}, "val")


def test_camvid_tiny_copy_matches_list_paths_by_base_name(tmp_path: Path) -> None:
    for split in ("train", "val"):
        write_image(tmp_path / split / "0001TP_006690.png")
        values = label_values(top=12)  # includes 11 = void
        write_label(tmp_path / f"{split}annot" / "0001TP_006690.png", values)
        (tmp_path / f"{split}.txt").write_text(
            f"/SegNet/CamVid/{split}/0001TP_006690.png /SegNet/CamVid/{split}annot/0001TP_006690.png\n"
        )
    dataset = build_dataset({"name": "camvid", "root": str(tmp_path)}, "val")
    assert dataset.ids == ["0001TP_006690"] and dataset.num_classes == 11
    _, mask = dataset.load(0)
    raw = label_values(top=12)
    assert np.array_equal(mask, np.where(raw == 11, 255, raw))


def test_camvid_real_data(camvid_root: Path) -> None:
    train = build_dataset({"name": "camvid", "root": str(camvid_root)}, "train")
    val = build_dataset({"name": "camvid", "root": str(camvid_root)}, "val")
    assert (len(train), len(val)) == (367, 101)
    assert train.ids[0] == "0001TP_006690" and not set(train.ids) & set(val.ids)
    for dataset in (train, val):
        image, mask = dataset.load(0)
        assert image.shape == (360, 480, 3) and mask.shape == (360, 480)
        assert set(np.unique(mask)) <= set(range(11)) | {255}
    sample = val[1]
    assert isinstance(sample["image"], tv_tensors.Image) and sample["image"].shape == (3, 360, 480)


def test_folder_globs_pair_by_id_and_apply_the_value_map(folder_root: Path) -> None:
    dataset = build_dataset(folder_config(folder_root, palette=[[1, 2, 3], [4, 5, 6], [7, 8, 9]]), "train")
    assert dataset.ids == ["s0", "s1", "s2"] and dataset.classes == ("a", "b", "c")
    assert dataset.palette == [(1, 2, 3), (4, 5, 6), (7, 8, 9)]
    _, mask = dataset.load(2)
    assert mask[0, 0] == 255 and np.array_equal(mask.ravel()[1:], label_values().ravel()[1:])


def test_folder_list_mode_accepts_leading_slashes(folder_root: Path) -> None:
    (folder_root / "val.txt").write_text("/img/s2.png /ann/s2.png\nimg/s0.png ann/s0.png\n")
    dataset = build_dataset(folder_config(folder_root, val={"list": "val.txt"}), "val")
    assert dataset.ids == ["s2", "s0"]
    assert dataset.load(0)[1].shape == (8, 12)


def test_folder_value_map_may_shift_every_value(folder_root: Path) -> None:
    cfg = folder_config(folder_root, classes=["b", "c"], value_map={0: 255, 1: 0, 2: 1, 11: 255})
    _, mask = build_dataset(cfg, "train").load(0)
    assert set(np.unique(mask)) == {0, 1, 255}


def test_folder_unpaired_files_are_named(folder_root: Path) -> None:
    write_image(folder_root / "img" / "lonely.png")
    with pytest.raises(DatasetError, match=r"1 image\(s\).*lonely\.png"):
        build_dataset(folder_config(folder_root), "train")
    (folder_root / "img" / "lonely.png").unlink()
    write_label(folder_root / "ann" / "orphan.png", label_values())
    with pytest.raises(DatasetError, match=r"1 label\(s\).*orphan\.png"):
        build_dataset(folder_config(folder_root), "train")


def test_folder_pairs_cityscapes_like_names_across_sequence_folders(tmp_path: Path) -> None:
    # The same frame name in two sequence folders, and names that differ by suffix and extension.
    for index, (city, frame) in enumerate([("aachen", "f_000019"), ("bochum", "f_000019"), ("bochum", "f_000020")]):
        write_image(tmp_path / "leftImg8bit" / "train" / city / f"{frame}_leftImg8bit.png", seed=index)
        write_label(tmp_path / "gtFine" / "train" / city / f"{frame}_gtFine_labelTrainIds.png", label_values())
    write_image(tmp_path / "leftImg8bit" / "train" / "top_leftImg8bit.png")  # no sub-folder: "**" spans none
    write_label(tmp_path / "gtFine" / "train" / "top_gtFine_labelTrainIds.png", label_values())
    cfg = folder_config(tmp_path, train={"images": "leftImg8bit/train/**/*_leftImg8bit.png",
                                         "labels": "gtFine/train/**/*_gtFine_labelTrainIds.png"})
    dataset = build_dataset(cfg, "train")
    assert dataset.ids == ["aachen/f_000019", "bochum/f_000019", "bochum/f_000020", "top"]
    sample = dataset.samples[1]
    assert sample.image_path.parent.name == sample.label_path.parent.name == "bochum"
    assert sample.label_path.name == "f_000019_gtFine_labelTrainIds.png"


def test_folder_pairs_jpeg_images_with_png_labels_by_suffix(tmp_path: Path) -> None:
    for index in range(2):
        write_image(tmp_path / "data" / f"{index:03d}_image.jpg", height=5, width=7, seed=index)
        write_label(tmp_path / "data" / f"{index:03d}_label.png", label_values(5, 7), palette=index == 1)
    (tmp_path / "data" / "notes.txt").write_text("not an image")
    cfg = folder_config(tmp_path, train={"images": "data/*_image.jpg", "labels": "data/*_label.png"})
    dataset = build_dataset(cfg, "train")
    assert dataset.ids == ["000", "001"]
    image, mask = dataset.load(1)  # JPEG image, palette label, odd size
    assert image.shape == (5, 7, 3) and np.array_equal(mask, label_values(5, 7))
    # A final ".*" (any extension) is not part of the id, nor is an extension "*" spans; files
    # that are no images are skipped.
    cfg = folder_config(tmp_path, train={"images": "data/*_image.*", "labels": "data/*_label.*"})
    assert build_dataset(cfg, "train").ids == ["000", "001"]
    for index in range(2):
        write_label(tmp_path / "ann" / f"{index:03d}.png", label_values(5, 7))
    cfg = folder_config(tmp_path, train={"images": "data/*_image.jpg", "labels": "ann/*"})
    assert build_dataset(cfg, "train").ids == ["000", "001"]


def test_folder_list_ids_keep_sequence_folders(tmp_path: Path) -> None:
    for sequence in ("seq1", "seq2"):
        write_image(tmp_path / "frames" / sequence / "0001.png")
        write_label(tmp_path / "masks" / sequence / "0001.png", label_values())
    (tmp_path / "train.txt").write_text(
        "frames/seq1/0001.png masks/seq1/0001.png\n/frames/seq2/0001.png /masks/seq2/0001.png\n"
    )
    dataset = build_dataset(folder_config(tmp_path, train={"list": "train.txt"}), "train")
    assert dataset.ids == ["seq1/0001", "seq2/0001"]
    # Without distinct folders the two frames would be one id: an error naming both files.
    (tmp_path / "bad.txt").write_text("frames/seq1/0001.png masks/seq1/0001.png\nframes/seq1/0001.png masks/seq2/0001.png\n")
    with pytest.raises(DatasetError, match=r"share an id: .*seq1/0001\.png, .*seq1/0001\.png"):
        build_dataset(folder_config(tmp_path, train={"list": "bad.txt"}), "train")


def test_folder_list_files_outside_a_read_only_root(folder_root: Path, tmp_path_factory, monkeypatch) -> None:
    workdir = tmp_path_factory.mktemp("workflow")
    (workdir / "lists").mkdir()
    (workdir / "lists" / "val.txt").write_text("img/s1.png ann/s1.png\n")
    monkeypatch.chdir(workdir)
    folder_root.chmod(0o555)
    try:
        relative = build_dataset(folder_config(folder_root, val={"list": "lists/val.txt"}), "val")
        absolute = build_dataset(folder_config(folder_root, val={"list": str(workdir / "lists" / "val.txt")}), "val")
        assert relative.ids == absolute.ids == ["s1"] and relative.samples[0].image_path == folder_root / "img" / "s1.png"
        with pytest.raises(DatasetError, match=r"list file lists/none\.txt does not exist in root .* or in the working directory"):
            build_dataset(folder_config(folder_root, val={"list": "lists/none.txt"}), "val")
    finally:
        folder_root.chmod(0o755)
    # A list of the same name under root wins over the working directory's.
    (folder_root / "lists").mkdir()
    (folder_root / "lists" / "val.txt").write_text("img/s2.png ann/s2.png\n")
    assert build_dataset(folder_config(folder_root, val={"list": "lists/val.txt"}), "val").ids == ["s2"]


def test_folder_unlabeled_images_join_train_only_as_unlabeled(folder_root: Path, tmp_path: Path) -> None:
    for index in range(2):
        write_image(folder_root / "extra" / "run" / f"u{index}.jpg", height=20, width=30, seed=index)
    cfg = folder_config(folder_root, unlabeled={"images": "extra/**/*.jpg"}, val={"images": "img/*.png", "labels": "ann/*.png"})
    train = build_dataset(cfg, "train")
    assert train.ids == ["s0", "s1", "s2", "run/u0", "run/u1"] and train.labeled_ids == ["s0", "s1", "s2"]
    assert build_dataset(cfg, "val").ids == ["s0", "s1", "s2"]  # unlabeled images are train data
    assert train.load_image(3).shape == (20, 30, 3)  # any size: no label to compare with
    with pytest.raises(SampleError, match=r"u0\.jpg: an unlabeled image has no label"):
        train.load(3)
    with pytest.raises(DatasetError, match=r"1 id\(s\) used as labeled are unlabeled images.*u1\.jpg"):
        train.subset(["s0", "run/u1"], labeled=True)
    assert len(train.subset(["run/u1", "s0"])) == 2

    # mgd splits make draws the labeled ids from the labeled images and adds every unlabeled image.
    config = tmp_path / "dataset.yaml"
    config.write_text(yaml.safe_dump(cfg))
    assert cli_main(["splits", "make", "--dataset-config", str(config), "--counts", "1", "--out", str(tmp_path / "splits")]) == 0
    split = read_split(tmp_path / "splits" / "1")
    assert len(split.labeled) == 1 and split.labeled[0] in train.labeled_ids
    assert split.unlabeled[-2:] == ["run/u0", "run/u1"] and len(split.unlabeled) == 4
    assert split.meta["unlabeled_images"] == 2 and split.meta["base_count"] == 3

    # An unlabeled image may not take the id of a labeled one.
    write_image(folder_root / "extra" / "s0.png")
    cfg["unlabeled"] = {"images": "extra/*.png"}
    with pytest.raises(DatasetError, match=r"unlabeled images have the id of a labeled.*img/s0\.png and .*extra/s0\.png"):
        build_dataset(cfg, "train")


def test_folder_unlabeled_list(folder_root: Path) -> None:
    write_image(folder_root / "extra" / "a" / "u.png")
    write_image(folder_root / "extra" / "b" / "u.png")
    (folder_root / "unlabeled.txt").write_text("extra/a/u.png\r\n/extra/b/u.png\r\n")
    train = build_dataset(folder_config(folder_root, unlabeled={"list": "unlabeled.txt"}), "train")
    assert train.ids[3:] == ["a/u", "b/u"] and train.labeled_ids == ["s0", "s1", "s2"]


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"classes": "a b c"}, "'classes'"),
        ({"classes": ["a", "a"]}, "'classes'"),
        ({"palette": [[0, 0, 0]]}, "'palette'"),
        ({"value_map": {11: 7}}, "'value_map'"),
        ({"value_map": {-1: 0}}, "'value_map'"),
        ({"train": {"images": "img/*.png"}}, "'train'"),
        ({"train": {"images": "/abs/*.png", "labels": "ann/*.png"}}, "'train.images'"),
        ({"train": {"images": "img/s0.png", "labels": "ann/*.png"}}, "'train.images' must be a glob"),
        ({"unlabeled": {"labels": "ann/*.png"}}, "'unlabeled'"),
    ],
)
def test_folder_bad_config_values_name_the_key(folder_root: Path, changes: dict, key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        build_dataset(folder_config(folder_root, **changes), "train")


def test_folder_missing_split_section(folder_root: Path) -> None:
    with pytest.raises(ConfigError, match="'val'"):
        build_dataset(folder_config(folder_root), "val")


# --- the dataset type ----------------------------------------------------------------------------


def test_items_are_tv_tensors_and_transforms_see_the_pair(folder_root: Path) -> None:
    dataset = build_dataset(folder_config(folder_root), "train")
    sample = dataset[1]
    assert isinstance(sample["image"], tv_tensors.Image) and sample["image"].dtype == torch.uint8
    assert sample["image"].shape == (3, 8, 12)
    assert isinstance(sample["mask"], tv_tensors.Mask) and sample["mask"].dtype == torch.int64
    assert sample["id"] == "s1"
    image, mask = dataset.load(1)
    assert np.array_equal(sample["image"].permute(1, 2, 0).numpy(), image)

    def flip(image: tv_tensors.Image, mask: tv_tensors.Mask):
        assert isinstance(image, tv_tensors.Image) and isinstance(mask, tv_tensors.Mask)
        return image.flip(-1), mask.flip(-1)

    flipped = dataset.with_transform(flip)
    assert torch.equal(flipped[1]["mask"], sample["mask"].flip(-1))
    assert dataset.transform is None  # the original is untouched
    assert np.array_equal(dataset.load_image(1), image)


def test_subset_restricts_and_reorders(folder_root: Path) -> None:
    dataset = build_dataset(folder_config(folder_root), "train")
    subset = dataset.subset(["s2", "s0"])
    assert subset.ids == ["s2", "s0"] and len(dataset) == 3
    assert np.array_equal(subset.load(0)[0], dataset.load(2)[0])
    assert len(dataset.subset([])) == 0


def test_subset_unknown_ids_lists_a_few_and_the_count(folder_root: Path) -> None:
    dataset = build_dataset(folder_config(folder_root), "train")
    unknown = [f"nope{index}" for index in range(8)]
    with pytest.raises(DatasetError, match=r"8 of 9 requested ids.*nope0, nope1.*\(and 3 more\)"):
        dataset.subset(["s0", *unknown])
    with pytest.raises(DatasetError, match="more than once: s0"):
        dataset.subset(["s0", "s0"])


# --- errors --------------------------------------------------------------------------------------


def test_missing_files_are_reported_at_construction(folder_root: Path) -> None:
    (folder_root / "list.txt").write_text("img/s0.png ann/s0.png\nimg/x.png ann/x.png\nimg/y.png ann/s1.png\n")
    with pytest.raises(DatasetError, match=r"3 listed file\(s\) missing, the first is .*img/x\.png"):
        build_dataset(folder_config(folder_root, train={"list": "list.txt"}), "train")


def test_missing_list_file_and_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="train_aug.txt does not exist"):
        build_dataset({"name": "voc", "root": str(tmp_path)}, "train")
    with pytest.raises(DatasetError, match="is not a directory"):
        build_dataset({"name": "camvid", "root": str(tmp_path / "absent")}, "train")


def test_size_mismatch_names_both_files(folder_root: Path) -> None:
    write_label(folder_root / "ann" / "s1.png", label_values(height=6))
    # The folder adapter compares image headers when it is built, before any training starts...
    with pytest.raises(DatasetError, match=r"1 label\(s\) differ .*ann/s1\.png is 12x6 but .*img/s1\.png is 12x8"):
        build_dataset(folder_config(folder_root), "train")
    # ... and every dataset compares the decoded pair when it loads it.
    samples = [Sample(f"s{i}", folder_root / "img" / f"s{i}.png", folder_root / "ann" / f"s{i}.png") for i in (0, 1)]
    dataset = SegmentationDataset(samples, ["a", "b", "c"], value_map={11: 255})
    dataset.load(0)
    with pytest.raises(SampleError, match=r"ann/s1\.png: label is 12x6 .*/img/s1\.png is 12x8"):
        dataset.load(1)


def test_out_of_range_label_values_are_named(folder_root: Path) -> None:
    values = label_values()
    values[2, 2], values[3, 3] = 7, 200
    write_label(folder_root / "ann" / "s0.png", values)
    dataset = build_dataset(folder_config(folder_root), "train")
    with pytest.raises(DatasetError, match=r"ann/s0\.png: label values 7, 200 .* outside 0\.\.2"):
        dataset.load(0)
    # the training loader's uint8 read checks the same values
    with pytest.raises(DatasetError, match=r"ann/s0\.png: label values 7, 200 .* outside 0\.\.2"):
        dataset.load(0, label_dtype=np.uint8)
    with pytest.raises(DatasetError, match="s0.png"):
        dataset[0]


def test_uint8_labels_equal_the_int64_labels_with_and_without_a_value_map(folder_root: Path) -> None:
    values = label_values()
    values[1, 1], values[2, 2] = 255, 11
    write_label(folder_root / "ann" / "s0.png", values)
    samples = [Sample("s0", folder_root / "img" / "s0.png", folder_root / "ann" / "s0.png")]
    for value_map in ({}, {11: 255, 2: 1}):
        dataset = SegmentationDataset(samples, ["a", "b", "c"], value_map=value_map)
        if not value_map:
            with pytest.raises(SampleError, match="label values 11"):
                dataset.load_label(0, np.uint8)
            continue
        wide, narrow = dataset.load_label(0), dataset.load_label(0, np.uint8)
        assert wide.dtype == np.int64 and narrow.dtype == np.uint8
        np.testing.assert_array_equal(wide, narrow)
        assert narrow[2, 2] == 255 and 2 not in narrow


def test_unreadable_and_colour_labels(folder_root: Path) -> None:
    (folder_root / "img" / "s0.png").write_bytes(b"not a png")
    with pytest.raises(SampleError, match=r"img/s0\.png: cannot be read as an image"):
        build_dataset(folder_config(folder_root), "train")
    write_image(folder_root / "img" / "s0.png")
    Image.fromarray(np.zeros((8, 12, 3), np.uint8)).save(folder_root / "ann" / "s1.png")
    dataset = build_dataset(folder_config(folder_root), "train")
    with pytest.raises(SampleError, match=r"ann/s1\.png: a label must be a single-channel.*RGB"):
        dataset.load(1)


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"root": "x"}, "no 'name' key"),
        ({"name": "kitti", "root": "x"}, "unknown dataset 'kitti'"),
        ({"name": "camvid"}, "missing key 'root'"),
        ({"name": "camvid", "root": "x", "crop": 5}, "unknown key 'crop'"),
        ({"name": "voc", "root": "x", "test_list": "t.txt"}, "unknown key 'test_list'"),
        (["camvid"], "must be a mapping"),
    ],
)
def test_config_errors_name_the_key(cfg, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_dataset(cfg, "train")


def test_unknown_split(folder_root: Path) -> None:
    with pytest.raises(ConfigError, match="unknown split 'test'"):
        build_dataset(folder_config(folder_root), "test")


# --- mgd check-data ------------------------------------------------------------------------------


def test_check_data_prints_class_counts_and_fails_on_a_bad_pair(folder_root: Path, capsys) -> None:
    config = folder_root / "dataset.yaml"
    config.write_text(
        f"name: folder\nroot: {folder_root}\nclasses: [a, b, c]\nvalue_map: {{11: 255}}\n"
        "train: {images: img/*.png, labels: ann/*.png}\n"
    )
    assert cli_main(["check-data", "--dataset-config", str(config), "--split", "train"]) == 0
    out = capsys.readouterr().out
    assert "3 pairs OK" in out
    assert "(ignore 255)" in out and " a " in out

    values = label_values()
    values[1, 1] = 9
    write_label(folder_root / "ann" / "s1.png", values)
    assert cli_main(["check-data", "--dataset-config", str(config), "--split", "train"]) == 2
    assert "s1.png: label values 9" in capsys.readouterr().err


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_check_data_decodes_every_file_lists_each_bad_one_and_writes_a_summary(folder_root: Path, capsys) -> None:
    write_image(folder_root / "extra" / "u0.jpg", height=64, width=64)
    config = folder_root / "dataset.yaml"
    cfg = folder_config(folder_root, unlabeled={"images": "extra/*.jpg"})
    config.write_text(yaml.safe_dump(cfg))
    out = folder_root / "checked" / "train.json"
    assert cli_main(["check-data", "--dataset-config", str(config), "--out", str(out)]) == 0
    assert "3 pairs and 1 unlabeled images OK" in capsys.readouterr().out
    record = json.loads(out.read_text())
    assert record["dataset"] == "folder" and record["split"] == "train"
    assert record["samples"] == 4 and record["unlabeled_images"] == 1
    assert [entry["name"] for entry in record["classes"]] == ["a", "b", "c"]
    assert record["ignore_pixels"] == 3 and record["classes"][0]["images"] == 3
    assert record["sizes"] == {"12x8": 3, "64x64": 1} and len(record["ids_sha256"]) == 64

    # Truncated files keep a readable header (so the dataset builds) but fail to decode.
    write_image(folder_root / "img" / "s1.png", height=8, width=12, seed=5)
    truncate(folder_root / "img" / "s1.png")
    truncate(folder_root / "extra" / "u0.jpg")
    out.unlink()
    assert cli_main(["check-data", "--dataset-config", str(config), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert re.search(r"bad sample: .*img/s1\.png: cannot be decoded as an image", err)
    assert re.search(r"bad sample: .*extra/u0\.jpg: cannot be decoded as an image", err)
    last = err.strip().splitlines()[-1]
    assert re.fullmatch(r"mgd check-data: error: 2 of 4 samples failed the check; the first: .*s1\.png: .*", last)
    assert not out.exists()


@pytest.mark.slow
def test_a_corrupt_image_in_a_dataloader_worker_is_one_line_naming_the_file(folder_root: Path) -> None:
    (folder_root / "img" / "s2.png").write_bytes((folder_root / "img" / "s2.png").read_bytes()[:60])
    samples = [Sample(f"s{i}", folder_root / "img" / f"s{i}.png", folder_root / "ann" / f"s{i}.png") for i in range(3)]
    dataset = SegmentationDataset(samples, ["a", "b", "c"], value_map={11: 255})
    loader = torch.utils.data.DataLoader(dataset, batch_size=1, num_workers=2)
    with pytest.raises(SampleError) as caught:
        list(loader)
    message = str(caught.value)
    assert "\n" not in message and "Traceback" not in message
    assert re.fullmatch(r".*img/s2\.png: cannot be decoded as an image \(.+\)", message)


def test_check_data_reports_a_missing_config(tmp_path: Path, capsys) -> None:
    assert cli_main(["check-data", "--dataset-config", str(tmp_path / "none.yaml"), "--split", "val"]) == 2
    assert "none.yaml does not exist" in capsys.readouterr().err


def test_a_training_config_gives_its_dataset_slice_only_where_allowed(tmp_path: Path) -> None:
    dataset_cfg = {"name": "synthetic", "root": "data/synthetic"}
    train_config = tmp_path / "train.yaml"
    train_config.write_text(yaml.safe_dump({"method": "sup", "data": {"dataset": dataset_cfg, "split": "s"}}))
    assert read_dataset_config(train_config, allow_train_config=True) == dataset_cfg
    assert read_dataset_config(train_config)["method"] == "sup"  # check-data, splits: the file as it is
    plain = tmp_path / "dataset.yaml"
    plain.write_text(yaml.safe_dump(dataset_cfg))
    assert read_dataset_config(plain, allow_train_config=True) == read_dataset_config(plain) == dataset_cfg


def documented_yaml(marker: str) -> dict:
    """The YAML block of docs/data.md whose first line is ``marker``."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "data.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", text, flags=re.S)
    matching = [block for block in blocks if block.startswith(marker)]
    assert len(matching) == 1, f"docs/data.md has {len(matching)} yaml blocks starting with {marker!r}"
    return yaml.safe_load(matching[0])


def test_documented_sequence_folder_config_reads_that_layout(tmp_path: Path) -> None:
    """docs/data.md's IDD-like example, exactly as documented (only `root` moved to a tiny tree of
    that layout): `**` over sequence folders, suffix pairing, class names with spaces; and its
    workflow config plans Table 1."""
    from mgd.data.check import class_statistics
    from mgd.plan import build_plan

    frames = {"train": ["seq_0001/000123", "seq_0001/000124", "seq_0002/000123", "seq_0003/part_a/000001"],
              "val": ["seq_0201/000007", "seq_0202/000007"]}
    rng = np.random.default_rng(0)
    for split, ids in frames.items():
        for index, item in enumerate(ids):
            folder = tmp_path / split / Path(item).parent
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)).save(folder / f"{Path(item).name}_image.jpg")
            label = np.full((24, 32), index % 7, dtype=np.uint8)
            label[0, 0] = 255
            Image.fromarray(label).save(folder / f"{Path(item).name}_label.png")
    (tmp_path / "train" / "seq_0001" / "notes.txt").write_text("not an image")
    config = {**documented_yaml("# drive7: sequence folders"), "root": str(tmp_path)}
    assert "drivable fallback" in config["classes"] and len(config["classes"]) == 7
    for split, ids in frames.items():
        dataset = build_dataset(config, split)
        assert sorted(dataset.ids) == sorted(ids)
        assert dataset.classes == tuple(config["classes"])
        statistics = class_statistics(dataset, progress=False)
        classes = len(config["classes"])
        assert sum(statistics["images"][:classes]) == len(ids) and statistics["pixels"][classes] == len(ids)
        assert statistics["sizes"] == {(32, 24): len(ids)}
    workflow = documented_yaml("# drive7 workflow")
    workflow["datasets"]["drive7"]["dataset"]["root"] = str(tmp_path)
    assert workflow["datasets"]["drive7"]["dataset"] == config
    plan = build_plan(workflow)
    assert list(plan.tables) == ["table1"] and set(plan.tables["table1"]["column_adapters"].values()) == {"folder"}
    assert {run.method for run in plan.runs.values() if run.role == "student"} == {"sup", "mgd"}
