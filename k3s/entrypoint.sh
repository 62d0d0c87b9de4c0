#!/bin/sh
# Entrypoint of the k3s service (docker-compose.yml runs it with /bin/sh; the k3s image is busybox
# based, so this is POSIX sh). It prepares the container, then execs k3s, which stays PID 1.
#
#   a. Pod DNS. Docker's embedded resolver listens on 127.0.0.11 inside this container only, and
#      k3s refuses a loopback nameserver for pods (it would fall back to a public resolver, which
#      cannot resolve compose service names such as "postgres" or "registry"). So: find the real
#      ports of Docker's resolver (the sockets it listens on at 127.0.0.11 in this network
#      namespace, from /proc/net/udp and /proc/net/tcp: the same whatever firewall backend the
#      Docker engine uses, iptables or nftables), DNAT DNS traffic sent to this container's own IP
#      (port 53, udp and tcp) to them, write a resolv.conf naming that IP, and hand it to k3s with
#      --resolv-conf. CoreDNS forwards to it.
#   b. The shared volume (hostPath of the PV that `invoke up` renders into .generated/k3s with
#      the executor's namespace): owned by uid 50000 gid 0, group-writable, setgid, so worker pods
#      (uid 50000, gid 0) can write it.
#   c. Manifests (a server's; an agent, `k3s agent`, has none): docker-compose.yml mounts the
#      repo's k3s/manifests and the rendered .generated/k3s as subfolders of k3s's manifests
#      folder, which k3s applies at start and re-applies whenever a file changes. This step checks
#      they are there (and says loudly what is missing), and removes the copies that earlier
#      versions of this script made.
#   d. exec k3s with the original arguments (plus --resolv-conf).
#
# Every step is idempotent: a restarted container (new or same network namespace) ends in the same
# state. It fails loudly (message on stderr, non-zero exit) rather than start a cluster whose pods
# cannot resolve compose names.
#
# Environment (defaults in brackets; the path overrides exist for the tests):
#   AIRFLOW_K3S_DNS_ONLY=1           only do step a., print the resolver IP on stdout, exit 0
#   AIRFLOW_K3S_RESOLV_CONF          resolv.conf written for k3s [/etc/rancher/k3s/resolv.conf]
#   AIRFLOW_K3S_DNS_INTERFACE        interface whose IPv4 address pods query [default route's, else eth0]
#   AIRFLOW_K3S_PROC_NET             where to read the sockets [/proc/net]
#   AIRFLOW_K3S_SHARED_DIR           shared volume [/var/lib/airflow-shared]
#   AIRFLOW_K3S_MANIFESTS_DIR        k3s's manifests folder [/var/lib/rancher/k3s/server/manifests]
#   AIRFLOW_K3S_BIN                  what to exec [/bin/k3s]
#
# Prior art read (not copied): kind's images/base/files/usr/local/bin/entrypoint
# (enable_network_magic, select_iptables) and k3d's pkg/types/fixes/assets/k3d-entrypoint-dns.sh.
# Both rewrite Docker's own rules, which they find with iptables-save; this script finds the
# resolver's sockets instead, leaves Docker's rules untouched and adds a chain of its own.
set -eu

PROG="airflow-k3s entrypoint"
DOCKER_DNS_IP="127.0.0.11"
DNS_CHAIN="AIRFLOW_K3S_DNS"

log() { printf '%s: %s\n' "$PROG" "$*" >&2; }
warn() { printf '%s: WARNING: %s\n' "$PROG" "$*" >&2; }
die() {
    printf '%s: ERROR: %s\n' "$PROG" "$*" >&2
    exit 1
}

# k3s keeps its iptables binaries (iptables-legacy*, iptables-nft*, xtables-*-multi) in /bin/aux;
# the image puts that on PATH, but an entrypoint override should not depend on it.
for _dir in /bin/aux /usr/sbin /sbin; do
    case ":$PATH:" in
    *":$_dir:"*) ;;
    *) [ -d "$_dir" ] && PATH="$PATH:$_dir" ;;
    esac
done
export PATH

# ipt BACKEND TOOL ARGS...: run TOOL (iptables or iptables-save) of one backend (legacy or nft)
# explicitly. The plain "iptables" name in k3s is iptables-detect.sh, which guesses the backend
# and rewrites its own symlinks: never call it here.
ipt() {
    _backend="$1"
    _tool="$2"
    shift 2
    _name="${_tool%%-*}-${_backend}${_tool#iptables}" # iptables-save -> iptables-nft-save
    if command -v "$_name" >/dev/null 2>&1; then
        "$_name" "$@"
    elif command -v "xtables-${_backend}-multi" >/dev/null 2>&1; then
        "xtables-${_backend}-multi" "$_tool" "$@"
    else
        return 127
    fi
}

