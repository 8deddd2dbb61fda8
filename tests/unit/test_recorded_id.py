"""Test ids given as pytest's summary writes them, matched to the ids a build recorded."""

from __future__ import annotations

from conveyor.replay import recorded_id

RECORDED = ["tests/test_x.py::test_a", "tests/test_x.py::T::test_a", "other/test_x.py::test_b"]


def test_an_id_relative_to_a_folder_below_the_rootdir_is_found() -> None:
    assert recorded_id("test_x.py::test_a", RECORDED) == "tests/test_x.py::test_a"
    assert recorded_id("test_x.py::T::test_a", RECORDED) == "tests/test_x.py::T::test_a"


def test_an_id_relative_to_a_folder_above_the_rootdir_is_found() -> None:
    assert recorded_id("../repo/tests/test_x.py::test_a", RECORDED) == "tests/test_x.py::test_a"
    assert recorded_id("project/tests/test_x.py::test_a", RECORDED) == "tests/test_x.py::test_a"


def test_an_exact_id_an_unknown_one_and_an_ambiguous_one_stay_as_given() -> None:
    assert recorded_id("tests/test_x.py::test_a", RECORDED) == "tests/test_x.py::test_a"
    assert recorded_id("test_y.py::test_a", RECORDED) == "test_y.py::test_a"
    ambiguous = ["a/test_x.py::test_a", "b/test_x.py::test_a"]
    assert recorded_id("test_x.py::test_a", ambiguous) == "test_x.py::test_a"
