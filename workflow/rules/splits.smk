# Datasets and partitions: generate the synthetic data, write each dataset's config slice, check
# every image once, and make (or import) one labeled/unlabeled split folder per partition.


rule synth:
    """Generate a synthetic dataset with `mgd synth` (dataset.json is written last)."""
    output:
        f"{RES}/{{ds}}/data/dataset.json",
    log:
        f"{RES}/logs/synth/{{ds}}.log",
    benchmark:
        benchmark("synth/{ds}")
    conda:
        CONDA_ENV
    threads: 1
    params:
        root=lambda wc: PATHS.synth_root(wc.ds),
        num_train=lambda wc: CFG["datasets"][wc.ds]["synth"]["num_train"],
        num_val=lambda wc: CFG["datasets"][wc.ds]["synth"]["num_val"],
        size=lambda wc: CFG["datasets"][wc.ds]["synth"]["size"],
        seed=lambda wc: CFG["datasets"][wc.ds]["synth"]["seed"],
    shell:
        "mgd synth --root {params.root:q} --num-train {params.num_train:q} --num-val {params.num_val:q} "
        "--size {params.size:q} --seed {params.seed:q} > {log:q} 2>&1"


rule dataset_config:
    """The dataset config slice every `mgd` command of this dataset reads."""
    output:
        f"{RES}/{{ds}}/dataset.yaml",
    log:
        f"{RES}/logs/setup/{{ds}}_dataset_config.log",
    benchmark:
        benchmark("setup/{ds}_dataset_config")
    localrule: True
    conda:
        CONDA_ENV
    params:
        text=lambda wc: yaml_text(PLAN.dataset_slice(wc.ds)),
    shell:
        WRITE_TEXT


rule check_data:
    """Decode and validate every image/label pair of one split (`mgd check-data`); its summary is
    written only when all pass, and every split and training job of the dataset needs it, so a
    corrupt or mismatched file stops the workflow before any training."""
    input:
        lambda wc: PLAN.dataset_inputs(wc.ds),
    output:
        f"{RES}/{{ds}}/checks/{{split}}.json",
    log:
        f"{RES}/logs/checks/{{ds}}/{{split}}.log",
    benchmark:
        benchmark("checks/{ds}/{split}")
    conda:
        CONDA_ENV
    threads: 1
    params:
        dataset_yaml=lambda wc: PATHS.dataset_yaml(wc.ds),
    shell:
        "mgd check-data --dataset-config {params.dataset_yaml:q} --split {wildcards.split:q} --out {output:q} "
        "> {log:q} 2>&1"


rule split:
    """One partition: labeled.txt, unlabeled.txt and split.json (with the lists' hash)."""
    input:
        lambda wc: PLAN.split_inputs(*partition_key(wc)),
    output:
        f"{SPLIT_DIR}/split.json",
        f"{SPLIT_DIR}/labeled.txt",
        f"{SPLIT_DIR}/unlabeled.txt",
    log:
        f"{RES}/logs/splits/{{ds}}/{{proto}}/{{slug}}.log",
    benchmark:
        benchmark("splits/{ds}/{proto}/{slug}")
    conda:
        CONDA_ENV
    threads: 1
    params:
        command=lambda wc: PLAN.split_command(*partition_key(wc)),
    shell:
        "{params.command} > {log:q} 2>&1"
