"""Averages over named groups of OOD sets, reported beside the all-set ``"average"`` row: OpenOOD v1.5's
ImageNet-1K near-OOD (SSB-hard, NINCO) and far-OOD (iNaturalist, Textures, OpenImage-O) averages, and the
MOS 4-set average (iNaturalist, SUN, Places, Textures) most CLIP papers report.

A group row is ``{"method": m, "ood": "<group>-average", <metric>: mean over the group's sets}`` (percent,
like every row), written only when *all* of the group's sets were run (a partial group would not be the
published average), and only for groups that are not simply every set (that is the ``"average"`` row).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tagood.metrics import METRIC_NAMES as METRICS

#: Row names of the group averages (``"ood"`` field).
SUFFIX = "-average"


def imagenet_groups(sets: Sequence[str]) -> dict[str, list[str]]:
    """The ImageNet groups whose sets are all in ``sets``: ``near``, ``far`` (OpenOOD v1.5) and ``4set`` (MOS),
    as ``{"near-average": [...], ...}``; a group equal to all of ``sets`` is left out (it is ``"average"``)."""
    from tagood.data.imagenet import MOS_4SET, OPENOOD_FAR, OPENOOD_NEAR

    have = set(sets)
    out: dict[str, list[str]] = {}
    for name, members in (("near", OPENOOD_NEAR), ("far", OPENOOD_FAR), ("4set", MOS_4SET)):
        if set(members) <= have and set(members) != have:
            out[name + SUFFIX] = list(members)
    return out


def is_group_row(row: Mapping[str, Any]) -> bool:
    """True for a group-average row (``"near-average"``, ...), not for ``"average"`` or a set's row."""
    return str(row.get("ood", "")).endswith(SUFFIX)


def group_average_rows(rows: Sequence[Mapping[str, Any]], groups: Mapping[str, Sequence[str]]) -> list[dict[str, Any]]:
    """One row per (method, group) whose every set has a row: the mean of each metric over the group's sets.

    ``rows``: per-(method, set) rows (``"average"`` and group rows are ignored); ``groups``: row name ->
    member sets, e.g. :func:`imagenet_groups`. Methods keep their first-seen order, groups their given order.
    """
    per: dict[str, dict[str, Mapping[str, Any]]] = {}
    for r in rows:
        if r["ood"] == "average" or is_group_row(r):
            continue
        per.setdefault(r["method"], {})[r["ood"]] = r
    out: list[dict[str, Any]] = []
    for method, by_set in per.items():
        for gname, members in groups.items():
            if not members or any(m not in by_set for m in members):
                continue
            row: dict[str, Any] = {"method": method, "ood": gname}
            for k in METRICS:
                vals = [by_set[m][k] for m in members if k in by_set[m]]
                if len(vals) == len(members):
                    row[k] = sum(vals) / len(vals)
            out.append(row)
    return out
