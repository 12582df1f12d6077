"""Which runs the configured tables and figures ask for: the first of build_plan's two steps. Each
run once under its key (a run that several tables need is one run), built without side effects;
the second step (mgd/plan/tables.py) looks every table cell and figure model up in them."""

from __future__ import annotations

from mgd.plan.partitions import partition_slug, partitions
from mgd.plan.runs import (MAIN_TEACHERS, Run, RunKey, dataset_method_params, student_runs, teacher_run,
                           teacher_seed_of)

#: the partition tables: the two teachers and every method x student backbone, one column per partition
PARTITION_TABLES = ("table1", "table2", "table3")
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
TABLE5A_TERMS = ("L_sup", "L_P", "L_I_TD", "L_I_TW", "L_R_TD", "L_R_TW")
TABLE5B_TERMS = ("L_sup", "L_P_l", "L_P_u", "L_I_TD", "L_R_TW")

#: one row of an ablation table: its key columns, the variant whose run fills it, its paper key
AblationRow = tuple[dict, str | None, str]


def rows_of(config: dict, name: str) -> tuple[list[str], list[str]]:
    """(methods, backbones) of partition table ``name``: its own, else the student_* lists."""
    table = config["tables"].get(name, {})
    return table.get("methods") or config["student_methods"], table.get("backbones") or config["student_backbones"]


def table_seeds(config: dict, name: str) -> list[int]:
    """The student seeds of table ``name`` (table1-3, ``ablations`` for Tables 4-6, ``zoo``): its
    own ``seeds``, else the top-level ``seeds``."""
    return list(config["tables"].get(name, {}).get("seeds") or config["seeds"])


def first_seeds(config: dict) -> set[int]:
    """The first seed of every configured table (each keeps its students' models: Figure 4 reads
    Table 1's first)."""
    names = [name for name in (*PARTITION_TABLES, "ablations", "zoo") if config["tables"].get(name)]
    return {table_seeds(config, name)[0] for name in names}


def table_teacher_seeds(config: dict, name: str) -> list[int]:
    """The teacher seeds the students of table ``name`` distil from, in seed order, each once."""
    return list(dict.fromkeys(teacher_seed_of(config, seed) for seed in table_seeds(config, name)))


def variant_student(variant: str | None) -> tuple[str, str | None, dict, tuple[tuple[str, int], ...]]:
    """(method, ablation, extra params, teachers) of the student of an ablation row: None is the
    main MGD run, "sup" the Sup run, "t6_grid<g>" MGD with a g x g region grid, else an
    ABLATION_VARIANTS entry."""
    if variant is None:
        return "mgd", None, {}, MAIN_TEACHERS
    if variant == "sup":
        return "sup", None, {}, MAIN_TEACHERS
    if variant.startswith("t6_grid"):
        return "mgd", variant, {"grid": int(variant.removeprefix("t6_grid"))}, MAIN_TEACHERS
    entry = ABLATION_VARIANTS[variant]
    return "mgd", variant, entry["params"], entry.get("teachers", MAIN_TEACHERS)


def ablation_slug(config: dict, ds: str) -> str:
    ablations = config["tables"]["ablations"]
    return partition_slug(config, ds, ablations["protocol"], ablations["partition"], "tables.ablations.partition")


def main_grid(config: dict) -> int:
    """The region grid of the main MGD run on the first ablation dataset (Table 6's row it fills)."""
    ablations = config["tables"]["ablations"]
    first = ablations["datasets"][0]
    return {**dataset_method_params(config, first, "mgd"),
            **config["datasets"][first]["students"][ablations["backbone"]]["method_params"].get("mgd", {})
            }.get("grid", 7)


def ablation_rows(config: dict) -> dict[str, tuple[list[str], list[AblationRow]]]:
    """Tables 4-6 as configured: name -> (the datasets of its value columns, its rows)."""
    ablations = config["tables"].get("ablations")
    if not ablations:
        return {}
    datasets, tables = list(ablations["datasets"]), {}
    if ablations["table4"]:
        tables["table4"] = datasets, [
            ({"first_teacher": "T_D", "second_teacher": "none"}, "t4_TD", "T_D|none"),
            ({"first_teacher": "T_W", "second_teacher": "none"}, "t4_TW", "T_W|none"),
            # the same-architecture pairs need a second (seed + 1) copy of each teacher
            *([({"first_teacher": "T_D", "second_teacher": "T_D"}, "t4_TD_TD", "T_D|T_D"),
               ({"first_teacher": "T_W", "second_teacher": "T_W"}, "t4_TW_TW", "T_W|T_W")]
              if ablations["same_architecture_pairs"] else []),
            ({"first_teacher": "T_D", "second_teacher": "T_W"}, None, "T_D|T_W")]
    if ablations["table5"]:

        def switched_on(*on: str) -> dict[str, bool]:
            return {term: term in on for term in TABLE5A_TERMS}

        tables["table5a"] = datasets, [
            (switched_on("L_sup"), "sup", "sup"),
            (switched_on("L_sup", "L_P"), "t5a_P", "P"),
            (switched_on("L_sup", "L_P", "L_I_TD"), "t5a_P_ITD", "P+I_TD"),
            (switched_on("L_sup", "L_P", "L_R_TW"), "t5a_P_RTW", "P+R_TW"),
            (switched_on("L_sup", "L_P", "L_I_TD", "L_R_TW"), None, "P+I_TD+R_TW"),
            (switched_on(*TABLE5A_TERMS), "t5a_all", "all")]
        tables["table5b"] = datasets, [
            ({term: term in ("L_sup", "L_P_l") for term in TABLE5B_TERMS}, "t5b_labeled", "labeled"),
            ({term: True for term in TABLE5B_TERMS}, None, "labeled+unlabeled")]
    if ablations["grids"]:
        grid = main_grid(config)
        tables["table6"] = datasets[:1], [
            ({"grid": f"{g}x{g}"}, None if g == grid else f"t6_grid{g}", f"{g}x{g}") for g in ablations["grids"]]
    return tables


