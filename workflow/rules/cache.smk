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
        """The config `mgd cache` reads (mgd/schemas/cache.schema.yaml): the partition's split and
        training transform, the views, all its teachers, the layout and the .partial output folder."""
        output:
            CACHE_CONFIG,
        log:
            f"{RES}/logs/setup/{{ds}}/{{proto}}/{{slug}}/cache_{{layout}}.log",
        benchmark:
            benchmark("setup/{ds}/{proto}/{slug}/cache_{layout}")
        localrule: True
        conda:
            CONDA_ENV
        params:
            text=lambda wc: yaml_text(PLAN.cache_configs[partition_key(wc)]),
        shell:
            WRITE_TEXT

    rule cache_teachers:
        """Teacher outputs on the cached views, for every cached student of the partition."""
        input:
            config=CACHE_CONFIG,
            split=f"{SPLIT_DIR}/split.json",
            dataset=lambda wc: PLAN.dataset_inputs(wc.ds),
            checks=lambda wc: PLAN.dataset_checks(wc.ds),
            teachers=lambda wc: [
                PATHS.model(*partition_key(wc), ref.run) for ref in PLAN.partition_cache(*partition_key(wc)).teachers
            ],
        output:
            cache_output(CACHE_FOLDER),
        log:
            f"{RES}/logs/cache/{{ds}}/{{proto}}/{{slug}}/{{layout}}.log",
        benchmark:
            benchmark("cache/{ds}/{proto}/{slug}/{layout}")
        conda:
            CONDA_ENV
        threads: THREADS["train"]
        resources:
            gpu=min(1, GPUS),  # one process: the other GPUs of a multi-GPU job stay free
            mem_mb=dataset_resources("teacher_mem_mb"),
            runtime=dataset_resources("teacher_runtime"),
        params:
            partial=CACHE_PARTIAL,
        shell:
            "export OMP_NUM_THREADS={threads:q} MKL_NUM_THREADS={threads:q}; "
            "mgd job --gpus {resources.gpu:q} -- cache --config {input.config:q} "
            ">> {log:q} 2>&1 && mv {params.partial:q} {output:q}"
