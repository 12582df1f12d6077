"""Cross-reference checks of a validated workflow config: the schema checks shapes, these check
names against each other (a table's dataset, a partition a protocol lacks, ...)."""

from __future__ import annotations

from mgd.errors import ConfigError
from mgd.plan.experiments import table_seeds
from mgd.plan.partitions import partition_slug, partitions

#: the networks `mgd import-weights` can read from an official checkpoint (mgd.models.PAPER_BACKBONES;
#: kept here because this package must not import torch)
IMPORTABLE_BACKBONES = ("resnet101_v1c", "wide_resnet50_2", "resnet18_v1c", "mobilenetv2_dilated")


def check_dataset(config: dict, ds: str, key: str) -> None:
    if ds not in config["datasets"]:
        raise ConfigError(f"config key {key}: dataset {ds!r} is not in datasets ({', '.join(config['datasets'])})")


def check_protocol(config: dict, ds: str, proto: str, key: str) -> None:
    check_dataset(config, ds, key)
    if proto not in config["datasets"][ds]["protocols"]:
        raise ConfigError(f"config key {key}: protocol {proto!r} is not in datasets.{ds}.protocols "
                          f"({', '.join(config['datasets'][ds]['protocols'])})")


def check_student(config: dict, ds: str, backbone: str, key: str) -> None:
    if backbone not in config["datasets"][ds]["students"]:
        raise ConfigError(f"config key {key}: student backbone {backbone!r} has no entry in datasets.{ds}.students")


def check_datasets(config: dict) -> None:
    """Each dataset: generated or configured, partitions well-formed, per-partition schedules named."""
    for ds, dcfg in config["datasets"].items():
        if "synth" not in dcfg and "dataset" not in dcfg:
            raise ConfigError(f"config key datasets.{ds}: needs either 'synth' (generated) or 'dataset' "
                              "(a dataset config slice)")
        if "synth" in dcfg and "dataset" in dcfg and dcfg["dataset"].get("name") != "synthetic":
            raise ConfigError(f"config key datasets.{ds}.dataset: with 'synth' the dataset is the generated "
                              "synthetic one; drop 'dataset'")
        for proto, pcfg in dcfg["protocols"].items():
            partitions(config, ds, proto)
            if "ids" in pcfg and "import" not in pcfg:
                raise ConfigError(f"config key datasets.{ds}.protocols.{proto}.ids: only used with 'import'")
        names = {partition for proto in dcfg["protocols"] for partition in partitions(config, ds, proto)}
        for group in ("teachers", "students"):
            for role, schedule in dcfg[group].items():
                for name in schedule.get("iterations_by_partition", {}):
                    if name not in names:
                        raise ConfigError(f"config key datasets.{ds}.{group}.{role}.iterations_by_partition: "
                                          f"{name!r} is not a partition of any protocol ({sorted(names)})")
        for role, teacher in dcfg["teachers"].items():
            check_checkpoints(config, ds, role, teacher)


def check_checkpoints(config: dict, ds: str, role: str, teacher: dict) -> None:
    """A teacher's official checkpoints: each key names a partition of exactly one protocol (the
    teacher of another split must not be taken by mistake), and the import knows the backbone."""
    if not teacher["checkpoints"]:
        return
    key = f"datasets.{ds}.teachers.{role}.checkpoints"
    if teacher["backbone"] not in IMPORTABLE_BACKBONES:
        raise ConfigError(f"config key {key}: backbone {teacher['backbone']!r} cannot be imported from an official "
                          f"checkpoint (one of {', '.join(IMPORTABLE_BACKBONES)})")
    protocols = config["datasets"][ds]["protocols"]
    for name in teacher["checkpoints"]:
        holders = [proto for proto in protocols if name in partitions(config, ds, proto)]
        if not holders:
            names = sorted({partition for proto in protocols for partition in partitions(config, ds, proto)})
            raise ConfigError(f"config key {key}: {name!r} is not a partition of any protocol ({names})")
        if len(holders) > 1:
            raise ConfigError(f"config key {key}: partition {name!r} is in protocols {', '.join(holders)}; "
                              "a checkpoint must belong to one split")


def check_tables(config: dict) -> None:
    """Tables and figures name existing datasets, protocols, partitions and student backbones."""
    tables = config["tables"]
    for name in ("table1", "table2", "table3"):
        if name in tables:
            check_protocol(config, tables[name]["dataset"], tables[name]["protocol"], f"tables.{name}")
    for backbone in config["student_backbones"]:
        for name in ("table1", "table3"):
            if name in tables:
                check_student(config, tables[name]["dataset"], backbone, "student_backbones")
    if "table2" in tables:
        for backbone in tables["table2"]["backbones"]:
            check_student(config, tables["table2"]["dataset"], backbone, "tables.table2.backbones")
    backbone = tables["figures"]["backbone"]
    if backbone is not None and backbone not in config["student_backbones"]:
        raise ConfigError(f"config key tables.figures.backbone: {backbone!r} is not in student_backbones")
    zoo = tables.get("zoo")
    if zoo:
        check_protocol(config, zoo["dataset"], zoo["protocol"], "tables.zoo")
        partition_slug(config, zoo["dataset"], zoo["protocol"], zoo["partition"], "tables.zoo.partition")
        for backbone in zoo["backbones"]:
            check_student(config, zoo["dataset"], backbone, "tables.zoo.backbones")
    ablations = tables.get("ablations")
    if ablations:
        for ds in ablations["datasets"]:
            check_protocol(config, ds, ablations["protocol"], "tables.ablations.datasets")
            partition_slug(config, ds, ablations["protocol"], ablations["partition"], "tables.ablations.partition")
            check_student(config, ds, ablations["backbone"], "tables.ablations.backbone")


def check_seeds(config: dict) -> None:
    """Several teacher seeds: each table's student seeds are teacher seeds, and the teachers are
    online (a teacher cache holds one teacher per role of a partition)."""
    teacher_seeds = config["teacher_seeds"]
    if len(teacher_seeds) == 1:
        return
    if config["teacher_source"] == "cache":
        raise ConfigError(f"config key teacher_seeds: {teacher_seeds} trains each teacher once per seed, which "
                          "needs teacher_source: online (a teacher cache holds one teacher per role and partition)")
    for name, table in config["tables"].items():
        if name == "figures":
            continue
        key = f"tables.{name}.seeds" if table.get("seeds") else "seeds"
        for seed in table_seeds(config, name):
            if seed not in teacher_seeds:
                raise ConfigError(f"config key {key}: seed {seed} (tables.{name}) is not one of teacher_seeds "
                                  f"{teacher_seeds}: with several teacher seeds, the students of seed s distil "
                                  "from the teachers of seed s")


def check_references(config: dict) -> None:
    check_datasets(config)
    check_tables(config)
    check_seeds(config)
