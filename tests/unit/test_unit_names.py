"""The queue's unit names for collected tests, a test id collected twice included."""

from __future__ import annotations

from conveyor.unit_names import group_of, id_of_unit, nodeids_of, unit_names


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


def test_a_unit_in_an_xdist_group_names_its_group() -> None:
    """--dist loadgroup: the group is read from the name by the queue (scheduling.whole_key);
    the test id comes back whole, brackets of its own included."""
    ids = ["a.py::t[x (y)]", "a.py::u", "a.py::t[x (y)]"]
    names = unit_names(ids, ["db", None, "db_web"])
    assert names == [
        "a.py::t[x (y)] (xdist_group db)",
        "a.py::u",
        "a.py::t[x (y)] (duplicate 2) (xdist_group db_web)",
    ]
    assert [group_of(name) for name in names] == ["db", None, "db_web"]
    assert nodeids_of(names) == ids
    assert [id_of_unit(name) for name in names] == ids
    assert group_of("a.py::t[x (y)]") is None
