import json
import random
from fractions import Fraction

import pytest

from mgd.cli import main as cli_main
from mgd.errors import SplitError
from conftest import SHARED_ROOT
from mgd.splits import (
    Split,
    import_cps_lists,
    make_count_splits,
    make_ratio_splits,
    parse_ratio,
    read_id_list,
    read_split,
    split_hash,
    write_split,
)

PUBLIC = SHARED_ROOT / "splits"
VOC_SUBSETS = PUBLIC / "voc" / "subset_train_aug"
needs_public_lists = pytest.mark.skipif(not PUBLIC.is_dir(), reason="public CPS lists not present")

RATIOS = ["1/16", "1/8", "1/4", "1/2"]


def make_ids(n):
    return [f"img_{i:05d}" for i in range(n)]


def public_ids(path):
    return read_id_list(path)[0]


def write_bytes(path, data):
    path.write_bytes(data)
    return path


def test_same_seed_same_files_and_hash_other_seed_differs(tmp_path):
    ids = make_ids(200)
    first = make_ratio_splits(ids, RATIOS, seed=0)
    again = make_ratio_splits(ids, RATIOS, seed=0)
    other = make_ratio_splits(ids, RATIOS, seed=1)
    for name in first:
        write_split(tmp_path / "a" / name, first[name])
        write_split(tmp_path / "b" / name, again[name])
        for file in ("labeled.txt", "unlabeled.txt", "split.json"):
            written = [(tmp_path / run / name / file).read_bytes() for run in ("a", "b")]
            assert written[0] == written[1]
        assert first[name].hash == again[name].hash != other[name].hash
        assert first[name].labeled != other[name].labeled


def test_ratio_and_count_partitions_are_nested():
    ids = make_ids(1464)
    by_ratio = make_ratio_splits(ids, RATIOS, seed=3)
    by_count = make_count_splits(ids, [92, 183, 366, 732], seed=3)
    for splits in (by_ratio, by_count):
        labeled_sets = [set(split.labeled) for split in splits.values()]
        assert all(small < large for small, large in zip(labeled_sets, labeled_sets[1:]))
        for split in splits.values():
            assert not set(split.labeled) & set(split.unlabeled)
            assert sorted(split.labeled + split.unlabeled) == ids
            assert split.unlabeled == sorted(split.unlabeled)  # the rest of the base, in order


def test_counts_match_the_public_protocols():
    def labeled_counts(splits):
        return {name: len(split.labeled) for name, split in splits.items()}

    voc = {"1-16": 662, "1-8": 1323, "1-4": 2646, "1-2": 5291}
    assert labeled_counts(make_ratio_splits(make_ids(10582), RATIOS, 0)) == voc
    cityscapes = {"1-16": 186, "1-8": 372, "1-4": 744, "1-2": 1488}
    assert labeled_counts(make_ratio_splits(make_ids(2975), RATIOS, 0)) == cityscapes
    pseudoseg = {"1-16": 92, "1-8": 183, "1-4": 366, "1-2": 732}
    assert labeled_counts(make_ratio_splits(make_ids(1464), RATIOS, 0)) == pseudoseg
    assert labeled_counts(make_count_splits(make_ids(1464), [92, 183], 0)) == {"92": 92, "183": 183}


@needs_public_lists
def test_counts_equal_the_public_voc_and_cityscapes_lists():
    cases = [
        (PUBLIC / "voc" / "train_aug.txt", VOC_SUBSETS / "train_aug_labeled_{}.txt"),
        (
            PUBLIC / "cityscapes" / "train.txt",
            PUBLIC / "cityscapes" / "subset_train" / "train_aug_labeled_{}.txt",
        ),
    ]
    for base_file, labeled_pattern in cases:
        splits = make_ratio_splits(public_ids(base_file), RATIOS, seed=0)
        for name, split in splits.items():
            assert len(split.labeled) == len(public_ids(str(labeled_pattern).format(name)))


def test_independent_of_input_order_and_duplicates():
    ids = make_ids(300)
    shuffled = ids[::-1] + ids[:10]
    random.Random(5).shuffle(shuffled)
    assert make_ratio_splits(ids, RATIOS, 7) == make_ratio_splits(shuffled, RATIOS, 7)
    assert make_count_splits(ids, [30], 7) == make_count_splits(shuffled, [30], 7)


