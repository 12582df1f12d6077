"""Partitions of a protocol. One word for each of the two names a partition has:

- ``partition``: its name, as the config keys it and a table prints it ("1/16", "92");
- ``slug``: the folder-safe form of that name, used in every path and workflow wildcard ("1-16", "92").
"""

from __future__ import annotations

from fractions import Fraction

from mgd.errors import ConfigError


def reduced_ratio(text: str, key: str) -> str:
    """``text`` as a reduced fraction in (0, 1), e.g. "2/16" -> "1/8"."""
    try:
        ratio = Fraction(text)
    except (ValueError, ZeroDivisionError):
        raise ConfigError(f"config key {key}: {text!r} is not a fraction like 1/8") from None
    if not 0 < ratio < 1:
        raise ConfigError(f"config key {key}: {text!r} is outside (0, 1)")
    return f"{ratio.numerator}/{ratio.denominator}"


def partitions(config: dict, ds: str, proto: str) -> dict[str, str]:
    """partition -> slug for ``datasets.<ds>.protocols.<proto>``, in column order."""
    protocol = config["datasets"][ds]["protocols"][proto]
    key = f"datasets.{ds}.protocols.{proto}"
    if "ratios" in protocol:
        names = [reduced_ratio(str(ratio), f"{key}.ratios") for ratio in protocol["ratios"]]
    elif "counts" in protocol:
        names = [str(count) for count in protocol["counts"]]
    else:
        names = [str(name) for name in protocol["import"]]
    if len(set(names)) != len(names):
        raise ConfigError(f"config key {key}: a partition is listed twice: {names}")
    return {name: name.replace("/", "-") for name in names}


def partition_slug(config: dict, ds: str, proto: str, name: str, key: str) -> str:
    """The slug of partition ``name`` (a partition or a slug; "2/16" matches "1/8"); ConfigError at ``key``."""
    slugs = partitions(config, ds, proto)
    for partition, slug in slugs.items():
        if name in (partition, slug):
            return slug
    if "/" in str(name) and reduced_ratio(str(name), key) in slugs:
        return slugs[reduced_ratio(str(name), key)]
    raise ConfigError(f"config key {key}: partition {name!r} is not one of {list(slugs)} "
                      f"of datasets.{ds}.protocols.{proto}")


def partition_of_slug(config: dict, ds: str, proto: str, slug: str) -> str:
    """The partition whose folders are named ``slug``."""
    return {slug: partition for partition, slug in partitions(config, ds, proto).items()}[slug]
