"""Parameter and MAC counts against the paper's backbone figures, and the ``mgd complexity`` CLI."""

from __future__ import annotations

import json

import pytest

from mgd.cli import main as cli_main
from mgd.models.complexity import measure_complexity

# Paper: backbone Params (M), GMACs at 512x512 (VOC) and 800x800 (Cityscapes), tolerances.
PAPER = {
    "resnet101_v1c": (42.63, {512: 59.13, 800: 144.32}, 0.02, 0.02),
    "wide_resnet50_2": (66.83, {512: 91.12, 800: 222.45}, 0.02, 0.02),
    "resnet18_v1c": (11.19, {512: 17.20, 800: 42.01}, 0.02, 0.02),
    # flop_counter counts ~4% fewer MACs for MobileNetV2 than the paper's counter (same 1.81M params)
    "mobilenetv2_dilated": (1.81, {512: 1.52, 800: 3.73}, 0.02, 0.05),
}
JSON_KEYS = {"backbone", "size", "backbone_params_m", "backbone_gmacs", "model_params_m", "model_gmacs"}


@pytest.mark.parametrize("size", [512, 800])
@pytest.mark.parametrize("backbone", list(PAPER))
def test_backbone_figures_match_the_paper(backbone: str, size: int) -> None:
    params_m, gmacs, params_tolerance, gmacs_tolerance = PAPER[backbone]
    measured = measure_complexity(backbone, size)
    assert measured["backbone_params_m"] == pytest.approx(params_m, rel=params_tolerance)
    assert measured["backbone_gmacs"] == pytest.approx(gmacs[size], rel=gmacs_tolerance)
    assert measured["model_params_m"] > measured["backbone_params_m"]
    assert measured["model_gmacs"] > measured["backbone_gmacs"]


def test_meta_device_counts_equal_cpu_counts() -> None:
    on_meta = measure_complexity("resnet18d", 64, device="meta")
    assert on_meta == measure_complexity("resnet18d", 64, device="cpu")


def test_cli_json_has_exactly_the_documented_keys(capsys) -> None:
    argv = ["complexity", "--backbone", "resnet18d", "--size", "128", "--num-classes", "19"]
    status = cli_main([*argv, "--json"])
    assert status == 0
    row = json.loads(capsys.readouterr().out)
    assert set(row) == JSON_KEYS
    assert row["backbone"] == "resnet18d" and row["size"] == 128


def test_cli_table_and_errors(capsys) -> None:
    assert cli_main(["complexity", "--backbone", "mobilenetv2_100", "--size", "64"]) == 0
    table = capsys.readouterr().out
    assert "mobilenetv2_100" in table and "DeepLabv3+" in table
    assert cli_main(["complexity", "--backbone", "no_such_net", "--size", "64"]) == 2
    assert "no_such_net" in capsys.readouterr().err


def test_cli_writes_every_backbone_or_nothing(tmp_path, capsys) -> None:
    out = tmp_path / "complexity"
    argv = ["complexity", "--size", "48", "--out-dir", str(out), "--json", "--backbone"]
    assert cli_main([*argv, "resnet18d", "mobilenetv2_100"]) == 0
    printed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [row["backbone"] for row in printed] == ["resnet18d", "mobilenetv2_100"]
    assert {path.name for path in out.iterdir()} == {"resnet18d.json", "mobilenetv2_100.json"}
    assert json.loads((out / "resnet18d.json").read_text()) == printed[0]
    # a bad name anywhere in the list fails before any file is written
    assert cli_main([*argv[:4], str(tmp_path / "bad"), "--backbone", "resnet18d", "no_such_net"]) == 2
    assert not (tmp_path / "bad").exists()
