"""The queue's unit names for collected tests, a test id collected twice included."""

from __future__ import annotations

from conveyor.unit_names import nodeids_of, unit_names


def test_a_test_id_collected_twice_is_two_units() -> None:
    ids = [".::project", "a.py::t", ".::project", ".::project"]
    names = unit_names(ids)
    assert names == [
        ".::project",
        "a.py::t",
        ".::project (duplicate 2)",
        ".::project (duplicate 3)",
    ]
    assert nodeids_of(names) == ids


def test_a_name_taken_by_a_real_test_id_is_not_given_twice() -> None:
    ids = ["a.py::t", "a.py::t (duplicate 2)", "a.py::t"]
    names = unit_names(ids)
    assert len(set(names)) == 3 and names[:2] == ids[:2]


def test_unique_ids_are_their_own_names() -> None:
    ids = ["a.py::t[1]", "a.py::t[2]"]
    assert unit_names(ids) == ids == nodeids_of(ids)
