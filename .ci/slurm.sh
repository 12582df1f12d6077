#!/usr/bin/env bash
# CI: run part of the smoke DAG through profiles/slurm on a real single-node SLURM on localhost,
# then one 2-GPU training job (gpus_per_job=2: sbatch --gpus=2, `mgd job` runs torchrun with 2
# processes; the node's two "GPUs" are a GRES backed by copies of /dev/null, so the processes use
# gloo on the CPU, standing in for NCCL on real GPUs), then one training job longer than its time
# limit (slurm_max_runtime=1: SLURM signals it, it checkpoints, its retries resume it).
#
# Installs slurm-wlm and munge with apt (root, no systemd), writes a one-node slurm.conf, starts
# munged, slurmctld and slurmd, runs a small smoke target with the slurm executor
# (snakemake-executor-plugin-slurm) to completion, checks that its jobs went through sbatch, and
# stops the daemons it started (by pid) whatever happens.
#
#   .ci/slurm.sh [TARGET...]       default target: the Sup ResNet-18 run of the smoke config,
#                                  with its split, dataset and evaluation (a few SLURM jobs)
# Environment: MGD_SLURM_RESULTS (default results/slurm-ci), SKIP_APT=1 (slurm already installed).
set -euo pipefail
cd "$(dirname "$0")/.."

