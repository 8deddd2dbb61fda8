"""pytest-dependency and pytest-order under conveyor: the verdict of plain pytest.

Both plugins work inside one process (pytest-order sorts the session's tests, pytest-dependency
remembers which ran and passed), so a build that shares such a suite between workers, or serves
it slowest first, gets another verdict: a dependent test skipped because what it depends on
passed on another worker (a failing test never run: a false green), a test missing the state
an earlier-ordered test left. conveyor runs such a build on one worker in pytest's order
(conveyor.ordered_suite)."""

from __future__ import annotations

import sys

import pytest
from conftest import RedisServer
from helpers import (
    assert_same_verdict,
    communicate_or_dump_stacks,
    conveyor_popen,
    summary_line,
)

NOTICE = "conveyor: one worker runs this build, in pytest's order"

# The dependent test fails, and sleeps so that timing history serves its module first.
DEPENDENT_FAILS = {
    "test_a_setup": """
        import pytest

        @pytest.mark.dependency()
        def test_login():
            pass

        @pytest.mark.dependency()
        def test_create_account():
            pass

        def test_plain():
            pass
        """,
    "test_b_use": """
        import time
        import pytest

        @pytest.mark.dependency(depends=["test_a_setup.py::test_login"], scope="session")
        def test_profile():
            time.sleep(0.3)
            assert False, "the profile page is broken"

        @pytest.mark.dependency(depends=["test_a_setup.py::test_create_account"], scope="session")
        def test_delete_account():
            time.sleep(0.3)
        """,
}

ORDERED = {
    "shared": "REGISTRY = []\nSTEPS = []\n",
    "test_a_checkout": """
        import time
        import pytest
        from shared import REGISTRY

        @pytest.mark.order(after="test_b_users.py::test_create_user")
        def test_checkout_uses_user():
            time.sleep(0.3)
            assert "alice" in REGISTRY

        @pytest.mark.order(-1)
        def test_cleanup_runs_last():
            assert REGISTRY == ["alice", "bob"], REGISTRY

        def test_cart_fails():
            assert sum([1, 2]) == 4
        """,
    "test_b_users": """
        import pytest
        from shared import REGISTRY

        @pytest.mark.order(1)
        def test_create_user():
            REGISTRY.append("alice")

        @pytest.mark.order(2)
        def test_create_second_user():
            REGISTRY.append("bob")

        def test_list_users():
            assert len(REGISTRY) >= 2
        """,
    "test_c_steps": """
        import pytest
        from shared import STEPS

        @pytest.mark.order(3)
        def test_step_three():
            assert STEPS == [1, 2]

        @pytest.mark.order(2)
        def test_step_two():
            assert STEPS == [1]
            STEPS.append(2)

        @pytest.mark.order(1)
        def test_step_one():
            STEPS.append(1)

        @pytest.mark.parametrize("n", [1, 2, 3])
        def test_unordered(n):
            pass
        """,
}


def _conveyor_with_history(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """conveyor with pytest's cache on, so a second run is served from timing history."""
    return pytester.run(sys.executable, "-m", "conveyor", "run", *args, timeout=300)


def _first_run_and_with_history(
    pytester: pytest.Pytester, workers: str, summary: str
) -> list[tuple[str, pytest.RunResult]]:
    """Plain pytest's closing line is `summary`, and conveyor's too (exit code 1) on a first
    run and on a second one served from its history."""
    plain = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    assert summary_line(plain) == summary
    runs = []
    for run in ("first", "with history"):
        ours = _conveyor_with_history(pytester, "-n", workers)
        assert (ours.ret, summary_line(ours)) == (1, summary), run
        runs.append((run, ours))
    return runs


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_failing_dependent_test_is_never_skipped_into_a_green_build(
    pytester: pytest.Pytester, workers: str
) -> None:
    """Served slowest first (its module has the slow tests), the dependent test used to run
    before its dependency and be skipped: 2 passed, 2 skipped, exit 0, where plain pytest
    fails it."""
    pytester.makepyfile(**DEPENDENT_FAILS)
    for _, ours in _first_run_and_with_history(pytester, workers, "1 failed, 4 passed"):
        text = ours.stdout.str()
        assert NOTICE in text and "-m 'not dependency'" in text and "-p no:dependency" in text


def test_a_dependency_suite_has_plain_pytests_verdict_test_by_test(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(**DEPENDENT_FAILS)
    assert_same_verdict(pytester, workers=3)


def test_two_machines_on_redis_run_an_ordered_suite_on_one_worker(
    pytester: pytest.Pytester, redis_server: RedisServer
) -> None:
    """The leader's manifest says the build is kept whole: the other machine's workers, which
    have nothing to take, still report the whole build with plain pytest's verdict."""
    pytester.makepyfile(**ORDERED)
    queue = ("--queue", redis_server.url, "--build", "ordered")
    machines = [
        conveyor_popen(pytester.path, "run", "-n", "2", *queue, "-p", "no:cacheprovider")
        for _ in range(2)
    ]
    for machine in machines:
        output = communicate_or_dump_stacks(machine, timeout=240)
        assert machine.returncode == 1, output
        assert "1 failed, 11 passed" in output, output


@pytest.mark.parametrize("workers", ["1", "3"])
def test_pytest_orders_tests_run_in_its_order_first_run_and_with_history(
    pytester: pytest.Pytester, workers: str
) -> None:
    pytester.makepyfile(**ORDERED)
    for run, ours in _first_run_and_with_history(pytester, workers, "1 failed, 11 passed"):
        ours.stdout.fnmatch_lines(["FAILED test_a_checkout.py::test_cart_fails*"])
        assert "pytest-order's `order` marker" in ours.stdout.str()
        if run == "with history":  # estimated for the one worker that runs it
            ours.stdout.fnmatch_lines(["conveyor: timing history knows *with 1 worker(s)*"])


def test_a_suite_that_declares_no_order_is_still_shared(pytester: pytest.Pytester) -> None:
    """Names given with pytest-dependency's marker, but nothing depending on them, and the
    plugins installed: nothing to keep in order, so the build is shared as usual."""
    pytester.makepyfile(
        **{
            f"test_m{m}": f"""
            import pytest

            @pytest.mark.dependency()
            def test_named_{m}():
                pass
            """
            for m in range(4)
        }
    )
    _, ours = assert_same_verdict(pytester, workers=2)
    assert NOTICE not in ours.stdout.str()


def test_leaving_the_plugin_out_shares_the_build_again(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(**ORDERED)
    ours = _conveyor_with_history(pytester, "-n", "2", "-p", "no:pytest_order")
    assert NOTICE not in ours.stdout.str()
    assert ours.ret == 1  # without pytest-order its markers order nothing: tests fail
