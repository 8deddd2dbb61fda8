"""The controller's view of the manifest, over a real SQLite queue."""

from __future__ import annotations

from pathlib import Path

from conveyor.manifest_view import ManifestView
from conveyor.queue import open_queue


def test_tests_without_a_result_are_listed_in_collection_order(tmp_path: Path) -> None:
    queue = open_queue(f"sqlite://{tmp_path / 'q.db'}", "B")
    collected = ["t.py::test_0", "t.py::test_1", "t.py::test_2", "t.py::test_3"]
    served = ["t.py::test_3", "t.py::test_1", "t.py::test_0", "t.py::test_2"]  # slowest first
    queue.populate("gw0", served, {"collection_order": [collected.index(u) for u in served]})
    published = queue.manifest()
    assert published is not None
    view = ManifestView(queue, published)
    assert view.without_result({"t.py::test_1"}) == ["t.py::test_0", "t.py::test_2", "t.py::test_3"]
    assert view.without_result(set(collected)) == []
    queue.close()
