"""The Snakemake workflow: lint, dry-runs of the shipped configs, config validation, and `mgd job`
(GPU slots, checkpoint guard, commands in one process). No training job runs, but each snakemake
parse takes seconds: those tests are marked slow (tests/test_plan.py checks the same plan in
milliseconds)."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("snakemake") is None, reason="snakemake is not installed")


def snakemake(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(["snakemake", "--cores", "1", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def job_counts(output: str) -> dict[str, int]:
    """rule -> job count from the 'Job stats' table of a dry-run."""
    table = output.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        match = re.match(r"^(\S+)\s+(\d+)$", line.strip())
        if not match:
            break
        counts[match.group(1)] = int(match.group(2))
    return counts


def planned(*configfiles: str, overrides: tuple[str, ...] = ()):
    """The plan of a config as `mgd plan` builds it (mgd/plan; its sizes are asserted in
    tests/test_plan.py and tests/test_default_config.py)."""
    from mgd.plan import build_plan, load_workflow_config

    return build_plan(load_workflow_config([str(REPO / name) for name in configfiles or ["config/config.yaml"]],
                                           list(overrides)))


def assert_dag_trains_the_plan(counts: dict[str, int], plan) -> None:
    """The dry-run schedules each planned run once: the teachers and students, their configs,
    one split per partition, every table."""
    roles = [run.role for run in plan.runs.values() if not run.imported]
    students = counts.get("train_student", 0) + counts.get("train_scored_student", 0)
    assert (counts["train_teacher"], students) == (roles.count("teacher"), roles.count("student"))
    assert counts.get("train_scored_student", 0) == len(plan.scored_only_runs())
    assert counts["run_config"] == len(roles)
    assert counts["split"] == len({run.partition_key for run in plan.runs.values()})
    assert counts["table"] == counts["table_spec"] == len(plan.tables)
    assert counts.get("cache_teachers", 0) == len(plan.caches)


def dry_run(*args: str, results: Path, config: tuple[str, ...] = ()) -> dict[str, int]:
    # one --config: a second one would replace the first's values (results= included)
    result = snakemake("-n", *args, "--config", f"results={results}", *config)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    outputs = re.findall(r"^    output: (.+)$", result.stdout, flags=re.MULTILINE)
    assert outputs and all(line.startswith(str(results)) for line in outputs), "a job writes outside results="
    return job_counts(result.stdout)


@pytest.mark.slow
@pytest.mark.parametrize("configfile", [None, "config/smoke.yaml", "config/zoo.yaml"])
def test_lint(configfile):
    result = snakemake("--lint", *(["--configfile", configfile] if configfile else []))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Congratulations, your workflow is in a good condition" in result.stdout + result.stderr


@pytest.mark.slow
def test_smoke_dry_run_trains_each_shared_run_once(tmp_path):
    counts = dry_run("--configfile", "config/smoke.yaml", results=tmp_path)
    assert_dag_trains_the_plan(counts, planned("config/smoke.yaml"))
    for rule in ("tables_md", "fig1_tradeoff", "fig3_partitions", "fig4_qualitative", "synth", "class_table",
                 "confusion_figure", "training_curves"):
        assert counts[rule] >= 1
    assert counts["check_data"] == 2 * 2  # each dataset's train and val split, once
    assert "evaluate" not in counts  # evaluate_in_training_job: the training job evaluates


@pytest.mark.slow
def test_default_dry_run(tmp_path):
    """The default DAG's size as measured in README (8 minutes on 2 cores): it cannot grow back
    unnoticed (tests/test_default_config.py pins its runs and schedules)."""
    counts = dry_run(results=tmp_path)
    plan = planned()
    assert_dag_trains_the_plan(counts, plan)
    assert counts["tables_md"] == 1 and counts["fig4_qualitative"] == 1
    assert counts["complexity"] == 1 and counts["latency"] == 1  # every backbone of every table in one job each
    # a per-class table and a confusion figure per dataset, training curves per table
    assert (counts["class_table"], counts["confusion_figure"], counts["training_curves"]) == (2, 2, len(plan.tables))
    assert counts["total"] == 104  # Table 1's students at three seeds


@pytest.mark.slow
def test_zoo_dry_run_trains_one_teacher_pair_and_caches_once(tmp_path):
    # the target first: --config and --configfile take every word after them
    result = snakemake("-n", "zoo", "--config", f"results={tmp_path}", "--configfile", "config/zoo.yaml")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    counts = job_counts(result.stdout)
    assert_dag_trains_the_plan(counts, planned("config/zoo.yaml"))
    assert (counts["train_teacher"], counts["train_student"], counts["cache_teachers"]) == (2, 10, 1)
    assert counts["latency"] == counts["complexity"] == counts["zoo_pareto"] == counts["zoo"] == 1
    assert "tables_md" not in counts  # the zoo target: its table and figure only


@pytest.mark.slow
def test_separate_evaluation_and_teacher_cache_dry_run(tmp_path):
    counts = dry_run("--configfile", "config/smoke.yaml", results=tmp_path,
                     config=("evaluate_in_training_job=False", "teacher_source=cache"))
    plan = planned("config/smoke.yaml", overrides=("evaluate_in_training_job=False", "teacher_source=cache"))
    assert_dag_trains_the_plan(counts, plan)
    trained = counts["train_student"] + counts.get("train_scored_student", 0) + counts["train_teacher"]
    assert counts["evaluate"] == trained - 4  # no seed-copy evals
    assert counts["cache_teachers"] == 3  # one cache per dataset x partition


def fresh_copy(tmp_path: Path) -> Path:
    """The repository's tracked files (as in a fresh clone, with this checkout's edits) under tmp_path."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, text=True)
    if listed.returncode != 0:
        pytest.skip("not a git checkout: cannot list the tracked files")
    copy = tmp_path / "clone"
    for name in filter(None, listed.stdout.split("\0")):
        source = REPO / name
        if source.is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, copy / name)
    return copy