RESULTS="${MGD_SLURM_RESULTS:-results/slurm-ci}"
TARGETS=("$@")
if [ ${#TARGETS[@]} -eq 0 ]; then
    TARGETS=("$RESULTS/synA/runs/ratio/1-4/sup_resnet18d/metrics.json"
             "$RESULTS/synA/runs/ratio/1-4/cps_mobilenetv2_100/metrics.json")
fi
export OMP_NUM_THREADS=1
STATE="$(mktemp -d /tmp/mgd-slurm-ci.XXXXXX)"
PIDS=()

log() { echo "[slurm.sh] $*" >&2; }

# The config files this script writes, put back as they were when it ends: a slurm.conf naming a
# stopped controller makes every later snakemake start wait about 9 s (the SLURM executor plugin
# runs `scontrol show config` when snakemake loads it, which waits for that controller).
SLURM_CONFIGS=(/etc/slurm/slurm.conf /etc/slurm/gres.conf)
mkdir -p "$STATE/saved"
for file in "${SLURM_CONFIGS[@]}"; do
    if [ -e "$file" ]; then cp -p "$file" "$STATE/saved/"; fi
done

restore_configs() {
    for file in "${SLURM_CONFIGS[@]}"; do
        if [ -e "$STATE/saved/$(basename "$file")" ]; then
            cp -p "$STATE/saved/$(basename "$file")" "$file"
        else
            rm -f "$file"
        fi
    done
}

stop_daemons() {
    local status=$?
    set +e
    for pid in "${PIDS[@]}"; do
        if kill -0 "$pid" 2>/dev/null; then
            log "stopping pid $pid"
            kill "$pid"
        fi
    done
    sleep 1
    for pid in "${PIDS[@]}"; do
        kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
    done
    restore_configs
    rm -rf "$STATE"
    exit "$status"
}
trap stop_daemons EXIT
trap "exit 130" INT TERM

# -- install ----------------------------------------------------------------------------------
if [ "${SKIP_APT:-0}" != "1" ] || ! command -v slurmctld >/dev/null; then
    log "installing slurm-wlm and munge"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq slurm-wlm munge >/dev/null
fi

# -- munge --------------------------------------------------------------------------------------
mkdir -p /run/munge /var/log/munge /var/lib/munge /etc/munge
chown munge:munge /run/munge /var/log/munge /var/lib/munge
if [ ! -s /etc/munge/munge.key ]; then
    dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
fi
chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged --pid-file=/run/munge/munged.pid
    sleep 1
    PIDS+=("$(cat /run/munge/munged.pid)")
fi
munge -n | unmunge | grep -q "STATUS:.*Success"

# -- slurm.conf ---------------------------------------------------------------------------------
HOST="$(hostname -s)"
CPUS="$(nproc --all)"  # not nproc: it follows OMP_NUM_THREADS, exported above
FREE_MB="$(awk '/MemAvailable/ {print int($2 / 1024 * 0.8)}' /proc/meminfo)"
mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd /var/log/slurm
cat > /etc/slurm/slurm.conf <<EOF
ClusterName=mgdci
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MinJobAge=600
SchedulerType=sched/backfill
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
GresTypes=gpu
NodeName=$HOST NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$FREE_MB Gres=gpu:2 State=UNKNOWN
PartitionName=main Nodes=$HOST Default=YES MaxTime=INFINITE State=UP
EOF
# Two schedulable GPUs on this CPU-only node: SLURM wants character devices, so two copies of
# /dev/null stand in for /dev/nvidia0-1. SLURM grants --gpus=2 and sets CUDA_VISIBLE_DEVICES=0,1;
# CUDA finds no device there and the job's processes use gloo.
for index in 0 1; do
    [ -c "/var/spool/slurmd/fakegpu$index" ] || { rm -f "/var/spool/slurmd/fakegpu$index"; mknod -m 666 "/var/spool/slurmd/fakegpu$index" c 1 3; }
done
cat > /etc/slurm/gres.conf <<EOF
NodeName=$HOST Name=gpu File=/var/spool/slurmd/fakegpu[0-1]
EOF

# -- daemons ------------------------------------------------------------------------------------
log "starting slurmctld and slurmd ($CPUS CPUs, ${FREE_MB} MB on $HOST)"
/usr/sbin/slurmctld -c  # -c: a clean state, no node or job left by an earlier run
for _ in $(seq 50); do [ -s "$STATE/slurmctld.pid" ] && break; sleep 0.2; done
PIDS+=("$(cat "$STATE/slurmctld.pid")")
/usr/sbin/slurmd
for _ in $(seq 50); do [ -s "$STATE/slurmd.pid" ] && break; sleep 0.2; done
PIDS+=("$(cat "$STATE/slurmd.pid")")
for _ in $(seq 60); do
    sinfo -h -o "%T" 2>/dev/null | grep -qE "^idle" && break
    sleep 1
done
sinfo
srun -N1 -t 1 hostname

# -- the workflow through the slurm profile -----------------------------------------------------
# CI node has no GPUs: gpus_per_job=0 so no job asks SLURM for --gpus. The partition and
# account are site settings (profiles/slurm leaves them to the user): given here on the command
# line, as is squeue for job states (this SLURM has no accounting database for sacct).
log "running ${TARGETS[*]} through profiles/slurm"
start=$(date +%s)
snakemake --profile profiles/slurm --configfile config/smoke.yaml \
    --config gpus_per_job=0 results="$RESULTS" \
    --slurm-no-account --default-resources slurm_partition=main mem_mb=2000 runtime=10 \
    --jobs 2 --slurm-init-seconds-before-status-checks 1 --slurm-status-command squeue \
    "${TARGETS[@]}" 2>&1 | tee "$STATE/snakemake.log"
log "workflow finished in $(( $(date +%s) - start )) s"

# -- checks: outputs exist and the jobs really went through sbatch ----------------------------
for target in "${TARGETS[@]}"; do
    test -s "$target" || { log "missing $target"; exit 1; }
done
submitted=$(grep -c "has been submitted with SLURM jobid" "$STATE/snakemake.log" || true)
log "jobs submitted to SLURM by this run: $submitted"
squeue -h -t all -o "%i %j %T %M" || true
[ "$submitted" -ge 1 ] || { log "no job went through SLURM"; exit 1; }

# -- one 2-process training job: gpus_per_job=2 ------------------------------------------------
MULTI="$RESULTS-2gpu"
MULTI_RUN="$MULTI/synA/runs/ratio/1-4/sup_resnet18d"
log "running $MULTI_RUN with gpus_per_job=2 through profiles/slurm"
snakemake --profile profiles/slurm --configfile config/smoke.yaml \
    --config gpus_per_job=2 results="$MULTI" \
    --slurm-no-account --default-resources slurm_partition=main mem_mb=2000 runtime=10 \
    --jobs 2 --slurm-init-seconds-before-status-checks 1 --slurm-status-command squeue \
    "$MULTI_RUN/metrics.json" 2>&1 | tee "$STATE/snakemake-2gpu.log"
test -s "$MULTI_RUN/metrics.json" || { log "missing $MULTI_RUN/metrics.json"; exit 1; }
python3 - "$MULTI_RUN/train.json" <<'PY'
import json, sys
summary = json.load(open(sys.argv[1]))
assert summary["world_size"] == 2, f"{sys.argv[1]}: world_size {summary['world_size']}, expected 2"
PY
grep -q "mgd job: 2 processes" "$MULTI/logs/train/synA/ratio/1-4/sup_resnet18d.log" \
    || { log "the training job did not start 2 processes"; exit 1; }

# -- a training job longer than its time limit --------------------------------------------------
# slurm_max_runtime=1: the job asks SLURM for 1 minute (its limit; SLURM counts minutes) and the
# run (1000 iterations, ~200 s of CPU here) needs longer: two or more allocations on any machine
# that SLURM lets run for 60-90 s each. No signal lead here (slurm_extra=''):
# the profile's 120 s would come before a 1-minute job starts, and slurmctld checks limits only
# every 30 s, so a short lead leaves a 1-minute job almost nothing after its start-up. SLURM's
# own SIGTERM at the limit (60-90 s after the start, KillWait 30 s before SIGKILL) is the same
# signal to the same processes. `mgd train` finishes its step, checkpoints and exits 75; the
# rule's retries (one per allocation its run needs) resume it until it completes. No periodic
# checkpoint (checkpoint_every 2000): a resume can only start from a stop's own.
WALL="$RESULTS-walltime"
WALL_RUN="$WALL/synA/runs/ratio/1-4/sup_resnet18d"
cat > "$STATE/walltime.yaml" <<EOF
slurm_max_runtime: 1
iterations_scale: 500
# retries = student_runtime / slurm_max_runtime: room for 30 allocations on a loaded machine
datasets: {synA: {resources: {student_runtime: 30}}}
runtime: {checkpoint_every: 2000, log_every: 1, tensorboard: false}
EOF
log "running $WALL_RUN (1000 iterations) as 1-minute SLURM jobs"
start=$(date +%s)
snakemake --profile profiles/slurm --configfile config/smoke.yaml "$STATE/walltime.yaml" \
    --config gpus_per_job=0 results="$WALL" \
    --slurm-no-account --default-resources slurm_partition=main mem_mb=2000 runtime=10 "slurm_extra=''" \
    --jobs 1 --slurm-init-seconds-before-status-checks 1 --slurm-status-command squeue \
    "$WALL_RUN/metrics.json" 2>&1 | tee "$STATE/snakemake-walltime.log"
log "walltime run finished in $(( $(date +%s) - start )) s"
test -s "$WALL_RUN/metrics.json" || { log "missing $WALL_RUN/metrics.json"; exit 1; }
# the SLURM jobs keep a finished run's checkpoint for a retry; the workflow deletes it at its end
test ! -e "$WALL_RUN/checkpoint.pt" || { log "$WALL_RUN/checkpoint.pt is left after the workflow ended"; exit 1; }
# Snakemake deletes a failed job's log before its retry; the plugin keeps the SLURM logs of the
# failed jobs: there SLURM says each ended at its time limit. train.json lists the iterations the
# run resumed at, one per allocation after the first.
SLURM_LOGS=.snakemake/slurm_logs/rule_train_student/synA_ratio_1-4_sup_resnet18d
grep -h "DUE TO TIME LIMIT" "$SLURM_LOGS"/*.log || true
python3 - "$WALL_RUN/log.csv" "$WALL_RUN/train.json" "$SLURM_LOGS" <<'PY'
import csv, json, pathlib, re, sys
iterations = [int(row["iteration"]) for row in csv.DictReader(open(sys.argv[1]))]
assert iterations == list(range(1, 1001)), f"{sys.argv[1]}: iterations not 1..1000 once each"
limited = [job.name for job in sorted(pathlib.Path(sys.argv[3]).glob("*.log"))
           if re.search(r"JOB \d+ ON \S+ CANCELLED AT \S+ DUE TO TIME LIMIT", job.read_text())]
assert limited, f"{sys.argv[3]}: no training job reached its time limit (the run fit in one minute?)"
resumed = json.load(open(sys.argv[2]))["resumed_at"]
# No periodic checkpoint (checkpoint_every 2000): a resume mid-run starts from a stop's own. A
# limit that falls after the last iteration (in the evaluation) resumes at 1000: that alone
# does not count.
assert any(0 < i < 1000 for i in resumed), f"{sys.argv[2]}: no allocation resumed mid-run (resumed_at {resumed})"
print(f"[slurm.sh] walltime: {len(limited)} SLURM jobs ended at their time limit ({', '.join(limited)}), "
      f"the run resumed at iterations {resumed}; log.csv holds iterations 1-1000 once each")
PY
log "ok"
