"""A model file as a TorchScript or ONNX graph of its logits, checked against the eager model.

The exported graph takes one input, ``images``: a float32 B x 3 x H x W batch of RGB images scaled
to [0, 1] and normalised with the ImageNet mean and std every mgd model is trained with
(``mgd.data.transforms.normalize``; model files do not record a normalisation of their own), and
returns one output, ``logits``: float32 B x C x H x W at the input size (``SegmentationOutput``'s
``feature`` is left out). The argmax over C indexes the class names of the metadata each file
carries (``EXPORT_METADATA``: JSON with the input contract, mean, std, classes, build arguments and
the export options; an ONNX ``metadata_props`` entry, a TorchScript extra file).

The file is written to a temporary name, run on seeded random inputs (the export shape and, with
a dynamic axis, a second shape) and compared with the eager model; only a file within the
tolerance is renamed into place. TorchScript is traced (``torch.jit.trace``); ONNX is written by
torch's default exporter, ``torch.onnx.export(dynamo=True)`` (``torch.export`` + onnxscript), and
checked with onnxruntime on the CPU. Both run on the CPU.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib
import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mgd.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from mgd.errors import MgdError
from mgd.io import atomic_path

FORMATS = ("torchscript", "onnx")
DEFAULT_SIZE = 512  # the paper's VOC training crop
DEFAULT_ATOL = 1e-4
DEFAULT_RTOL = 1e-3
# the lowest opset torch's exporter has implementations for; lower ones are a lossy conversion
# that fails on Pad (torch 2.14, measured) and leaves the file at 18
MIN_OPSET = 18
DEFAULT_OPSET = 18
ONNX_PACKAGES = ("onnx", "onnxruntime", "onnxscript")
INSTALL_HINT = 'pip install "mgd[export]"'
INPUT_NAME, OUTPUT_NAME = "images", "logits"
EXPORT_METADATA = "mgd.export"  # ONNX metadata_props key; TorchScript extra file "mgd.export.json"
SAMPLE_SEED = 0
# the second sample of a dynamic export: one image more, a size that is no multiple of 32
SECOND_SAMPLE_EXTRA = (1, 16, 32)  # batch, height, width


class ExportError(MgdError, ValueError):
    """An export option is invalid, a package is missing, or the exported file disagrees with the
    eager model (names the option or the file)."""


@dataclasses.dataclass(frozen=True)
class ExportOptions:
    """What ``mgd export`` writes and how closely it must match; validated on construction."""

    format: str
    height: int = DEFAULT_SIZE
    width: int = DEFAULT_SIZE
    batch: int = 1
    dynamic_batch: bool = False
    dynamic_size: bool = False
    opset: int | None = None  # ONNX only; None: DEFAULT_OPSET
    atol: float = DEFAULT_ATOL
    rtol: float = DEFAULT_RTOL

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ExportError(f"--format: unknown format {self.format!r} (choose from {', '.join(FORMATS)})")
        for option, name in (("--size", "height"), ("--size", "width"), ("--batch", "batch")):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ExportError(f"{option}: {name} {value!r} is not a positive integer")
        for name in ("atol", "rtol"):
            value = getattr(self, name)
            if not np.isfinite(value) or value < 0:
                raise ExportError(f"--{name}: {value!r} is not a finite number >= 0")
        if self.opset is not None:
            if self.format != "onnx":
                raise ExportError("--opset applies to --format onnx only")
            if self.opset < MIN_OPSET:
                raise ExportError(f"--opset: {self.opset} is below {MIN_OPSET}, the lowest opset torch's ONNX exporter writes")

    @property
    def onnx_opset(self) -> int:
        return DEFAULT_OPSET if self.opset is None else self.opset


#: a file beyond the tolerance still passes if it is within this many times the eager model's own
#: float32 rounding (its distance to the float64 logits) of the float64 logits
ROUNDING_FACTOR = 2.0


@dataclasses.dataclass
class Comparison:
    """The exported file's logits against the eager model's on one sample input; where they
    differ beyond the tolerance, both against a float64 copy of the model (``*_rounding``)."""

    shape: tuple[int, ...]
    max_abs_diff: float
    max_abs_logit: float
    eager_rounding: float | None = None
    exported_rounding: float | None = None


class LogitsOnly(nn.Module):
    """The model with one output, its logits: what an exported graph computes."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images).logits


def require_onnx_packages() -> None:
    """ExportError naming the missing packages and the install command unless onnx, onnxruntime
    and onnxscript import."""
    missing = []
    for name in ONNX_PACKAGES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ExportError(f"--format onnx needs {', '.join(missing)} (not installed): {INSTALL_HINT}")


