#!/usr/bin/env bash
# CI: lint the code (ruff), the rule files (snakefmt) and the workflow, then run the whole smoke
# DAG (every table and figure) on 2 cores, then build the Snakemake report and check it holds
# every table and figure.
#
#   .ci/smoke.sh            # results in results/smoke (removed first)
# Measured here: about 8 minutes on a shared 2-core VM (see docs/workflow.md).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1

echo "[smoke.sh] ruff check, snakefmt --check (pinned in constraints.txt, configured in pyproject.toml)"
ruff check mgd tests benchmarks
snakefmt --check Snakefile workflow/rules
echo "[smoke.sh] snakemake --lint (default and smoke configs)"
snakemake --lint
snakemake --lint --configfile config/smoke.yaml

RESULTS=results/smoke
rm -rf "$RESULTS"
start=$(date +%s)
snakemake --cores 2 --configfile config/smoke.yaml --config results="$RESULTS"
echo "[smoke.sh] smoke DAG finished in $(( $(date +%s) - start )) s"

# every table (with its sources file), tables.md and every figure
for name in table1 table2 table3 table4 table5a table5b table6; do
    test -s "$RESULTS/$name.csv" && test -s "$RESULTS/$name.sources.csv"
done
for file in tables.md fig1_tradeoff.png fig3_partitions.png fig4_qualitative.png; do
    test -s "$RESULTS/$file"
done
# Table 2 runs two seeds (config/smoke.yaml): its student cells aggregate two runs each
python3 - "$RESULTS/table2.csv" "$RESULTS/table2.sources.csv" <<'PY'
import sys
import pandas as pd
table, sources = pd.read_csv(sys.argv[1]), pd.read_csv(sys.argv[2])
students = table[~table["method"].str.contains(r"\(T_|Majority", regex=True)]
column = [c for c in table.columns if c.endswith(" n")][0].removesuffix(" n")
assert (students[f"{column} n"] == 2).all(), students
assert all(len(cell.split(";")) == 2 for cell in sources.loc[students.index, column]), sources
print(f"[smoke.sh] table2: {len(students)} student cells of 2 seeds each")
PY
# keep_seed_models: false (config/smoke.yaml): the seed-1 students were scored, their models deleted
test -s "$RESULTS/synA/runs/few/4/sup_resnet18d_s1/metrics.json"
test ! -e "$RESULTS/synA/runs/few/4/sup_resnet18d_s1/model.pt"
test -s "$RESULTS/synA/runs/few/4/sup_resnet18d/model.pt"
# the per-class tables and confusion figures (one per dataset), every table's training curves
for name in table1 table3; do
    test -s "$RESULTS/${name}_classes.csv" && test -s "$RESULTS/${name}_classes.sources.csv"
    test -s "$RESULTS/${name}_confusion.png"
done
for name in table1 table2 table3 table4 table5a table5b table6; do
    test -s "$RESULTS/${name}_curves.png"
done
# the Snakemake report (self-contained HTML and zip) holds every table and figure
for report in report.html report.zip; do
    snakemake --configfile config/smoke.yaml --config results="$RESULTS" --report "$RESULTS/$report"
    python3 .ci/check_report.py "$RESULTS/$report" \
        --tables table1 table2 table3 table4 table5a table5b table6 --class-tables table1 table3 \
        --figures fig1_tradeoff fig3_partitions fig4_qualitative table1_confusion table3_confusion \
        table1_curves table2_curves table3_curves table4_curves table5a_curves table5b_curves table6_curves
done
# a second run has nothing left to do
snakemake --cores 2 --configfile config/smoke.yaml --config results="$RESULTS" -n 2>&1 | grep -q "Nothing to be done"
echo "[smoke.sh] ok"
