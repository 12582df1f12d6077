"""The teacher caches of a plan (``teacher_source: cache``): one per dataset x partition whose
cached students need one, holding every teacher, feature grid and dense logits they read, and the
`mgd cache` config of each (``mgd/schemas/cache.schema.yaml``)."""

from __future__ import annotations

from dataclasses import dataclass

from mgd import schemas
from mgd.errors import ConfigError
from mgd.plan.paths import Paths
from mgd.plan.runs import Run, TeacherRef, partition_data

#: methods a teacher cache can serve (SKT's targets, backbone stages on the mixed image, cannot be cached)
CACHEABLE_METHODS = frozenset({"kd", "cwd", "mgd"})

PartitionKey = tuple[str, str, str]  # (dataset, protocol, partition slug)


@dataclass(frozen=True)
class PartitionCache:
    """The teacher cache of one partition: its teachers, feature grids and dense logits."""

    teachers: tuple[TeacherRef, ...]
    grids: tuple[int, ...]
    dense: bool
    name: str  # the cache folder: k<views>_g<grids>[_dense]


def uses_cache(config: dict, run: Run) -> bool:
    return (config["teacher_source"] == "cache" and run.method in CACHEABLE_METHODS
            and run.params.get("teacher_bn", "eval") == "eval")


def partition_cache(config: dict, runs: list[Run]) -> PartitionCache:
    """The cache of one partition from its runs: every teacher, feature grid (MGD) and dense
    logits (KD/CWD) its cached students need (one folder per layout; `mgd cache` refuses to
    change one)."""
    teachers: dict[str, TeacherRef] = {}
    grids, dense = set(), False
    for run in runs:
        if not uses_cache(config, run):
            continue
        for ref in run.teachers:
            teachers.setdefault(ref.run, ref)
        if run.method == "mgd":
            grids.add(int(run.params.get("grid", 7)))
        else:
            dense = True
    ordered = tuple(sorted(grids)) or (7,)
    name = f"k{config['cache']['views']}_g{'-'.join(map(str, ordered))}" + ("_dense" if dense else "")
    return PartitionCache(tuple(teachers.values()), ordered, dense, name)


def cache_config(config: dict, paths: Paths, key: PartitionKey, cache: PartitionCache) -> dict:
    """The config `mgd cache` reads for partition ``key``, validated: the partition's split and
    training transform, the workflow's views and batch, the cache's teachers and layout. It writes
    (and resumes) in the ``.partial`` folder, which the workflow renames to the folder the students
    read once the cache is complete."""
    ds, proto, slug = key
    options = config["cache"]
    cfg = {
        "output": paths.cache_partial(ds, proto, slug, cache.name),
        "data": partition_data(config, paths, key),
        "views": {"count": options["views"], "seed": options["view_seed"]},
        "layout": {"feature_grids": list(cache.grids), "logit_stride": options["logit_stride"],
                   "dense_logits": cache.dense},
        "teachers": [{"name": ref.name, "model": paths.model(ds, proto, slug, ref.run)} for ref in cache.teachers],
        "batch_size": options["batch_size"],
        "device": config["runtime"]["device"],
    }
    try:
        return schemas.validate(cfg, "cache")
    except ConfigError as error:
        raise ConfigError(f"cache config of {'/'.join(key)}: {error}") from None


def plan_caches(config: dict, paths: Paths, runs: list[Run]) -> tuple[dict[PartitionKey, PartitionCache],
                                                                       dict[PartitionKey, dict]]:
    """The cache of every partition where a run reads one, and its `mgd cache` config (none with
    ``teacher_source: online``)."""
    by_partition: dict[PartitionKey, list[Run]] = {}
    for run in runs:
        by_partition.setdefault(run.partition_key, []).append(run)
    caches = {key: partition_cache(config, members) for key, members in by_partition.items()
              if any(uses_cache(config, run) for run in members)}
    return caches, {key: cache_config(config, paths, key, cache) for key, cache in caches.items()}
