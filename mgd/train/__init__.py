"""Training engine: one loop, methods as objectives.

This package's ``__init__`` imports nothing, so ``mgd job`` (which must start without torch) can
name the file the loop resumes from.
"""

#: a run folder's resumable state, written by the loop every runtime.checkpoint_every iterations
CHECKPOINT_NAME = "checkpoint.pt"
#: the run summary and the per-iteration scalars (loss terms, lr) the loop writes beside it
SUMMARY_NAME = "train.json"
LOG_NAME = "log.csv"