@pytest.mark.slow
@pytest.mark.parametrize("configfiles", [["config/voc.yaml"], ["config/cityscapes.yaml"], ["config/camvid.yaml"],
                                         ["config/voc.yaml", "config/cityscapes.yaml", "config/paper.yaml"]],
                         ids=["voc", "cityscapes", "camvid", "paper"])
def test_paper_configs_dry_run_in_a_fresh_clone(configfiles, tmp_path):
    clone, data_root = fresh_copy(tmp_path), tmp_path / "datasets"
    data_root.mkdir()
    result = snakemake("-n", "--configfile", *configfiles, "--config", f"data_root={data_root}",
                       f"results={tmp_path / 'results'}", cwd=clone)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    counts = job_counts(result.stdout)
    assert counts["train_student"] > 0 and counts["table"] >= 1 and counts["check_data"] >= 2


def write_config(tmp_path: Path, edit) -> Path:
    cfg = yaml.safe_load((REPO / "config" / "smoke.yaml").read_text())
    edit(cfg)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("edit, message", [
    (lambda c: c["datasets"]["synA"]["train"].update(crop_sise=32), "crop_sise"),
    (lambda c: c["datasets"]["synA"]["teachers"]["TD"].update(lr=-1), "-1"),
    (lambda c: c["tables"].update(table9={"dataset": "synA"}), "table9"),
    (lambda c: c["tables"]["table1"].update(dataset="nowhere"), "tables.table1"),
    (lambda c: c["tables"]["ablations"].update(partition="1/3"), "tables.ablations.partition"),
    (lambda c: c.update(method_params={"mgd": {"lamda_image": 0.1}}), "method_params.mgd.lamda_image"),
    (lambda c: c["datasets"]["synA"]["train"].update(batch_labeled=4.0), "4.0 is not of type 'integer'"),
])
def test_bad_config_stops_before_any_job(tmp_path, edit, message):
    config = write_config(tmp_path, edit)
    result = snakemake("-n", "--configfile", str(config), "--config", f"results={tmp_path / 'out'}")
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_unknown_top_level_key_on_the_command_line(tmp_path):
    result = snakemake("-n", "--config", "bogus_key=1", f"results={tmp_path}")
    assert result.returncode != 0
    assert "bogus_key" in result.stdout + result.stderr


