"""Which backups a verification pass picks, and what it concludes."""

from __future__ import annotations

import datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cinderbak import verification as v
from cinderbak.policy import (
    POLICY_OPTS,
    PolicyConfigError,
    Sample,
    parse_policy,
)

DEFAULTS = {opt.dest: opt.default for opt in POLICY_OPTS} | {
    "schedule": "every 1h"
}
T0 = datetime.datetime(2026, 11, 1, tzinfo=datetime.UTC)
DIGEST = "ab" * 32


def candidate(n, verified_days=None, status="available", volume="vol"):
    last = None
    if verified_days is not None:
        last = v.LastVerified(
            "ok", T0 + datetime.timedelta(days=verified_days)
        )
    return v.Candidate(
        backup_id=f"b{n}",
        volume_id=volume,
        created_at=T0 - datetime.timedelta(days=100 - n),
        status=status,
        last_verified=last,
    )


def test_never_verified_oldest_first_then_longest_ago_verified():
    pool = [
        candidate(5),
        candidate(1, verified_days=3),
        candidate(2),
        candidate(3, verified_days=1),
        candidate(4, status="restoring"),
    ]
    picked = v.choose(pool, Sample(count=10))
    assert [c.backup_id for c in picked] == ["b2", "b5", "b3", "b1"]
    assert [c.backup_id for c in v.choose(pool, Sample(count=1))] == ["b2"]


@pytest.mark.parametrize(
    ("percent", "population", "expected"),
    [(10, 25, 3), (10, 1, 1), (100, 7, 7), (0.1, 5, 1), (50, 0, 0)],
)
def test_percentage_rounds_up_and_takes_at_least_one(
    percent, population, expected
):
    pool = [candidate(n) for n in range(population)]
    assert len(v.choose(pool, Sample(percent=percent))) == expected


@given(
    st.lists(
        st.tuples(
            st.integers(0, 90),
            st.one_of(st.none(), st.integers(0, 30)),
            st.sampled_from(["available", "creating", "restoring"]),
        ),
        max_size=30,
    ),
    st.integers(1, 40),
)
def test_choose_picks_only_available_and_never_more_than_asked(rows, count):
    pool = [
        candidate(n, verified, status)
        for n, (_, verified, status) in enumerate(rows)
    ]
    picked = v.choose(pool, Sample(count=count))
    available = [c for c in pool if c.status == "available"]
    assert len(picked) == min(count, len(available))
    assert all(c.status == "available" for c in picked)
    # No verified backup is picked while an unverified one is left out.
    left = [c for c in available if c not in picked]
    if any(c.last_verified is not None for c in picked):
        assert all(c.last_verified is not None for c in left)


@pytest.mark.parametrize(
    ("text", "sample"),
    [("3", Sample(count=3)), (" 10% ", Sample(percent=10.0))],
)
def test_policy_verify_sample(text, sample):
    policy = parse_policy("p", DEFAULTS | {"verify_sample": text})
    assert policy.verify_sample == sample
    assert policy.verify_schedule is None


@pytest.mark.parametrize("text", ["0", "-1", "0%", "101%", "ten", "5 %%"])
def test_bad_verify_sample_names_section_and_option(text):
    with pytest.raises(PolicyConfigError) as err:
        parse_policy("p", DEFAULTS | {"verify_sample": text})
    assert "policy:p" in str(err.value)
    assert "verify_sample" in str(err.value)
    assert "percentage" in str(err.value)


def test_bad_verify_schedule_is_refused():
    with pytest.raises(PolicyConfigError, match="verify_schedule"):
        parse_policy("p", DEFAULTS | {"verify_schedule": "sometimes"})


def test_checksum_mark_round_trip_and_refusals():
    mark = v.SourceChecksum("sha256-4MiB", 1 << 30, DIGEST)
    assert v.parse_checksum(mark.mark()) == mark
    assert v.parse_checksum(None) is None
    for bad in ["x", "sha:12:XYZ", "sha::ab", "sha:1:ab:cd", ":1:ab"]:
        with pytest.raises(ValueError, match="cinderbak:checksum"):
            v.parse_checksum(bad)


def judge(**overrides):
    values = {
        "expected": v.SourceChecksum("sha256-4MiB", 10, DIGEST),
        "restored_hexdigest": DIGEST,
        "restored_algorithm": "sha256-4MiB",
        "filesystem": "clean",
        "filesystem_summary": "clean",
        "consistency": "quiesced",
        "at": T0,
    }
    return v.judge(**(values | overrides))


def test_verdicts():
    assert judge().result is v.Result.OK
    mismatch = judge(restored_hexdigest="cd" * 32)
    assert (mismatch.result, mismatch.content) == (
        v.Result.FAILED,
        v.Content.MISMATCH,
    )
    assert judge(filesystem="errors").result is v.Result.FAILED
    assert judge(restored_hexdigest=None).result is v.Result.FAILED
    assert judge(expected=None).result is v.Result.WARNING
    crash = judge(filesystem="needs-recovery", consistency="crash")
    assert crash.result is v.Result.OK
    quiesced = judge(filesystem="needs-recovery")
    assert quiesced.result is v.Result.WARNING
    assert "quiesced" in quiesced.problems[0]


def test_verified_mark_round_trip_and_length():
    verdict = judge(
        restored_hexdigest="cd" * 32,
        filesystem="errors",
        filesystem_summary="x" * 400,
    )
    mark = verdict.mark()
    assert len(mark) <= 255
    assert mark.startswith("failed 2026-11-01T00:00:00Z content=MISMATCH")
    assert v.parse_verified(mark) == v.LastVerified("failed", T0)
    assert v.parse_verified("garbage") is None
    assert v.parse_verified("ok yesterday") is None


def test_a_checksum_only_the_mark_vouches_for_cannot_fail_the_backup():
    matched = judge(trusted=False)
    assert matched.result is v.Result.WARNING
    assert matched.content is v.Content.MATCH
    assert (
        "cinderbak:checksum mark, which the journal does not back"
        in (matched.problems[0])
    )
    differs = judge(trusted=False, restored_hexdigest="cd" * 32)
    assert (differs.result, differs.content) == (
        v.Result.WARNING,
        v.Content.MISMATCH,
    )
    # A damaged filesystem still fails it.
    assert judge(trusted=False, filesystem="errors").result is v.Result.FAILED


def test_the_sample_order_comes_from_the_journal_not_the_marks():
    ids = ["b1", "b2", "b3"]
    recorded = {"b1": v.LastVerified("ok", T0)}
    # b2's tenant marked it verified just now; the journal never did it.
    marks = {"b2": f"ok {T0 + datetime.timedelta(days=9):%Y-%m-%dT%H:%M:%SZ}"}
    last = v.last_verifications(
        ids, recorded, marks, journal_knows_policy=True
    )
    assert last == {"b1": recorded["b1"], "b2": None, "b3": None}
    # After journal loss the marks are the fallback.
    fallback = v.last_verifications(ids, {}, marks, journal_knows_policy=False)
    assert fallback["b2"] == v.LastVerified(
        "ok", T0 + datetime.timedelta(days=9)
    )
    assert fallback["b1"] is None
