"""The workers' count a build's plan is made for: the fleet's, not the leader machine's."""

from __future__ import annotations

from conveyor.fleet_size import other_machines_workers, planned_workers


def test_a_build_of_one_machine_plans_for_its_own_workers() -> None:
    builds = [{"workers": 4, "fleet_workers": 12}]
    assert planned_workers(2, networked=False, ci_machines=5, builds=builds) == 2
    assert planned_workers(0, networked=False, ci_machines=None) == 1


def test_the_cis_parallel_jobs_come_first() -> None:
    builds = [{"workers": 1, "fleet_workers": 2}]
    assert planned_workers(2, networked=True, ci_machines=4, builds=builds) == 8
    assert planned_workers(2, networked=True, ci_machines=1, builds=builds) == 3


def test_the_recent_builds_other_machines_are_expected_again() -> None:
    """A reporter's machine ran 1 worker of 4: three ran elsewhere, and come again beside this
    machine's own count, whatever that is now; a build of one machine in between (the suite
    run by hand) does not unplan the fleet; builds older than the newest five do not count."""
    builds = [
        {"workers": 1, "fleet_workers": 8},  # sixth newest: too old
        {"workers": 1, "fleet_workers": 4},
        *[{"workers": 2, "fleet_workers": 2}] * 3,
        {"workers": 2},  # no fleet count (recorded by an earlier version): passed over
        {"workers": 1, "fleet_workers": 1},
    ]
    assert other_machines_workers(builds) == 3
    assert planned_workers(2, networked=True, ci_machines=None, builds=builds) == 5
    assert other_machines_workers(builds[2:]) == 0


def test_nonsense_in_the_records_counts_for_nothing() -> None:
    for record in (
        {"workers": True, "fleet_workers": 4},
        {"workers": 1, "fleet_workers": "4"},
        {"workers": 0, "fleet_workers": 4},
        {"workers": 5, "fleet_workers": 4},  # fewer in the fleet than on its machine
    ):
        assert other_machines_workers([record]) == 0, record
    assert planned_workers(3, networked=True, ci_machines=None, builds=[]) == 3
