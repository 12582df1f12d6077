"""``mgd evaluate``: mIoU and per-class IoU of a saved model on a dataset split (mgd.evaluation),
written with the run's provenance to a metrics JSON file."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from mgd.commands._inference_args import add_inference_arguments, inference_options
from mgd.data import SPLITS, build_dataset, read_dataset_config
from mgd.device import resolve_device
from mgd.errors import SplitError
from mgd.evaluation import check_class_names, evaluate_model, metrics_table
from mgd.io import ensure_writable_dir, refuse_overwriting_inputs, sha256_file, write_json_atomic


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, type=Path, help="model file written by mgd.models.save_model")
    parser.add_argument("--dataset-config", required=True, type=Path,
                        help="YAML dataset config slice (or a training config: its data.dataset is used)")
    parser.add_argument("--split", default="val", choices=SPLITS, help="(default: val)")
    parser.add_argument("--ids", type=Path, help="evaluate only these ids, one a line (default: every id of the split)")
    add_inference_arguments(parser)
    parser.add_argument("--workers", type=int, default=2, help="data loading processes (default: 2)")
    parser.add_argument("--out", required=True, type=Path, help="metrics JSON file to write")


def main(args: argparse.Namespace) -> int:
    from mgd.models import load_model

    options = inference_options(args)
    device = resolve_device(args.device)
    refuse_overwriting_inputs({"--out": args.out},
                              {"--model": args.model, "--dataset-config": args.dataset_config, "--ids": args.ids})
    ensure_writable_dir(args.out.parent, "--out folder")
    dataset_cfg = read_dataset_config(args.dataset_config, allow_train_config=True)
    dataset = build_dataset(dataset_cfg, split=args.split)
    if args.ids is not None:
        dataset = dataset.subset(read_ids(args.ids))
    model = load_model(args.model)
    check_class_names(model, dataset.classes, args.model, args.dataset_config)

    start = time.perf_counter()
    metrics = evaluate_model(model, dataset, device=device, num_workers=args.workers, **options)
    wall_time = time.perf_counter() - start
    metrics.update(
        units="miou, iou, pixel_acc and mean_acc are fractions in [0, 1]; miou_percent = 100 * miou",
        confusion_matrix_axes="rows: ground-truth class, columns: predicted class, both in the order of 'classes'",
        model={"path": str(args.model), "sha256": sha256_file(args.model), "build_args": model.build_args},
        dataset=dataset_cfg.get("name"),
        dataset_config=str(args.dataset_config),
        split=args.split,
        ids_file=None if args.ids is None else str(args.ids),
        inference=options,
        device=str(device),
        wall_time_s=round(wall_time, 3),
    )
    write_json_atomic(args.out, metrics)
    print(metrics_table(metrics))
    print(f"wrote {args.out}")
    return 0


def read_ids(path: Path) -> list[str]:
    """The ids of the ``--ids`` file, one a line (blank lines skipped)."""
    if not path.is_file():
        raise SplitError(f"ids file {path} does not exist")
    ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not ids:
        raise SplitError(f"ids file {path} lists no ids")
    return ids