# resolver_port FILE STATE: the port Docker's resolver listens on at 127.0.0.11 in this network
# namespace, from /proc/net/udp or /proc/net/tcp (local address 0B00007F:PORT, hex, little-endian
# address) in socket state STATE (07: an unconnected udp socket, 0A: a listening tcp socket).
resolver_port() {
    [ -r "$1" ] || return 0
    _hex="$(awk -v state="$2" 'NR > 1 { split($2, a, ":"); if (a[1] == "0B00007F" && $4 == state) { print a[2]; exit } }' "$1")"
    if [ -n "$_hex" ]; then printf '%d\n' "0x$_hex"; fi
}

setup_dns() {
    # 1. Docker's resolver: its sockets on 127.0.0.11. Docker creates them for containers on a
    #    user-defined network only (compose networks are; the default bridge network is not).
    proc_net="${AIRFLOW_K3S_PROC_NET:-/proc/net}"
    udp_port="$(resolver_port "$proc_net/udp" 07)"
    tcp_port="$(resolver_port "$proc_net/tcp" 0A)"
    if [ -z "$udp_port" ] || [ -z "$tcp_port" ]; then
        die "Docker's embedded DNS resolver does not listen on $DOCKER_DNS_IP in this container (udp port: ${udp_port:-none}, tcp port: ${tcp_port:-none}, from $proc_net/udp and $proc_net/tcp). Docker runs it only for containers on a user-defined network (compose networks are; the default bridge network is not): run this container on one. Without it pods cannot resolve compose service names."
    fi

    # Which iptables backend gets our rules: the one that holds Docker's own DNS rules (the
    # DOCKER_OUTPUT chain) if any, so that k3s's iptables detection sees one backend in use;
    # engines with the nftables firewall backend leave neither, and then nft it is.
    backend=""
    tools=""
    for _b in nft legacy; do
        _rc=0
        _out="$(ipt "$_b" iptables-save -t nat 2>/dev/null)" || _rc=$?
        [ "$_rc" = 127 ] && continue
        tools="$tools $_b"
        if [ "$_rc" = 0 ] && printf '%s\n' "$_out" | grep -q '^:DOCKER_OUTPUT '; then
            backend="$_b"
            break
        fi
    done
    [ -n "$tools" ] || die "no iptables binaries found (need iptables-nft/iptables-legacy or xtables-nft-multi/xtables-legacy-multi; PATH=$PATH)"
    if [ -z "$backend" ]; then
        backend="${tools# }"
        backend="${backend%% *}"
        log "no DOCKER_OUTPUT chain in any iptables backend (a Docker engine with the nftables firewall backend): using iptables-$backend"
    fi

    # 2. The address pods will query: this container's IPv4 on the interface of the default route.
    iface="${AIRFLOW_K3S_DNS_INTERFACE:-}"
    if [ -z "$iface" ]; then
        iface="$(ip -4 route show default 2>/dev/null | awk '{ for (i = 1; i < NF; i++) if ($i == "dev") { print $(i + 1); exit } }')"
        iface="${iface:-eth0}"
    fi
    dns_ip="$(ip -4 -o addr show dev "$iface" scope global 2>/dev/null | awk '{ split($4, a, "/"); print a[1]; exit }')"
    [ -n "$dns_ip" ] || die "no global IPv4 address on interface $iface (set AIRFLOW_K3S_DNS_INTERFACE); $(ip -4 -o addr show 2>&1 | tr '\n' ';')"

    # 3. Pod traffic arrives on cni0 (created later by k3s) and is DNATed to a loopback address:
    #    the kernel drops that as martian, and refuses to route the resolver's reply (source
    #    127.0.0.11) out of a non-loopback interface, unless route_localnet is on. "all" is OR-ed
    #    with every interface's own value, including interfaces created later. (kube-proxy sets the
    #    same flag for localhost NodePorts; its KUBE-FIREWALL rule lets DNATed packets through.)
    _localnet=/proc/sys/net/ipv4/conf/all/route_localnet
    if [ "$(cat "$_localnet" 2>/dev/null)" != 1 ] && ! { echo 1 >"$_localnet"; } 2>/dev/null; then
        die "cannot set net.ipv4.conf.all.route_localnet=1 ($_localnet not writable: is the container privileged?)"
    fi

    # 4. Our own chain, flushed and refilled at every start (idempotent; a restarted container may
    #    have a new IP and new resolver ports). Docker's chains are left as they are.
    ipt "$backend" iptables -t nat -N "$DNS_CHAIN" 2>/dev/null || true
    ipt "$backend" iptables -t nat -F "$DNS_CHAIN" || die "cannot flush nat chain $DNS_CHAIN ($backend)"
    ipt "$backend" iptables -t nat -A "$DNS_CHAIN" -d "$dns_ip/32" -p udp --dport 53 \
        -j DNAT --to-destination "$DOCKER_DNS_IP:$udp_port" || die "cannot add udp DNAT rule ($backend)"
    ipt "$backend" iptables -t nat -A "$DNS_CHAIN" -d "$dns_ip/32" -p tcp --dport 53 \
        -j DNAT --to-destination "$DOCKER_DNS_IP:$tcp_port" || die "cannot add tcp DNAT rule ($backend)"
    # PREROUTING: queries from pods (CoreDNS). OUTPUT: queries from this container itself
    # (hostNetwork pods with dnsPolicy Default use the same resolv.conf).
    for _hook in PREROUTING OUTPUT; do
        if ! ipt "$backend" iptables -t nat -C "$_hook" -j "$DNS_CHAIN" 2>/dev/null; then
            ipt "$backend" iptables -t nat -I "$_hook" 1 -j "$DNS_CHAIN" || die "cannot hook $DNS_CHAIN into nat $_hook ($backend)"
        fi
    done

    # 5. resolv.conf for k3s: our nameserver, Docker's search and options lines.
    resolv_conf="${AIRFLOW_K3S_RESOLV_CONF:-/etc/rancher/k3s/resolv.conf}"
    mkdir -p "$(dirname "$resolv_conf")"
    {
        echo "# Written by the airflow-k3s entrypoint at every start: Docker's embedded DNS resolver"
        echo "# ($DOCKER_DNS_IP, udp port $udp_port, tcp port $tcp_port) reached through $dns_ip:53."
        echo "nameserver $dns_ip"
        grep -E '^[[:space:]]*(search|domain|options)([[:space:]]|$)' /etc/resolv.conf 2>/dev/null || true
    } >"$resolv_conf.tmp"
    mv -f "$resolv_conf.tmp" "$resolv_conf"

    log "pod DNS: $dns_ip:53 (udp, tcp) -> Docker's resolver $DOCKER_DNS_IP:$udp_port/udp, :$tcp_port/tcp (iptables-$backend, chain $DNS_CHAIN); $resolv_conf written"
}