# -- mgd job ------------------------------------------------------------------------------------
def test_job_resumes_or_discards_the_checkpoint(tmp_path, capsys):
    from mgd.jobs.checkpoint_guard import guard_checkpoint

    run_dir, config = tmp_path / "run", tmp_path / "config.yaml"
    config.write_text("a: 1\n")
    guard_checkpoint(run_dir, [str(config)])
    checkpoint = run_dir / "checkpoint.pt"
    checkpoint.write_bytes(b"state")
    # same inputs (an interrupted job rerun): the checkpoint stays and is resumed
    guard_checkpoint(run_dir, [str(config)])
    assert checkpoint.exists() and "resuming" in capsys.readouterr().err
    # changed inputs (new config, retrained teacher): the checkpoint is set aside, not deleted
    config.write_text("a: 2\n")
    guard_checkpoint(run_dir, [str(config)])
    assert not checkpoint.exists() and "inputs changed" in capsys.readouterr().err
    assert [path.read_bytes() for path in run_dir.glob("checkpoint.stale-*.pt")] == [b"state"]


def mgd_job(*args: str, **env: str) -> subprocess.CompletedProcess:
    outside_slurm = {key: value for key, value in os.environ.items() if key != "SLURM_JOB_ID"}
    return subprocess.run([sys.executable, "-m", "mgd.cli", "job", *args], capture_output=True, text=True,
                          timeout=120, env={**outside_slurm, "OMP_NUM_THREADS": "1", **env})


#: a quick command for `mgd job` to run
COMPLEXITY = ["complexity", "--backbone", "resnet18d", "--size", "32", "--json"]


def stamped_job(tmp_path: Path) -> tuple[Path, Path, list[str]]:
    """(run folder, its checkpoint path, `mgd job` options with --drop-checkpoint) after one job
    has stamped the folder's inputs."""
    run_dir, config = tmp_path / "run", tmp_path / "config.yaml"
    config.write_text("a: 1\n")
    common = ["--run-dir", str(run_dir), "--inputs", str(config), "--drop-checkpoint", "--"]
    assert mgd_job(*common, *COMPLEXITY).returncode == 0
    return run_dir, run_dir / "checkpoint.pt", common


def test_job_runs_its_commands_in_order_and_drops_the_checkpoint_on_success(tmp_path):
    run_dir, checkpoint, common = stamped_job(tmp_path)
    config, complexity = tmp_path / "config.yaml", COMPLEXITY
    checkpoint.write_bytes(b"state")  # as if a training job with these inputs had been killed
    # a failing command stops the job with its status and keeps the checkpoint for the rerun
    failed = mgd_job(*common, *complexity, "--", "evaluate", "--model", str(tmp_path / "missing.pt"),
                     "--dataset-config", str(config), "--out", str(tmp_path / "m.json"), "--", *complexity)
    assert failed.returncode == 2 and checkpoint.exists()
    assert failed.stdout.count('"backbone": "resnet18d"') == 1
    ok = mgd_job(*common, *complexity, "--", *complexity)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.count('"backbone": "resnet18d"') == 2 and not checkpoint.exists()


def test_a_slurm_job_keeps_the_final_checkpoint_until_the_workflow_ends(tmp_path):
    from mgd.jobs.checkpoint_guard import drop_finished_checkpoints

    run_dir, checkpoint, common = stamped_job(tmp_path)
    checkpoint.write_bytes(b"final state")
    # SLURM may still fail this job at its time limit: the retry needs the checkpoint to resume
    ok = mgd_job(*common, *COMPLEXITY, SLURM_JOB_ID="42")
    assert ok.returncode == 0 and checkpoint.exists() and "keeping" in ok.stderr
    # when the workflow ends, a finished run's checkpoint goes; an unfinished run's stays
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "checkpoint.pt").write_bytes(b"half")
    assert drop_finished_checkpoints([run_dir, unfinished]) == []  # no model.pt / train.json yet
    (run_dir / "model.pt").write_bytes(b"model")
    (run_dir / "train.json").write_text("{}")
    assert drop_finished_checkpoints([run_dir, unfinished]) == [checkpoint]
    assert not checkpoint.exists() and (unfinished / "checkpoint.pt").exists()


