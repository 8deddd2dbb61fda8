"""The queue's name for each collected test: its pytest id, made unique.

Two collected items may share a test id, and plain pytest runs both: pytest-checkdocs yields
`.::project` twice, and a path given twice with `--keep-duplicates` collects its tests twice.
The queue holds one unit per name, so a second item of an id named like the first was never
run, and a failure of it never reported. The second and later items of an id are named apart
(`ID (duplicate 2)`); every worker collects the same items in the same order, so each name
means the same item on every worker. A result carries its unit's name; its reports keep the
test's own id, so the summary, --junitxml and --lf read as in a plain run.

Under `--dist loadgroup` a test marked `xdist_group` also carries its group in its name
(`ID (xdist_group NAME)`, as pytest-xdist appends `@NAME` to the test id): the queue keeps a
group on one worker by reading it there (`scheduling.whole_key`, and the Redis scripts' own).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

_DUPLICATE = re.compile(r"(?s)(.*) \(duplicate \d+\)")
GROUP_OPEN = " (xdist_group "  # the Redis scripts' GROUP_OPEN is the same
XDIST_GROUPS_META = "xdist_groups"  # the manifest's meta: true where names carry groups


def unit_names(nodeids: Iterable[str], groups: Sequence[str | None] | None = None) -> list[str]:
    """One name per item, in order: its id, or for a later item of the same id, that id with
    the item's place among them; then, where `groups` names the item's group, that group."""
    names = _unique(nodeids)
    if groups is None:
        return names
    return [
        f"{name}{GROUP_OPEN}{group})" if group is not None else name
        for name, group in zip(names, groups, strict=True)
    ]


def group_of(name: str) -> str | None:
    """The xdist_group a unit's name carries, or None."""
    at = name.rfind(GROUP_OPEN)
    if at < 0 or not name.endswith(")"):
        return None
    return name[at + len(GROUP_OPEN) : -1]


def _without_group(name: str) -> str:
    group = group_of(name)
    return name if group is None else name[: -len(GROUP_OPEN) - len(group) - 1]


def id_of_unit(name: str) -> str:
    """The test id of one unit's name, without the rest of the build to check it against."""
    name = _without_group(name)
    match = _DUPLICATE.fullmatch(name)
    return match.group(1) if match else name


def _unique(nodeids: Iterable[str]) -> list[str]:
    ids = list(nodeids)
    taken = set(ids)
    seen: dict[str, int] = {}
    names: list[str] = []
    for nodeid in ids:
        count = seen.get(nodeid, 0) + 1
        seen[nodeid] = count
        name = nodeid
        if count > 1:
            name = f"{nodeid} (duplicate {count})"
            while name in taken:  # an id that looks like a duplicate's name: keep looking
                count += 1
                name = f"{nodeid} (duplicate {count})"
            seen[nodeid] = count
            taken.add(name)
        names.append(name)
    return names


def nodeids_of(names: Iterable[str]) -> list[str]:
    """The test id of each unit name, over a whole build: the inverse of `unit_names`, except
    for a suite whose own test ids end in " (duplicate N)" beside the same id without it."""
    names = [_without_group(name) for name in names]
    known = set(names)
    ids: list[str] = []
    for name in names:
        match = _DUPLICATE.fullmatch(name)
        ids.append(match.group(1) if match and match.group(1) in known else name)
    return ids
