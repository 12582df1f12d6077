"""One training run: what it is (frozen :class:`Run`, keyed by dataset, protocol, partition slug and
run id), how it is made from the workflow config, and the `mgd train` config it receives (the
teacher caches: ``mgd.plan.caches``)."""

from __future__ import annotations

import copy
from dataclasses import dataclass

from mgd.errors import ConfigError
from mgd.plan.partitions import partition_of_slug
from mgd.plan.paths import Paths

#: methods distilled from the two CPS teachers (the others train without teachers)
TEACHER_METHODS = frozenset({"kd", "cwd", "skt", "mgd"})
#: the teachers of a main-table student: T_D then T_W, first copies
MAIN_TEACHERS = (("TD", 0), ("TW", 0))

RunKey = tuple[str, str, str, str]  # (dataset, protocol, partition slug, run id)


@dataclass(frozen=True)
class TeacherRef:
    run: str  # run id of the teacher at the same dataset and partition
    name: str  # name the student logs its terms under (TD, TW, TD2, ...)


@dataclass(frozen=True)
class Run:
    """One training run and everything `mgd train` will receive."""

    dataset: str
    protocol: str
    slug: str  # the partition's folder name: "1-8", "92"
    partition: str  # the partition as the tables print it: "1/8", "92"
    id: str
    role: str  # "teacher" or "student"
    method: str
    backbone: str
    seed: int
    ablation: str | None  # the ablation variant that asks for it; None for main-table runs
    optim: dict
    pretrained: str | None
    params: dict  # method parameters (workflow < dataset/backbone < ablation)
    teachers: tuple[TeacherRef, ...] = ()
    batch: dict | None = None  # batch_labeled / batch_unlabeled (global)
    train_config: dict | None = None  # validated, defaults filled (see build_plan); None if imported
    source: str | None = None  # an imported teacher's official checkpoint (then it is not trained)
    branch: str | None = None  # the network of ``source`` to import (branch1, ...)

    @property
    def imported(self) -> bool:
        return self.source is not None

    @property
    def key(self) -> RunKey:
        return (self.dataset, self.protocol, self.slug, self.id)

    @property
    def partition_key(self) -> tuple[str, str, str]:
        return (self.dataset, self.protocol, self.slug)


def planned_run(runs: dict[RunKey, Run], key: RunKey) -> Run:
    """The planned run ``key``; ConfigError when the configured tables plan none there."""
    if key not in runs:
        raise ConfigError(f"no run {'/'.join(key)} is planned by the configured tables")
    return runs[key]


def schedule(config: dict, sched: dict, partition: str) -> dict:
    """The optim slice of a teacher/student schedule at ``partition`` (iterations_scale applied)."""
    iterations = sched.get("iterations_by_partition", {}).get(partition, sched["iterations"])
    return {
        "lr": sched["lr"],
        "iterations": max(1, round(config["iterations_scale"] * iterations)),
        "momentum": sched["momentum"],
        "weight_decay": sched["weight_decay"],
        "poly_power": sched["poly_power"],
        "accumulate": sched["accumulate"],
    }


def batches(config: dict, ds: str, sched: dict) -> dict:
    """(labeled, unlabeled) global batch of a run: its schedule's, else the dataset's."""
    train = config["datasets"][ds]["train"]
    return {key: sched.get(key) or train[key] for key in ("batch_labeled", "batch_unlabeled")}


def dataset_method_params(config: dict, ds: str, method: str) -> dict:
    """A method's parameters for every run on dataset ``ds``: the workflow's, then the dataset's."""
    return copy.deepcopy({**config["method_params"].get(method, {}),
                          **config["datasets"][ds].get("method_params", {}).get(method, {})})


def seed_suffix(seed: int) -> str:
    """The run-id suffix of a training seed: none for seed 0 (so one-seed plans keep their run
    folders), ``_s<seed>`` otherwise."""
    return f"_s{seed}" if seed else ""


def teacher_ref(role: str, copy_index: int = 0, teacher_seed: int = 0) -> TeacherRef:
    """Teacher ``role`` (TD/TW) of teacher seed ``teacher_seed``; copy 1 is Table 4's second
    same-architecture teacher."""
    return TeacherRef(f"teacher_{role}" + (f"_seed{copy_index}" if copy_index else "") + seed_suffix(teacher_seed),
                      role + (str(copy_index + 1) if copy_index else ""))


def student_id(method: str, backbone: str, ablation: str | None = None, seed: int = 0) -> str:
    return f"{method}_{backbone}" + (f"_{ablation}" if ablation else "") + seed_suffix(seed)


