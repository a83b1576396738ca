#!/bin/bash
# shellcheck shell=bash
#
# devstack plugin for cinderbak: scheduled, application-consistent,
# incremental backups of Cinder volumes.
#
#   [[local|localrc]]
#   enable_plugin cinderbak https://opendev.example/cinderbak
#
# Phases (devstack calls this file with "$1 $2"):
#   stack install      install cinderbak from the checkout
#   stack post-config  Keystone user and roles, cinderbak.conf, state dir,
#                      read-only Ceph client when Ceph is enabled
#   stack extra        start devstack@cinderbak (cinderbak-daemon)
#   unstack            stop it
#   clean              remove configuration and state

# Save trace setting (devstack convention).
_XTRACE_CINDERBAK=$(set +o | grep xtrace)
set +o xtrace

# The cloud (from devstack's clouds.yaml) used for the role assignment
# devstack's helpers have no wrapper for (a role inherited on a domain).
CINDERBAK_OS_CLOUD=${CINDERBAK_OS_CLOUD:-devstack-system-admin}
# How to reach the Ceph cluster as its admin (e.g. "sudo cephadm shell --
# ceph" for a containerised cluster).
CINDERBAK_CEPH_CMD=${CINDERBAK_CEPH_CMD:-sudo ceph}


# Directory of the console scripts installed by setup_develop.
function cinderbak_bin_dir {
    if [[ -n "${CINDERBAK_BIN_DIR:-}" ]]; then
        echo "$CINDERBAK_BIN_DIR"
    else
        get_python_exec_prefix
    fi
}

# libvirt when nova-compute runs on libvirt here, noop otherwise.
function cinderbak_quiescer {
    if [[ -n "${CINDERBAK_QUIESCER:-}" ]]; then
        echo "$CINDERBAK_QUIESCER"
    elif is_service_enabled n-cpu && [[ "${VIRT_DRIVER:-libvirt}" == "libvirt" ]]; then
        echo libvirt
    else
        echo noop
    fi
}

# True when Cinder's volumes live in Ceph (devstack-plugin-ceph).
function cinderbak_ceph_enabled {
    is_service_enabled ceph || [[ ",${CINDER_ENABLED_BACKENDS:-}," == *",ceph:"* ]]
}

function install_cinderbak {
    if [[ "$(cinderbak_quiescer)" == "libvirt" ]]; then
        setup_develop "$CINDERBAK_DIR" libvirt
    else
        setup_develop "$CINDERBAK_DIR"
    fi
}

# The service user: admin on the service project (lists every project's
# volumes), and a role inherited by every project of the tenant domain,
# so that ownership=project can act scoped to a volume's own project.
function create_cinderbak_accounts {
    get_or_create_user "$CINDERBAK_SERVICE_USER" \
        "$CINDERBAK_SERVICE_PASSWORD" default >/dev/null
    get_or_add_user_project_role admin "$CINDERBAK_SERVICE_USER" \
        "$SERVICE_PROJECT_NAME" default default >/dev/null
    openstack --os-cloud "$CINDERBAK_OS_CLOUD" role add \
        --user "$CINDERBAK_SERVICE_USER" --user-domain default \
        --domain "$CINDERBAK_TENANT_DOMAIN" --inherited \
        "$CINDERBAK_TENANT_ROLE"
}

