# Teacher caches (teacher_source: cache; docs/cache.md): `mgd cache` runs every teacher of a
# dataset x partition once over K augmented views of each training image and stores what the
# KD, CWD and MGD students need; those students then read the cache instead of running the
# frozen teachers at every step (SKT, whose targets cannot be cached, stays online). With
# teacher_source: online (the default) these rules are not part of the DAG.
#
# One folder per partition and layout (views, feature grids: 7 plus Table 6's grids where Table 6
# runs, dense logits when KD/CWD run there). mgd cache resumes a killed job from its progress
# files and skips teachers already complete; complete.txt is written once it has finished.

if CACHE:

    rule cache_config:
        """The config `mgd cache` reads: the partition's data settings and all its teachers."""
        output:
            f"{RES}/{{ds}}/runs/{{proto}}/{{part}}/teacher_cache/{{layout}}/cache.yaml",
        params:
            text=lambda wc: yaml_text(PLAN.cache_configs[partition_of(wc)]),
        log:
            f"{RES}/logs/setup/{{ds}}/{{proto}}/{{part}}/cache_{{layout}}.log",
        localrule: True
        conda:
            CONDA_ENV
        shell:
            WRITE_TEXT

    rule cache_teachers:
        """Teacher outputs on the cached views, for every cached student of the partition."""
        input:
            config=f"{RES}/{{ds}}/runs/{{proto}}/{{part}}/teacher_cache/{{layout}}/cache.yaml",
            split=f"{RES}/{{ds}}/splits/{{proto}}/{{part}}/split.json",
            dataset=lambda wc: PLAN.dataset_inputs(wc.ds),
            teachers=lambda wc: [PATHS.model(*partition_of(wc), ref.run) for ref in PLAN.cache_layout(*partition_of(wc)).teachers],
        output:
            f"{RES}/{{ds}}/runs/{{proto}}/{{part}}/teacher_cache/{{layout}}/complete.txt",
        params:
            options=lambda wc: PLAN.cache_options(*partition_of(wc)),
        log:
            f"{RES}/logs/cache/{{ds}}/{{proto}}/{{part}}/{{layout}}.log",
        threads: THREADS["train"]
        resources:
            gpu=GPUS,
            mem_mb=dataset_resources("teacher_mem_mb"),
            runtime=dataset_resources("teacher_runtime"),
        conda:
            CONDA_ENV
        shell:
            "export OMP_NUM_THREADS={threads} MKL_NUM_THREADS={threads}; "
            "mgd job --gpus {resources.gpu} -- cache --config {input.config} {params.options} "
            ">> {log} 2>&1 && date > {output}"
