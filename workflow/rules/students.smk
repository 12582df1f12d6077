# Students: Sup, MT, CPS (no teachers) and KD, CWD, SKT, MGD (distilled from the teachers of the
# same dataset and partition), for every student backbone, plus every ablation variant of MGD.


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
        run="(?!teacher_)[A-Za-z0-9_.-]+",
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