def figure_setting(config: dict) -> dict | None:
    """Figures 1, 3 and 4 come from Table 1 (Table 3 without it; None without both): its table,
    dataset, protocol, the figures' partition slug and student backbone, and Figure 4's methods."""
    tables = config["tables"]
    table = "table1" if "table1" in tables else "table3" if "table3" in tables else None
    if table is None:
        return None
    figures, ablations = tables["figures"], tables.get("ablations")
    ds, proto = tables[table]["dataset"], tables[table]["protocol"]
    slugs = list(partitions(config, ds, proto).values())
    if figures["partition"] is not None:
        slug = partition_slug(config, ds, proto, figures["partition"], "tables.figures.partition")
    elif ablations and ablations["datasets"][0] == ds and ablations["protocol"] == proto:
        slug = ablation_slug(config, ds)
    else:
        slug = slugs[min(1, len(slugs) - 1)]
    methods, _ = rows_of(config, table)
    return {"table": table, "dataset": ds, "protocol": proto, "slug": slug,
            "backbone": figures["backbone"] or config["student_backbones"][0],
            "methods": [method for method in ("sup", "cps", "mgd") if method in methods],
            # Figure 4 shows one model per method: the table's first seed's
            "seed": table_seeds(config, table)[0]}


def zoo_setting(config: dict) -> dict | None:
    """The student zoo (``tables.zoo``): dataset, protocol, partition slug, backbones, methods and
    seeds; None without one."""
    zoo = config["tables"].get("zoo")
    if not zoo:
        return None
    ds, proto = zoo["dataset"], zoo["protocol"]
    return {"dataset": ds, "protocol": proto, "partition": zoo["partition"],
            "slug": partition_slug(config, ds, proto, zoo["partition"], "tables.zoo.partition"),
            "backbones": list(zoo["backbones"]), "methods": list(zoo["methods"]), "seeds": table_seeds(config, "zoo")}


def planned_runs(config: dict) -> dict[RunKey, Run]:
    """Every run the configured tables (the zoo's too) and figures need (a validated, cross-checked config), in
    table order, each once; no train configs yet (build_plan adds them)."""
    runs: dict[RunKey, Run] = {}

    def add(new: list[Run]) -> None:
        for run in new:
            runs.setdefault(run.key, run)

    tables = config["tables"]
    for name in PARTITION_TABLES:
        if name not in tables:
            continue
        ds, proto = tables[name]["dataset"], tables[name]["protocol"]
        slugs = partitions(config, ds, proto).values()
        methods, backbones = rows_of(config, name)
        for role in ("TD", "TW"):
            add([teacher_run(config, ds, proto, slug, role, teacher_seed=teacher_seed)
                 for teacher_seed in table_teacher_seeds(config, name) for slug in slugs])
        for backbone in backbones:
            for method in methods:
                for slug in slugs:
                    for seed in table_seeds(config, name):
                        add(student_runs(config, ds, proto, slug, method, backbone, seed=seed))
    for datasets, rows in ablation_rows(config).values():
        ablations = tables["ablations"]
        for _, variant, _ in rows:
            method, ablation, params, teachers = variant_student(variant)
            for ds in datasets:
                for seed in table_seeds(config, "ablations"):
                    add(student_runs(config, ds, ablations["protocol"], ablation_slug(config, ds), method,
                                     ablations["backbone"], ablation, params, teachers, seed))
    zoo = zoo_setting(config)
    if zoo:
        # every student distils from the partition's one teacher pair (one cache with teacher_source: cache)
        for backbone in zoo["backbones"]:
            for method in zoo["methods"]:
                for seed in zoo["seeds"]:
                    add(student_runs(config, zoo["dataset"], zoo["protocol"], zoo["slug"], method, backbone,
                                     seed=seed))
    figures = figure_setting(config)
    if figures:
        for method in figures["methods"]:
            add(student_runs(config, figures["dataset"], figures["protocol"], figures["slug"], method,
                             figures["backbone"], seed=figures["seed"]))
    return runs
