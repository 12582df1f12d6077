"""The paper's figures: Figure 1 (mIoU vs. measured latency and vs. GMACs), Figure 3 (mIoU per
partition) and Figure 4 (input, ground truth and predictions as overlays, with error maps); and
the report's own: confusion matrices of two students (``plot_confusion``), training curves
(``plot_curves``) and the student zoo's Pareto figure (``plot_pareto``)."""

from __future__ import annotations

import math
from pathlib import Path

from mgd.errors import ConfigError
from mgd.overlays import DEFAULT_ALPHA, error_map, overlay
from mgd.report.inputs import LATENCY_COLUMN, ReportError, cell_number, cell_paths, latency_setting
from mgd.report.spread import spread_columns


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: str | Path) -> None:
    from mgd.io import atomic_path

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=150, bbox_inches="tight", format=Path(out).suffix.lstrip(".") or "png")


def _row_label(spec_row: dict) -> str:
    keys = spec_row["keys"]
    return f"{keys.get('method', '')} {keys.get('backbone', '')}".strip()


def _log_tick_label(value: float, _position=None) -> str:
    """A log axis' tick as a plain number, labelled only at 1, 2 and 5 times a power of ten
    (matplotlib's minor labels 3, 4, 6 ... overlap on a short range)."""
    if value <= 0:
        return ""
    mantissa = round(value / 10 ** math.floor(math.log10(value)), 6)
    return f"{value:g}" if mantissa in (1, 2, 5) else ""


def plot_tradeoff(spec: dict, table, partition: str, out: str | Path) -> None:
    """Figure 1: mIoU at ``partition`` against the measured latency of each row's DeepLabv3+
    (ms, log scale; the device it was measured on in the axis label) in the left panel and
    against backbone GMACs (log scale) in the right one, one point per row in both."""
    if partition not in spec["value_columns"]:
        raise ConfigError(f"--partition {partition!r} is not a column of {spec['name']} ({spec['value_columns']})")
    for column in (LATENCY_COLUMN, "gmacs"):
        if column not in table.columns:
            raise ReportError(f"table {spec['name']} has no {column} column")
    setting = latency_setting(spec)
    plt = _pyplot()
    fig, (by_latency, by_gmacs) = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True, gridspec_kw={"wspace": 0.15})
    backbones = list(dict.fromkeys(row.get("backbone", "") for row in spec["rows"]))
    markers = ["o", "s", "^", "D", "v", "P", "X"]
    methods = list(dict.fromkeys(row["keys"].get("method", "") for row in spec["rows"]))
    colours = plt.get_cmap("tab10")
    for ax, column in ((by_latency, LATENCY_COLUMN), (by_gmacs, "gmacs")):
        points = [(spec["rows"][index], cell_number(row[column]), cell_number(row[partition]))
                  for index, row in table.iterrows()]
        points = [(spec_row, x, y) for spec_row, x, y in points if not (math.isnan(x) or math.isnan(y)) and x > 0]
        # labels of the right half's points go to their left: they stay inside the panel
        middle = math.sqrt(min(x for _, x, _ in points) * max(x for _, x, _ in points)) if points else 0
        for spec_row, x, y in points:
            method = spec_row["keys"].get("method", "")
            ax.scatter(x, y, marker=markers[backbones.index(spec_row.get("backbone", "")) % len(markers)],
                       color=colours(methods.index(method) % 10), s=45, zorder=3)
            left = x > middle
            ax.annotate(_row_label(spec_row), (x, y), textcoords="offset points", xytext=(-4 if left else 4, 3),
                        ha="right" if left else "left", fontsize=7)
        ax.set_xscale("log")
        ax.margins(x=0.1)
        for axis in (ax.xaxis.set_major_formatter, ax.xaxis.set_minor_formatter):
            axis(_log_tick_label)
        ax.grid(True, which="both", alpha=0.3)
    by_latency.set_xlabel("DeepLabv3+ latency, median ms (log scale)" + (f"\n{setting}" if setting else ""), fontsize=8)
    by_gmacs.set_xlabel("backbone GMACs at the training crop (log scale)")
    by_latency.set_ylabel(f"mIoU (%) at {partition}")
    by_latency.set_title("accuracy vs. measured latency", fontsize=10)
    by_gmacs.set_title("accuracy vs. computation", fontsize=10)
    fig.suptitle(spec.get("title", spec["name"]).split(":")[0])
    _save(fig, out)
    plt.close(fig)


