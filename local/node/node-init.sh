#!/bin/sh
# Entrypoint of the local node image: make this container fit to run a Kubernetes node without
# --privileged, then exec the command (k3s/entrypoint.sh in compose, which execs /bin/k3s, so the
# node ends up as PID 1). The pattern is kind's images/base entrypoint and k3d's fixes: small
# steps, each said, each failing loudly with what to do.
#
# What the container gets instead of --privileged (local/compose.local.yml): every capability but
# CAP_SYS_RESOURCE (the host may not grant it), seccomp and AppArmor unconfined, writable /proc/sys
# (systempaths=unconfined), /dev/kmsg, a private cgroup namespace. What is left to do is here:
#   1. cgroups: Docker mounts them read-only in an unprivileged container; the kubelet and runc
#      create a cgroup per pod and container, so remount them read-write (only our own namespace's
#      view: with a private cgroup namespace the container's cgroup is the root it sees).
#   2. mount propagation: the kubelet mounts volumes (secrets, the PVC) under /var/lib/kubelet,
#      and containers must see them: make / rshared, as a systemd host has it.
#   3. kernel settings of this network namespace the node needs: IP forwarding (pods' traffic
#      leaves through this container) and bridge traffic through iptables (Services between pods
#      on the one bridge).
set -eu

PROG="airflow-k3s node-init"
log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
die() {
    printf '%s: ERROR: %s\n' "$PROG" "$*" >&2
    exit 1
}

fix_cgroups() {
    if [ -f /sys/fs/cgroup/cgroup.controllers ]; then
        # cgroup v2 (not exercised on the machines that test this project, which run v1): remount
        # rw, then move our processes into a child group so the root can delegate controllers
        # (the "no internal processes" rule), as kind does.
        mount -o remount,rw /sys/fs/cgroup 2>/dev/null || die "cannot remount /sys/fs/cgroup read-write (cgroup v2): the container needs CAP_SYS_ADMIN and a private cgroup namespace"
        mkdir -p /sys/fs/cgroup/init.scope
        while read -r pid; do
            echo "$pid" >/sys/fs/cgroup/init.scope/cgroup.procs 2>/dev/null || true
        done </sys/fs/cgroup/cgroup.procs
        read -r controllers </sys/fs/cgroup/cgroup.controllers
        for controller in $controllers; do
            echo "+$controller" >/sys/fs/cgroup/cgroup.subtree_control 2>/dev/null || log "cannot delegate cgroup controller $controller"
        done
        log "cgroup v2: /sys/fs/cgroup read-write, processes in init.scope, controllers delegated"
        return
    fi
    # cgroup v1: one mount per hierarchy. "remount,rw" alone is refused (the mount is busy);
    # remounting the bind mount read-write is allowed with CAP_SYS_ADMIN.
    fixed=""
    while read -r _src mnt fstype opts _rest; do
        [ "$fstype" = cgroup ] || continue
        case ",$opts," in
        *,ro,*)
            mount -o remount,rw,bind "$mnt" || die "cannot remount $mnt read-write: the container needs CAP_SYS_ADMIN and a private cgroup namespace (cgroup: private)"
            fixed="$fixed ${mnt##*/}"
            ;;
        esac
    done </proc/self/mounts
    [ -n "$fixed" ] && log "cgroup v1: remounted read-write:$fixed"
    [ -w /sys/fs/cgroup/memory ] || [ -w /sys/fs/cgroup/memory/cgroup.procs ] || die "the memory cgroup is not writable: the kubelet cannot create pod cgroups"
}

fix_mounts() {
    mount --make-rshared / || die "cannot make / rshared: the container needs CAP_SYS_ADMIN"
    log "mount propagation: / is rshared"
}

fix_sysctls() {
    echo 1 >/proc/sys/net/ipv4/ip_forward || die "cannot enable net.ipv4.ip_forward: /proc/sys must be writable (security_opt systempaths=unconfined)"
    if [ -e /proc/sys/net/bridge/bridge-nf-call-iptables ]; then
        echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables
        log "net.ipv4.ip_forward=1, net.bridge.bridge-nf-call-iptables=1"
    else
        log "WARNING: the host kernel has no br_netfilter loaded: a pod reaching a Service whose pod is on the same node may time out (on the host: modprobe br_netfilter)"
    fi
    [ -e /dev/kmsg ] || log "WARNING: no /dev/kmsg (devices: /dev/kmsg): the kubelet's OOM watcher will not start"
}

fix_cgroups
fix_mounts
fix_sysctls
[ "$#" -gt 0 ] || set -- /bin/k3s server
log "exec $*"
exec "$@"
