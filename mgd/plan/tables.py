"""Tables 1-6 and the figures: which runs each needs (registered in the Registry) and, per cell,
the metrics.json it is read from. The specs are what `mgd report` reads."""

from __future__ import annotations

from mgd.errors import ConfigError
from mgd.plan.partitions import partition_display, partition_slug, partitions
from mgd.plan.paths import Paths
from mgd.plan.runs import MAIN_TEACHERS, Registry, method_params

METHOD_LABELS = {"sup": "Sup", "mt": "MT", "cps": "CPS", "kd": "KD", "cwd": "CWD", "skt": "SKT", "mgd": "MGD"}
TEACHER_ROLES = {"TD": "T_D", "TW": "T_W"}
#: backbone names as the paper's tables print them (the row keys of workflow/paper_tables.yaml)
PAPER_BACKBONES = {
    "resnet18d": "ResNet-18", "resnet18_v1c": "ResNet-18",
    "mobilenetv2_100": "MobileNetV2", "mobilenetv2_dilated": "MobileNetV2",
}
#: MGD ablation variants: extra method params and teachers (the main MGD run fills the rows that
#: equal it: Table 4's T_D + T_W, Table 5a's L_I^TD + L_R^TW, Table 5b's labeled + unlabeled)
ABLATION_VARIANTS = {
    # Table 4: teacher pairs
    "t4_TD": {"teachers": (("TD", 0),), "params": {"image_level_teachers": [0], "region_level_teachers": [0]}},
    "t4_TW": {"teachers": (("TW", 0),), "params": {"image_level_teachers": [0], "region_level_teachers": [0]}},
    "t4_TD_TD": {"teachers": (("TD", 0), ("TD", 1)), "params": {}},
    "t4_TW_TW": {"teachers": (("TW", 0), ("TW", 1)), "params": {}},
    # Table 5a: loss terms (the L_sup-only row is the Sup run)
    "t5a_P": {"params": {"image_level_teachers": [], "region_level_teachers": []}},
    "t5a_P_ITD": {"params": {"region_level_teachers": []}},
    "t5a_P_RTW": {"params": {"image_level_teachers": []}},
    "t5a_all": {"params": {"image_level_teachers": [0, 1], "region_level_teachers": [0, 1]}},
    # Table 5b: labeled-only distillation
    "t5b_labeled": {"params": {"pixel_unlabeled": False, "image_level_teachers": [], "region_level_teachers": []}},
}


def ablation_run(registry: Registry, ds: str, proto: str, slug: str, backbone: str, variant: str | None) -> str:
    """Register the run of an ablation row: None is the main MGD run, "sup" the Sup run,
    "t6_grid<g>" MGD with a g x g region grid, else an ABLATION_VARIANTS entry."""
    if variant is None:
        return registry.student(ds, proto, slug, "mgd", backbone)
    if variant == "sup":
        return registry.student(ds, proto, slug, "sup", backbone)
    if variant.startswith("t6_grid"):
        grid = int(variant.removeprefix("t6_grid"))
        return registry.student(ds, proto, slug, "mgd", backbone, variant, {"grid": grid})
    entry = ABLATION_VARIANTS[variant]
    return registry.student(ds, proto, slug, "mgd", backbone, variant, entry["params"],
                            entry.get("teachers", MAIN_TEACHERS))