def test_ratio_spellings():
    assert parse_ratio("1/8") == parse_ratio("0.125") == parse_ratio(0.125) == Fraction(1, 8)
    assert parse_ratio(0.1) == Fraction(1, 10)
    assert list(make_ratio_splits(make_ids(100), ["0.5", "3/10"], 0)) == ["1-2", "3-10"]


@pytest.mark.parametrize("ratio", ["0", "1", "1.5", "-1/8", "abc", "1/0", ""])
def test_bad_ratio(ratio):
    with pytest.raises(SplitError, match="ratio"):
        make_ratio_splits(make_ids(100), [ratio], 0)


@pytest.mark.parametrize(
    "ids, counts, message",
    [
        (make_ids(10), [11], "base of 10"),
        (make_ids(10), [10], "base of 10"),
        (make_ids(10), [0], "base of 10"),
        (make_ids(10), [3, 3], "given twice"),
        (make_ids(10), [], "no counts"),
        (make_ids(10), ["3"], "not an integer"),
        ([], [1], "empty"),
        (["a", "b c", "d"], [1], "whitespace"),
        (["a", "", "d"], [1], "whitespace"),
    ],
)
def test_bad_count_or_ids(ids, counts, message):
    with pytest.raises(SplitError, match=message):
        make_count_splits(ids, counts, 0)


def test_bad_ratio_lists():
    with pytest.raises(SplitError, match="given twice"):
        make_ratio_splits(make_ids(100), ["1/8", "0.125"], 0)
    with pytest.raises(SplitError, match="no ratios"):
        make_ratio_splits(make_ids(100), [], 0)
    with pytest.raises(SplitError, match="3 labeled ids out of a base of 3"):
        make_ratio_splits(make_ids(3), ["0.9"], 0)  # ceil(2.7) leaves no unlabeled id


def test_write_read_round_trip(tmp_path):
    split = make_count_splits(make_ids(20), [5], seed=4)["5"]
    folder = write_split(tmp_path / "5", split, {"source": "ids.txt"})
    labeled_text = (folder / "labeled.txt").read_bytes()
    assert labeled_text.endswith(b"\n") and b"\r" not in labeled_text
    assert labeled_text.decode().splitlines() == split.labeled
    record = json.loads((folder / "split.json").read_text())
    assert record["labeled_count"] == 5 and record["unlabeled_count"] == 15
    assert record["seed"] == 4 and record["source"] == "ids.txt" and record["protocol"] == "count 5"
    assert record["hash"] == split.hash == split_hash(split.labeled, split.unlabeled)
    back = read_split(folder)
    assert (back.labeled, back.unlabeled, back.hash) == (split.labeled, split.unlabeled, split.hash)
    assert back.meta["source"] == "ids.txt"
    assert not list(folder.glob(".*.tmp"))


def test_edited_lists_are_detected(tmp_path):
    folder = write_split(tmp_path / "s", make_count_splits(make_ids(20), [5], 0)["5"])
    labeled = folder / "labeled.txt"
    labeled.write_text(labeled.read_text() + "img_99999\n")
    with pytest.raises(SplitError, match=f"{folder}.*edited"):
        read_split(folder)


def test_read_split_errors(tmp_path):
    with pytest.raises(SplitError, match="missing labeled.txt, unlabeled.txt, split.json"):
        read_split(tmp_path)
    folder = write_split(tmp_path / "s", Split(["a"], ["b", "c"]))
    (folder / "split.json").write_text("{not json")
    with pytest.raises(SplitError, match="split.json: not valid JSON"):
        read_split(folder)
    (folder / "split.json").write_text("{}")
    with pytest.raises(SplitError, match="no 'hash'"):
        read_split(folder)
    write_split(folder, Split(["a"], ["b", "c"]), {"labeled_count": 1})
    record = json.loads((folder / "split.json").read_text())
    (folder / "split.json").write_text(json.dumps({**record, "unlabeled_count": 3}))
    with pytest.raises(SplitError, match="unlabeled_count is 3 but the list holds 2"):
        read_split(folder)
    # Lists that overlap or repeat an id are rejected even when the hash vouches for them.
    write_split(folder, Split(["a", "b"], ["b", "c"]))
    with pytest.raises(SplitError, match="in both lists: b"):
        read_split(folder)
    write_split(folder, Split(["a", "a"], ["c"]))
    with pytest.raises(SplitError, match="id a is listed twice"):
        read_split(folder)


