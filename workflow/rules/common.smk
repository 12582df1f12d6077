# The plan (mgd/plan: torch-free, unit-tested in tests/test_plan.py) and one-line lookups for the
# rule files. build_plan validates the config (mgd/schemas/workflow.schema.yaml, defaults filled,
# cross-references), registers every run the configured tables need once (a run shared by several
# tables is one job), builds and validates each run's `mgd train` config, and maps every table cell
# and figure to the file it reads. `mgd plan --configfile FILE` prints the same plan.

import json
import re
from pathlib import Path

import yaml
from snakemake.exceptions import WorkflowError

from mgd.errors import ConfigError
from mgd.plan import build_plan

try:
    PLAN = build_plan(config)
except ConfigError as error:
    raise WorkflowError(str(error)) from None

CFG = PLAN.config  # validated, defaults filled
PATHS = PLAN.paths
RES = PATHS.results
CONDA_ENV = "../envs/mgd.yaml"  # relative to the rule files
PAPER_TABLES = str(Path(workflow.current_basedir).parent / "paper_tables.yaml")
THREADS = CFG["threads"]
GPUS = CFG["gpus_per_job"]
EVAL_IN_TRAIN = CFG["evaluate_in_training_job"]
CACHE = CFG["teacher_source"] == "cache"
SPECS = PLAN.tables
FIGURES = PLAN.figures
# folder patterns by wildcards, from the plan's own path helpers
RUN = PATHS.run_dir("{ds}", "{proto}", "{part}", "{run}")
CACHE_FOLDER = PATHS.cache_dir("{ds}", "{proto}", "{part}", "{layout}")
CACHE_CONFIG = PATHS.cache_config("{ds}", "{proto}", "{part}", "{layout}")
CACHE_PARTIAL = PATHS.cache_partial("{ds}", "{proto}", "{part}", "{layout}")
SPLIT_DIR = PATHS.split_dir("{ds}", "{proto}", "{part}")


wildcard_constraints:
    ds="[A-Za-z][A-Za-z0-9_]*",
    proto="[A-Za-z][A-Za-z0-9_]*",
    part="[0-9]+(-[0-9]+)?|[A-Za-z0-9_.-]+",
    run="[A-Za-z0-9_.-]+",
    table="table[0-9a-z]+",
    backbone="[A-Za-z0-9_.-]+",
    layout="k[0-9]+_g[0-9-]+(_dense)?",
    split="train|val",


def partition_of(wc):
    return wc.ds, wc.proto, wc.part


def run_of(wc):
    return wc.ds, wc.proto, wc.part, wc.run


def dataset_resources(key):
    return lambda wc: CFG["datasets"][wc.ds]["resources"][key]


def yaml_text(data):
    """A config as YAML text, for the small shell rules that write it (printf, no Python
    process: `run:` jobs would each re-parse the whole workflow in a new process)."""
    return yaml.safe_dump(data, sort_keys=False)


def json_text(data):
    return json.dumps(data, indent=2) + "\n"


def train_outputs(protect_model=False):
    """model.pt and train.json (and metrics.json when the job also evaluates); never the run
    folder itself, so that Snakemake leaves checkpoint.pt alone. protect_model: model.pt is
    write-protected (the teachers: hours of GPU time that many students read)."""
    model = f"{RUN}/model.pt"
    outputs = {"model": protected(model) if protect_model else model, "summary": f"{RUN}/train.json"}
    if EVAL_IN_TRAIN:
        outputs["metrics"] = f"{RUN}/metrics.json"
    return outputs


# `mgd job` (mgd/job.py) takes the job's GPU slot, discards a checkpoint whose inputs changed, and
# runs train (then evaluate, with evaluate_in_training_job) in one process. After a successful run
# its checkpoint.pt (optimizer state included: several times the model's size) is deleted unless
# keep_final_checkpoints; an interrupted run keeps it.
# Every value a shell command interpolates is quoted ({x:q}; the plan's command texts quote their
# own values with shlex), and the schema keeps paths plain (workflow.schema.yaml#/$defs/path).
TRAIN_SHELL = (
    "export OMP_NUM_THREADS={threads:q} MKL_NUM_THREADS={threads:q}; "
    "mgd job --gpus {resources.gpu:q} --run-dir {params.dir:q} --inputs {input:q}{params.drop} -- "
    "{params.commands} >> {log:q} 2>&1"
)
DROP_CHECKPOINT = "" if CFG["keep_final_checkpoints"] else " --drop-checkpoint"

# Shell command of the rules writing a params text to their output.
WRITE_TEXT = "printf '%s' {params.text:q} > {output:q} && echo wrote {output:q} > {log:q}"


def benchmark(name):
    """A rule's benchmark file (Snakemake's wall time, memory and I/O per job), by wildcards."""
    return f"{RES}/benchmarks/{name}.tsv"


def cache_output(folder):
    """A teacher cache folder as a declared output: directory(), and temp() with cache.temp."""
    return temp(directory(folder)) if CFG["cache"]["temp"] else directory(folder)