def test_job_gives_each_job_its_own_gpu_slot(tmp_path):
    env = {"MGD_GPUS": "2", "MGD_GPU_LOCK_DIR": str(tmp_path / "locks")}
    env_clean = {key: value for key, value in os.environ.items() if key not in ("CUDA_VISIBLE_DEVICES", "SLURM_JOB_ID")}
    script = ("import os, sys, time; from mgd.jobs.gpu_slots import claim_gpu; claim_gpu(int(sys.argv[1])); "
              "print(os.environ.get('CUDA_VISIBLE_DEVICES', 'unset'), flush=True); time.sleep(float(sys.argv[2]))")
    procs = [subprocess.Popen([sys.executable, "-c", script, "1", "1.5"], stdout=subprocess.PIPE, text=True,
                              env={**env_clean, **env}) for _ in range(2)]
    slots = sorted(proc.communicate(timeout=60)[0].strip() for proc in procs)
    assert slots == ["0", "1"]
    # no GPU asked for: CUDA_VISIBLE_DEVICES is left alone
    result = subprocess.run([sys.executable, "-c", script, "0", "0"], capture_output=True, text=True,
                            env={**env_clean, **env}, timeout=60)
    assert result.stdout.strip() == "unset"
    # a user's own CUDA_VISIBLE_DEVICES is kept
    result = subprocess.run([sys.executable, "-c", script, "1", "0"], capture_output=True, text=True,
                            env={**env_clean, **env, "CUDA_VISIBLE_DEVICES": "3"}, timeout=60)
    assert result.stdout.strip() == "3"


# -- shell safety and the report, end to end ----------------------------------------------------
#: the smallest config with every kind of job: synth, check_data, split, two teachers, one student
#: (trained and evaluated), complexity, latency, Table 1 and its per-class table, tables.md/html,
#: the three figures, the confusion figure and the training curves
TINY = {
    "student_methods": ["sup"], "student_backbones": ["resnet18d"], "evaluate_in_training_job": True,
    "runtime": {"checkpoint_every": 1, "log_every": 1},
    "datasets": {"synA": {
        "label": "Synthetic-A", "synth": {"num_train": 12, "num_val": 2, "size": 32, "seed": 0},
        "protocols": {"ratio": {"ratios": ["1/4"], "seed": 0}},
        "train": {"crop_size": 32, "scales": [1.0], "batch_labeled": 2, "batch_unlabeled": 2, "num_workers": 0},
        "teachers": {role: {"backbone": "resnet18d", "lr": 0.01, "iterations": 1} for role in ("TD", "TW")},
        "students": {"resnet18d": {"lr": 0.01, "iterations": 1}},
    }},
    "tables": {"table1": {"dataset": "synA", "protocol": "ratio"}, "figures": {"num_images": 1}},
}
FIGURES = ["fig1_tradeoff", "fig3_partitions", "fig4_qualitative", "table1_confusion", "table1_curves"]


