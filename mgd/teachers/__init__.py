"""Teacher targets for the distillation objectives, whatever their source (docs/cache.md).

- ``storage``: the teacher cache's storage format (numpy only): views, layout, stores, manifest,
  integrity checks.
- ``targets``: a teacher's outputs in storage form (computed or read) and the per-step targets
  made of them (torch).
- ``sources``: online and cached teachers and the mixed-image strategy, chosen once per run
  (``build_teachers``).
- ``caching``: writing a cache from its config and checking it against its teachers (``mgd cache``).
- ``sizes``: bytes per view and projected sizes (``mgd cache --report``).

The package sits between the data layer (``mgd.data.streams``: batches and view keys; the views'
seeds, ``ViewReplay``, are in ``mgd.seeds``) and training; ``caching`` alone sits above training,
since ``--check`` compares a cache with a run's own batches (the layers: pyproject.toml,
``[tool.importlinter]``).
"""
