# The plan (mgd/plan: torch-free, unit-tested in tests/test_plan.py) and one-line lookups for the
# rule files. build_plan validates the config (mgd/schemas/workflow.schema.yaml, defaults filled,
# cross-references), plans every run the configured tables need once (a run shared by several
# tables is one job) with its validated `mgd train` config, and maps every table cell and figure
# to the file it reads. `mgd plan --configfile FILE` prints the same plan. Wildcards: {ds}
# dataset, {proto} protocol, {slug} a partition's folder name (1-8 for partition 1/8), {run} run id.

import json
import math
import os
import re
import shlex
import sys
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError

from mgd.errors import ConfigError
from mgd.plan import build_plan
from mgd.plan.config import check_configfile


def workflow_file(path):
    """A relative path of the config from the working directory where it exists there, else from
    the workflow's source: the public split lists (resources/splits) ship with the workflow, also
    when another project uses it as a module or a config names them from the repository root."""
    if Path(path).is_absolute() or Path(path).exists():
        return path
    # a local workflow: stable paths; a remote one (git): Snakemake's cached copy
    checkout = Path(str(workflow.current_basedir)).parent.parent / path
    if checkout.exists():
        return str(checkout)
    shipped = workflow.source_path(f"../../{path}")
    return shipped if Path(shipped).exists() else path


for _dataset in (config.get("datasets") or {}).values():
    for _protocol in (_dataset.get("protocols") or {}).values():
        if isinstance(_protocol, dict) and isinstance(_protocol.get("import"), dict):
            for _lists in _protocol["import"].values():
                for _key in ("labeled", "unlabeled"):
                    if isinstance(_lists, dict) and isinstance(_lists.get(_key), str):
                        _lists[_key] = workflow_file(_lists[_key])
            if isinstance(_protocol.get("ids"), str):
                _protocol["ids"] = workflow_file(_protocol["ids"])

try:
    # snakemake itself reads every --configfile first: a missing one or one that is not YAML
    # stops it there; a target written after --configfile that exists is caught here
    for configfile in workflow.overwrite_configfiles or []:
        check_configfile(configfile)
    PLAN = build_plan(config)
except ConfigError as error:
    raise WorkflowError(str(error)) from None

CFG = PLAN.config  # validated, defaults filled
# Every `mgd` of a rule's shell command runs the mgd of the interpreter running snakemake
# (`python -m mgd`, through a shell function of that name in front of every command), not the
# first `mgd` on PATH: there is none where snakemake is started by its full path from a venv that
# is not activated. With --software-deployment-method conda the job's environment provides `mgd`.
if not any(method.name == "CONDA" for method in workflow.deployment_settings.deployment_method):
    PYTHON_MGD = shlex.join([sys.executable, "-m", "mgd"]).replace("{", "{{").replace("}", "}}")
    shell.prefix(f'set -euo pipefail; mgd() {{{{ {PYTHON_MGD} "$@"; }}}}; ')  # braces doubled: a template
PATHS = PLAN.paths
RES = PATHS.results
CONDA_ENV = "../envs/mgd.yaml"  # relative to the rule files; mgd.post-deploy.sh installs mgd into it
# ... from this checkout (a local workflow's folder with pyproject.toml), unless set already
CHECKOUT = Path(str(workflow.current_basedir)).parent.parent
if (CHECKOUT / "pyproject.toml").is_file():
    os.environ.setdefault("MGD_SOURCE", str(CHECKOUT))
PAPER_TABLES = workflow_file("workflow/paper_tables.yaml")
THREADS = CFG["threads"]
GPUS = CFG["gpus_per_job"]
EVAL_IN_TRAIN = CFG["evaluate_in_training_job"]
CACHE = CFG["teacher_source"] == "cache"
SPECS = PLAN.tables
FIGURES = PLAN.figures
# folder patterns by wildcards, from the plan's own path helpers
RUN = PATHS.run_dir("{ds}", "{proto}", "{slug}", "{run}")
CACHE_FOLDER = PATHS.cache_dir("{ds}", "{proto}", "{slug}", "{layout}")
CACHE_CONFIG = PATHS.cache_config("{ds}", "{proto}", "{slug}", "{layout}")
CACHE_PARTIAL = PATHS.cache_partial("{ds}", "{proto}", "{slug}", "{layout}")
SPLIT_DIR = PATHS.split_dir("{ds}", "{proto}", "{slug}")


wildcard_constraints:
    ds="[A-Za-z][A-Za-z0-9_]*",
    proto="[A-Za-z][A-Za-z0-9_]*",
    slug="[0-9]+(-[0-9]+)?|[A-Za-z0-9_.-]+",  # a partition's folder name: 1-8, 92
    run="[A-Za-z0-9_.-]+",
    table="table[0-9a-z]+|zoo",
    backbone="[A-Za-z0-9_.-]+",
    layout="k[0-9]+_g[0-9-]+(_dense)?",
    split="train|val",


def partition_key(wc):
    """(dataset, protocol, slug): Run.partition_key of a job's wildcards."""
    return wc.ds, wc.proto, wc.slug


def run_key(wc):
    """(dataset, protocol, slug, run id): Run.key of a job's wildcards."""
    return wc.ds, wc.proto, wc.slug, wc.run


