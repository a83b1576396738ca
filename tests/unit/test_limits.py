"""Concurrency limits hold globally, per project and per zone."""

from cinderbak.limits import Limiter


def test_global_limit():
    limiter = Limiter(total=2, per_project=5, per_zone=5)
    assert limiter.try_acquire("p1", None)
    assert limiter.try_acquire("p2", None)
    assert not limiter.try_acquire("p3", None)
    limiter.release("p1", None)
    assert limiter.try_acquire("p3", None)
    assert limiter.in_use == 2


def test_per_project_limit_leaves_room_for_others():
    limiter = Limiter(total=10, per_project=1, per_zone=10)
    assert limiter.try_acquire("p1", "az1")
    assert not limiter.try_acquire("p1", "az1")
    assert limiter.try_acquire("p2", "az1")


def test_per_zone_limit():
    limiter = Limiter(total=10, per_project=10, per_zone=1)
    assert limiter.try_acquire("p1", "az1")
    assert not limiter.try_acquire("p2", "az1")
    assert limiter.try_acquire("p2", "az2")


def test_a_server_group_starts_whole_or_not_at_all():
    limiter = Limiter(total=4, per_project=4, per_zone=4)
    assert limiter.try_acquire("p1", None, count=3)
    assert not limiter.try_acquire("p2", None, count=2)
    assert limiter.try_acquire("p2", None, count=1)
    limiter.release("p1", None, count=3)
    assert limiter.in_use == 1


def test_a_group_larger_than_the_limit_runs_alone():
    limiter = Limiter(total=2, per_project=2, per_zone=2)
    assert limiter.try_acquire("p1", None, count=5)
    assert not limiter.try_acquire("p2", None)
    limiter.release("p1", None, count=5)
    assert limiter.try_acquire("p2", None)
