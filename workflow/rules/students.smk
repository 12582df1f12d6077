# Students: Sup, MT, CPS (no teachers) and KD, CWD, SKT, MGD (distilled from the teachers of the
# same dataset and partition), for every student backbone, plus every ablation variant of MGD.


rule train_student:
    """One student run (a method on a student backbone, or an MGD ablation variant)."""
    input:
        unpack(lambda wc: PLAN.run_inputs(*run_of(wc))),
    output:
        **train_outputs(),
    wildcard_constraints:
        run="(?!teacher_)[A-Za-z0-9_.-]+",
    params:
        dir=lambda wc: PATHS.run_dir(*run_of(wc)),
        commands=lambda wc: PLAN.train_commands(*run_of(wc)),
        drop=DROP_CHECKPOINT,
    log:
        f"{RES}/logs/train/{{ds}}/{{proto}}/{{part}}/{{run}}.log",
    benchmark:
        benchmark("train/{ds}/{proto}/{part}/{run}")
    threads: THREADS["train"]
    resources:
        gpu=GPUS,
        mem_mb=dataset_resources("student_mem_mb"),
        runtime=dataset_resources("student_runtime"),
    conda:
        CONDA_ENV
    shell:
        TRAIN_SHELL
