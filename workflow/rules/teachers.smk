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
    log:
        f"{RES}/logs/setup/{{ds}}/{{proto}}/{{slug}}/{{run}}_config.log",
    benchmark:
        benchmark("setup/{ds}/{proto}/{slug}/{run}_config")
    localrule: True
    conda:
        CONDA_ENV
    params:
        text=lambda wc: yaml_text(PLAN.run(*run_key(wc)).train_config),
    shell:
        WRITE_TEXT


rule train_teacher:
    """A teacher backbone (ResNet-101 v1c or WRN-50-2 in the paper) trained by CPS, or by Sup."""
    input:
        unpack(lambda wc: PLAN.run_inputs(*run_key(wc))),
    output:
        **train_outputs(protect_model=True),
    log:
        f"{RES}/logs/train/{{ds}}/{{proto}}/{{slug}}/{{run}}.log",
    benchmark:
        benchmark("train/{ds}/{proto}/{slug}/{run}")
    wildcard_constraints:
        run="teacher_[A-Za-z0-9_]+",
    retries: train_retries("teacher_runtime")
    conda:
        CONDA_ENV
    threads: THREADS["train"]
    resources:
        gpu=GPUS,
        mem_mb=dataset_resources("teacher_mem_mb"),
        runtime=train_runtime("teacher_runtime"),
    params:
        dir=lambda wc: PATHS.run_dir(*run_key(wc)),
        commands=lambda wc: PLAN.train_commands(*run_key(wc)),
        drop=DROP_CHECKPOINT,
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
            **({"metrics": f"{RES}/{{imported}}/metrics.json"} if EVAL_IN_TRAIN else {}),
            model=protected(f"{RES}/{{imported}}/model.pt"),
        log:
            f"{RES}/logs/import/{{imported}}.log",
        benchmark:
            benchmark("import/{imported}")
        wildcard_constraints:
            imported="|".join(re.escape(folder) for folder in IMPORTED),
        conda:
            CONDA_ENV
        threads: THREADS["evaluate"]
        resources:
            gpu=min(1, GPUS) if EVAL_IN_TRAIN else 0,  # evaluation is one process; the import needs none
            mem_mb=lambda wc: CFG["datasets"][IMPORTED[wc.imported].dataset]["resources"]["evaluate_mem_mb"],
            runtime=lambda wc: CFG["datasets"][IMPORTED[wc.imported].dataset]["resources"]["evaluate_runtime"],
        params:
            commands=lambda wc: PLAN.import_commands(*IMPORTED[wc.imported].key),
        shell:
            "export OMP_NUM_THREADS={threads:q} MKL_NUM_THREADS={threads:q}; "
            "mgd job --gpus {resources.gpu:q} -- {params.commands} > {log:q} 2>&1"