def plot_partitions(spec: dict, table, backbone: str, out: str | Path) -> None:
    """Figure 3: mIoU against partition for each method on ``backbone``; teachers dashed; error
    bars: the seeds' sample std where a cell has several seeds."""
    columns = list(spec["value_columns"])
    rows = [(i, r) for i, r in enumerate(spec["rows"])
            if r.get("backbone") == backbone or r.get("role") == "teacher"]
    if not any(r.get("backbone") == backbone and r.get("role") != "teacher" for _, r in rows):
        raise ConfigError(f"--backbone {backbone!r} has no student rows in {spec['name']}")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    positions = list(range(len(columns)))
    for index, spec_row in rows:
        values = [cell_number(table.iloc[index][column]) for column in columns]
        spreads = [cell_number(table.iloc[index].get(spread_columns(column)[0], "")) for column in columns]
        teacher = spec_row.get("role") == "teacher"
        ax.errorbar(positions, values, yerr=[0.0 if math.isnan(std) else std for std in spreads], capsize=3,
                    linestyle="--" if teacher else "-", marker="o", markersize=4,
                    color="grey" if teacher else None, alpha=0.7 if teacher else 1.0,
                    label=_row_label(spec_row) if teacher else spec_row["keys"].get("method", ""))
    ax.set_xticks(positions, columns)
    ax.set_xlabel("partition (labeled share or count)")
    ax.set_ylabel("mIoU (%)")
    several = any(cell_number(table.iloc[index].get(spread_columns(column)[1], "")) > 1
                  for index, _ in rows for column in columns)
    ax.set_title(f"mIoU per partition, student {backbone}" + (" (mean ± std over seeds)" if several else ""))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    _save(fig, out)
    plt.close(fig)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points (latency, mIoU) no other point dominates (as fast or faster and at
    least as accurate, better in one), by increasing latency."""
    front = [i for i, (x, y) in enumerate(points)
             if not any(u <= x and v >= y and (u, v) != (x, y) for u, v in points)]
    return sorted(front, key=lambda i: points[i])


def plot_pareto(spec: dict, table, out: str | Path) -> None:
    """The student zoo: mIoU against measured latency (ms), a point per student and method, an
    arrow from each backbone's Sup point to its MGD point, the Pareto front drawn through the
    points no other beats on both."""
    if LATENCY_COLUMN not in table.columns or "mIoU" not in table.columns:
        raise ReportError(f"table {spec['name']} has no {LATENCY_COLUMN} and mIoU columns (a zoo table)")
    points, labels, rows = [], [], []
    for index, row in table.iterrows():
        x, y = cell_number(row[LATENCY_COLUMN]), cell_number(row["mIoU"])
        if not (math.isnan(x) or math.isnan(y)):
            points.append((x, y))
            rows.append(spec["rows"][index])
            labels.append(_row_label(spec["rows"][index]))
    if not points:
        raise ReportError(f"table {spec['name']} has no row with both a latency and an mIoU")
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    backbones = list(dict.fromkeys(row["backbone"] for row in rows))
    methods = list(dict.fromkeys(row["method"] for row in rows))
    markers = ["o", "s", "^", "D", "v", "P", "X"]
    colours = plt.get_cmap("tab10")
    for (x, y), row, label in zip(points, rows, labels):
        ax.scatter(x, y, color=colours(backbones.index(row["backbone"]) % 10),
                   marker=markers[methods.index(row["method"]) % len(markers)], s=45, zorder=3)
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    by_key = {(row["backbone"], row["method"]): point for point, row in zip(points, rows)}
    for backbone in backbones:
        if (backbone, "sup") in by_key and (backbone, "mgd") in by_key:
            ax.annotate("", xy=by_key[(backbone, "mgd")], xytext=by_key[(backbone, "sup")], zorder=2,
                        arrowprops={"arrowstyle": "->", "color": colours(backbones.index(backbone) % 10)})
    front = [points[i] for i in pareto_front(points)]
    ax.step([x for x, _ in front], [y for _, y in front], where="post", color="black", linestyle=":",
            linewidth=1, zorder=1, label="Pareto front")
    ax.scatter([x for x, _ in front], [y for _, y in front], s=140, facecolors="none", edgecolors="black",
               zorder=4)
    for method in methods:  # the legend: marker per method
        ax.scatter([], [], marker=markers[methods.index(method) % len(markers)], color="grey",
                   label=next(row["keys"]["method"] for row in rows if row["method"] == method))
    ax.set_xlabel("latency (ms): batch 1 at the training crop, fp32, median of timed runs")
    ax.set_ylabel(f"mIoU (%) at {spec['partition']}" if spec.get("partition") else "mIoU (%)")
    ax.set_title("Student zoo: accuracy vs. measured latency (arrows: Sup -> MGD)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    _save(fig, out)
    plt.close(fig)


def plot_qualitative(dataset_config: str | Path, models: list[tuple[str, str]], out: str | Path,
                     num_images: int = 4, ids: list[str] | None = None, mode: str = "whole",
                     window: int | None = None, stride: int | None = None, flip: bool = False,
                     device: str = "auto", alpha: float = DEFAULT_ALPHA) -> None:
    """Figure 4: rows of (input, ground truth overlay, and per model its prediction overlay and
    error map) on val images: overlays blend the class colours in at ``alpha``
    (mgd.overlays.overlay, ignore pixels left as the image), error maps are mgd.overlays.error_map."""
    import torch

    from mgd.data import build_dataset, read_dataset_config
    from mgd.device import resolve_device
    from mgd.inference import infer_logits
    from mgd.models import load_model

    dataset = build_dataset(read_dataset_config(dataset_config), "val")
    chosen = ids or list(dataset.ids[:num_images])
    dataset = dataset.subset(chosen)
    torch_device = resolve_device(device)
    loaded = []
    for label, path in models:
        model = load_model(path).to(torch_device)
        if model.num_classes != dataset.num_classes:
            raise ConfigError(f"model {path} has {model.num_classes} classes, {dataset_config} {dataset.num_classes}")
        loaded.append((label, model))
    plt = _pyplot()
    columns = 2 + 2 * len(loaded)
    fig, axes = plt.subplots(len(chosen), columns, figsize=(2.0 * columns, 2.0 * len(chosen)), squeeze=False)
    titles = ["input", "ground truth"] + [title for label, _ in loaded for title in (label, f"{label} errors")]
    for row_index in range(len(chosen)):
        image, mask = dataset.load(row_index)
        panels = [image, overlay(image, mask, dataset.palette, alpha)]
        batch = torch.from_numpy(image).permute(2, 0, 1)[None].to(torch_device)  # uint8: infer_logits normalises
        for _, model in loaded:
            logits = infer_logits(model, batch, mode=mode, window=window, stride=stride, flip=flip)
            prediction = logits.argmax(1)[0].cpu().numpy()
            panels += [overlay(image, prediction, dataset.palette, alpha),
                       error_map(image, prediction, mask, dataset.ignore_index)]
        for column, panel in enumerate(panels):
            ax = axes[row_index][column]
            ax.imshow(panel, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row_index == 0:
                ax.set_title(titles[column], fontsize=9)
        axes[row_index][0].set_ylabel(chosen[row_index], fontsize=7)
    fig.tight_layout()
    _save(fig, out)
    plt.close(fig)


def row_normalised(matrix):
    """A confusion matrix (rows ground truth) with each row divided by its sum (rows without a
    pixel stay 0): row i, column j is the share of class i's pixels predicted as j."""
    import numpy as np

    matrix = np.asarray(matrix, dtype=np.float64)
    totals = matrix.sum(axis=1, keepdims=True)
    return np.divide(matrix, totals, out=np.zeros_like(matrix), where=totals > 0)


