# Students: Sup, MT, CPS (no teachers) and KD, CWD, SKT, MGD (distilled from the teachers of the
# same dataset and partition), for every student backbone, plus every ablation variant of MGD.


rule train_student:
    """One student run (a method on a student backbone, or an MGD ablation variant)."""
    input:
        unpack(run_inputs),
    output:
        **train_outputs(),
    wildcard_constraints:
        run="(?!teacher_)[A-Za-z0-9_.-]+",
    params:
        dir=lambda wc: run_dir(wc.ds, wc.proto, wc.part, wc.run),
        commands=train_commands,
        drop=drop_checkpoint,
    log:
        f"{RES}/logs/train/{{ds}}/{{proto}}/{{part}}/{{run}}.log",
    threads: THREADS["train"]
    resources:
        gpu=GPUS,
        mem_mb=dataset_resources("student_mem_mb"),
        runtime=dataset_resources("student_runtime"),
    conda:
        CONDA_ENV
    shell:
        TRAIN_SHELL
