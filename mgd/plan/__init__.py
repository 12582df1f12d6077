"""The experiment plan (torch-free): the workflow config in, a :class:`Plan` out.

``build_plan(config)`` validates the workflow config (schema with defaults, cross-references),
then takes two steps without side effects: the runs the configured tables and figures ask for
(frozen :class:`Run` values, a run shared by several tables once, each with its validated
`mgd train` config), then every table cell and figure as a lookup into them. The Snakefile
(workflow/rules/common.smk) and `mgd plan` both use it.
"""

from mgd.plan.caches import PartitionCache
from mgd.plan.config import DEFAULT_CONFIGFILE, load_workflow_config, parse_overrides, validate_workflow_config
from mgd.plan.experiments import ABLATION_VARIANTS, planned_runs
from mgd.plan.partitions import partition_of_slug, partition_slug, partitions
from mgd.plan.paths import Paths
from mgd.plan.plan import Plan, build_plan
from mgd.plan.runs import Run, TeacherRef
from mgd.plan.tables import METHOD_LABELS, PAPER_BACKBONE_NAMES

__all__ = [
    "ABLATION_VARIANTS", "DEFAULT_CONFIGFILE", "METHOD_LABELS", "PAPER_BACKBONE_NAMES", "PartitionCache", "Paths",
    "Plan", "Run", "TeacherRef", "build_plan", "load_workflow_config", "parse_overrides", "partition_of_slug",
    "partition_slug", "partitions", "planned_runs", "validate_workflow_config",
]
