"""devstack/plugin.sh, phase by phase, against a throwaway directory tree.

Each phase runs in a real bash that sources devstack/settings and
devstack/plugin.sh the way devstack does, with the few devstack helpers
the plugin calls defined as small shell functions that append their
arguments to a calls file (tab-separated, one call a line). iniset is a
small real implementation, so the configuration the plugin writes can be
parsed with oslo.config exactly as the daemon parses it. Needs no
devstack, Keystone or Ceph; bash and shellcheck only.
"""

from __future__ import annotations

import configparser
import os
import pathlib
import shlex
import shutil
import subprocess
import sys

import pytest
from keystoneauth1 import loading as ks_loading
from oslo_config import cfg

from cinderbak import config_check, opts, policy

ROOT = pathlib.Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "devstack" / "plugin.sh"
SETTINGS = ROOT / "devstack" / "settings"
UNIT = ROOT / "etc" / "cinderbak" / "cinderbak-daemon.service"

# The devstack helpers plugin.sh uses, as recording stubs. `sudo` runs
# its command unprivileged (every path lives under the test's tree).
STUBS = r"""
record() {
    local IFS=$'\t'
    printf '%s\n' "$*" >>"$CALLS"
}
enable_service() {
    record enable_service "$@"
    ENABLED_SERVICES+=",$1"
}
is_service_enabled() {
    local s
    for s in "$@"; do
        [[ ",$ENABLED_SERVICES," == *",$s,"* ]] && return 0
    done
    return 1
}
echo_summary() { record echo_summary "$@"; }
setup_develop() { record setup_develop "$@"; }
get_python_exec_prefix() { echo /usr/local/bin; }
get_or_create_user() { record get_or_create_user "$@"; echo user-id; }
get_or_add_user_project_role() {
    record get_or_add_user_project_role "$@"; echo role-id;
}
openstack() { record openstack "$@"; }
run_process() { record run_process "$@"; }
stop_process() { record stop_process "$@"; }
sudo() { record sudo "$@"; "$@"; }
ceph_stub() {
    record ceph "$@"
    printf '[%s]\n\tkey = AQBstubstubstubstubstubstubstubstubstub==\n' "$3"
}
iniset() {
    "$PYTHON" - "$@" <<'PY'
import configparser, sys
path, section, key, value = sys.argv[1:5]
parser = configparser.RawConfigParser(
    interpolation=None, default_section="__none__")
parser.optionxform = str
parser.read(path)
if not parser.has_section(section):
    parser.add_section(section)
parser.set(section, key, value)
with open(path, "w") as f:
    parser.write(f)
PY
}
"""


