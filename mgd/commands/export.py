"""``mgd export``: a model file as a TorchScript or ONNX graph of its logits (mgd.deploy.export),
written only once it matches the eager model within the stated tolerance."""

from __future__ import annotations

import argparse
from pathlib import Path

from mgd.deploy.export import (
    DEFAULT_ATOL,
    DEFAULT_OPSET,
    DEFAULT_RTOL,
    DEFAULT_SIZE,
    FORMATS,
    INSTALL_HINT,
    MIN_OPSET,
    SECOND_SAMPLE_EXTRA,
    ExportError,
    ExportOptions,
    export_model,
    require_onnx_packages,
)
from mgd.io import ensure_writable_dir, refuse_overwriting_inputs, sha256_file


def add_arguments(parser: argparse.ArgumentParser) -> None:
    extra_batch, extra_height, extra_width = SECOND_SAMPLE_EXTRA
    parser.add_argument("--model", required=True, type=Path, help="model file written by mgd.models.save_model")
    parser.add_argument("--format", required=True, metavar="|".join(FORMATS),
                        help=f"torchscript (torch.jit.trace) or onnx (torch.onnx.export, dynamo exporter; needs {INSTALL_HINT})")
    parser.add_argument("--out", required=True, type=Path, help="file to write (e.g. model.ts or model.onnx)")
    parser.add_argument("--size", type=int, nargs="+", metavar="PX", default=[DEFAULT_SIZE],
                        help=f"input height and width, or one side for a square (default: {DEFAULT_SIZE})")
    parser.add_argument("--batch", type=int, default=1, help="input batch size (default: 1)")
    parser.add_argument("--dynamic-batch", action="store_true",
                        help=f"any batch size; checked also with {extra_batch} image more (default: fixed)")
    parser.add_argument("--dynamic-size", action="store_true",
                        help=f"any height and width; checked also {extra_height} px taller and {extra_width} px wider "
                             "(default: fixed)")
    parser.add_argument("--opset", type=int,
                        help=f"ONNX opset, >= {MIN_OPSET} (default: {DEFAULT_OPSET})")
    parser.add_argument("--atol", type=float, default=DEFAULT_ATOL,
                        help=f"absolute tolerance of the check against the eager model (default: {DEFAULT_ATOL:g})")
    parser.add_argument("--rtol", type=float, default=DEFAULT_RTOL,
                        help=f"relative tolerance: a logit may differ by atol + rtol x |eager logit| (default: {DEFAULT_RTOL:g})")


def main(args: argparse.Namespace) -> int:
    from mgd.models import load_model

    if len(args.size) not in (1, 2):
        raise ExportError(f"--size takes one side or a height and a width, got {len(args.size)} numbers")
    height, width = args.size * 2 if len(args.size) == 1 else args.size
    options = ExportOptions(format=args.format, height=height, width=width, batch=args.batch,
                            dynamic_batch=args.dynamic_batch, dynamic_size=args.dynamic_size,
                            opset=args.opset, atol=args.atol, rtol=args.rtol)
    if options.format == "onnx":
        require_onnx_packages()
    refuse_overwriting_inputs({"--out": args.out}, {"--model": args.model})
    ensure_writable_dir(args.out.parent, "--out folder")
    model = load_model(args.model)
    source = {"path": str(args.model), "sha256": sha256_file(args.model)}
    comparisons = export_model(model, args.out, options, source=source)
    for comparison in comparisons:
        rounding = "" if comparison.eager_rounding is None else (
            f"; beyond it, but {comparison.exported_rounding:.3g} from float64 logits as the eager model is "
            f"{comparison.eager_rounding:.3g}: float32 rounding")
        print(f"checked on a {'x'.join(map(str, comparison.shape))} input: max abs difference "
              f"{comparison.max_abs_diff:.3g} (max |logit| {comparison.max_abs_logit:.3g}; "
              f"tolerance atol {options.atol:g} + rtol {options.rtol:g} x |logit|{rounding})")
    print(f"wrote {args.out}")
    return 0