def sample_inputs(options: ExportOptions) -> list[torch.Tensor]:
    """Seeded standard-normal inputs (already 'normalised' images): the export shape, then with a
    dynamic axis a second shape (``SECOND_SAMPLE_EXTRA`` more along each dynamic axis)."""
    generator = torch.Generator().manual_seed(SAMPLE_SEED)
    shapes = [(options.batch, 3, options.height, options.width)]
    if options.dynamic_batch or options.dynamic_size:
        extra_batch, extra_height, extra_width = SECOND_SAMPLE_EXTRA
        shapes.append((
            options.batch + extra_batch * options.dynamic_batch,
            3,
            options.height + extra_height * options.dynamic_size,
            options.width + extra_width * options.dynamic_size,
        ))
    return [torch.randn(shape, generator=generator) for shape in shapes]


def export_metadata(model: nn.Module, options: ExportOptions, source: dict | None = None) -> dict:
    """The input contract and provenance an exported file carries (JSON-serialisable)."""
    height = "H" if options.dynamic_size else options.height
    width = "W" if options.dynamic_size else options.width
    batch = "B" if options.dynamic_batch else options.batch
    return {
        "format": EXPORT_METADATA,
        "input": {
            "name": INPUT_NAME,
            "shape": [batch, 3, height, width],
            "dtype": "float32",
            "contract": "RGB scaled to [0, 1], then (x - mean) / std per channel",
            "mean": list(IMAGENET_MEAN),
            "std": list(IMAGENET_STD),
        },
        "output": {"name": OUTPUT_NAME, "shape": [batch, model.num_classes, height, width], "dtype": "float32"},
        "classes": None if model.class_names is None else list(model.class_names),
        "build_args": dict(model.build_args),
        "export": {**dataclasses.asdict(options), "opset": options.onnx_opset if options.format == "onnx" else None,
                   "torch": torch.__version__},
        "source": source,
    }


def export_model(model: nn.Module, out: str | Path, options: ExportOptions, source: dict | None = None) -> list[Comparison]:
    """Write ``model``'s logits graph to ``out`` in ``options.format`` and check it.

    The file is written under a temporary name, run on :func:`sample_inputs` and compared with
    the eager model; it is renamed onto ``out`` only when every logit is within
    ``atol + rtol * |eager logit|`` (else ExportError and nothing at ``out`` changes).
    ``source``: provenance recorded in the metadata (the model file's path and sha256).
    Returns the comparisons, one per sample input.
    """
    out = Path(out)
    if options.format == "onnx":
        require_onnx_packages()
    wrapper = LogitsOnly(model).cpu().eval()
    inputs = sample_inputs(options)
    metadata = json.dumps(export_metadata(model, options, source), sort_keys=True)
    try:
        with atomic_path(out) as tmp:
            if options.format == "torchscript":
                _write_torchscript(wrapper, inputs[0], tmp, metadata)
            else:
                _write_onnx(wrapper, inputs[0], tmp, metadata, options)
            return check_export(tmp, options.format, wrapper, inputs, options.atol, options.rtol, label=out)
    except ExportError as error:  # atomic_path has removed the temporary file
        raise ExportError(f"{error}; {out} not written") from error


@contextlib.contextmanager
def _torch_jit_without_deprecation_warnings() -> Iterator[None]:
    # torch 2.14 marks torch.jit deprecated (a FutureWarning per call); TorchScript is the format asked for
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
        yield


def _write_torchscript(wrapper: nn.Module, example: torch.Tensor, path: Path, metadata: str) -> None:
    with torch.no_grad(), _torch_jit_without_deprecation_warnings():
        traced = torch.jit.trace(wrapper, example, check_trace=False)  # check_export compares instead
        torch.jit.save(traced, str(path), _extra_files={f"{EXPORT_METADATA}.json": metadata})


def _write_onnx(wrapper: nn.Module, example: torch.Tensor, path: Path, metadata: str, options: ExportOptions) -> None:
    axes = {}
    if options.dynamic_batch:
        axes[0] = torch.export.Dim("batch")
    if options.dynamic_size:
        axes[2], axes[3] = torch.export.Dim("height"), torch.export.Dim("width")
    program = torch.onnx.export(
        wrapper, (example,), dynamo=True, opset_version=options.onnx_opset, input_names=[INPUT_NAME],
        output_names=[OUTPUT_NAME], dynamic_shapes={"images": axes} if axes else None, verbose=False,
    )
    program.model.metadata_props[EXPORT_METADATA] = metadata
    program.save(path, external_data=False)  # one self-contained file (the weights inside)
    opset = onnx_opset(path)
    if opset != options.onnx_opset:
        raise ExportError(f"--opset {options.onnx_opset}: torch's exporter wrote opset {opset} instead")


