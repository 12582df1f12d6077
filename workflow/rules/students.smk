# Students: Sup, MT, CPS (no teachers) and KD, CWD, SKT, MGD (distilled from the teachers of the
# same dataset and partition), for every student backbone, plus every ablation variant of MGD.
# With keep_seed_models: false, the students of a seed that is no table's first train by the same
# rule as train_scored_student, whose model.pt is a temp() file (deleted once scored).

SCORED_ONLY = PLAN.scored_only_runs()
# a run id is followed by "/" in every output path
SCORED_ONLY_RUN = "(?:" + "|".join(re.escape(run) for run in SCORED_ONLY) + ")(?=/)"
STUDENT_RUN = "(?!teacher_)" + (f"(?!{SCORED_ONLY_RUN})" if SCORED_ONLY else "") + "[A-Za-z0-9_.-]+"


rule train_student:
    """One student run (a method on a student backbone, or an MGD ablation variant)."""
    input:
        unpack(lambda wc: PLAN.run_inputs(*run_key(wc))),
    output:
        **train_outputs(),
    log:
        f"{RES}/logs/train/{{ds}}/{{proto}}/{{slug}}/{{run}}.log",
    benchmark:
        benchmark("train/{ds}/{proto}/{slug}/{run}")
    wildcard_constraints:
        run=STUDENT_RUN,
    retries: train_retries("student_runtime")
    conda:
        CONDA_ENV
    threads: THREADS["train"]
    resources:
        gpu=GPUS,
        mem_mb=dataset_resources("student_mem_mb"),
        runtime=train_runtime("student_runtime"),
    params:
        dir=lambda wc: PATHS.run_dir(*run_key(wc)),
        commands=lambda wc: PLAN.train_commands(*run_key(wc)),
        drop=DROP_CHECKPOINT,
    shell:
        TRAIN_SHELL


if SCORED_ONLY:

    use rule train_student as train_scored_student with:
        output:
            **train_outputs(temp_model=True),
        wildcard_constraints:
            run=SCORED_ONLY_RUN,