@pytest.mark.slow
def test_results_path_with_a_space_runs_end_to_end_and_reports(tmp_path):
    configfile, results = tmp_path / "tiny.yaml", tmp_path / "my results" / "run 1"
    configfile.write_text(yaml.safe_dump(TINY))
    args = ("--configfile", str(configfile), "--config", f"results={results}")
    run = subprocess.run(["snakemake", "--cores", "2", *args], cwd=REPO, capture_output=True, text=True,
                         timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for name in ("table1.csv", "table1_classes.csv", "tables.md", "tables.html", *(f"{figure}.png" for figure in FIGURES)):
        assert (results / name).stat().st_size > 0
    assert json.loads((results / "synA" / "checks" / "train.json").read_text())["samples"] == 12
    teacher = results / "synA" / "runs" / "ratio" / "1-4" / "teacher_TD" / "model.pt"
    assert not teacher.stat().st_mode & 0o222  # protected(): read-only
    assert (results / "benchmarks" / "train" / "synA" / "ratio" / "1-4" / "teacher_TD.tsv").is_file()
    for report in ("report.html", "report.zip"):
        built = snakemake(*args, "--report", str(results / report))
        assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
        check = subprocess.run([sys.executable, str(REPO / ".ci" / "check_report.py"), str(results / report),
                                "--tables", "table1", "--class-tables", "table1", "--figures", *FIGURES],
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    # the checker fails on a table the report lacks
    check = subprocess.run([sys.executable, str(REPO / ".ci" / "check_report.py"), str(results / "report.zip"),
                            "--tables", "table2"], capture_output=True, text=True)
    assert check.returncode == 1 and "table2.csv" in check.stderr


@pytest.mark.slow
@pytest.mark.parametrize("key", ["results", "data_root"])
def test_shell_code_in_a_path_never_runs(tmp_path, key):
    marker = tmp_path / f"pwned-{os.getpid()}"
    result = snakemake("-n", "--configfile", "config/smoke.yaml", "--config", f"{key}=/tmp/$(touch {marker})x",
                       *([f"results={tmp_path / 'out'}"] if key != "results" else []))
    assert result.returncode != 0
    assert f"config key {key}:" in result.stdout + result.stderr and "is not a plain path" in result.stdout + result.stderr
    assert not marker.exists()


@pytest.mark.slow
def test_teacher_cache_is_a_declared_temp_output(tmp_path):
    config = {**TINY, "student_methods": ["sup", "mgd"], "teacher_source": "cache",
              "cache": {"views": 1, "batch_size": 4, "temp": True}}
    configfile, results = tmp_path / "cache.yaml", tmp_path / "results"
    configfile.write_text(yaml.safe_dump(config))
    run = subprocess.run(["snakemake", "--cores", "2", "--configfile", str(configfile), "--config", f"results={results}"],
                         cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    partition = results / "synA" / "runs" / "ratio" / "1-4"
    train_config = yaml.safe_load((partition / "mgd_resnet18d" / "config.yaml").read_text())
    assert train_config["method"]["teacher_source"] == "cache"
    assert (partition / "mgd_resnet18d" / "metrics.json").is_file()
    # the MGD student read the finished cache, which temp() then removed; no partial folder is left
    assert "Removing temporary output" in run.stdout + run.stderr
    assert not Path(train_config["method"]["teacher_cache"]).exists()
    assert [path.name for path in (partition / "teacher_cache").iterdir()] == ["k1_g7.yaml"]


@pytest.mark.slow
def test_a_corrupt_image_stops_the_workflow_before_any_training(tmp_path):
    configfile, results = tmp_path / "tiny.yaml", tmp_path / "results"
    configfile.write_text(yaml.safe_dump(TINY))
    args = ("--configfile", str(configfile), "--config", f"results={results}")
    made = snakemake(str(results / "synA" / "dataset.yaml"), str(results / "synA" / "data" / "dataset.json"), *args)
    assert made.returncode == 0, made.stdout[-3000:] + made.stderr[-3000:]
    corrupt = results / "synA" / "data" / "images" / "train_00003.png"
    corrupt.write_bytes(corrupt.read_bytes()[:40])  # truncated
    run = subprocess.run(["snakemake", "--cores", "2", *args], cwd=REPO, capture_output=True, text=True,
                         timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode != 0
    log = (results / "logs" / "checks" / "synA" / "train.log").read_text()
    assert "train_00003.png" in log
    assert not (results / "synA" / "checks" / "train.json").exists()
    assert not list(results.glob("synA/runs/*/*/*/model.pt")) and not (results / "logs" / "train").exists()


@pytest.mark.slow
def test_teacher_from_an_official_checkpoint_is_imported_not_trained(tmp_path):
    import torch
    from official_layout import official_network_state

    from mgd.data.synthetic import CLASSES
    from mgd.models import load_model

    checkpoint = tmp_path / "official ckpt" / "teacher-syn4-resnet18.pth"
    checkpoint.parent.mkdir()
    torch.save({"model": {f"{branch}.{key}": value for seed, branch in enumerate(("branch1", "branch2"))
                          for key, value in official_network_state("resnet18_v1c", len(CLASSES), seed).items()}},
               checkpoint)
    config = copy.deepcopy(TINY)
    config["student_methods"] = ["kd"]
    config["datasets"]["synA"]["teachers"]["TD"].update(backbone="resnet18_v1c", checkpoints={"1/4": str(checkpoint)})
    configfile, results = tmp_path / "imported.yaml", tmp_path / "results"
    configfile.write_text(yaml.safe_dump(config))
    partition = results / "synA" / "runs" / "ratio" / "1-4"
    targets = [str(partition / "kd_resnet18d" / "metrics.json"), str(partition / "teacher_TD" / "metrics.json")]
    run = subprocess.run(["snakemake", "--cores", "2", *targets, "--configfile", str(configfile),
                          "--config", f"results={results}"],
                         cwd=REPO, capture_output=True, text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    counts = job_counts(run.stdout + run.stderr)
    assert (counts["import_teacher"], counts["train_teacher"], counts["train_student"]) == (1, 1, 1)
    # T_D came from branch1 of the checkpoint, with the dataset's class names; only T_W was trained
    teacher = partition / "teacher_TD"
    assert load_model(teacher / "model.pt").class_names == CLASSES
    assert not (teacher / "model.pt").stat().st_mode & 0o222  # protected like a trained teacher
    assert json.loads((teacher / "metrics.json").read_text())["classes"] == list(CLASSES)
    assert not (teacher / "train.json").exists() and not (teacher / "config.yaml").exists()
    assert not (results / "logs" / "train" / "synA" / "ratio" / "1-4" / "teacher_TD.log").exists()
    assert (results / "logs" / "train" / "synA" / "ratio" / "1-4" / "teacher_TW.log").is_file()
    assert "branch1" in (results / "logs" / "import" / "synA" / "runs" / "ratio" / "1-4" / "teacher_TD.log").read_text()
    student = yaml.safe_load((partition / "kd_resnet18d" / "config.yaml").read_text())
    assert student["method"]["teachers"][0] == {"name": "TD", "model": str(teacher / "model.pt")}


# -- a new user's environment and command line (issue 24) -----------------------------------------
@pytest.mark.slow
def test_rules_run_mgd_with_the_interpreter_running_snakemake_not_path(tmp_path):
    """snakemake started by its full path from an environment that is not activated: no `mgd` on
    PATH, and the rules still run (`python -m mgd` of snakemake's own interpreter)."""
    executable = Path(sys.executable).parent / "snakemake"
    if not executable.is_file():
        pytest.skip("snakemake is not installed beside this interpreter")
    path = os.pathsep.join(folder for folder in ("/usr/bin", "/bin") if Path(folder).is_dir())
    env = {**os.environ, "PATH": path, "OMP_NUM_THREADS": "1"}
    assert shutil.which("mgd", path=path) is None
    configfile, results = tmp_path / "tiny.yaml", tmp_path / "results"
    configfile.write_text(yaml.safe_dump(TINY))
    target = results / "synA" / "data" / "dataset.json"  # rule synth: the cheapest `mgd` command
    run = subprocess.run([str(executable), "--cores", "1", str(target), "--configfile", str(configfile),
                          "--config", f"results={results}"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert json.loads(target.read_text())["counts"] == {"train": 12, "val": 2}


@pytest.mark.slow
def test_a_built_target_after_configfile_is_named_in_one_line(tmp_path):
    """`--configfile FILE TARGET` makes snakemake read TARGET as a second config file: a built
    one (here a data-check summary) stops the parse with one line naming it, no traceback."""
    configfile, results = tmp_path / "tiny.yaml", tmp_path / "results"
    configfile.write_text(yaml.safe_dump(TINY))
    target = results / "synA" / "checks" / "val.json"
    target.parent.mkdir(parents=True)
    target.write_text(json.dumps({"dataset": "synA", "split": "val", "samples": 2}))
    result = snakemake("-n", "--configfile", str(configfile), str(target), "--config", f"results={results}")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"--configfile {target} is not a workflow config (its keys dataset, samples, split" in output
    assert "snakemake TARGET --configfile FILE" in output and "Traceback" not in output


@pytest.mark.slow
def test_report_after_building_one_target_holds_what_was_built(tmp_path):
    """`snakemake --report` after building one target (no table, no figure yet) makes a report
    instead of failing on the unbuilt tables.html."""
    configfile, results = tmp_path / "tiny.yaml", tmp_path / "results"
    configfile.write_text(yaml.safe_dump(TINY))
    args = ("--configfile", str(configfile), "--config", f"results={results}")
    built = snakemake(str(results / "synA" / "dataset.yaml"), *args)  # a printf rule: no mgd process
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    report = snakemake(*args, "--report", str(tmp_path / "report.html"))
    assert report.returncode == 0, report.stdout[-3000:] + report.stderr[-3000:]
    assert "marked for report but does not exist" not in report.stdout + report.stderr
    assert (tmp_path / "report.html").stat().st_size > 0