def teacher_run(config: dict, ds: str, proto: str, slug: str, role: str, copy_index: int = 0,
                ablation: str | None = None, teacher_seed: int = 0) -> Run:
    """The teacher ``role`` (TD/TW) of ``teacher_seed``, trained by its schedule's method (CPS
    unless set); copy 1 is trained with seed + 1 (``ablation``: the variant asking for it). Copy 0
    at a partition listed in the teacher's ``checkpoints`` is imported from that official
    checkpoint instead of trained (one file: every teacher seed imports it)."""
    sched = config["datasets"][ds]["teachers"][role]
    partition = partition_of_slug(config, ds, proto, slug)
    source = None if copy_index else sched["checkpoints"].get(partition)
    return Run(
        dataset=ds, protocol=proto, slug=slug, partition=partition,
        id=teacher_ref(role, copy_index, teacher_seed).run, role="teacher", method=sched["method"],
        backbone=sched["backbone"], seed=teacher_seed + copy_index,
        ablation=ablation if copy_index else None, optim={} if source else schedule(config, sched, partition),
        pretrained=sched["pretrained"], params=dataset_method_params(config, ds, sched["method"]),
        batch=batches(config, ds, sched), source=source, branch=sched["checkpoint_branch"] if source else None,
    )


def student_runs(config: dict, ds: str, proto: str, slug: str, method: str, backbone: str,
                 ablation: str | None = None, params: dict | None = None,
                 teachers: tuple[tuple[str, int], ...] = MAIN_TEACHERS, seed: int = 0) -> list[Run]:
    """A student run, ``method`` on ``backbone`` trained with ``seed``, after the teacher runs it
    distills from (those of ``teacher_seed_of(config, seed)``); ``ablation`` names a variant whose
    extra method ``params`` (and teacher list) differ from the main run."""
    sched = config["datasets"][ds]["students"][backbone]
    partition = partition_of_slug(config, ds, proto, slug)
    merged = {**dataset_method_params(config, ds, method), **sched["method_params"].get(method, {}),
              **copy.deepcopy(params or {})}
    pairs = teachers if method in TEACHER_METHODS else ()
    teacher_seed = teacher_seed_of(config, seed)
    student = Run(
        dataset=ds, protocol=proto, slug=slug, partition=partition, id=student_id(method, backbone, ablation, seed),
        role="student", method=method, backbone=backbone, seed=seed, ablation=ablation,
        optim=schedule(config, sched, partition), pretrained=sched["pretrained"], params=merged,
        teachers=tuple(teacher_ref(role, index, teacher_seed) for role, index in pairs),
        batch=batches(config, ds, sched),
    )
    return [*(teacher_run(config, ds, proto, slug, role, index, ablation, teacher_seed) for role, index in pairs),
            student]


def teacher_seed_of(config: dict, seed: int) -> int:
    """The teacher seed a student of ``seed`` distils from: the one teacher seed, else the same
    seed (which plan checks require to be a teacher seed)."""
    teacher_seeds = config["teacher_seeds"]
    if len(teacher_seeds) == 1:
        return teacher_seeds[0]
    if seed not in teacher_seeds:
        raise ConfigError(f"config key teacher_seeds: {teacher_seeds} has no seed {seed} for the students of seed "
                          f"{seed} (with several teacher seeds, every student seed must be one of them)")
    return seed


# -- train configs -----------------------------------------------------------------------------
def dataset_slice(config: dict, paths: Paths, ds: str) -> dict:
    """The dataset config slice every `mgd` command of dataset ``ds`` reads."""
    dcfg = config["datasets"][ds]
    if "synth" in dcfg:
        return {"name": "synthetic", "root": paths.synth_root(ds)}
    return copy.deepcopy(dcfg["dataset"])


def partition_data(config: dict, paths: Paths, key: tuple[str, str, str], batches: dict | None = None) -> dict:
    """The data settings every run of a partition and its teacher cache share: the dataset slice,
    the split and the training transform (and a run's ``batches``, in the order configs show them)."""
    ds, proto, slug = key
    train = config["datasets"][ds]["train"]
    return {"dataset": dataset_slice(config, paths, ds), "split": paths.split_dir(ds, proto, slug),
            "crop_size": train["crop_size"], "scales": list(train["scales"]), **(batches or {}),
            "num_workers": train["num_workers"]}


def train_config(config: dict, paths: Paths, run: Run, cache_dir: str | None = None) -> dict:
    """The `mgd train` config of ``run`` (before validation); ``cache_dir``: the cache it reads."""
    ds, proto, slug = run.partition_key
    train = config["datasets"][ds]["train"]
    method = {"name": run.method}
    if train["ohem"]:
        method["ohem"] = True
    method.update(copy.deepcopy(run.params))
    if run.teachers:
        method["teachers"] = [{"name": ref.name, "model": paths.model(ds, proto, slug, ref.run)} for ref in run.teachers]
        if cache_dir is not None:
            method["teacher_source"] = "cache"
            method["teacher_cache"] = cache_dir
    runtime = dict(config["runtime"])
    deterministic = runtime.pop("deterministic")
    return {
        "seed": run.seed,
        "deterministic": deterministic,
        "output_dir": paths.run_dir(ds, proto, slug, run.id),
        "data": partition_data(config, paths, run.partition_key,
                               run.batch or {key: train[key] for key in ("batch_labeled", "batch_unlabeled")}),
        "model": {"backbone": run.backbone, "pretrained": run.pretrained},
        "method": method,
        "optim": dict(run.optim),
        "runtime": runtime,
    }