def test_import_repairs_list_quirks(tmp_path):
    labeled = write_bytes(tmp_path / "l.txt", b"b\r\n\r\na  \r\nb\r\nc")
    unlabeled = write_bytes(tmp_path / "u.txt", b"d\ne\n\n c\nf\t\nd\n")
    split, report = import_cps_lists(labeled, unlabeled)
    assert split.labeled == ["b", "a", "c"]
    assert split.unlabeled == ["d", "e", "f"]
    assert report.in_both == ["c"]
    def repairs(list_report):
        return (
            list_report.crlf_lines,
            list_report.blank_lines,
            list_report.trailing_whitespace_lines,
            list_report.missing_final_newline,
            list_report.duplicates,
        )

    assert repairs(report.labeled) == (4, 1, 1, True, ["b"])
    assert repairs(report.unlabeled) == (0, 1, 2, False, ["d"])
    text = "\n".join(report.lines())
    for phrase in (
        "4 lines with CRLF endings",
        "no newline after the last line",
        "1 blank line skipped",
        "1 duplicate id collapsed: b",
        "1 id in both lists, kept labeled and dropped from unlabeled: c",
    ):
        assert phrase in text


def test_import_cityscapes_pairs(tmp_path):
    labeled = write_bytes(
        tmp_path / "l.txt",
        b"/images/train/jena_000078_000019.png\t/segmentation/train/jena_000078_000019_gtFine.png\n"
        b"leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png gtFine/x.png\n",
    )
    unlabeled = write_bytes(tmp_path / "u.txt", b"/images/train/ulm_000001_000019.png\n")
    split, report = import_cps_lists(labeled, unlabeled)
    assert split.labeled == ["jena_000078_000019", "aachen_000000_000019"]
    assert split.unlabeled == ["ulm_000001_000019"]
    assert report.labeled.pair_lines == 2 and report.unlabeled.pair_lines == 0


def test_import_errors(tmp_path):
    good = write_bytes(tmp_path / "good.txt", b"a\nb\n")
    other = write_bytes(tmp_path / "other.txt", b"c\nd\n")
    with pytest.raises(SplitError, match="missing.txt: id list not found"):
        import_cps_lists(tmp_path / "missing.txt", good)
    with pytest.raises(SplitError, match="empty.txt: no ids"):
        import_cps_lists(write_bytes(tmp_path / "empty.txt", b"\r\n \n"), good)
    with pytest.raises(SplitError, match=r"three.txt, line 2: expected an id or 'image label'"):
        import_cps_lists(write_bytes(tmp_path / "three.txt", b"a\na b c\n"), good)
    with pytest.raises(SplitError, match="binary.txt: not UTF-8"):
        import_cps_lists(write_bytes(tmp_path / "binary.txt", b"\xff\xfe\x00a"), good)
    with pytest.raises(SplitError, match="good.txt: every id is also in"):
        import_cps_lists(other, write_bytes(tmp_path / "good.txt", b"c\n"))
    with pytest.raises(SplitError, match=r"other.txt: 2 ids not in the base list: c, d"):
        import_cps_lists(write_bytes(tmp_path / "a.txt", b"a\n"), other, base_ids=["a", "b"])


@needs_public_lists
def test_import_public_pseudoseg_lists():
    split, report = import_cps_lists(
        VOC_SUBSETS / "pseudoseg_labeled_1-16.txt",
        VOC_SUBSETS / "pseudoseg_unlabeled_1-16.txt",
        base_ids=public_ids(PUBLIC / "voc" / "train.txt"),
    )
    assert len(split.labeled) == 92 and len(split.unlabeled) == 1464 - 92
    assert report.labeled.crlf_lines == 91 and report.labeled.missing_final_newline
    assert len(report.in_both) == 1 and report.in_both[0] in split.labeled
    assert report.in_both[0] not in split.unlabeled
    assert report.base_ids_unused == 0