# client.$CINDERBAK_CEPH_USER may only read RBD images of the volume pools.
function create_cinderbak_ceph_client {
    local caps="" pool
    local -a pools
    IFS=, read -r -a pools <<<"$CINDERBAK_CEPH_POOLS"
    for pool in "${pools[@]}"; do
        pool=${pool// /}
        [[ -n "$pool" ]] || continue
        caps+="${caps:+, }profile rbd-read-only pool=$pool"
    done
    # shellcheck disable=SC2086  # CINDERBAK_CEPH_CMD is a command line
    $CINDERBAK_CEPH_CMD auth get-or-create "client.$CINDERBAK_CEPH_USER" \
        mon 'profile rbd' osd "$caps" |
        sudo tee "$CINDERBAK_CEPH_KEYRING" >/dev/null
    sudo chown "$STACK_USER" "$CINDERBAK_CEPH_KEYRING"
    sudo chmod 0600 "$CINDERBAK_CEPH_KEYRING"
}

function configure_cinderbak {
    local conf=$CINDERBAK_CONF
    local section="policy:$CINDERBAK_POLICY_NAME"

    sudo install -d -o "$STACK_USER" -m 0755 "$CINDERBAK_CONF_DIR"
    sudo install -d -o "$STACK_USER" -m 0750 "$CINDERBAK_STATE_PATH"
    rm -f "$conf"
    touch "$conf"
    chmod 0640 "$conf"

    iniset "$conf" DEFAULT debug "${ENABLE_DEBUG_LOG_LEVEL:-True}"
    iniset "$conf" DEFAULT use_stderr True
    iniset "$conf" DEFAULT deployment_id "$CINDERBAK_DEPLOYMENT_ID"
    iniset "$conf" DEFAULT write_back_status "$CINDERBAK_WRITE_BACK_STATUS"
    iniset "$conf" DEFAULT poll_interval "$CINDERBAK_POLL_INTERVAL"
    iniset "$conf" DEFAULT state_path "$CINDERBAK_STATE_PATH"

    # No clouds.yaml name: keystoneauth options in [service_auth].
    iniset "$conf" cloud region_name "$REGION_NAME"
    iniset "$conf" cloud interface public
    iniset "$conf" service_auth auth_type password
    iniset "$conf" service_auth auth_url "$KEYSTONE_SERVICE_URI"
    iniset "$conf" service_auth username "$CINDERBAK_SERVICE_USER"
    iniset "$conf" service_auth password "$CINDERBAK_SERVICE_PASSWORD"
    iniset "$conf" service_auth user_domain_name Default
    iniset "$conf" service_auth project_name "$SERVICE_PROJECT_NAME"
    iniset "$conf" service_auth project_domain_name Default

    iniset "$conf" consistency quiescer "$(cinderbak_quiescer)"
    iniset "$conf" libvirt uri_template "$CINDERBAK_LIBVIRT_URI_TEMPLATE"

    if cinderbak_ceph_enabled; then
        create_cinderbak_ceph_client
        iniset "$conf" volume_cluster conf "$CINDERBAK_CEPH_CONF"
        iniset "$conf" volume_cluster user "$CINDERBAK_CEPH_USER"
        iniset "$conf" volume_cluster keyring "$CINDERBAK_CEPH_KEYRING"
        iniset "$conf" volume_cluster pools "$CINDERBAK_CEPH_POOLS"
    fi

    iniset "$conf" "$section" schedule "$CINDERBAK_POLICY_SCHEDULE"
    iniset "$conf" "$section" retention "$CINDERBAK_POLICY_RETENTION"
    iniset "$conf" "$section" full_every "$CINDERBAK_POLICY_FULL_EVERY"
    iniset "$conf" "$section" transfer_mode "$CINDERBAK_POLICY_TRANSFER_MODE"
    iniset "$conf" "$section" ownership "$CINDERBAK_POLICY_OWNERSHIP"
    iniset "$conf" "$section" quiesce "$CINDERBAK_POLICY_QUIESCE"
    iniset "$conf" "$section" verify_sample "$CINDERBAK_POLICY_VERIFY_SAMPLE"
    if [[ -n "$CINDERBAK_POLICY_VERIFY_SCHEDULE" ]]; then
        iniset "$conf" "$section" verify_schedule \
            "$CINDERBAK_POLICY_VERIFY_SCHEDULE"
    fi
    iniset "$conf" metrics port "$CINDERBAK_METRICS_PORT"
}

function start_cinderbak {
    run_process cinderbak \
        "$(cinderbak_bin_dir)/cinderbak-daemon --config-file $CINDERBAK_CONF"
}

function stop_cinderbak {
    stop_process cinderbak
}

function cleanup_cinderbak {
    sudo rm -rf "$CINDERBAK_CONF_DIR" "$CINDERBAK_STATE_PATH"
}

if is_service_enabled cinderbak; then
    if [[ "$1" == "stack" && "$2" == "install" ]]; then
        echo_summary "Installing cinderbak"
        install_cinderbak
    elif [[ "$1" == "stack" && "$2" == "post-config" ]]; then
        echo_summary "Configuring cinderbak"
        create_cinderbak_accounts
        configure_cinderbak
    elif [[ "$1" == "stack" && "$2" == "extra" ]]; then
        echo_summary "Starting cinderbak"
        start_cinderbak
    fi

    if [[ "$1" == "unstack" ]]; then
        stop_cinderbak
    fi

    if [[ "$1" == "clean" ]]; then
        cleanup_cinderbak
    fi
fi

# Restore xtrace.
$_XTRACE_CINDERBAK
