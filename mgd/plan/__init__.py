"""The experiment plan (torch-free): the workflow config in, a :class:`Plan` out.

``build_plan(config)`` validates the workflow config (schema with defaults, cross-references),
registers every training run the configured tables need (a run shared by several tables is one
run), builds and validates each run's `mgd train` config, and maps every table cell and figure to
the file it reads. The Snakefile (workflow/rules/common.smk) and `mgd plan` both use it.
"""

from mgd.plan.config import DEFAULT_CONFIGFILE, load_workflow_config, parse_overrides, validate_workflow_config
from mgd.plan.partitions import Partition, partition_display, partition_slug, partitions
from mgd.plan.paths import Paths
from mgd.plan.plan import Plan, build_plan
from mgd.plan.runs import CacheLayout, Run, TeacherRef
from mgd.plan.tables import ABLATION_VARIANTS, METHOD_LABELS, PAPER_BACKBONES

__all__ = [
    "ABLATION_VARIANTS", "DEFAULT_CONFIGFILE", "METHOD_LABELS", "PAPER_BACKBONES", "CacheLayout", "Partition",
    "Paths", "Plan", "Run", "TeacherRef", "build_plan", "load_workflow_config", "parse_overrides",
    "partition_display", "partition_slug", "partitions", "validate_workflow_config",
]
