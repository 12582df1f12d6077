"""``mgd cache``: write a teacher cache from its config, report its sizes, or check it against its
teachers run online (``mgd.teachers.caching``, docs/cache.md)."""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from pathlib import Path

from mgd.errors import ConfigError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="the cache config (YAML, mgd/schemas/cache.schema.yaml): split, crop, scales, "
                                         "views, teachers, layout and the output folder written")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key (dotted path, YAML value); repeatable")
    parser.add_argument("--report", action="store_true",
                        help="print bytes per view and projected sizes (VOC-aug, Cityscapes) of the config's layout "
                             "(the default layout without --config), measured too where its cache exists, and exit")
    parser.add_argument("--json", action="store_true", help="with --report: print JSON")
    parser.add_argument("--check", metavar="RUN_CONFIG",
                        help="compare the cache a distillation run reads (its `mgd train` config's method.teacher_cache) "
                             "with its teachers run online on --batches of its batches and print JSON")
    parser.add_argument("--batches", type=int, default=2, help="with --check: batches compared")


def main(args: argparse.Namespace) -> int:
    from mgd.teachers.caching import (
        check_cache,
        check_settings,
        default_settings,
        layout_of,
        load_cache_config,
        write_cache,
    )
    from mgd.teachers.sizes import size_report
    from mgd.teachers.storage import MANIFEST_NAME, TeacherCache

    if args.check is not None:
        from mgd.train.config import load_config

        if args.batches < 1:
            raise ConfigError(f"--batches: {args.batches} is not a positive integer")
        print(json.dumps(check_cache(load_config(args.check, args.overrides), args.batches), indent=2))
        return 0
    cfg = load_cache_config(args.config, args.overrides) if args.config else None
    if args.report:
        cache = None
        if cfg is not None and (Path(cfg["output"]) / MANIFEST_NAME).is_file():
            cache = TeacherCache.open(cfg["output"], "output")
            check_settings(cache, cfg)
        settings = cfg or default_settings()
        layout, views = layout_of(settings), settings["views"]["count"]
        text, rows = size_report(layout, views, cache)
        print(json.dumps({"layout": asdict(layout), "views": views, "rows": rows}, indent=2) if args.json else text)
        return 0
    if cfg is None:
        raise ConfigError("--config: the cache config is needed (only --report works without it)")
    cache = write_cache(cfg)
    print(f"teacher cache {cache.root}: {len(cache.manifest['teachers'])} teacher(s), {len(cache.ids)} images x "
          f"{cache.views.count} views")
    return 0
