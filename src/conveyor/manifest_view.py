"""The build's manifest as the controller reads it: its units, read from the queue once (the
manifest never changes; at 100,000 tests the end of a build needs them several times)."""

from __future__ import annotations

from collections.abc import Set as AbstractSet
from functools import cached_property
from typing import Any

from conveyor.queue import Queue
from conveyor.queue.protocol import Manifest
from conveyor.unit_names import nodeids_of


class ManifestView:
    def __init__(self, queue: Queue, manifest: Manifest) -> None:
        self.queue = queue
        self.manifest = manifest

    @property
    def meta(self) -> dict[str, Any]:
        return self.manifest.meta

    @cached_property
    def units(self) -> list[str]:
        """Every unit in the published (serving) order."""
        return self.queue.units()

    @cached_property
    def unit_ids(self) -> dict[str, str]:
        """Each unit's own string, by its name. A result's test id is swapped for this one
        object, so that the id is held once however many reports and records refer to it
        (at 100,000 tests, a copy per report and record adds up to tens of megabytes)."""
        return {unit: unit for unit in self.units}

    def collection_positions(self) -> dict[str, int]:
        """unit -> its place in the collection (the manifest lists the serving order)."""
        ranks = self.manifest.meta.get("collection_order")
        if not isinstance(ranks, list) or len(ranks) != len(self.units):
            ranks = list(range(len(self.units)))
        return dict(zip(self.units, ranks, strict=True))

    def test_ids_in_collection_order(self) -> list[str]:
        """Every test's id, in the order the workers collected them (a test id collected
        twice is there twice, as pytest collected it: conveyor.unit_names)."""
        positions = self.collection_positions()
        return nodeids_of(sorted(self.units, key=positions.__getitem__))

    def without_result(self, reported: AbstractSet[str]) -> list[str]:
        """Units with no final result, in collection order (as the user reads the suite)."""
        left = [unit for unit in self.units if unit not in reported]
        if not left:
            return left
        positions = self.collection_positions()
        return sorted(left, key=positions.__getitem__)