def partition_table(registry: Registry, paths: Paths, name: str, ds: str, proto: str, methods: list[str],
                    backbones: list[str], title: str) -> dict:
    """Tables 1-3: the two teachers, then every method x student backbone, one column per partition."""
    config = registry.config
    parts = partitions(config, ds, proto)
    rows = []
    for role in ("TD", "TW"):
        backbone = config["datasets"][ds]["teachers"][role]["backbone"]
        method = config["datasets"][ds]["teachers"][role]["method"]
        cells = {part.display: paths.metrics(ds, proto, part.slug, registry.teacher(ds, proto, part.slug, role).run)
                 for part in parts}
        rows.append({
            "keys": {"method": f"{METHOD_LABELS[method]} ({TEACHER_ROLES[role]})", "backbone": backbone},
            "role": "teacher", "method": method, "backbone": backbone,
            "complexity": paths.complexity(ds, backbone), "cells": cells,
            "paper": f"{METHOD_LABELS[method]}|{TEACHER_ROLES[role]}",
        })
    for backbone in backbones:
        for method in methods:
            cells = {part.display: paths.metrics(ds, proto, part.slug,
                                                 registry.student(ds, proto, part.slug, method, backbone))
                     for part in parts}
            rows.append({
                "keys": {"method": METHOD_LABELS[method], "backbone": backbone},
                "role": "student", "method": method, "backbone": backbone,
                "complexity": paths.complexity(ds, backbone), "cells": cells,
                "paper": f"{METHOD_LABELS[method]}|{PAPER_BACKBONES.get(backbone, backbone)}",
            })
    return {
        "name": name, "title": title, "dataset": ds, "protocol": proto,
        "key_columns": ["method", "backbone"], "complexity": True,
        "value_columns": [part.display for part in parts], "rows": rows,
    }


def ablation_table(registry: Registry, paths: Paths, name: str, title: str, key_columns: list[str],
                   row_defs: list[tuple[dict, str | None, str]], datasets: list[str],
                   value_columns: list[str] | None = None) -> dict:
    """Tables 4-6. ``row_defs``: [(keys, variant, paper key)]; one value column per dataset."""
    config = registry.config
    ablations = config["tables"]["ablations"]
    proto = ablations["protocol"]
    labels = value_columns or [config["datasets"][ds]["label"] for ds in datasets]
    rows = []
    for keys, variant, paper in row_defs:
        cells = {}
        for ds, label in zip(datasets, labels):
            slug = partition_slug(config, ds, proto, ablations["partition"], "tables.ablations.partition")
            cells[label] = paths.metrics(ds, proto, slug, ablation_run(registry, ds, proto, slug,
                                                                       ablations["backbone"], variant))
        rows.append({"keys": keys, "role": "student", "method": "mgd", "backbone": ablations["backbone"],
                     "cells": cells, "paper": paper})
    return {
        "name": name, "title": title, "datasets": list(datasets), "protocol": proto,
        "partition": ablations["partition"], "key_columns": key_columns, "complexity": False,
        "value_columns": labels, "rows": rows,
    }


def rows_of(config: dict, name: str) -> tuple[list[str], list[str]]:
    """(methods, backbones) of partition table ``name``: its own, else the student_* lists."""
    table = config["tables"].get(name, {})
    return table.get("methods") or config["student_methods"], table.get("backbones") or config["student_backbones"]