def onnx_opset(path: Path) -> int | None:
    """The default-domain opset an ONNX file imports."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")), None)


def read_metadata(path: str | Path, format: str) -> dict:
    """The ``EXPORT_METADATA`` JSON of an exported file."""
    if format == "torchscript":
        extra = {f"{EXPORT_METADATA}.json": ""}
        with _torch_jit_without_deprecation_warnings():
            torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        return json.loads(extra[f"{EXPORT_METADATA}.json"])
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return json.loads(session.get_modelmeta().custom_metadata_map[EXPORT_METADATA])


def run_exported(path: str | Path, format: str, inputs: list[torch.Tensor]) -> list[np.ndarray]:
    """The exported file's logits for each input, on the CPU (onnxruntime's CPUExecutionProvider)."""
    if format == "torchscript":
        with _torch_jit_without_deprecation_warnings():
            module = torch.jit.load(str(path), map_location="cpu")
        with torch.no_grad():
            return [module(images).numpy() for images in inputs]
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [session.run([OUTPUT_NAME], {INPUT_NAME: images.numpy()})[0] for images in inputs]


def check_export(
    path: str | Path,
    format: str,
    model: nn.Module,
    inputs: list[torch.Tensor],
    atol: float = DEFAULT_ATOL,
    rtol: float = DEFAULT_RTOL,
    label: str | Path | None = None,
) -> list[Comparison]:
    """Compare the exported file's logits with ``model``'s (eager, eval mode, CPU) on ``inputs``.

    ``model`` returns the logits (a :class:`LogitsOnly`) or a ``SegmentationOutput``. ExportError,
    in one line naming ``label`` (default ``path``), the input shape, the max abs difference and
    the tolerance, if a logit differs by more than ``atol + rtol * |eager logit|`` and the file is
    not within ROUNDING_FACTOR x the eager model's float32 rounding of the float64 logits, is not
    finite, has another shape, or the file fails to run on an input.
    """
    label = path if label is None else label
    model = model.cpu().eval()
    with torch.no_grad():
        expected = [model(images) for images in inputs]
    expected = [(logits.logits if hasattr(logits, "logits") else logits).numpy() for logits in expected]
    try:
        actual = run_exported(path, format, inputs)
    except Exception as error:  # noqa: BLE001 - onnxruntime's and TorchScript's errors share no base class
        shapes = " and ".join("x".join(map(str, images.shape)) for images in inputs)
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ExportError(f"{label}: the exported {format} model fails to run on the sample inputs ({shapes}): {first_line}") from error
    comparisons = []
    for images, want, got in zip(inputs, expected, actual):
        shape = "x".join(map(str, images.shape))
        if got.shape != want.shape:
            raise ExportError(f"{label}: the exported {format} model returns logits of shape {got.shape} "
                              f"for a {shape} input, the eager model {want.shape}")
        diff = np.abs(got.astype(np.float64) - want.astype(np.float64))
        max_abs_diff = float(diff.max())  # nan where a logit is nan
        comparison = Comparison(tuple(images.shape), max_abs_diff, float(np.abs(want).max()))
        if not (diff <= atol + rtol * np.abs(want)).all():
            # Beyond the tolerance: the file passes if it is as close to the exact (float64) logits
            # as the eager float32 model is, i.e. the difference is float32 rounding that this
            # network amplifies (MobileNetV2: eager and ONNX both ~0.1 from float64, docs/models.md).
            exact = float64_logits(model, images)
            comparison.eager_rounding = float(np.abs(want.astype(np.float64) - exact).max())
            comparison.exported_rounding = float(np.abs(got.astype(np.float64) - exact).max())
            if not comparison.exported_rounding <= ROUNDING_FACTOR * comparison.eager_rounding + atol:
                raise ExportError(
                    f"{label}: the exported {format} model's logits differ from the eager model's on a {shape} input: "
                    f"max abs difference {max_abs_diff:.3g} beyond the tolerance atol {atol:g} + rtol {rtol:g} x |eager logit| "
                    f"(max |eager logit| {comparison.max_abs_logit:.3g}), and the file is {comparison.exported_rounding:.3g} "
                    f"from the float64 logits, more than {ROUNDING_FACTOR:g} x the eager float32 model's "
                    f"{comparison.eager_rounding:.3g} + atol: not rounding; loosen --atol/--rtol to accept it anyway"
                )
        comparisons.append(comparison)
    return comparisons


def float64_logits(model: nn.Module, images: torch.Tensor) -> np.ndarray:
    """The logits of a float64 copy of the eager model on ``images``: the exact result, against
    which float32 rounding is measured."""
    double = copy.deepcopy(model).double()
    with torch.no_grad():
        exact = double(images.double())
    return (exact.logits if hasattr(exact, "logits") else exact).numpy()
