# Tables, tables.md and figures: `mgd report` (mgd/report.py) does the work; these rules hand it
# the table specs (which metrics.json feeds each cell) written from the plan (mgd/plan/tables.py).
# The tables (tables.html, one CSV per table) and the figures are report() outputs:
# `snakemake --report report.html` (or report.zip) holds them with the captions of
# workflow/report/*.rst.


rule table_spec:
    """Which metrics.json (and complexity json) each cell of one table is read from."""
    output:
        f"{RES}/specs/{{table}}.json",
    params:
        text=lambda wc: json_text(SPECS[wc.table]),
    log:
        f"{RES}/logs/report/{{table}}_spec.log",
    benchmark:
        benchmark("report/{table}_spec")
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
        csv=report(f"{RES}/{{table}}.csv", caption="../report/table_csv.rst", category="Tables",
                   subcategory="CSV files", labels={"table": "{table}", "file": "values"}),
        sources=report(f"{RES}/{{table}}.sources.csv", caption="../report/table_sources.rst", category="Tables",
                       subcategory="CSV files", labels={"table": "{table}", "file": "sources"}),
    log:
        f"{RES}/logs/report/{{table}}.log",
    benchmark:
        benchmark("report/{table}")
    localrule: True
    conda:
        CONDA_ENV
    shell:
        "mgd report table --spec {input.spec:q} --out {output.csv:q} --sources {output.sources:q} > {log:q} 2>&1"


rule tables_md:
    """Every table, our numbers beside the paper's (workflow/paper_tables.yaml), as Markdown and
    as the HTML page the Snakemake report shows."""
    input:
        specs=lambda wc: [f"{RES}/specs/{name}.json" for name in SPECS],
        csvs=lambda wc: [f"{RES}/{name}.csv" for name in SPECS],
        paper=PAPER_TABLES,
    output:
        markdown=f"{RES}/tables.md",
        html=report(f"{RES}/tables.html", caption="../report/tables.rst", category="Tables",
                    subcategory="All tables", labels={"table": "all, beside the paper", "file": "tables.html"}),
    log:
        f"{RES}/logs/report/tables_md.log",
    benchmark:
        benchmark("report/tables_md")
    localrule: True
    conda:
        CONDA_ENV
    shell:
        "mgd report markdown --spec {input.specs:q} --csv {input.csvs:q} --paper {input.paper:q} "
        "--out {output.markdown:q} --html {output.html:q} > {log:q} 2>&1"


rule fig1_tradeoff:
    """mIoU against backbone GMACs for every Table 1 (or 3) row, at one partition."""
    input:
        spec=lambda wc: f"{RES}/specs/{FIGURES['table']}.json",
        csv=lambda wc: f"{RES}/{FIGURES['table']}.csv",
    output:
        report(f"{RES}/fig1_tradeoff.png", caption="../report/fig1.rst", category="Figures",
               labels={"figure": "Figure 1: accuracy vs. cost"}),
    params:
        partition=lambda wc: FIGURES["partition"],
    log:
        f"{RES}/logs/report/fig1.log",
    benchmark:
        benchmark("report/fig1")
    localrule: True
    conda:
        CONDA_ENV
    shell:
        "mgd report tradeoff --spec {input.spec:q} --csv {input.csv:q} --partition {params.partition:q} "
        "--out {output:q} > {log:q} 2>&1"


rule fig3_partitions:
    """mIoU against partition per method for one student backbone, teachers as references."""
    input:
        spec=lambda wc: f"{RES}/specs/{FIGURES['table']}.json",
        csv=lambda wc: f"{RES}/{FIGURES['table']}.csv",
    output:
        report(f"{RES}/fig3_partitions.png", caption="../report/fig3.rst", category="Figures",
               labels={"figure": "Figure 3: mIoU per partition"}),
    params:
        backbone=lambda wc: FIGURES["backbone"],
    log:
        f"{RES}/logs/report/fig3.log",
    benchmark:
        benchmark("report/fig3")
    localrule: True
    conda:
        CONDA_ENV
    shell:
        "mgd report partitions --spec {input.spec:q} --csv {input.csv:q} --backbone {params.backbone:q} "
        "--out {output:q} > {log:q} 2>&1"


rule fig4_qualitative:
    """Input, ground truth and the Sup / CPS / MGD predictions on the first val images."""
    input:
        models=lambda wc: list(FIGURES["models"].values()),
        dataset=lambda wc: PLAN.dataset_inputs(FIGURES["dataset"]),
    output:
        report(f"{RES}/fig4_qualitative.png", caption="../report/fig4.rst", category="Figures",
               labels={"figure": "Figure 4: predictions"}),
    params:
        models=lambda wc: PLAN.figure_model_options(),
        dataset_yaml=lambda wc: PATHS.dataset_yaml(FIGURES["dataset"]),
        options=lambda wc: PLAN.evaluate_options(FIGURES["dataset"], workers=False),
        num_images=lambda wc: FIGURES["num_images"],
    log:
        f"{RES}/logs/report/fig4.log",
    benchmark:
        benchmark("report/fig4")
    localrule: True
    threads: 1
    conda:
        CONDA_ENV
    shell:
        "OMP_NUM_THREADS={threads:q} mgd report qualitative --dataset-config {params.dataset_yaml:q} {params.models} "
        "--num-images {params.num_images:q} {params.options} --out {output:q} > {log:q} 2>&1"
