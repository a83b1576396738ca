"""Which listed volumes become targets, and which problems are reported."""

from openstack.block_storage.v3.volume import Volume

from cinderbak import discovery, policy

POLICIES = {name: policy.fallback_policy(name) for name in ("daily", "weekly")}


def volume(number: int, metadata: dict[str, str]) -> Volume:
    return Volume(
        id=f"vol-{number}",
        name=f"v{number}",
        project_id="p1",
        status="available",
        size=1,
        metadata=metadata,
    )


def test_whitespace_and_case_variants_are_problems_not_silence():
    listed = [
        volume(1, {"cinderbak:policy": "daily"}),
        volume(2, {"cinderbak:policy": "daily\n"}),
        volume(3, {"CinderBak:policy": "daily"}),
        volume(4, {"app": "db"}),
        volume(5, {" cinderbak:policy": "weekly"}),
    ]
    found = list(discovery.classify(listed, POLICIES))
    targets = [item for item in found if isinstance(item, discovery.Target)]
    problems = {
        item.volume_id: item
        for item in found
        if isinstance(item, discovery.Problem)
    }
    assert [t.volume_id for t in targets] == ["vol-1"]
    assert sorted(problems) == ["vol-2", "vol-3", "vol-5"]
    # None of them names a policy Cinder's filter would find them by, so
    # the audit (which keeps problems of no known policy) reports each.
    assert all(p.policy not in POLICIES for p in problems.values())
    assert "cinderbak:policy='daily\\n'" in problems["vol-2"].error
    assert "'cinderbak:policy' (lower case" in problems["vol-3"].error
