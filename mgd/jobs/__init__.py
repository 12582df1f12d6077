"""What ``mgd job`` does around the commands it runs, one module each: a GPU slot of its own
(``gpu_slots``), a checkpoint that is still valid (``checkpoint_guard``), and ``mgd train`` as several
processes whose failure is read from their exit statuses (``launch``, ``torchrun``).

``gpu_slots``, ``checkpoint_guard`` and ``launch`` import no torch, so a job starts in tens of
milliseconds; torch is loaded by the commands it runs, and by ``torchrun`` in a process of its own.
"""
