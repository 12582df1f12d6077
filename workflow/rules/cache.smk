# Teacher caches (teacher_source: cache; docs/cache.md): `mgd cache` runs every teacher of a
# dataset x partition once over K augmented views of each training image and stores what the
# KD, CWD and MGD students need; those students then read the cache instead of running the
# frozen teachers at every step (SKT, whose targets cannot be cached, stays online). With
# teacher_source: online (the default) these rules are not part of the DAG.
#
# One folder per partition and layout (views, feature grids: 7 plus Table 6's grids where Table 6
# runs, dense logits when KD/CWD run there), declared as a directory output (cache.temp: true
# makes it temp(), deleted once its students finished). `mgd cache` writes into <folder>.partial,
# where a killed job resumes from its progress files (Snakemake deletes a declared output before
# rerunning its job, an undeclared folder never), and the finished cache is renamed to <folder>.

if CACHE:

    rule cache_config:
        """The config `mgd cache` reads: the partition's data settings and all its teachers."""
        output:
            CACHE_CONFIG,
        params:
            text=lambda wc: yaml_text(PLAN.cache_configs[partition_of(wc)]),
        log:
            f"{RES}/logs/setup/{{ds}}/{{proto}}/{{part}}/cache_{{layout}}.log",
        benchmark:
            benchmark("setup/{ds}/{proto}/{part}/cache_{layout}")
        localrule: True
        conda:
            CONDA_ENV
        shell:
            WRITE_TEXT

    rule cache_teachers:
        """Teacher outputs on the cached views, for every cached student of the partition."""
        input:
            config=CACHE_CONFIG,
            split=f"{SPLIT_DIR}/split.json",
            dataset=lambda wc: PLAN.dataset_inputs(wc.ds),
            checks=lambda wc: PLAN.dataset_checks(wc.ds),
            teachers=lambda wc: [PATHS.model(*partition_of(wc), ref.run) for ref in PLAN.cache_layout(*partition_of(wc)).teachers],
        output:
            cache_output(CACHE_FOLDER),
        params:
            options=lambda wc: PLAN.cache_options(*partition_of(wc)),
            partial=CACHE_PARTIAL,
        log:
            f"{RES}/logs/cache/{{ds}}/{{proto}}/{{part}}/{{layout}}.log",
        benchmark:
            benchmark("cache/{ds}/{proto}/{part}/{layout}")
        threads: THREADS["train"]
        resources:
            gpu=min(1, GPUS),  # one process: the other GPUs of a multi-GPU job stay free
            mem_mb=dataset_resources("teacher_mem_mb"),
            runtime=dataset_resources("teacher_runtime"),
        conda:
            CONDA_ENV
        shell:
            "export OMP_NUM_THREADS={threads:q} MKL_NUM_THREADS={threads:q}; "
            "mgd job --gpus {resources.gpu:q} -- cache --config {input.config:q} {params.options} "
            ">> {log:q} 2>&1 && mv {params.partial:q} {output:q}"
