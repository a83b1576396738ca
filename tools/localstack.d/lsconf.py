"""Shared settings of the localstack helper scripts (from the environment).

tools/localstack exports LOCALSTACK_STATE, LS_KEYSTONE_URL and LS_CINDER_URL
before it runs a helper.
"""

import os

STATE = os.environ["LOCALSTACK_STATE"]
KEYSTONE_URL = os.environ["LS_KEYSTONE_URL"]
CINDER_URL = os.environ["LS_CINDER_URL"]
REGION = "RegionOne"
CLOUDS_YAML = os.path.join(STATE, "clouds.yaml")
IDS_JSON = os.path.join(STATE, "keystone", "ids.json")

# cloud name -> (user, project)
CLOUDS = {
    "localstack-admin": ("admin", "admin"),
    "localstack-cinderbak": ("cinderbak", "service"),
    "localstack-tenant-a": ("alice", "tenant-a"),
    "localstack-tenant-b": ("bob", "tenant-b"),
    "localstack-tenant-c": ("carol", "tenant-c"),
}


def passwords() -> dict[str, str]:
    """Return {user: password} from $STATE/secrets.env (LS_PW_<USER>=...)."""
    result = {}
    with open(os.path.join(STATE, "secrets.env"), encoding="utf-8") as f:
        for line in f:
            key, _, value = line.strip().partition("=")
            if key.startswith("LS_PW_"):
                result[key[len("LS_PW_") :].lower()] = value
    return result