@needs_public_lists
def test_import_public_cityscapes_lists():
    folder = PUBLIC / "cityscapes"
    split, report = import_cps_lists(
        folder / "subset_train" / "train_aug_labeled_1-16.txt",
        folder / "subset_train" / "train_aug_unlabeled_1-16.txt",
        base_ids=public_ids(folder / "train.txt"),
    )
    assert split.labeled[0] == "jena_000078_000019"
    assert (len(split.labeled), len(split.unlabeled), report.in_both) == (186, 2789, [])


def test_cli_make_and_import(tmp_path, capsys):
    ids_file = write_bytes(tmp_path / "ids.txt", "\r\n".join(make_ids(40)).encode())
    make = ["splits", "make", "--ids", str(ids_file)]
    assert cli_main([*make, "--ratios", "1/4", "0.5", "--out", str(tmp_path / "r")]) == 0
    assert [len(read_split(tmp_path / "r" / name).labeled) for name in ("1-4", "1-2")] == [10, 20]
    assert cli_main([*make, "--counts", "4", "8", "--seed", "2", "--out", str(tmp_path / "c")]) == 0
    meta = {"seed": 2, "protocol": "count 8", "base_count": 40, "source": str(ids_file)}
    assert read_split(tmp_path / "c" / "8").meta == meta
    capsys.readouterr()
    labeled = write_bytes(tmp_path / "l.txt", b"img_00001\r\nimg_00002")
    unlabeled = write_bytes(tmp_path / "u.txt", b"img_00002\nimg_00003\n")
    imported = ["splits", "import", "--labeled", str(labeled), "--unlabeled", str(unlabeled)]
    assert cli_main([*imported, "--ids", str(ids_file), "--out", str(tmp_path / "i")]) == 0
    out = capsys.readouterr().out
    assert "1 line with CRLF endings" in out and "no newline after the last line" in out
    assert "1 id in both lists, kept labeled and dropped from unlabeled: img_00002" in out
    assert "37 base ids in neither list" in out
    assert read_split(tmp_path / "i").unlabeled == ["img_00003"]


def test_cli_errors_are_reported_before_writing(tmp_path, capsys):
    ids_file = write_bytes(tmp_path / "ids.txt", "\n".join(make_ids(10)).encode())
    out = tmp_path / "out"
    make = ["splits", "make", "--ids", str(ids_file), "--out", str(out)]
    assert cli_main([*make, "--ratios", "1/2", "2"]) == 2
    assert "ratio '2' is outside (0, 1)" in capsys.readouterr().err
    assert cli_main([*make, "--counts", "5", "11"]) == 2
    assert "11 labeled ids out of a base of 10" in capsys.readouterr().err
    assert not out.exists()


def test_cli_dataset_config(synthetic_root, tmp_path, capsys):
    from mgd.data import build_dataset

    config = tmp_path / "synthetic.yaml"
    config.write_text(f"name: synthetic\nroot: {synthetic_root}\n")
    make = ["splits", "make", "--dataset-config", str(config), "--out", str(tmp_path / "s")]
    assert cli_main([*make, "--ratios", "1/8"]) == 0
    train_ids = build_dataset({"name": "synthetic", "root": str(synthetic_root)}, "train").ids
    split = read_split(tmp_path / "s" / "1-8")
    assert len(split.labeled) == 3  # ceil(24 / 8) of the 24 train images
    assert split.labeled == make_ratio_splits(train_ids, ["1/8"], seed=0)["1-8"].labeled
    assert sorted(split.labeled + split.unlabeled) == sorted(train_ids)
    assert split.meta["source"] == f"{config} (train)"
    capsys.readouterr()

    def run_with(config_path):
        make = ["splits", "make", "--dataset-config", str(config_path), "--counts", "2"]
        status = cli_main([*make, "--out", str(tmp_path / "x")])
        return status, capsys.readouterr().err

    missing = tmp_path / "missing.yaml"
    assert run_with(missing) == (2, f"mgd splits: error: dataset config {missing} does not exist\n")
    config.write_text("- a list\n")
    assert "synthetic.yaml must hold a mapping" in run_with(config)[1]
    config.write_text("name: [unclosed\n")
    assert "synthetic.yaml is not readable YAML" in run_with(config)[1]
