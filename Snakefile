# MGD workflow: splits -> CPS teachers -> (teacher caches) -> students and ablations ->
# evaluation -> Tables 1-6, tables.md and figures.
#
#   snakemake --cores 2                                    # default: synthetic data, CPU, <= 30 min
#   snakemake --cores 2 --configfile config/smoke.yaml     # CI-sized, same DAG
#   snakemake --cores 8 --resources gpu=4 --configfile config/voc.yaml      # GPU box
#   snakemake --profile profiles/slurm --configfile config/voc.yaml         # SLURM cluster
#   snakemake --report report.html                         # tables and figures in one page
#
# See docs/workflow.md.

from snakemake.utils import min_version

min_version("9.0")


# config/config.yaml is the default; a --configfile on the command line replaces it (instead of
# being merged into it, so that a config's datasets are exactly the ones it lists).
if not workflow.overwrite_configfiles:

    configfile: "config/config.yaml"


include: "workflow/rules/common.smk"


report: "workflow/report/workflow.rst"


# The first rule, so the default target (snakefmt 2.1 would move a `default_target: True` above the
# docstring, where snakefmt itself then fails to parse the file).
rule all:
    """Every table, tables.md and every figure the config asks for."""
    input:
        PLAN.final_targets(),


include: "workflow/rules/splits.smk"
include: "workflow/rules/teachers.smk"
include: "workflow/rules/cache.smk"
include: "workflow/rules/students.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


# when the workflow ends (the main Snakefile only: not in a SLURM job's own Snakemake, nor for a
# workflow that uses this one as a module)
onsuccess:
    drop_kept_checkpoints()


onerror:
    drop_kept_checkpoints()
