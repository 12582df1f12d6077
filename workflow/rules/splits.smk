# Datasets and partitions: generate the synthetic data, write each dataset's config slice, and
# make (or import) one labeled/unlabeled split folder per partition.


rule synth:
    """Generate a synthetic dataset with `mgd synth` (dataset.json is written last)."""
    output:
        f"{RES}/{{ds}}/data/dataset.json",
    params:
        root=lambda wc: PATHS.synth_root(wc.ds),
        synth=lambda wc: CFG["datasets"][wc.ds]["synth"],
    log:
        f"{RES}/logs/synth/{{ds}}.log",
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "mgd synth --root {params.root} --num-train {params.synth[num_train]} --num-val {params.synth[num_val]} "
        "--size {params.synth[size]} --seed {params.synth[seed]} > {log} 2>&1"


rule dataset_config:
    """The dataset config slice every `mgd` command of this dataset reads."""
    output:
        f"{RES}/{{ds}}/dataset.yaml",
    params:
        text=lambda wc: yaml_text(PLAN.dataset_slice(wc.ds)),
    log:
        f"{RES}/logs/setup/{{ds}}_dataset_config.log",
    localrule: True
    conda:
        CONDA_ENV
    shell:
        WRITE_TEXT


rule split:
    """One partition: labeled.txt, unlabeled.txt and split.json (with the lists' hash)."""
    input:
        lambda wc: PLAN.split_inputs(*partition_of(wc)),
    output:
        f"{RES}/{{ds}}/splits/{{proto}}/{{part}}/split.json",
        f"{RES}/{{ds}}/splits/{{proto}}/{{part}}/labeled.txt",
        f"{RES}/{{ds}}/splits/{{proto}}/{{part}}/unlabeled.txt",
    params:
        command=lambda wc: PLAN.split_command(*partition_of(wc)),
    log:
        f"{RES}/logs/splits/{{ds}}/{{proto}}/{{part}}.log",
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "{params.command} > {log} 2>&1"
