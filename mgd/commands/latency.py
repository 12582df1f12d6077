"""``mgd latency``: measured inference latency of a model file or of backbones' DeepLabv3+ on a
real device (mgd.deploy.latency)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from mgd.deploy.latency import (
    DEFAULT_MIN_RUNS,
    DEFAULT_MIN_TIME_S,
    DEFAULT_NUM_CLASSES,
    DEFAULT_WARMUP,
    PRECISIONS,
    backbone_latency,
    check_backbones,
    check_settings,
    latency_table,
    model_file_latency,
)
from mgd.device import DEVICES
from mgd.errors import ConfigError
from mgd.io import refuse_overwriting_inputs, write_json_atomic


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{text} is not an integer >= {minimum}")
        return value

    return parse


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a number of seconds >= 0")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model", type=Path, help="an mgd model file (mgd train, mgd import-weights)")
    source.add_argument("--backbone", nargs="+", metavar="NAME",
                        help="the DeepLabv3+ (random weights) of each backbone: resnet101_v1c, wide_resnet50_2, "
                        "resnet18_v1c, mobilenetv2_dilated, resnet18d, mobilenetv2_100 or a timm model name")
    parser.add_argument("--size", required=True, nargs="+", type=_int_at_least(1), metavar="S",
                        help="input size in pixels: S (square) or H W")
    parser.add_argument("--num-classes", type=_int_at_least(1),
                        help=f"classifier outputs of a --backbone model (default {DEFAULT_NUM_CLASSES}; a model file has its own)")
    parser.add_argument("--batch", type=_int_at_least(1), default=1, help="images per forward (default 1)")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="auto: CUDA when available (default)")
    parser.add_argument("--precision", choices=PRECISIONS, default="fp32", help="fp32, or autocast to bf16 / fp16")
    parser.add_argument("--threads", type=_int_at_least(1),
                        help="torch intra-op threads while measuring (default: as OMP_NUM_THREADS sets them)")
    parser.add_argument("--warmup", type=_int_at_least(0), default=DEFAULT_WARMUP,
                        help=f"untimed forwards first (default {DEFAULT_WARMUP})")
    parser.add_argument("--min-runs", type=_int_at_least(1), default=DEFAULT_MIN_RUNS,
                        help=f"timed forwards at least (default {DEFAULT_MIN_RUNS})")
    parser.add_argument("--min-time", type=_seconds, default=DEFAULT_MIN_TIME_S, metavar="S",
                        help=f"and timed forwards until they add up to S seconds (default {DEFAULT_MIN_TIME_S})")
    parser.add_argument("--json", action="store_true", help="print one JSON object per model and line, not a table")
    outputs = parser.add_mutually_exclusive_group()
    outputs.add_argument("--out", type=Path, help="also write the JSON of the one model measured to FILE")
    outputs.add_argument("--out-dir", type=Path, help="also write DIR/<backbone>.json for each --backbone")


def main(args: argparse.Namespace) -> int:
    settings = {"size": tuple(args.size), "batch": args.batch, "device": args.device, "precision": args.precision,
                "threads": args.threads, "warmup": args.warmup, "min_runs": args.min_runs, "min_time_s": args.min_time}
    # every input is checked before the first (possibly long) measurement
    check_settings(**settings)
    if args.model is not None:
        if args.num_classes is not None:
            raise ConfigError("--num-classes: a model file has its own classes; give it with --backbone only")
        if args.out_dir is not None:
            raise ConfigError("--out-dir writes one file per --backbone; use --out FILE with --model")
        refuse_overwriting_inputs({"--out": args.out}, {"--model": args.model})
    else:
        check_backbones(args.backbone)
        if args.out is not None and len(args.backbone) > 1:
            raise ConfigError(f"--out FILE holds one model, not {len(args.backbone)} backbones; use --out-dir DIR")
    if args.model is not None:
        rows = [model_file_latency(args.model, **settings)]
    else:
        num_classes = args.num_classes or DEFAULT_NUM_CLASSES
        rows = [backbone_latency(name, num_classes=num_classes, **settings) for name in args.backbone]
    if args.out is not None:
        write_json_atomic(args.out, rows[0])
    for row in rows if args.out_dir is not None else ():
        write_json_atomic(args.out_dir / f"{row['backbone']}.json", row)
    print("\n".join(json.dumps(row) for row in rows) if args.json else latency_table(rows))
    return 0
