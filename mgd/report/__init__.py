"""The paper's tables and figures from metrics files (``mgd report`` runs them).

The workflow describes each table by a *spec* (JSON): its key columns, its value columns and, per
row and cell, the ``metrics.json`` (written by ``mgd evaluate``) the number comes from::

    {"name": "table1", "title": "...", "key_columns": ["method", "backbone"],
     "complexity": true, "latency": true, "value_columns": ["1/16", "1/8"],
     "rows": [{"keys": {"method": "MGD", "backbone": "resnet18d"}, "role": "student",
               "method": "mgd", "backbone": "resnet18d", "paper": "MGD|ResNet-18",
               "complexity": "results/d/complexity/resnet18d.json",
               "latency": "results/d/latency/resnet18d.json",
               "cells": {"1/16": "results/.../metrics.json", "1/8": "..."}}]}

Modules: ``inputs`` reads the specs, metrics, complexity, latency, table and training-log files;
``tables`` builds each table (CSV and sources CSV), the per-class IoU tables, and tables.md /
tables.html beside the paper's numbers; ``figures`` draws Figures 1, 3 and 4, the confusion
matrices, the training curves and the student zoo's Pareto figure. The ``mgd report`` subcommands (mgd/commands/report.py) call them.
"""