def confusion_panels(spec: dict, partition: str, backbone: str, methods: list[str]) -> list[tuple[str, list[str]]]:
    """(method label, its metrics.json files, one per seed) of the student rows of ``spec`` on
    ``backbone`` whose method label is one of ``methods``, in ``methods`` order, at
    ``partition``; ConfigError for one not there."""
    if partition not in spec["value_columns"]:
        raise ConfigError(f"--partition {partition!r} is not a column of {spec['name']} ({spec['value_columns']})")
    found = {row["keys"].get("method"): cell_paths(row["cells"].get(partition)) for row in spec["rows"]
             if row.get("role") != "teacher" and row.get("backbone") == backbone}
    panels = []
    for method in methods:
        if not found.get(method):
            raise ConfigError(f"{spec['name']} has no {method} {backbone} student at {partition}")
        panels.append((method, found[method]))
    return panels


def plot_confusion(spec: dict, partition: str, backbone: str, methods: list[str], out: str | Path) -> None:
    """Row-normalised confusion matrices (``row_normalised``) of the ``methods`` students on
    ``backbone`` at ``partition``, side by side (a student of several seeds: their matrices
    summed), class names on both axes (those of mgd.report.tables.class_display_names), each
    cell's share in percent written in it."""
    import numpy as np

    from mgd.report.inputs import read_cell, read_class_metrics
    from mgd.report.tables import class_display_names

    panels = confusion_panels(spec, partition, backbone, methods)
    metrics, classes, first = [], None, None
    for label, paths in panels:
        summed = None
        for path in paths:
            entry = read_class_metrics(path)
            if classes is None:
                classes, first = entry["classes"], path
            elif entry["classes"] != classes:
                raise ReportError(f"metrics files {first} and {path} list different classes")
            matrix = np.asarray(entry["confusion_matrix"], dtype=np.float64)
            summed = matrix if summed is None else summed + matrix
        metrics.append((label, paths, {"confusion_matrix": summed}))
    names = class_display_names(spec.get("column_adapters", {}).get(partition), classes)
    plt = _pyplot()
    size = max(3.5, 0.32 * len(names) + 1.5)
    fig, axes = plt.subplots(1, len(metrics), figsize=(0.85 * size * len(metrics) + 1.2, size), squeeze=False,
                             layout="constrained")
    image = None
    for index, (ax, (label, paths, entry)) in enumerate(zip(axes[0], metrics)):
        shares = row_normalised(entry["confusion_matrix"])
        image = ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
        positions = list(range(len(names)))
        ax.set_xticks(positions, names, rotation=90, fontsize=7)
        ax.set_yticks(positions, names if index == 0 else [], fontsize=7)
        ax.set_xlabel("predicted class")
        if index == 0:
            ax.set_ylabel("ground-truth class")
        cell = read_cell(paths)
        seeds = f", {cell.n} seeds summed" if cell.n > 1 else ""
        ax.set_title(f"{label} {backbone} at {partition}: mIoU {cell.mean:.1f} %{seeds}", fontsize=9)
        if len(names) <= 25:
            for (i, j), share in np.ndenumerate(shares):
                ax.text(j, i, f"{100 * share:.0f}", ha="center", va="center", fontsize=5,
                        color="white" if share > 0.5 else "black")
    fig.colorbar(image, ax=list(axes[0]), fraction=0.03, label="share of the ground-truth class's pixels")
    fig.suptitle(f"{spec.get('title', spec['name']).split(':')[0]}: row-normalised confusion matrices "
                 f"on {spec.get('dataset', '')} val", fontsize=10)
    _save(fig, out)
    plt.close(fig)