class Tree:
    """A throwaway devstack-like tree and the environment of one phase."""

    def __init__(self, tmp_path: pathlib.Path) -> None:
        self.root = tmp_path
        self.calls_file = tmp_path / "calls"
        self.etc = tmp_path / "etc" / "cinderbak"
        self.data = tmp_path / "data"
        self.env = {
            "PATH": os.environ["PATH"],
            "HOME": str(tmp_path),
            "PYTHON": sys.executable,
            "CALLS": str(self.calls_file),
            "DEST": str(tmp_path / "opt"),
            "DATA_DIR": str(self.data),
            "STACK_USER": os.environ.get("USER") or _whoami(),
            "SERVICE_PASSWORD": "s3cret",
            "SERVICE_PROJECT_NAME": "service",
            "REGION_NAME": "RegionOne",
            "KEYSTONE_SERVICE_URI": "http://192.0.2.10/identity",
            "ENABLE_DEBUG_LOG_LEVEL": "False",
            "ENABLED_SERVICES": "key,c-api,c-vol,c-bak,n-cpu",
            "VIRT_DRIVER": "libvirt",
            "CINDERBAK_CONF_DIR": str(self.etc),
            "CINDERBAK_CEPH_CMD": "ceph_stub",
        }

    def run(self, *phase: str, **env: str) -> subprocess.CompletedProcess:
        script = (
            STUBS
            + f"source {shlex.quote(str(SETTINGS))}\n"
            + f"source {shlex.quote(str(PLUGIN))} "
            + " ".join(shlex.quote(p) for p in phase)
            + "\n"
        )
        proc = subprocess.run(
            ["bash", "-eu", "-o", "pipefail", "-c", script],
            env=dict(self.env, **env),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode == 0, proc.stderr
        return proc

    def calls(self, name: str | None = None) -> list[list[str]]:
        if not self.calls_file.exists():
            return []
        rows = [
            line.split("\t")
            for line in self.calls_file.read_text().splitlines()
        ]
        return [r[1:] for r in rows if name is None or r[0] == name]

    @property
    def conf_path(self) -> pathlib.Path:
        return self.etc / "cinderbak.conf"

    def load(self) -> cfg.ConfigOpts:
        """Parse the written file as the daemon does."""
        conf = cfg.ConfigOpts()
        opts.register_opts(conf)
        conf(
            args=["--config-file", str(self.conf_path)],
            project="cinderbak",
            default_config_files=[],
            default_config_dirs=[],
        )
        return conf


def _whoami() -> str:
    return subprocess.run(
        ["id", "-un"], capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.fixture
def tree(tmp_path):
    return Tree(tmp_path)


# --- lint ----------------------------------------------------------------


@pytest.mark.parametrize("path", [PLUGIN, SETTINGS], ids=lambda p: p.name)
def test_bash_syntax(path):
    subprocess.run(["bash", "-n", str(path)], check=True)


@pytest.mark.skipif(
    shutil.which("shellcheck") is None,
    reason="shellcheck not installed (Debian package 'shellcheck')",
)
def test_shellcheck_clean():
    proc = subprocess.run(
        ["shellcheck", "--shell=bash", str(PLUGIN), str(SETTINGS)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


# --- stack install -------------------------------------------------------


def test_install_from_checkout_with_libvirt_extra(tree):
    tree.run("stack", "install")
    assert tree.calls("setup_develop") == [
        [tree.env["DEST"] + "/cinderbak", "libvirt"]
    ]
    # Installing touches nothing else: no Keystone, no files.
    assert not tree.calls("get_or_create_user")
    assert not tree.etc.exists()


def test_install_without_compute_needs_no_libvirt(tree):
    tree.run("stack", "install", ENABLED_SERVICES="key,c-api,c-vol")
    assert tree.calls("setup_develop") == [[tree.env["DEST"] + "/cinderbak"]]


def test_settings_enable_the_service_unless_told_not_to(tree):
    tree.run("stack", "install", ENABLED_SERVICES="key")
    assert tree.calls("enable_service") == [["cinderbak"]]
    assert tree.calls("setup_develop")


def test_disabled_service_does_nothing(tree):
    for phase in (("stack", "install"), ("stack", "post-config")):
        tree.run(
            *phase, ENABLED_SERVICES="key", CINDERBAK_ENABLE_SERVICE="False"
        )
    assert not tree.calls("enable_service")
    assert not tree.calls("setup_develop")
    assert not tree.calls("get_or_create_user")
    assert not tree.conf_path.exists()


# --- stack post-config ---------------------------------------------------


def test_post_config_creates_user_and_roles(tree):
    tree.run("stack", "post-config", ENABLED_SERVICES="cinderbak,key")
    assert tree.calls("get_or_create_user") == [
        ["cinderbak", "s3cret", "default"]
    ]
    assert tree.calls("get_or_add_user_project_role") == [
        ["admin", "cinderbak", "service", "default", "default"]
    ]
    # ownership=project: a role every project of the domain inherits.
    assert tree.calls("openstack") == [
        [
            "--os-cloud",
            "devstack-system-admin",
            "role",
            "add",
            "--user",
            "cinderbak",
            "--user-domain",
            "default",
            "--domain",
            "Default",
            "--inherited",
            "member",
        ]
    ]


def test_post_config_writes_a_config_the_daemon_parses(tree):
    tree.run("stack", "post-config", ENABLED_SERVICES="cinderbak,key,n-cpu")
    conf = tree.load()
    state = tree.data / "cinderbak"
    assert state.is_dir()
    assert conf.state_path == str(state)
    assert conf.deployment_id == "devstack"
    assert conf.write_back_status is True
    assert conf.poll_interval == 2.0
    assert conf.debug is False
    assert conf.cloud.cloud is None  # keystoneauth options instead
    assert conf.cloud.region_name == "RegionOne"
    assert conf.consistency.quiescer == "libvirt"
    assert conf.libvirt.uri_template == "qemu:///system"
    # The journal lands in the state directory.
    assert conf.journal.connection == f"sqlite:///{state}/cinderbak.sqlite"

    # [service_auth] loads as keystoneauth's password plugin.
    auth = ks_loading.load_auth_from_conf_options(conf, "service_auth")
    assert auth.auth_url == "http://192.0.2.10/identity"
    assert conf.service_auth.username == "cinderbak"
    assert conf.service_auth.password == "s3cret"
    assert conf.service_auth.project_name == "service"
    assert conf.service_auth.user_domain_name == "Default"
    assert conf.service_auth.project_domain_name == "Default"

    policies = policy.load_policies(conf)
    assert list(policies) == ["default"]
    default = policies["default"]
    assert default.schedule.text == "0 3 * * *"
    assert default.transfer_mode.value == "volume"
    assert default.ownership.value == "project"
    assert default.quiesce.value == "preferred"

    # No Ceph: no read-only client, no [volume_cluster].
    assert not tree.calls("ceph")
    assert conf.volume_cluster.conf is None


def test_every_written_option_is_a_cinderbak_option(tree):
    """A misspelt option would be ignored silently by oslo.config."""
    tree.run(
        "stack",
        "post-config",
        ENABLED_SERVICES="cinderbak,key,ceph",
    )
    conf = tree.load()
    policy.load_policies(conf)
    ks_loading.load_auth_from_conf_options(conf, "service_auth")
    raw = configparser.RawConfigParser(interpolation=None)
    raw.optionxform = str
    raw.read(tree.conf_path)
    written = {"DEFAULT": dict(raw.defaults())}
    written.update({s: dict(raw.items(s, raw=True)) for s in raw.sections()})
    for section, values in written.items():
        for key in values:
            if section != "DEFAULT" and key in raw.defaults():
                continue
            group = conf if section == "DEFAULT" else conf[section]
            assert key in group, f"[{section}] {key} is not an option"
    # The daemon's own start-up check finds nothing either (the Ceph
    # files are the plugin's to create: only the options are checked).
    sections = config_check.read_files([str(tree.conf_path)])
    schema = config_check.load_schema(sections)
    assert config_check.check(sections, schema) == []


def test_post_config_with_ceph_creates_read_only_client(tree):
    tree.run(
        "stack",
        "post-config",
        ENABLED_SERVICES="cinderbak,key,ceph",
        CINDERBAK_CEPH_POOLS="volumes, volumes-ssd",
    )
    assert tree.calls("ceph") == [
        [
            "auth",
            "get-or-create",
            "client.cinderbak-ro",
            "mon",
            "profile rbd",
            "osd",
            "profile rbd-read-only pool=volumes, "
            "profile rbd-read-only pool=volumes-ssd",
        ]
    ]
    keyring = tree.etc / "ceph.client.cinderbak-ro.keyring"
    assert "[client.cinderbak-ro]" in keyring.read_text()
    assert keyring.stat().st_mode & 0o077 == 0
    conf = tree.load()
    assert conf.volume_cluster.conf == "/etc/ceph/ceph.conf"
    assert conf.volume_cluster.user == "cinderbak-ro"
    assert conf.volume_cluster.keyring == str(keyring)
    assert conf.volume_cluster.pools == ["volumes", "volumes-ssd"]
    # Without a compute service there is no guest to freeze.
    assert conf.consistency.quiescer == "noop"


def test_post_config_honours_local_conf_overrides(tree):
    tree.run(
        "stack",
        "post-config",
        CINDERBAK_POLICY_NAME="gate",
        CINDERBAK_POLICY_SCHEDULE="every 1m",
        CINDERBAK_POLICY_RETENTION="last=2",
        CINDERBAK_POLICY_TRANSFER_MODE="snapshot",
        CINDERBAK_POLICY_OWNERSHIP="service",
        CINDERBAK_QUIESCER="noop",
        CINDERBAK_LIBVIRT_URI_TEMPLATE="qemu+tls://{host}/system",
        CINDERBAK_TENANT_ROLE="reader",
    )
    conf = tree.load()
    gate = policy.load_policies(conf)["gate"]
    assert gate.schedule.text == "every 1m"
    assert gate.transfer_mode.value == "snapshot"
    assert gate.ownership.value == "service"
    assert conf.consistency.quiescer == "noop"
    assert conf.libvirt.uri_template == "qemu+tls://{host}/system"
    assert tree.calls("openstack")[0][-1] == "reader"


def test_post_config_twice_gives_the_same_file(tree):
    tree.run("stack", "post-config")
    first = tree.conf_path.read_text()
    tree.run("stack", "post-config")
    assert tree.conf_path.read_text() == first
    assert tree.conf_path.stat().st_mode & 0o007 == 0  # holds a password


# --- stack extra, unstack, clean -----------------------------------------


def test_extra_runs_the_daemon_as_devstack_service(tree):
    tree.run("stack", "extra")
    [(name, command)] = tree.calls("run_process")
    assert name == "cinderbak"  # devstack@cinderbak.service
    argv = shlex.split(command)
    assert argv[0] == "/usr/local/bin/cinderbak-daemon"
    # The same arguments as the packaged unit's ExecStart.
    exec_start = next(
        line.partition("=")[2]
        for line in UNIT.read_text().splitlines()
        if line.startswith("ExecStart=")
    )
    unit_args = shlex.split(exec_start)[1:]
    assert unit_args[0] == argv[1] == "--config-file"
    assert argv[2] == str(tree.conf_path)


def test_extra_uses_the_venv_bin_dir_when_given(tree):
    tree.run("stack", "extra", CINDERBAK_BIN_DIR="/opt/stack/data/venv/bin")
    [(_, command)] = tree.calls("run_process")
    assert command.startswith("/opt/stack/data/venv/bin/cinderbak-daemon ")


def test_unstack_stops_the_service(tree):
    tree.run("unstack")
    assert tree.calls("stop_process") == [["cinderbak"]]
    assert not tree.calls("run_process")


def test_clean_removes_config_and_state(tree):
    tree.run("stack", "post-config", ENABLED_SERVICES="cinderbak,key,ceph")
    assert tree.conf_path.exists()
    (tree.data / "cinderbak" / "cinderbak.sqlite").write_text("x")
    tree.run("clean")
    assert not tree.etc.exists()
    assert not (tree.data / "cinderbak").exists()