def table_specs(registry: Registry, paths: Paths) -> dict[str, dict]:
    """Every configured table's spec, by name, its runs registered (Tables 1-3 first, so that the
    ablations reuse their runs)."""
    config = registry.config
    tables = config["tables"]
    specs = {}
    partition_tables = (
        ("table1", *rows_of(config, "table1"),
         "Table 1: teachers and students on the main dataset, mIoU (%) per partition"),
        ("table2", *rows_of(config, "table2"), "Table 2: few-label protocol, mIoU (%) per labeled count"),
        ("table3", *rows_of(config, "table3"),
         "Table 3: teachers and students on the second dataset, mIoU (%) per partition"),
    )
    for name, methods, backbones, title in partition_tables:
        if name in tables:
            specs[name] = partition_table(registry, paths, name, tables[name]["dataset"], tables[name]["protocol"],
                                          methods, backbones, title)
    ablations = tables.get("ablations")
    if not ablations:
        return specs
    datasets, setting = ablations["datasets"], f"student {ablations['backbone']} at {ablations['partition']}"
    if ablations["table4"]:
        specs["table4"] = ablation_table(
            registry, paths, "table4", f"Table 4: teacher settings, {setting}, mIoU (%)",
            ["first_teacher", "second_teacher"],
            [({"first_teacher": "T_D", "second_teacher": "none"}, "t4_TD", "T_D|none"),
             ({"first_teacher": "T_W", "second_teacher": "none"}, "t4_TW", "T_W|none"),
             # the same-architecture pairs need a second (seed + 1) copy of each teacher
             *([({"first_teacher": "T_D", "second_teacher": "T_D"}, "t4_TD_TD", "T_D|T_D"),
                ({"first_teacher": "T_W", "second_teacher": "T_W"}, "t4_TW_TW", "T_W|T_W")]
               if ablations["same_architecture_pairs"] else []),
             ({"first_teacher": "T_D", "second_teacher": "T_W"}, None, "T_D|T_W")],
            datasets)
    if ablations["table5"]:
        terms = ["L_sup", "L_P", "L_I_TD", "L_I_TW", "L_R_TD", "L_R_TW"]

        def switched_on(*on: str) -> dict[str, bool]:
            return {term: term in on for term in terms}

        specs["table5a"] = ablation_table(
            registry, paths, "table5a", f"Table 5a: loss terms, {setting}, mIoU (%)", terms,
            [(switched_on("L_sup"), "sup", "sup"),
             (switched_on("L_sup", "L_P"), "t5a_P", "P"),
             (switched_on("L_sup", "L_P", "L_I_TD"), "t5a_P_ITD", "P+I_TD"),
             (switched_on("L_sup", "L_P", "L_R_TW"), "t5a_P_RTW", "P+R_TW"),
             (switched_on("L_sup", "L_P", "L_I_TD", "L_R_TW"), None, "P+I_TD+R_TW"),
             (switched_on(*terms), "t5a_all", "all")],
            datasets)
        terms_b = ["L_sup", "L_P_l", "L_P_u", "L_I_TD", "L_R_TW"]
        specs["table5b"] = ablation_table(
            registry, paths, "table5b",
            f"Table 5b: labeled-only vs labeled + unlabeled distillation, {setting}, mIoU (%)", terms_b,
            [({term: term in ("L_sup", "L_P_l") for term in terms_b}, "t5b_labeled", "labeled"),
             ({term: True for term in terms_b}, None, "labeled+unlabeled")],
            datasets)
    if ablations["grids"]:
        first = datasets[0]
        main_grid = {**method_params(config, first, "mgd"),
                     **config["datasets"][first]["students"][ablations["backbone"]]["method_params"].get("mgd", {}),
                     }.get("grid", 7)
        specs["table6"] = ablation_table(
            registry, paths, "table6",
            f"Table 6: region grid H_v x W_v on {config['datasets'][first]['label']}, {setting}, mIoU (%)", ["grid"],
            [({"grid": f"{g}x{g}"}, None if g == main_grid else f"t6_grid{g}", f"{g}x{g}") for g in ablations["grids"]],
            datasets[:1], value_columns=["mIoU"])
    return specs


def figure_spec(registry: Registry, paths: Paths) -> dict:
    """Figures 1, 3 and 4 from Table 1's dataset and runs (Table 3's without Table 1); {} without both."""
    config = registry.config
    tables = config["tables"]
    table = "table1" if "table1" in tables else "table3" if "table3" in tables else None
    if table is None:
        return {}
    figures, ablations = tables["figures"], tables.get("ablations")
    ds, proto = tables[table]["dataset"], tables[table]["protocol"]
    parts = partitions(config, ds, proto)
    if figures["partition"] is not None:
        slug = partition_slug(config, ds, proto, figures["partition"], "tables.figures.partition")
    elif ablations and ablations["datasets"][0] == ds and ablations["protocol"] == proto:
        slug = partition_slug(config, ds, proto, ablations["partition"], "tables.ablations.partition")
    else:
        slug = parts[min(1, len(parts) - 1)].slug
    backbone = figures["backbone"] or config["student_backbones"][0]
    if backbone not in config["student_backbones"]:
        raise ConfigError(f"config key tables.figures.backbone: {backbone!r} is not in student_backbones")
    methods, _ = rows_of(config, table)
    qualitative = [method for method in ("sup", "cps", "mgd") if method in methods]
    return {
        "table": table, "dataset": ds, "protocol": proto, "slug": slug,
        "partition": partition_display(config, ds, proto, slug),
        "backbone": backbone, "num_images": figures["num_images"],
        "models": {METHOD_LABELS[method]: paths.model(ds, proto, slug, registry.student(ds, proto, slug, method, backbone))
                   for method in qualitative},
    }
