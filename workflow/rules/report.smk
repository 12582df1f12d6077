# Tables, tables.md and figures: `mgd report` (mgd/report.py) does the work; these rules hand it
# the table specs (which metrics.json feeds each cell) written from the plan (mgd/plan/tables.py).


rule table_spec:
    """Which metrics.json (and complexity json) each cell of one table is read from."""
    output:
        f"{RES}/specs/{{table}}.json",
    params:
        text=lambda wc: json_text(SPECS[wc.table]),
    log:
        f"{RES}/logs/report/{{table}}_spec.log",
    localrule: True
    conda:
        CONDA_ENV
    shell:
        WRITE_TEXT


rule table:
    """One table as CSV (mIoU in percent) and, cell for cell, the metrics.json it came from."""
    input:
        spec=f"{RES}/specs/{{table}}.json",
        cells=lambda wc: PLAN.table_inputs(wc.table),
    output:
        csv=f"{RES}/{{table}}.csv",
        sources=f"{RES}/{{table}}.sources.csv",
    log:
        f"{RES}/logs/report/{{table}}.log",
    localrule: True
    conda:
        CONDA_ENV
    shell:
        "mgd report table --spec {input.spec} --out {output.csv} --sources {output.sources} > {log} 2>&1"


rule tables_md:
    """Every table, our numbers beside the paper's (workflow/paper_tables.yaml)."""
    input:
        specs=lambda wc: [f"{RES}/specs/{name}.json" for name in SPECS],
        csvs=lambda wc: [f"{RES}/{name}.csv" for name in SPECS],
        paper=PAPER_TABLES,
    output:
        f"{RES}/tables.md",
    log:
        f"{RES}/logs/report/tables_md.log",
    localrule: True
    conda:
        CONDA_ENV
    shell:
        "mgd report markdown --spec {input.specs} --csv {input.csvs} --paper {input.paper} --out {output} > {log} 2>&1"


rule fig1_tradeoff:
    """mIoU against backbone GMACs for every Table 1 (or 3) row, at one partition."""
    input:
        spec=lambda wc: f"{RES}/specs/{FIGURES['table']}.json",
        csv=lambda wc: f"{RES}/{FIGURES['table']}.csv",
    output:
        f"{RES}/fig1_tradeoff.png",
    params:
        partition=lambda wc: FIGURES["partition"],
    log:
        f"{RES}/logs/report/fig1.log",
    localrule: True
    conda:
        CONDA_ENV
    shell:
        "mgd report tradeoff --spec {input.spec} --csv {input.csv} --partition '{params.partition}' --out {output} > {log} 2>&1"


rule fig3_partitions:
    """mIoU against partition per method for one student backbone, teachers as references."""
    input:
        spec=lambda wc: f"{RES}/specs/{FIGURES['table']}.json",
        csv=lambda wc: f"{RES}/{FIGURES['table']}.csv",
    output:
        f"{RES}/fig3_partitions.png",
    params:
        backbone=lambda wc: FIGURES["backbone"],
    log:
        f"{RES}/logs/report/fig3.log",
    localrule: True
    conda:
        CONDA_ENV
    shell:
        "mgd report partitions --spec {input.spec} --csv {input.csv} --backbone {params.backbone} --out {output} > {log} 2>&1"


rule fig4_qualitative:
    """Input, ground truth and the Sup / CPS / MGD predictions on the first val images."""
    input:
        models=lambda wc: list(FIGURES["models"].values()),
        dataset=lambda wc: PLAN.dataset_inputs(FIGURES["dataset"]),
    output:
        f"{RES}/fig4_qualitative.png",
    params:
        models=lambda wc: " ".join(f"--model '{label}={path}'" for label, path in FIGURES["models"].items()),
        dataset_yaml=lambda wc: PATHS.dataset_yaml(FIGURES["dataset"]),
        options=lambda wc: PLAN.evaluate_options(FIGURES["dataset"], workers=False),
        num_images=lambda wc: FIGURES["num_images"],
    log:
        f"{RES}/logs/report/fig4.log",
    localrule: True
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "OMP_NUM_THREADS={threads} mgd report qualitative --dataset-config {params.dataset_yaml} {params.models} "
        "--num-images {params.num_images} {params.options} --out {output} > {log} 2>&1"
