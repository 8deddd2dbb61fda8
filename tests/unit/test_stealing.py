"""The steal rule on its own: which victim, which tail of its leases, and where the cut may fall
(the conformance suite checks every backend applies it)."""

from __future__ import annotations

import pytest

from conveyor.queue.stealing import Held, clean_boundary, cut, plan, victims


def free(*units: str) -> list[Held]:
    return [Held(unit, claimed=False) for unit in units]


def started(*units: str) -> list[Held]:
    return [Held(unit, claimed=True) for unit in units]


PLAIN = [f"m.py::test_{i}" for i in range(7)]


@pytest.mark.parametrize(
    ("count", "max_units", "taken"), [(1, 5, 1), (2, 5, 1), (5, 5, 3), (7, 5, 4), (7, 2, 2)]
)
def test_half_rounded_up_at_most_max_units(count: int, max_units: int, taken: int) -> None:
    assert cut(free(*PLAIN[:count]), max_units) == PLAIN[count - taken : count]


def test_claimed_leases_are_never_taken_and_do_not_count() -> None:
    held = [*started(*PLAIN[:3]), *free(*PLAIN[3:])]
    assert cut(held, 10) == PLAIN[5:]
    assert cut(started(*PLAIN), 10) == []


def test_the_cut_moves_later_then_earlier_but_never_inside_a_class() -> None:
    one = [f"m.py::TestOne::test_{i}" for i in range(3)]
    two = [f"m.py::TestTwo::test_{i}" for i in range(3)]
    assert cut(free(*one, *two), 10) == two  # the target is the class boundary itself
    assert cut(free(one[0], *two), 10) == two  # target inside TestTwo, nothing later: earlier
    assert cut(free(*one, two[0]), 10) == [two[0]]
    assert cut(free(*one), 10) == one  # the whole class moves: nothing before it on the victim
    assert cut([*started(one[0]), *free(*one[1:])], 10) == []  # it would split a started class
    assert cut(free(PLAIN[0], *one), 2) == []  # TestOne whole is 3 > max_units


def test_boundaries() -> None:
    assert clean_boundary(None, "m.py::T::test_a")
    assert clean_boundary("m.py::test_a", "m.py::test_b")  # no class: any cut is clean
    assert clean_boundary("m.py::T::test_a", "m.py::U::test_b")
    assert not clean_boundary("m.py::T::test_a", "m.py::T::test_b")
    assert clean_boundary("m.py::T::test_a", "n.py::T::test_a")


def test_victims_most_unclaimed_first_then_smallest_id_never_the_thief() -> None:
    held_by = {
        "gw3": free("a", "b"),
        "gw1": [*started("c"), *free("d", "e")],
        "gw10": free("f", "g"),
        "gw0": free("h", "i", "j"),
        "gw4": started("k", "l", "m"),
    }
    assert victims(held_by, "gw0") == ["gw1", "gw10", "gw3"]
    assert plan(held_by, "gw9", 5) == ("gw0", ["i", "j"])
    assert plan({"gw1": started("x")}, "gw2", 5) is None


def test_a_victim_without_a_clean_cut_is_passed_over() -> None:
    one = [f"m.py::TestOne::test_{i}" for i in range(4)]
    held_by = {"gw0": [*started(one[0]), *free(*one[1:])], "gw1": free("a", "b")}
    assert plan(held_by, "gw2", 5) == ("gw1", ["b"])


def test_a_tail_behind_the_thief_is_left_to_the_victim() -> None:
    """The thief has passed the victim's last leases (another module): it takes about half,
    ending with the last lease it has not passed; the victim keeps the rest."""
    passed = {PLAIN[5], PLAIN[6]}
    behind = passed.__contains__
    assert cut(free(*PLAIN), 10, behind=behind) == PLAIN[1:5]  # half of 7, rounded up
    assert cut(free(*PLAIN[3:]), 10, behind=behind) == PLAIN[3:5]
    assert cut(free(*PLAIN[5:]), 10, behind=behind) == []  # nothing it has not passed
    assert cut([*started(*PLAIN[:5]), *free(*PLAIN[5:])], 10, behind=behind) == []


def test_a_steal_never_ends_inside_a_class() -> None:
    """The end before a tail behind the thief must be a clean boundary too."""
    one = [f"m.py::TestOne::test_{i}" for i in range(4)]
    behind = {one[2], one[3]}.__contains__
    assert cut(free(*one), 10, behind=behind) == []
    two = [f"n.py::TestTwo::test_{i}" for i in range(2)]
    assert cut(free(*two, *one[2:]), 10, behind=behind) == two
