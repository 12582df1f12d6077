"""The run registry: every training run the configured tables need, registered once under
(dataset, protocol, partition slug, run id), so that a run shared by several tables is one job.
Also the `mgd train` config of a run and the teacher-cache layout of a partition."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

from mgd.plan.partitions import partition_display
from mgd.plan.paths import Paths

#: methods distilled from the two CPS teachers (the others train without teachers)
TEACHER_METHODS = frozenset({"kd", "cwd", "skt", "mgd"})
#: methods a teacher cache can serve (SKT's targets, backbone stages on the mixed image, cannot be cached)
CACHEABLE_METHODS = frozenset({"kd", "cwd", "mgd"})
#: the teachers of a main-table student: T_D then T_W, first copies
MAIN_TEACHERS = (("TD", 0), ("TW", 0))

RunKey = tuple[str, str, str, str]  # (dataset, protocol, partition slug, run id)


@dataclass(frozen=True)
class TeacherRef:
    run: str  # run id of the teacher at the same dataset and partition
    name: str  # name the student logs its terms under (TD, TW, TD2, ...)


@dataclass
class Run:
    """One training run and everything `mgd train` will receive."""

    dataset: str
    protocol: str
    slug: str
    partition: str  # as the tables print it: "1/8", "92"
    id: str
    role: str  # "teacher" or "student"
    method: str
    backbone: str
    seed: int
    ablation: str | None  # the ablation variant that registered it; None for main-table runs
    optim: dict
    pretrained: str | None
    params: dict  # method parameters (workflow < dataset/backbone < ablation)
    teachers: list[TeacherRef] = field(default_factory=list)
    batch: dict = field(default_factory=dict)  # batch_labeled / batch_unlabeled (global)
    train_config: dict = field(default_factory=dict)  # validated, defaults filled (by build_plan); {} if imported
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


def method_params(config: dict, ds: str, method: str) -> dict:
    """A method's parameters for every run on dataset ``ds``: the workflow's, then the dataset's."""
    return copy.deepcopy({**config["method_params"].get(method, {}),
                          **config["datasets"][ds].get("method_params", {}).get(method, {})})


class Registry:
    """Registers runs, each (dataset, protocol, slug, run id) once."""

    def __init__(self, config: dict):
        self.config = config
        self.runs: dict[RunKey, Run] = {}

    def teacher(self, ds: str, proto: str, slug: str, role: str, copy_index: int = 0,
                ablation: str | None = None) -> TeacherRef:
        """The teacher ``role`` (TD/TW), trained by its schedule's method (CPS unless set); copy 1 is
        Table 4's second same-architecture teacher, trained with seed + 1. Copy 0 at a partition
        listed in the teacher's ``checkpoints`` is imported from that official checkpoint instead of
        trained."""
        run = f"teacher_{role}" + (f"_seed{copy_index}" if copy_index else "")
        ref = TeacherRef(run, role + (str(copy_index + 1) if copy_index else ""))
        key = (ds, proto, slug, run)
        if key not in self.runs:
            sched = self.config["datasets"][ds]["teachers"][role]
            partition = partition_display(self.config, ds, proto, slug)
            source = None if copy_index else sched["checkpoints"].get(partition)
            self.runs[key] = Run(
                dataset=ds, protocol=proto, slug=slug, partition=partition, id=run, role="teacher",
                method=sched["method"], backbone=sched["backbone"], seed=self.config["seed"] + copy_index,
                ablation=ablation if copy_index else None,
                optim={} if source else schedule(self.config, sched, partition),
                pretrained=sched["pretrained"], params=method_params(self.config, ds, sched["method"]),
                batch=batches(self.config, ds, sched), source=source,
                branch=sched["checkpoint_branch"] if source else None,
            )
        return ref

    def student(self, ds: str, proto: str, slug: str, method: str, backbone: str, ablation: str | None = None,
                params: dict | None = None, teachers: tuple[tuple[str, int], ...] = MAIN_TEACHERS) -> str:
        """A student run: ``method`` on ``backbone``; ``ablation`` names a variant whose extra method
        ``params`` (and teacher list) differ from the main run. Returns the run id."""
        run = f"{method}_{backbone}" + (f"_{ablation}" if ablation else "")
        key = (ds, proto, slug, run)
        if key in self.runs:
            return run
        sched = self.config["datasets"][ds]["students"][backbone]
        partition = partition_display(self.config, ds, proto, slug)
        merged = {**method_params(self.config, ds, method), **sched["method_params"].get(method, {}),
                  **copy.deepcopy(params or {})}
        teacher_refs = []
        if method in TEACHER_METHODS:
            teacher_refs = [self.teacher(ds, proto, slug, role, index, ablation) for role, index in teachers]
        self.runs[key] = Run(
            dataset=ds, protocol=proto, slug=slug, partition=partition, id=run, role="student", method=method,
            backbone=backbone, seed=self.config["seed"], ablation=ablation, optim=schedule(self.config, sched, partition),
            pretrained=sched["pretrained"], params=merged, teachers=teacher_refs,
            batch=batches(self.config, ds, sched),
        )
        return run