def dataset_resources(key):
    return lambda wc: CFG["datasets"][wc.ds]["resources"][key]


# Cluster time limits (docs/workflow.md): with slurm_max_runtime a training job asks for at most
# that many minutes; SLURM signals it at (or, with profiles/slurm, ahead of) its limit, `mgd train`
# stops after the step in flight with a checkpoint, and a retry resumes the run there.
MAX_RUNTIME = CFG["slurm_max_runtime"]


def train_runtime(key):
    """A training job's runtime (minutes): its dataset's estimate, at most slurm_max_runtime."""
    return lambda wc: min(CFG["datasets"][wc.ds]["resources"][key], MAX_RUNTIME or math.inf)


def train_retries(key):
    """Retries of a training rule: one per allocation after the first that its longest run needs
    at slurm_max_runtime, plus the one retry profiles/slurm gives every job (start-up and the stop
    eat a few minutes of each allocation, a failure or preemption one more); 0 without a limit:
    the profile's retries apply. Only in the submitting Snakemake: the one running a job inside
    its allocation would otherwise retry a stopped run there, past the time limit."""
    if MAX_RUNTIME is None or not workflow.is_main_process:
        return 0
    longest = max(dataset["resources"][key] for dataset in CFG["datasets"].values())
    return math.ceil(longest / MAX_RUNTIME)


def yaml_text(data):
    """A config as YAML text, for the small shell rules that write it (printf, no Python
    process: `run:` jobs would each re-parse the whole workflow in a new process)."""
    return yaml.safe_dump(data, sort_keys=False)


def json_text(data):
    return json.dumps(data, indent=2) + "\n"


def train_outputs(protect_model=False, temp_model=False):
    """model.pt and train.json (and metrics.json when the job also evaluates); never the run
    folder itself, so that Snakemake leaves checkpoint.pt alone. protect_model: model.pt is
    write-protected (the teachers: hours of GPU time that many students read); temp_model: a
    temp() file, deleted once nothing needs it (keep_seed_models: false)."""
    model = f"{RUN}/model.pt"
    if protect_model:
        model = protected(model)
    elif temp_model:
        model = temp(model)
    outputs = {"model": model, "summary": f"{RUN}/train.json"}
    if EVAL_IN_TRAIN:
        outputs["metrics"] = f"{RUN}/metrics.json"
    return outputs


# `mgd job` (mgd/commands/job.py over mgd/jobs/) takes the job's GPU slot, discards a checkpoint
# whose inputs changed, and runs train (then evaluate, with evaluate_in_training_job) in one process.
# After a successful run its checkpoint.pt (optimizer state included: several times the model's
# size) is deleted unless keep_final_checkpoints; an interrupted run keeps it.
# `exec`: the job's shell becomes `mgd job`, so a SIGTERM to the job (SLURM's time limit) finds
# mgd, which checkpoints, and not a shell that would die and leave it behind.
# Every value a shell command interpolates is quoted ({x:q}; the plan's command texts quote their
# own values with shlex), and the schema keeps paths plain (workflow.schema.yaml#/$defs/path).
TRAIN_SHELL = (
    "export OMP_NUM_THREADS={threads:q} MKL_NUM_THREADS={threads:q}; "
    "exec mgd job --gpus {resources.gpu:q} --run-dir {params.dir:q} --inputs {input:q}{params.drop} -- "
    "{params.commands} >> {log:q} 2>&1"
)
DROP_CHECKPOINT = "" if CFG["keep_final_checkpoints"] else " --drop-checkpoint"


def drop_kept_checkpoints():
    """Delete the checkpoints of finished runs that SLURM jobs kept (a SLURM job can fail at its
    time limit after its work is done; its retry resumes from the kept checkpoint instead of
    training again: mgd/jobs/checkpoint_guard.py). Run when the workflow ends (Snakefile)."""
    if CFG["keep_final_checkpoints"]:
        return
    from mgd.jobs.checkpoint_guard import drop_finished_checkpoints

    for path in drop_finished_checkpoints(PLAN.trained_run_dirs()):
        print(f"deleted {path}: its run has finished", file=sys.stderr)


# Shell command of the rules writing a params text to their output.
WRITE_TEXT = "printf '%s' {params.text:q} > {output:q} && echo wrote {output:q} > {log:q}"


def benchmark(name):
    """A rule's benchmark file (Snakemake's wall time, memory and I/O per job), by wildcards."""
    return f"{RES}/benchmarks/{name}.tsv"


def cache_output(folder):
    """A teacher cache folder as a declared output: directory(), and temp() with cache.temp."""
    return temp(directory(folder)) if CFG["cache"]["temp"] else directory(folder)


def report_if_built(pattern, tables=None, **flags):
    """report(pattern, ...) once every file of ``pattern`` the plan asks for exists, else the
    plain path: `snakemake --report` after building only some targets holds what has been built
    instead of failing on the rest (each snakemake start parses anew, so a report made after the
    run sees every file; not so `--report-after-run`, which parses before building). A
    ``{table}`` pattern is formatted with every table, or with the names of ``tables``."""
    names = SPECS if tables is None else tables
    files = [pattern.format(table=name) for name in names] if "{table}" in pattern else [pattern]
    return report(pattern, **flags) if all(Path(file).exists() for file in files) else pattern
