# Tables, tables.md and figures: `mgd report` (mgd/report/) does the work; these rules hand it
# the table specs (which metrics.json feeds each cell) written from the plan (mgd/plan/tables.py).
# The tables (tables.html, one CSV per table) and the figures are report() outputs:
# `snakemake --report report.html` (or report.zip) holds them with the captions of
# workflow/report/*.rst.


rule table_spec:
    """Which metrics.json (and complexity and latency json) each cell of one table is read from."""
    output:
        f"{RES}/specs/{{table}}.json",
    log:
        f"{RES}/logs/report/{{table}}_spec.log",
    benchmark:
        benchmark("report/{table}_spec")
    localrule: True
    conda:
        CONDA_ENV
    params:
        text=lambda wc: json_text(SPECS[wc.table]),
    shell:
        WRITE_TEXT


rule table:
    """One table as CSV (mIoU in percent) and, cell for cell, the metrics.json it came from."""
    input:
        spec=f"{RES}/specs/{{table}}.json",
        cells=lambda wc: PLAN.table_inputs(wc.table),
    output:
        csv=report_if_built(
            f"{RES}/{{table}}.csv",
            caption="../report/table_csv.rst",
            category="Tables",
            subcategory="CSV files",
            labels={"table": "{table}", "file": "values"},
        ),
        sources=report_if_built(
            f"{RES}/{{table}}.sources.csv",
            caption="../report/table_sources.rst",
            category="Tables",
            subcategory="CSV files",
            labels={"table": "{table}", "file": "sources"},
        ),
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
    as the HTML page the Snakemake report shows; then the per-class tables."""
    input:
        specs=lambda wc: [f"{RES}/specs/{name}.json" for name in SPECS],
        csvs=lambda wc: [f"{RES}/{name}.csv" for name in SPECS],
        paper=PAPER_TABLES,
        classes=lambda wc: [PLAN.class_table_csv(name) for name in PLAN.class_tables],
    output:
        markdown=f"{RES}/tables.md",
        html=report_if_built(
            f"{RES}/tables.html",
            caption="../report/tables.rst",
            category="Tables",
            subcategory="All tables",
            labels={"table": "all, beside the paper", "file": "tables.html"},
        ),
    log:
        f"{RES}/logs/report/tables_md.log",
    benchmark:
        benchmark("report/tables_md")
    localrule: True
    conda:
        CONDA_ENV
    params:
        class_tables=lambda wc: shlex.join(
            word
            for name in PLAN.class_tables
            for word in ("--class-table", f"{RES}/specs/{name}.json", PLAN.class_table_csv(name))
        ),
    shell:
        "mgd report markdown --spec {input.specs:q} --csv {input.csvs:q} --paper {input.paper:q} "
        "{params.class_tables} --out {output.markdown:q} --html {output.html:q} > {log:q} 2>&1"


rule fig1_tradeoff:
    """mIoU against measured latency and against backbone GMACs for every Table 1 (or 3) row, at
    one partition; the latency files name the device."""
    input:
        spec=lambda wc: f"{RES}/specs/{FIGURES['table']}.json",
        csv=lambda wc: f"{RES}/{FIGURES['table']}.csv",
        latency=lambda wc: PLAN.table_latency_files(FIGURES["table"]),
    output:
        report_if_built(
            f"{RES}/fig1_tradeoff.png",
            caption="../report/fig1.rst",
            category="Figures",
            labels={"figure": "Figure 1: accuracy vs. cost"},
        ),
    log:
        f"{RES}/logs/report/fig1.log",
    benchmark:
        benchmark("report/fig1")
    localrule: True
    conda:
        CONDA_ENV
    params:
        partition=lambda wc: FIGURES["partition"],
    shell:
        "mgd report tradeoff --spec {input.spec:q} --csv {input.csv:q} --partition {params.partition:q} "
        "--out {output:q} > {log:q} 2>&1"


rule fig3_partitions:
    """mIoU against partition per method for one student backbone, teachers as references."""
    input:
        spec=lambda wc: f"{RES}/specs/{FIGURES['table']}.json",
        csv=lambda wc: f"{RES}/{FIGURES['table']}.csv",
    output:
        report_if_built(
            f"{RES}/fig3_partitions.png",
            caption="../report/fig3.rst",
            category="Figures",
            labels={"figure": "Figure 3: mIoU per partition"},
        ),
    log:
        f"{RES}/logs/report/fig3.log",
    benchmark:
        benchmark("report/fig3")
    localrule: True
    conda:
        CONDA_ENV
    params:
        backbone=lambda wc: FIGURES["backbone"],
    shell:
        "mgd report partitions --spec {input.spec:q} --csv {input.csv:q} --backbone {params.backbone:q} "
        "--out {output:q} > {log:q} 2>&1"


rule fig4_qualitative:
    """Input, ground truth and the Sup / CPS / MGD predictions on the first val images."""
    input:
        models=lambda wc: list(FIGURES["models"].values()),
        dataset=lambda wc: PLAN.dataset_inputs(FIGURES["dataset"]),
    output:
        report_if_built(
            f"{RES}/fig4_qualitative.png",
            caption="../report/fig4.rst",
            category="Figures",
            labels={"figure": "Figure 4: predictions"},
        ),
    log:
        f"{RES}/logs/report/fig4.log",
    benchmark:
        benchmark("report/fig4")
    localrule: True
    conda:
        CONDA_ENV
    threads: 1
    params:
        models=lambda wc: PLAN.figure_model_options(),
        dataset_yaml=lambda wc: PATHS.dataset_yaml(FIGURES["dataset"]),
        options=lambda wc: PLAN.evaluate_options(FIGURES["dataset"], workers=False),
        num_images=lambda wc: FIGURES["num_images"],
    shell:
        "OMP_NUM_THREADS={threads:q} mgd report qualitative --dataset-config {params.dataset_yaml:q} {params.models} "
        "--num-images {params.num_images:q} {params.options} --out {output:q} > {log:q} 2>&1"


# Per-class IoU, confusion matrices and training curves (mgd/plan/tables.py class_tables and
# curve_runs): report jobs reading files the tables' runs wrote, no training.
CLASS_TABLES = list(PLAN.class_tables)
CONFUSION_TABLES = PLAN.confusion_tables()
CURVE_TABLES = list(PLAN.curves)


rule class_table:
    """Per-class IoU (%) of every row of one of Tables 1-3 (one per dataset) at one partition,
    and, cell for cell, the metrics.json it came from."""
    input:
        spec=f"{RES}/specs/{{table}}.json",
        cells=lambda wc: PLAN.class_table_inputs(wc.table),
    output:
        csv=report_if_built(
            f"{RES}/{{table}}_classes.csv",
            tables=CLASS_TABLES,
            caption="../report/class_table.rst",
            category="Tables",
            subcategory="Per-class IoU",
            labels={"table": "{table}", "file": "per-class values"},
        ),
        sources=report_if_built(
            f"{RES}/{{table}}_classes.sources.csv",
            tables=CLASS_TABLES,
            caption="../report/class_table_sources.rst",
            category="Tables",
            subcategory="Per-class IoU",
            labels={"table": "{table}", "file": "per-class sources"},
        ),
    log:
        f"{RES}/logs/report/{{table}}_classes.log",
    benchmark:
        benchmark("report/{table}_classes")
    localrule: True
    conda:
        CONDA_ENV
    params:
        partition=lambda wc: PLAN.class_tables[wc.table]["partition"],
    shell:
        "mgd report classes --spec {input.spec:q} --partition {params.partition:q} --out {output.csv:q} "
        "--sources {output.sources:q} > {log:q} 2>&1"


rule confusion_figure:
    """Row-normalised confusion matrices of the Sup and MGD students of one per-class table."""
    input:
        spec=f"{RES}/specs/{{table}}.json",
        cells=lambda wc: PLAN.confusion_inputs(wc.table),
    output:
        report_if_built(
            f"{RES}/{{table}}_confusion.png",
            tables=CONFUSION_TABLES,
            caption="../report/confusion.rst",
            category="Figures",
            subcategory="Confusion matrices",
            labels={"figure": "confusion matrices", "table": "{table}"},
        ),
    log:
        f"{RES}/logs/report/{{table}}_confusion.log",
    benchmark:
        benchmark("report/{table}_confusion")
    localrule: True
    conda:
        CONDA_ENV
    params:
        options=lambda wc: PLAN.confusion_options(wc.table),
    shell:
        "mgd report confusion --spec {input.spec:q} {params.options} --out {output:q} > {log:q} 2>&1"


rule training_curves:
    """Loss terms and learning rate over the iterations of every trained run of one table, from
    the log.csv each training job writes beside its train.json."""
    input:
        lambda wc: PLAN.curve_inputs(wc.table),
    output:
        report_if_built(
            f"{RES}/{{table}}_curves.png",
            tables=CURVE_TABLES,
            caption="../report/curves.rst",
            category="Training curves",
            labels={"table": "{table}"},
        ),
    log:
        f"{RES}/logs/report/{{table}}_curves.log",
    benchmark:
        benchmark("report/{table}_curves")
    localrule: True
    conda:
        CONDA_ENV
    params:
        logs=lambda wc: PLAN.curve_log_options(wc.table),
        title=lambda wc: f"{SPECS[wc.table]['title'].split(':')[0]}: loss terms and learning rate of its runs",
    shell:
        "mgd report curves {params.logs} --title {params.title:q} --out {output:q} > {log:q} 2>&1"


if PLAN.zoo_figure():

    rule zoo_pareto:
        """The student zoo: mIoU against measured latency, Sup -> MGD arrows, the Pareto front."""
        input:
            spec=f"{RES}/specs/zoo.json",
            csv=f"{RES}/zoo.csv",
        output:
            report_if_built(
                PLAN.zoo_figure(),
                caption="../report/zoo.rst",
                category="Figures",
                labels={"figure": "Student zoo: accuracy vs. latency"},
            ),
        log:
            f"{RES}/logs/report/zoo_pareto.log",
        benchmark:
            benchmark("report/zoo_pareto")
        localrule: True
        conda:
            CONDA_ENV
        shell:
            "mgd report pareto --spec {input.spec:q} --csv {input.csv:q} --out {output:q} > {log:q} 2>&1"

    rule zoo:
        """The student zoo's table and Pareto figure (`snakemake zoo`)."""
        input:
            PLAN.zoo_targets(),
