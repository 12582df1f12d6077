# Training configs and the CPS teachers (T_D: deep, T_W: wide), one pair per dataset x partition,
# plus Table 4's second same-architecture teachers (seed + 1) at the ablation partition.
#
# Only model.pt and train.json are declared outputs: mgd train keeps checkpoint.pt beside them,
# so a killed job resumes from it when the same command is run again (Snakemake never deletes
# undeclared files), and `mgd job` discards it only when the inputs changed.


rule run_config:
    """The `mgd train` YAML of one run, from the workflow config slice it needs."""
    output:
        f"{RES}/{{ds}}/runs/{{proto}}/{{part}}/{{run}}/config.yaml",
    params:
        text=lambda wc: yaml_text(PLAN.run(*run_of(wc)).train_config),
    log:
        f"{RES}/logs/setup/{{ds}}/{{proto}}/{{part}}/{{run}}_config.log",
    localrule: True
    conda:
        CONDA_ENV
    shell:
        WRITE_TEXT


rule train_teacher:
    """CPS on a teacher backbone (ResNet-101 v1c or WRN-50-2)."""
    input:
        unpack(lambda wc: PLAN.run_inputs(*run_of(wc))),
    output:
        **train_outputs(),
    wildcard_constraints:
        run="teacher_[A-Za-z0-9_]+",
    params:
        dir=lambda wc: PATHS.run_dir(*run_of(wc)),
        commands=lambda wc: PLAN.train_commands(*run_of(wc)),
        drop=DROP_CHECKPOINT,
    log:
        f"{RES}/logs/train/{{ds}}/{{proto}}/{{part}}/{{run}}.log",
    threads: THREADS["train"]
    resources:
        gpu=GPUS,
        mem_mb=dataset_resources("teacher_mem_mb"),
        runtime=dataset_resources("teacher_runtime"),
    conda:
        CONDA_ENV
    shell:
        TRAIN_SHELL
