"""Membership rules: leader, partition keys, and when a takeover is due."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cinderbak import membership
from cinderbak.membership import View, due_for_takeover, observe

LEASE = 30.0


def test_leader_is_the_same_for_every_member_and_none_when_alone_empty() -> (
    None
):
    assert membership.leader_of({"c", "a", "b"}) == "a"
    assert membership.leader_of([]) is None


def test_a_server_is_one_unit_and_a_detached_volume_another() -> None:
    assert membership.partition_key("s1", "v1") == "server:s1"
    assert membership.partition_key("s1", "v2") == "server:s1"
    assert membership.partition_key(None, "v1") == "volume:v1"


def test_a_member_gone_is_due_once_we_are_healthy_for_a_lease() -> None:
    view = observe(View(), 0.0, "a", frozenset({"a", "b"}), ["b"])
    assert due_for_takeover(view, 0.0, LEASE) == []
    view = observe(view, 40.0, "a", frozenset({"a"}), ["b"])
    assert view.absent_since == {"b": 40.0}
    assert due_for_takeover(view, 40.0, LEASE) == ["b"]


def test_right_after_we_rejoin_nobody_is_judged_dead() -> None:
    # The backend came back: our own key was gone too, so the others may
    # simply not have rejoined yet.
    view = observe(View(), 100.0, "a", frozenset({"a"}), ["b", "c"])
    assert due_for_takeover(view, 100.0, LEASE) == []
    view = observe(view, 110.0, "a", frozenset({"a", "b"}), ["b", "c"])
    assert due_for_takeover(view, 129.0, LEASE) == []
    assert due_for_takeover(view, 130.0, LEASE) == ["c"]


def test_no_answer_from_the_backend_is_no_evidence() -> None:
    view = observe(View(), 0.0, "a", frozenset({"a"}), [])
    view = observe(view, 50.0, "a", None, ["b"])
    assert view.healthy_since is None and not view.absent_since
    assert due_for_takeover(view, 500.0, LEASE) == []


def test_losing_our_own_membership_resets_our_health() -> None:
    view = observe(View(), 0.0, "a", frozenset({"a"}), [])
    view = observe(view, 50.0, "a", frozenset({"b"}), ["b", "c"])
    assert view.healthy_since is None
    assert due_for_takeover(view, 100.0, LEASE) == []


def test_a_host_without_open_work_is_never_taken_over() -> None:
    view = observe(View(), 0.0, "a", frozenset({"a"}), [])
    view = observe(view, 100.0, "a", frozenset({"a"}), [])
    assert due_for_takeover(view, 100.0, LEASE) == []


hosts = st.sampled_from(["a", "b", "c", "d"])
looks = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=60),
        st.one_of(st.none(), st.frozensets(hosts)),
        st.frozensets(hosts),
    ),
    max_size=30,
)


@given(looks)
def test_never_ourselves_never_a_member_never_while_unhealthy(
    steps: list[tuple[float, frozenset[str] | None, frozenset[str]]],
) -> None:
    view, now = View(), 0.0
    for gap, members, with_work in steps:
        now += gap
        view = observe(view, now, "a", members, with_work)
        due = due_for_takeover(view, now, LEASE)
        assert "a" not in due
        if members is None or "a" not in members:
            assert due == []
        else:
            assert not set(due) & members
            assert set(due) <= with_work
            assert view.healthy_since is not None
            assert now - view.healthy_since >= LEASE or due == []


def test_a_daemon_of_another_group_is_never_taken_for_dead() -> None:
    # Same journal, another group name (a mistyped configuration): its
    # runs appear after we started and it is never in our group.
    view = observe(View(), 0.0, "a", frozenset({"a"}), [])
    view = observe(view, 100.0, "a", frozenset({"a"}), ["stranger"])
    assert due_for_takeover(view, 200.0, LEASE) == []


def test_work_left_before_we_started_is_taken_over() -> None:
    # A host that died while no daemon watched: its runs are in flight at
    # our first look, and it never comes back.
    view = observe(View(), 0.0, "a", frozenset({"a"}), ["gone"])
    view = observe(view, 40.0, "a", frozenset({"a"}), ["gone"])
    assert due_for_takeover(view, 40.0, LEASE) == ["gone"]


STALE = membership.stale_after(LEASE, 5.0)


def test_staleness_is_under_a_lease_but_never_under_two_beats() -> None:
    assert membership.stale_after(30.0, 5.0) == 20.0
    assert membership.stale_after(10.0, 1.0) == 8.0
    assert membership.stale_after(10.0, 4.0) == 8.0


def test_a_member_cut_off_from_the_backend_but_beating_is_kept() -> None:
    # b lost etcd but still works (its journal counter moves): it keeps
    # its share and its runs are not taken over, however long it lasts.
    view = observe(
        View(), 0.0, "a", frozenset({"a", "b"}), [], {"b": 7}, STALE
    )
    for step in range(1, 40):
        now = step * 5.0
        view = observe(
            view, now, "a", frozenset({"a"}), ["b"], {"b": 7 + step}, STALE
        )
        assert view.live == {"a", "b"}
        assert due_for_takeover(view, now, LEASE) == []


def test_a_member_gone_from_both_is_due_once_its_beat_is_stale() -> None:
    view = observe(
        View(), 0.0, "a", frozenset({"a", "b"}), [], {"b": 1}, STALE
    )
    view = observe(
        view, 5.0, "a", frozenset({"a", "b"}), ["b"], {"b": 2}, STALE
    )
    # b dies at 6 s: its key lapses, its counter stands still at 2.
    view = observe(view, 35.0, "a", frozenset({"a"}), ["b"], {"b": 2}, STALE)
    assert view.live == {"a"}
    assert due_for_takeover(view, 35.0, LEASE) == ["b"]


def test_an_old_row_is_no_evidence_of_life_a_changed_one_is() -> None:
    # At our first look a counter is just a number: a host that died long
    # ago is not counted alive; a row that appears later, or moves, is.
    view = observe(
        View(), 0.0, "a", frozenset({"a"}), ["old"], {"old": 9}, STALE
    )
    assert view.live == {"a"}
    view = observe(
        view, 5.0, "a", frozenset({"a"}), ["old"], {"old": 9, "new": 1}, STALE
    )
    assert view.live == {"a", "new"}
    view = observe(
        view, 40.0, "a", frozenset({"a"}), ["old"], {"old": 9, "new": 1}, STALE
    )
    assert view.live == {"a"}
    assert due_for_takeover(view, 40.0, LEASE) == ["old"]


def test_an_unreadable_journal_keeps_what_we_knew_of_the_beats() -> None:
    view = observe(
        View(), 0.0, "a", frozenset({"a", "b"}), [], {"b": 1}, STALE
    )
    view = observe(view, 5.0, "a", frozenset({"a"}), ["b"], {"b": 2}, STALE)
    view = observe(view, 10.0, "a", frozenset({"a"}), ["b"], None, STALE)
    assert view.live == {"a", "b"}


beat_looks = st.lists(
    st.tuples(
        st.floats(min_value=0, max_value=60),
        st.one_of(st.none(), st.frozensets(hosts)),
        st.frozensets(hosts),
        st.dictionaries(hosts, st.integers(min_value=0, max_value=3)),
    ),
    max_size=30,
)


@given(beat_looks)
def test_a_host_whose_beat_moved_within_the_staleness_is_never_due(
    steps: list[
        tuple[float, frozenset[str] | None, frozenset[str], dict[str, int]]
    ],
) -> None:
    view, now = View(), 0.0
    moved: dict[str, float] = {}
    last: dict[str, int] = {}
    first = True
    for gap, members, with_work, beats in steps:
        now += gap
        # A row gone from the journal is a daemon that stopped on purpose
        # (it deletes its own): gone at once, its earlier beats void.
        for host in set(last) - beats.keys():
            del last[host]
            moved.pop(host, None)
        for host, count in beats.items():
            if not first and last.get(host) != count:
                moved[host] = now
            last[host] = count
        first = False
        view = observe(view, now, "a", members, with_work, beats, STALE)
        due = due_for_takeover(view, now, LEASE)
        for host in due:
            assert now - moved.get(host, -1e9) >= STALE, (host, now, moved)
