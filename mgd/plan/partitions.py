"""Partitions of a protocol: the display name a table prints ("1/16", "92") and the slug of its
folders ("1-16", "92")."""

from __future__ import annotations

from fractions import Fraction
from typing import NamedTuple

from mgd.errors import ConfigError


class Partition(NamedTuple):
    display: str
    slug: str


def ratio_display(text: str, key: str) -> str:
    """``text`` as a reduced fraction in (0, 1), e.g. "2/16" -> "1/8"."""
    try:
        ratio = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"config key {key}: {text!r} is not a fraction like 1/8") from None
    if not 0 < ratio < 1:
        raise ConfigError(f"config key {key}: {text!r} is outside (0, 1)")
    return f"{ratio.numerator}/{ratio.denominator}"


def partitions(config: dict, ds: str, proto: str) -> list[Partition]:
    """The partitions of ``datasets.<ds>.protocols.<proto>``, in column order."""
    protocol = config["datasets"][ds]["protocols"][proto]
    key = f"datasets.{ds}.protocols.{proto}"
    if "ratios" in protocol:
        names = [ratio_display(str(ratio), f"{key}.ratios") for ratio in protocol["ratios"]]
    elif "counts" in protocol:
        names = [str(count) for count in protocol["counts"]]
    else:
        names = [str(name) for name in protocol["import"]]
    if len(set(names)) != len(names):
        raise ConfigError(f"config key {key}: a partition is listed twice: {names}")
    return [Partition(name, name.replace("/", "-")) for name in names]


def partition_slug(config: dict, ds: str, proto: str, name: str, key: str) -> str:
    """The slug of partition ``name`` (display or slug, "2/16" matching "1/8"); ConfigError at ``key``."""
    parts = partitions(config, ds, proto)
    for part in parts:
        if name in (part.display, part.slug):
            return part.slug
    if "/" in str(name):
        normal = ratio_display(str(name), key)
        for part in parts:
            if part.display == normal:
                return part.slug
    raise ConfigError(f"config key {key}: partition {name!r} is not one of {[p.display for p in parts]} "
                      f"of datasets.{ds}.protocols.{proto}")


def partition_display(config: dict, ds: str, proto: str, slug: str) -> str:
    return {part.slug: part.display for part in partitions(config, ds, proto)}[slug]