def plot_curves(logs: list[tuple[str, str]], title: str, out: str | Path) -> None:
    """Training curves: one panel per loss column of the runs' log.csv (``loss``, the total,
    then each ``loss/<term>``) and one of ``lr``, each against the iteration, one line per run."""
    from mgd.report.inputs import read_training_log

    if not logs:
        raise ConfigError("no training log to plot")
    read = [(label, read_training_log(path)) for label, path in logs]
    terms = list(dict.fromkeys(column for _, log in read for column in log.columns
                               if column == "loss" or column.startswith("loss/")))
    names = terms + ["lr"]
    plt = _pyplot()
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 3.0 * rows), squeeze=False, layout="constrained")
    colours, styles = plt.get_cmap("tab10"), ("-", "--", ":", "-.")
    for ax, name in zip(axes.flat, names):
        for index, (label, log) in enumerate(read):  # ten colours, then the next line style
            if name in log.columns and log[name].notna().any():
                ax.plot(log["iteration"], log[name], color=colours(index % 10), linestyle=styles[index // 10 % 4],
                        linewidth=1.0, label=label)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("iteration", fontsize=8)
        ax.grid(True, alpha=0.3)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(names):]:
        ax.set_visible(False)
    handles, labels = axes.flat[0].get_legend_handles_labels()
    by_label = dict(zip(labels, handles))
    for ax in list(axes.flat)[1:len(names)]:  # runs without a total loss term still get a legend entry
        for handle, label in zip(*ax.get_legend_handles_labels()):
            by_label.setdefault(label, handle)
    fig.legend(list(by_label.values()), list(by_label), loc="outside lower center",
               ncol=min(4, len(by_label)), fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=10)
    _save(fig, out)
    plt.close(fig)
