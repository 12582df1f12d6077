# Evaluation of every run on its dataset's val split, and backbone complexity and latency per dataset crop.
#
# With evaluate_in_training_job: true (the CPU-sized default and smoke configs) each training job
# evaluates its model in the same Python process (`mgd job -- train ... -- evaluate ...`: one
# torch/timm import instead of two) and writes metrics.json itself; the evaluate rule is then not defined.

if not EVAL_IN_TRAIN:

    rule evaluate:
        """mIoU of one run: metrics.json beside its model (the paper's protocol by default:
        sliding window of the training crop, stride 2/3 window, single scale)."""
        input:
            model=f"{RUN}/model.pt",
            dataset=lambda wc: PLAN.evaluate_inputs(wc.ds),
        output:
            f"{RUN}/metrics.json",
        log:
            f"{RES}/logs/evaluate/{{ds}}/{{proto}}/{{slug}}/{{run}}.log",
        benchmark:
            benchmark("evaluate/{ds}/{proto}/{slug}/{run}")
        conda:
            CONDA_ENV
        threads: THREADS["evaluate"]
        resources:
            gpu=min(1, GPUS),  # one process: the other GPUs of a multi-GPU job stay free
            mem_mb=dataset_resources("evaluate_mem_mb"),
            runtime=dataset_resources("evaluate_runtime"),
        params:
            options=lambda wc: PLAN.evaluate_options(wc.ds),
            dataset_yaml=lambda wc: PATHS.dataset_yaml(wc.ds),
        shell:
            "export OMP_NUM_THREADS={threads:q} MKL_NUM_THREADS={threads:q}; "
            "mgd job --gpus {resources.gpu:q} -- evaluate --model {input.model:q} "
            "--dataset-config {params.dataset_yaml:q} --split val {params.options} --out {output:q} > {log:q} 2>&1"


COMPLEXITY_FILES = PLAN.complexity_files()

if COMPLEXITY_FILES:

    rule complexity:
        """Backbone parameters and GMACs at each dataset's crop (the paper's Params/FLOPs columns),
        every table's backbones in one job and process: each `mgd complexity` is mostly its torch import."""
        output:
            COMPLEXITY_FILES,
        log:
            f"{RES}/logs/complexity.log",
        benchmark:
            benchmark("complexity")
        localrule: True
        conda:
            CONDA_ENV
        threads: 1
        params:
            commands=PLAN.complexity_commands(),
        shell:
            "export OMP_NUM_THREADS=1; mgd job {params.commands} > {log:q} 2>&1"


LATENCY_FILES = PLAN.latency_files()
LATENCY_RESOURCES = [CFG["datasets"][ds]["resources"] for ds in PLAN.latency_backbones()]

if LATENCY_FILES:

    rule latency:
        """Measured latency (ms) of every table backbone's DeepLabv3+ at its dataset's crop, batch 1,
        fp32, on the workflow's device (runtime.device) with threads.evaluate threads: the tables'
        latency column. One job (one torch import) for all, a few seconds in the default run."""
        output:
            LATENCY_FILES,
        log:
            f"{RES}/logs/latency.log",
        benchmark:
            benchmark("latency")
        conda:
            CONDA_ENV
        threads: THREADS["evaluate"]
        resources:
            gpu=min(1, GPUS),  # a GPU of its own: no other job's kernels in its timings
            mem_mb=max(resources["evaluate_mem_mb"] for resources in LATENCY_RESOURCES),
            runtime=max(resources["evaluate_runtime"] for resources in LATENCY_RESOURCES),
        params:
            commands=PLAN.latency_commands(),
        shell:
            "export OMP_NUM_THREADS={threads:q} MKL_NUM_THREADS={threads:q}; "
            "mgd job --gpus {resources.gpu:q} {params.commands} > {log:q} 2>&1"
