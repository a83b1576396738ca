"""The package version, from pbr's metadata."""

import pbr.version

version_info = pbr.version.VersionInfo("cinderbak")


def version_string() -> str:
    return str(version_info.version_string())