prepare_shared_dir() {
    shared_dir="${AIRFLOW_K3S_SHARED_DIR:-/var/lib/airflow-shared}"
    mkdir -p "$shared_dir" || die "cannot create $shared_dir"
    chown 50000:0 "$shared_dir" || die "cannot chown 50000:0 $shared_dir"
    chmod 2775 "$shared_dir" || die "cannot chmod 2775 $shared_dir"
    log "shared volume $shared_dir: owner 50000:0, mode 2775"
}

check_manifests() {
    dir="${AIRFLOW_K3S_MANIFESTS_DIR:-/var/lib/rancher/k3s/server/manifests}"
    mkdir -p "$dir" || die "cannot create $dir"
    if [ -f "$dir/airflow-k3s/pod-security-checks.yaml" ]; then
        log "manifests: $dir/airflow-k3s (the repo's k3s/manifests)"
    else
        warn "$dir/airflow-k3s/pod-security-checks.yaml is missing: \`invoke pod-yaml\` cannot check the Pod Security levels (is ./k3s/manifests mounted there?)"
    fi
    if [ -f "$dir/airflow-k3s-generated/airflow-worker-env.yaml" ]; then
        log "manifests: $dir/airflow-k3s-generated (the rendered .generated/k3s)"
    else
        warn "================================================================================"
        warn "$dir/airflow-k3s-generated/airflow-worker-env.yaml is missing: the Secret"
        warn "airflow-worker-env, the shared volume and the identities will not exist and every"
        warn "worker pod will fail with CreateContainerConfigError. Render them (\`make up\` or"
        warn "\`invoke up\` writes .generated/k3s/); k3s applies them as soon as they appear."
        warn "================================================================================"
    fi
    # Earlier versions of this script copied the manifests to the top of the folder: those copies
    # would shadow the mounted files, so they go.
    for _f in "$dir"/airflow-k3s-*.yaml; do
        [ -f "$_f" ] || continue
        log "removing $_f (an old copy; the mounted subfolders replace it)"
        rm -f "$_f"
    done
}

has_resolv_conf_arg() {
    for _arg in "$@"; do
        case "$_arg" in
        --resolv-conf | --resolv-conf=*) return 0 ;;
        esac
    done
    return 1
}

setup_dns
if [ "${AIRFLOW_K3S_DNS_ONLY:-0}" = 1 ]; then
    printf '%s\n' "$dns_ip"
    exit 0
fi

prepare_shared_dir
# Only a server applies manifests; an agent (a node of a pool: `k3s agent`) has none.
if [ "${1:-}" = agent ]; then
    log "agent node: no manifests folder (the server applies them)"
else
    check_manifests
fi

if has_resolv_conf_arg "$@" || [ -n "${K3S_RESOLV_CONF:-}" ]; then
    warn "a resolv.conf was given to k3s explicitly (--resolv-conf or K3S_RESOLV_CONF): not adding --resolv-conf=$resolv_conf"
else
    set -- "$@" "--resolv-conf=$resolv_conf"
fi

k3s_bin="${AIRFLOW_K3S_BIN:-/bin/k3s}"
log "exec $k3s_bin $*"
exec "$k3s_bin" "$@"
