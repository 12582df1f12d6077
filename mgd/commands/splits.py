"""``mgd splits make|import``: write labeled/unlabeled partitions (mgd.splits) to split folders.

Every output folder is checked before any is written: a different split already there is an
error unless ``--force``; the same split is kept as it is.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from mgd.splits import (
    Split,
    holds_same_split,
    import_cps_lists,
    make_count_splits,
    make_ratio_splits,
    read_id_list,
    with_unlabeled_images,
    write_split,
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    make = actions.add_parser("make", help="draw nested partitions from one seeded permutation")
    base = make.add_mutually_exclusive_group(required=True)
    base.add_argument("--ids", type=Path, help="base id list (one id or 'image label' pair a line)")
    base.add_argument(
        "--dataset-config", type=Path, help="YAML dataset slice; its train ids are the base"
    )
    sizes = make.add_mutually_exclusive_group(required=True)
    sizes.add_argument("--ratios", nargs="+", help="labeled fractions, e.g. 1/16 1/8 or 0.25")
    sizes.add_argument("--counts", nargs="+", type=int, help="labeled counts, e.g. 92 183 366 732")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument("--out", type=Path, required=True, help="gets one sub-folder per partition")
    imported = actions.add_parser("import", help="read public CPS labeled/unlabeled lists")
    imported.add_argument("--labeled", type=Path, required=True)
    imported.add_argument("--unlabeled", type=Path, required=True)
    imported.add_argument("--ids", type=Path, help="base id list every imported id must belong to")
    imported.add_argument("--out", type=Path, required=True, help="split folder to write")
    for action in (make, imported):
        action.add_argument("--force", action="store_true",
                            help="replace a different split already in an output folder")


def main(args: argparse.Namespace) -> int:
    if args.action == "import":
        base_ids = read_id_list(args.ids)[0] if args.ids else None
        split, report = import_cps_lists(args.labeled, args.unlabeled, base_ids)
        for line in report.lines():
            print(line)
        _write_or_keep("imported", args.out, split, holds_same_split(args.out, split, args.force))
        return 0
    unlabeled_images: list[str] = []
    if args.ids:
        ids, source = read_id_list(args.ids)[0], str(args.ids)
    else:
        ids, unlabeled_images = _dataset_train_ids(args.dataset_config)
        source = f"{args.dataset_config} (train)"
    if args.ratios:
        splits = make_ratio_splits(ids, args.ratios, args.seed)
    else:
        splits = make_count_splits(ids, args.counts, args.seed)
    splits = with_unlabeled_images(splits, unlabeled_images)
    present = {name: holds_same_split(args.out / name, split, args.force) for name, split in splits.items()}
    for name, split in splits.items():  # every folder was checked before any is written
        _write_or_keep(name, args.out / name, split, present[name], {"source": source})
    return 0


def _dataset_train_ids(config_path: Path) -> tuple[list[str], list[str]]:
    """(ids with a label, ids of unlabeled images) of the dataset's train split."""
    from mgd.data import build_dataset, read_dataset_config

    dataset = build_dataset(read_dataset_config(config_path), "train")
    labeled = set(dataset.labeled_ids)
    return dataset.labeled_ids, sorted(item for item in dataset.ids if item not in labeled)


def _write_or_keep(name: str, folder: Path, split: Split, present: bool, meta: dict | None = None) -> None:
    if present:
        print(_summary(name, folder, split) + " (unchanged: the folder already holds this split)")
    else:
        print(_summary(name, write_split(folder, split, meta), split))


def _summary(name: str, folder: Path, split: Split) -> str:
    return (
        f"{name}: {len(split.labeled)} labeled, {len(split.unlabeled)} unlabeled -> {folder} "
        f"(hash {split.hash[:12]})"
    )
