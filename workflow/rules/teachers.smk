# Training configs and the teachers (T_D: deep, T_W: wide; CPS-trained unless a teacher sets
# method: sup), one pair per dataset x partition, plus Table 4's second same-architecture
# teachers (seed + 1) at the ablation partition.
#
# Only model.pt and train.json are declared outputs: mgd train keeps checkpoint.pt beside them,
# so a killed job resumes from it when the same command is run again (Snakemake never deletes
# undeclared files), and `mgd job` sets it aside only when the inputs changed. A teacher's model.pt
# is protected (read-only): retraining one means deleting it on purpose.


rule run_config:
    """The `mgd train` YAML of one run, from the workflow config slice it needs."""
    output:
        f"{RUN}/config.yaml",
    params:
        text=lambda wc: yaml_text(PLAN.run(*run_of(wc)).train_config),
    log:
        f"{RES}/logs/setup/{{ds}}/{{proto}}/{{part}}/{{run}}_config.log",
    benchmark:
        benchmark("setup/{ds}/{proto}/{part}/{run}_config")
    localrule: True
    conda:
        CONDA_ENV
    shell:
        WRITE_TEXT


rule train_teacher:
    """A teacher backbone (ResNet-101 v1c or WRN-50-2 in the paper) trained by CPS, or by Sup."""
    input:
        unpack(lambda wc: PLAN.run_inputs(*run_of(wc))),
    output:
        **train_outputs(protect_model=True),
    wildcard_constraints:
        run="teacher_[A-Za-z0-9_]+",
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
        mem_mb=dataset_resources("teacher_mem_mb"),
        runtime=dataset_resources("teacher_runtime"),
    conda:
        CONDA_ENV
    shell:
        TRAIN_SHELL


# Teachers taken from official checkpoints (datasets.<ds>.teachers.<TD|TW>.checkpoints): at the
# listed partitions `mgd import-weights` writes the teacher's model.pt (protected, at the path a
# trained teacher has, so students, caches and evaluation are unchanged) and train_teacher is never
# scheduled there: this rule's wildcard matches only the imported run folders, and the ruleorder
# prefers it where both rules could make a file.
IMPORTED = PLAN.imported_runs()

if IMPORTED:

    ruleorder: import_teacher > train_teacher

    rule import_teacher:
        """An official MGD-SSSS / CPS checkpoint as the teacher's model file (architecture and class
        names checked), evaluated like a trained teacher."""
        input:
            unpack(lambda wc: PLAN.import_inputs(*IMPORTED[wc.imported].key)),
        output:
            model=protected(f"{RES}/{{imported}}/model.pt"),
            **({"metrics": f"{RES}/{{imported}}/metrics.json"} if EVAL_IN_TRAIN else {}),
        wildcard_constraints:
            imported="|".join(re.escape(folder) for folder in IMPORTED),
        params:
            commands=lambda wc: PLAN.import_commands(*IMPORTED[wc.imported].key),
        log:
            f"{RES}/logs/import/{{imported}}.log",
        benchmark:
            benchmark("import/{imported}")
        threads: THREADS["evaluate"]
        resources:
            gpu=min(1, GPUS) if EVAL_IN_TRAIN else 0,  # evaluation is one process; the import needs none
            mem_mb=lambda wc: CFG["datasets"][IMPORTED[wc.imported].dataset]["resources"]["evaluate_mem_mb"],
            runtime=lambda wc: CFG["datasets"][IMPORTED[wc.imported].dataset]["resources"]["evaluate_runtime"],
        conda:
            CONDA_ENV
        shell:
            "export OMP_NUM_THREADS={threads:q} MKL_NUM_THREADS={threads:q}; "
            "mgd job --gpus {resources.gpu:q} -- {params.commands} > {log:q} 2>&1"
