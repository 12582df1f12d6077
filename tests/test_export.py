"""``mgd export``: TorchScript and ONNX files of a tiny trained model match the eager model, on the
export shape and on others with dynamic axes; a file that does not is refused and not written."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mgd.cli import main as cli_main
from mgd.data.transforms import IMAGENET_MEAN, IMAGENET_STD
from mgd.deploy import export as export_lib
from mgd.deploy.export import ExportError, ExportOptions, check_export, export_model, read_metadata, run_exported
from mgd.models import build_model, load_model, save_model

CLASSES = ["background", "thing", "stuff"]
SIZE = 32
# the tests load and edit TorchScript files with torch.jit, which torch marks deprecated
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.:FutureWarning")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A resnet18d DeepLabv3+ trained for a few steps (running BN statistics, logits away from 0)."""
    torch.manual_seed(0)
    model = build_model(backbone="resnet18d", num_classes=len(CLASSES)).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    for _ in range(6):
        images = torch.randn(4, 3, SIZE, SIZE)
        target = torch.bucketize(images[:, 0].contiguous(), torch.tensor([-0.5, 0.5]))  # class from the red channel
        loss = F.cross_entropy(model(images).logits, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    path = tmp_path_factory.mktemp("export") / "model.pt"
    save_model(path, model.eval(), classes=CLASSES)
    return path


def run_cli(*argv):
    return cli_main([str(arg) for arg in argv])


def leftovers(folder):
    return sorted(path.name for path in folder.iterdir() if path.name.endswith(".tmp"))


def eager_logits(model_path, images):
    with torch.no_grad():
        return load_model(model_path).eval()(images).logits


def bump_classifier_weight(module) -> None:
    """Edit one weight of the classifier: class 0's logit moves wherever feature channel 0 is on."""
    with torch.no_grad():
        module.model.classifier.weight[0, 0] += 10.0


def test_torchscript_round_trip_with_dynamic_axes(model_file, tmp_path, capsys):
    out = tmp_path / "model.ts"
    status = run_cli("export", "--model", model_file, "--format", "torchscript", "--out", out,
                     "--size", SIZE, SIZE + 8, "--dynamic-batch", "--dynamic-size")
    assert status == 0
    printed = capsys.readouterr().out
    assert "checked on a 1x3x32x40 input" in printed and "checked on a 2x3x48x72 input" in printed
    assert out.is_file() and leftovers(tmp_path) == []
    # a third shape, neither of the checked ones
    images = torch.randn(3, 3, 40, 56, generator=torch.Generator().manual_seed(1))
    [exported] = run_exported(out, "torchscript", [images])
    torch.testing.assert_close(torch.from_numpy(exported), eager_logits(model_file, images),
                               atol=export_lib.DEFAULT_ATOL, rtol=export_lib.DEFAULT_RTOL)
    metadata = read_metadata(out, "torchscript")
    assert metadata["classes"] == CLASSES
    assert metadata["input"]["mean"] == list(IMAGENET_MEAN) and metadata["input"]["std"] == list(IMAGENET_STD)
    assert metadata["input"]["shape"] == ["B", 3, "H", "W"] and metadata["output"]["shape"] == ["B", 3, "H", "W"]


def test_a_perturbed_torchscript_file_is_caught(model_file, tmp_path):
    model = load_model(model_file)
    options = ExportOptions(format="torchscript", height=SIZE, width=SIZE)
    out = tmp_path / "model.ts"
    [comparison] = export_model(model, out, options)
    assert comparison.max_abs_diff <= options.atol
    inputs = export_lib.sample_inputs(options)
    check_export(out, "torchscript", model, inputs)  # the file as written passes
    module = torch.jit.load(str(out))
    bump_classifier_weight(module)
    torch.jit.save(module, str(out))
    with pytest.raises(ExportError, match=r"max abs difference [0-9.e+-]+ beyond the tolerance atol 0.0001 \+ rtol 0.001") as caught:
        check_export(out, "torchscript", model, inputs)
    rounding = float(str(caught.value).split("than 2 x the eager float32 model's ")[1].split(" ")[0])
    assert 0 < rounding < 1e-4  # float32's own rounding on this model: far below the edit's effect


@pytest.mark.parametrize("scale, passes", [(1.5, True), (4.0, False)])
def test_beyond_the_tolerance_a_file_passes_only_as_close_to_float64_as_the_eager_model(
        model_file, monkeypatch, scale, passes):
    """With no tolerance (atol = rtol = 0), a file whose logits are ``scale`` times the eager
    model's float32 rounding away from the float64 logits passes at 1.5 and fails at 4."""
    model = load_model(model_file).eval()
    inputs = export_lib.sample_inputs(ExportOptions(format="torchscript", height=SIZE, width=SIZE))
    exact = export_lib.float64_logits(model, inputs[0])
    eager = eager_logits(model_file, inputs[0]).double().numpy()
    exported = (exact + scale * (eager - exact)).astype("float32")
    monkeypatch.setattr(export_lib, "run_exported", lambda path, format, images: [exported])
    if passes:
        [comparison] = check_export("model.ts", "torchscript", model, inputs, atol=0.0, rtol=0.0)
        assert comparison.max_abs_diff > 0 and comparison.exported_rounding <= 2 * comparison.eager_rounding
    else:
        with pytest.raises(ExportError, match="not rounding"):
            check_export("model.ts", "torchscript", model, inputs, atol=0.0, rtol=0.0)


def test_a_failed_check_writes_nothing_and_keeps_the_old_file(model_file, tmp_path, monkeypatch):
    """The writer's output is checked under its temporary name: a mismatch renames nothing."""
    write = export_lib._write_torchscript

    def write_perturbed(wrapper, example, path, metadata):
        write(wrapper, example, path, metadata)
        module = torch.jit.load(str(path))
        bump_classifier_weight(module)
        torch.jit.save(module, str(path))

    monkeypatch.setattr(export_lib, "_write_torchscript", write_perturbed)
    out = tmp_path / "model.ts"
    with pytest.raises(ExportError, match=r"not written$"):
        export_model(load_model(model_file), out, ExportOptions(format="torchscript", height=SIZE, width=SIZE))
    assert list(tmp_path.iterdir()) == []
    out.write_text("an earlier export")
    status = run_cli("export", "--model", model_file, "--format", "torchscript", "--out", out, "--size", SIZE)
    assert status == 2
    assert out.read_text() == "an earlier export" and leftovers(tmp_path) == []


@pytest.mark.parametrize(("argv", "message"), [
    (["--model", "{tmp}/missing.pt", "--format", "torchscript"], "missing.pt: model file not found"),
    (["--model", "{model}", "--format", "tflite"], "--format: unknown format 'tflite' (choose from torchscript, onnx)"),
    (["--model", "{model}", "--format", "torchscript", "--size", "32", "32", "32"], "--size takes one side or a height"),
    (["--model", "{model}", "--format", "torchscript", "--size", "0"], "--size: height 0 is not a positive integer"),
    (["--model", "{model}", "--format", "torchscript", "--opset", "18"], "--opset applies to --format onnx only"),
    (["--model", "{model}", "--format", "onnx", "--opset", "17"], "--opset: 17 is below 18"),
    (["--model", "{model}", "--format", "torchscript", "--atol", "-1"], "--atol: -1.0 is not a finite number >= 0"),
])
def test_bad_arguments_are_one_line_errors(model_file, tmp_path, capsys, argv, message):
    argv = [arg.format(tmp=tmp_path, model=model_file) for arg in argv]
    status = run_cli("export", *argv, "--out", tmp_path / "out.ts")
    err = capsys.readouterr().err
    assert status == 2
    assert err.count("\n") == 1 and err.startswith("mgd export: error: ") and message in err
    assert not (tmp_path / "out.ts").exists()


def test_onnx_without_its_packages_says_what_to_install_before_any_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # `import onnxruntime` raises ImportError
    status = run_cli("export", "--model", tmp_path / "missing.pt", "--format", "onnx", "--out", tmp_path / "m.onnx")
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert 'onnxruntime (not installed): pip install "mgd[export]"' in err and "missing.pt" not in err


# ONNX: torch's dynamo exporter takes 15-60 s per export on 2 shared cores (measured); one export
# serves every test below
@pytest.fixture(scope="module")
def onnx_file(model_file, tmp_path_factory):
    for package in export_lib.ONNX_PACKAGES:
        pytest.importorskip(package)
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    assert run_cli("export", "--model", model_file, "--format", "onnx", "--out", out,
                   "--size", SIZE, "--dynamic-batch", "--dynamic-size") == 0
    return out


@pytest.mark.slow
def test_onnx_round_trip_with_dynamic_axes(model_file, onnx_file):
    assert export_lib.onnx_opset(onnx_file) == export_lib.DEFAULT_OPSET
    assert leftovers(onnx_file.parent) == []
    images = torch.randn(3, 3, 40, 56, generator=torch.Generator().manual_seed(1))
    [exported] = run_exported(onnx_file, "onnx", [images])
    torch.testing.assert_close(torch.from_numpy(exported), eager_logits(model_file, images),
                               atol=export_lib.DEFAULT_ATOL, rtol=export_lib.DEFAULT_RTOL)
    metadata = read_metadata(onnx_file, "onnx")
    assert metadata["classes"] == CLASSES and metadata["export"]["opset"] == export_lib.DEFAULT_OPSET
    assert metadata["source"]["path"] == str(model_file)


@pytest.mark.slow
def test_a_perturbed_onnx_file_is_caught(model_file, onnx_file, tmp_path):
    import onnx
    from onnx import numpy_helper

    model = load_model(model_file)
    options = ExportOptions(format="onnx", height=SIZE, width=SIZE, dynamic_batch=True, dynamic_size=True)
    inputs = export_lib.sample_inputs(options)
    assert len(inputs) == 2
    check_export(onnx_file, "onnx", model, inputs)  # the file as written passes
    graph = onnx.load(str(onnx_file))
    [weight] = [init for init in graph.graph.initializer if init.name == "model.classifier.weight"]
    values = numpy_helper.to_array(weight).copy()
    values[0, 0] += 10.0
    weight.CopyFrom(numpy_helper.from_array(values, weight.name))
    perturbed = tmp_path / "perturbed.onnx"
    onnx.save(graph, str(perturbed))
    with pytest.raises(ExportError, match=r"perturbed.onnx: the exported onnx model's logits differ .* max abs difference"):
        check_export(perturbed, "onnx", model, inputs)