# -- teacher caches ----------------------------------------------------------------------------
@dataclass(frozen=True)
class CacheLayout:
    """What a partition's teacher cache holds: its teachers, feature grids and dense logits."""

    teachers: tuple[TeacherRef, ...]
    grids: tuple[int, ...]
    dense: bool
    name: str  # the cache folder: k<views>_g<grids>[_dense]


def uses_cache(config: dict, run: Run) -> bool:
    return (config["teacher_source"] == "cache" and run.method in CACHEABLE_METHODS
            and run.params.get("teacher_bn", "eval") == "eval")


def cache_layout(config: dict, runs: list[Run]) -> CacheLayout:
    """The layout of one partition's cache from its runs: every teacher, feature grid (MGD) and
    dense logits (KD/CWD) its cached students need (one folder per layout; `mgd cache` refuses to
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
    return CacheLayout(tuple(teachers.values()), ordered, dense, name)


# -- train configs -----------------------------------------------------------------------------
def dataset_slice(config: dict, paths: Paths, ds: str) -> dict:
    """The dataset config slice every `mgd` command of dataset ``ds`` reads."""
    dcfg = config["datasets"][ds]
    if "synth" in dcfg:
        return {"name": "synthetic", "root": paths.synth_root(ds)}
    return copy.deepcopy(dcfg["dataset"])


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
        "data": {
            "dataset": dataset_slice(config, paths, ds),
            "split": paths.split_dir(ds, proto, slug),
            "crop_size": train["crop_size"],
            "scales": list(train["scales"]),
            **(run.batch or {key: train[key] for key in ("batch_labeled", "batch_unlabeled")}),
            "num_workers": train["num_workers"],
        },
        "model": {"backbone": run.backbone, "pretrained": run.pretrained},
        "method": method,
        "optim": dict(run.optim),
        "runtime": runtime,
    }


def cache_train_config(config: dict, paths: Paths, ds: str, proto: str, slug: str, layout: CacheLayout) -> dict:
    """The config `mgd cache` reads: an MGD run at this partition listing every teacher to cache. It
    writes (and resumes) in the layout's ``.partial`` folder, which the workflow renames to the cache
    folder the students read once the cache is complete."""
    cache_dir = paths.cache_partial(ds, proto, slug, layout.name)
    probe = Run(
        dataset=ds, protocol=proto, slug=slug, partition=partition_display(config, ds, proto, slug), id="",
        role="student", method="mgd", backbone=config["student_backbones"][0], seed=config["seed"], ablation=None,
        optim={"lr": 0.01, "iterations": 1}, pretrained=None, params={}, teachers=list(layout.teachers),
    )
    cfg = train_config(config, paths, probe, cache_dir)
    cfg["output_dir"] = cache_dir
    return cfg
