#!/bin/sh
# Entrypoint of the k3s service (docker-compose.yml runs it with /bin/sh; the k3s image is busybox
# based, so this is POSIX sh). It prepares the container, then execs k3s, which stays PID 1.
#
#   a. Pod DNS. Docker's embedded resolver listens on 127.0.0.11 inside this container only, and
#      k3s refuses a loopback nameserver for pods (it would fall back to a public resolver, which
#      cannot resolve compose service names such as "postgres" or "registry"). So: read the real
#      ports of Docker's resolver from Docker's own DNAT rules (chain DOCKER_OUTPUT, nat table),
#      DNAT DNS traffic sent to this container's own IP (port 53, udp and tcp) to them, write a
#      resolv.conf naming that IP, and hand it to k3s with --resolv-conf. CoreDNS forwards to it.
#   b. The shared volume (hostPath of the PV in k3s/manifests/shared-volume.yaml): owned by
#      uid 50000 gid 0, group-writable, setgid, so worker pods (uid 50000, gid 0) can write it.
#   c. Manifests: copies *.yaml from the repo's k3s/manifests and from the rendered .generated/k3s
#      into k3s's auto-deploy directory with an "airflow-k3s-" prefix. k3s applies them at start and
#      keeps them in sync; this runs at every start and is idempotent.
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
#   AIRFLOW_K3S_SHARED_DIR           shared volume [/var/lib/airflow-shared]
#   AIRFLOW_K3S_MANIFESTS_SRC        repo manifests [/airflow-k3s/manifests]
#   AIRFLOW_K3S_GENERATED_SRC        rendered manifests (worker Secret) [/airflow-k3s/generated]
#   AIRFLOW_K3S_MANIFESTS_DEST       k3s auto-deploy dir [/var/lib/rancher/k3s/server/manifests]
#   AIRFLOW_K3S_BIN                  what to exec [/bin/k3s]
#
# Prior art read (not copied): kind's images/base/files/usr/local/bin/entrypoint
# (enable_network_magic, select_iptables) and k3d's pkg/types/fixes/assets/k3d-entrypoint-dns.sh.
# Both rewrite Docker's own rules; this script leaves them untouched and adds a chain of its own.
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

# resolver_port SAVE_OUTPUT PROTO: the port of Docker's DNAT to 127.0.0.11 for PROTO in chain
# DOCKER_OUTPUT. Matches on the DNAT target, not on "--dport 53": some iptables-nft versions print
# those rules without it (kubernetes-sigs/kind#3054).
resolver_port() {
    printf '%s\n' "$1" | awk -v proto="$2" -v dns="$DOCKER_DNS_IP" '
        $1 == "-A" && $2 == "DOCKER_OUTPUT" {
            p = ""; to = ""
            for (i = 3; i < NF; i++) {
                if ($i == "-p") p = $(i + 1)
                if ($i == "--to-destination") to = $(i + 1)
            }
            if (p == proto && index(to, dns ":") == 1) {
                port = substr(to, length(dns) + 2)
                if (port ~ /^[0-9]+$/) { print port; exit }
            }
        }'
}

setup_dns() {
    # 1. Which backend holds Docker's rules? Docker writes them with the host's iptables flavour.
    backend=""
    nat_rules=""
    tried=""
    found_tool=0
    for _b in nft legacy; do
        _rc=0
        _out="$(ipt "$_b" iptables-save -t nat 2>/dev/null)" || _rc=$?
        if [ "$_rc" = 127 ]; then
            tried="$tried iptables-$_b-save(not installed)"
            continue
        fi
        found_tool=1
        if [ "$_rc" != 0 ]; then
            tried="$tried iptables-$_b-save(failed, exit $_rc)"
            continue
        fi
        tried="$tried iptables-$_b-save"
        if printf '%s\n' "$_out" | grep -q '^:DOCKER_OUTPUT '; then
            backend="$_b"
            nat_rules="$_out"
            break
        fi
    done
    [ "$found_tool" = 1 ] || die "no iptables binaries found (need iptables-nft-save/iptables-legacy-save or xtables-nft-multi/xtables-legacy-multi; PATH=$PATH)"
    if [ -z "$backend" ]; then
        die "chain DOCKER_OUTPUT not found in the nat table (checked:$tried). It holds Docker's DNAT of $DOCKER_DNS_IP:53 to its embedded DNS resolver, and Docker only creates it for containers on a user-defined network (compose networks are; the default bridge network is not). Without it pods cannot resolve compose service names. Run this container on a user-defined network."
    fi

    udp_port="$(resolver_port "$nat_rules" udp)"
    tcp_port="$(resolver_port "$nat_rules" tcp)"
    [ -n "$udp_port" ] || die "chain DOCKER_OUTPUT ($backend) has no udp DNAT to $DOCKER_DNS_IP:<port>; cannot find Docker's DNS resolver. Rules seen: $(printf '%s\n' "$nat_rules" | grep DOCKER_OUTPUT | tr '\n' ';')"
    [ -n "$tcp_port" ] || die "chain DOCKER_OUTPUT ($backend) has no tcp DNAT to $DOCKER_DNS_IP:<port>; cannot find Docker's DNS resolver. Rules seen: $(printf '%s\n' "$nat_rules" | grep DOCKER_OUTPUT | tr '\n' ';')"

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

install_manifests() {
    src_dir="${AIRFLOW_K3S_MANIFESTS_SRC:-/airflow-k3s/manifests}"
    gen_dir="${AIRFLOW_K3S_GENERATED_SRC:-/airflow-k3s/generated}"
    dest_dir="${AIRFLOW_K3S_MANIFESTS_DEST:-/var/lib/rancher/k3s/server/manifests}"
    prefix="airflow-k3s-"
    mkdir -p "$dest_dir" || die "cannot create $dest_dir"

    [ -d "$src_dir" ] || warn "$src_dir does not exist: the shared volume's PV/PVC will not be created (is ./k3s/manifests mounted?)"
    if [ ! -f "$gen_dir/airflow-worker-env.yaml" ]; then
        warn "================================================================================"
        warn "$gen_dir/airflow-worker-env.yaml is missing: the Secret airflow-worker-env will"
        warn "not exist and every worker pod will fail with CreateContainerConfigError."
        warn "Render it first (\`make up\` or \`invoke up\` writes .generated/k3s/), then restart k3s."
        warn "================================================================================"
    fi

    installed=" "
    for _dir in "$src_dir" "$gen_dir"; do
        [ -d "$_dir" ] || continue
        for _f in "$_dir"/*.yaml; do
            [ -f "$_f" ] || continue
            _name="$prefix$(basename "$_f")"
            case "$installed" in
            *" $_name "*) die "two manifests would both be installed as $dest_dir/$_name (from $src_dir and $gen_dir): rename one" ;;
            esac
            # Write next to the target, then rename: k3s never sees a half-written file.
            cp "$_f" "$dest_dir/.$_name.tmp" || die "cannot copy $_f to $dest_dir"
            mv -f "$dest_dir/.$_name.tmp" "$dest_dir/$_name"
            installed="$installed$_name "
            log "manifest $_f -> $dest_dir/$_name"
        done
    done

    # Keep the directory in sync: drop our manifests whose source is gone.
    for _f in "$dest_dir/$prefix"*.yaml; do
        [ -f "$_f" ] || continue
        case "$installed" in
        *" $(basename "$_f") "*) ;;
        *)
            warn "removing $_f: its source manifest is gone"
            rm -f "$_f"
            ;;
        esac
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
install_manifests

if has_resolv_conf_arg "$@" || [ -n "${K3S_RESOLV_CONF:-}" ]; then
    warn "a resolv.conf was given to k3s explicitly (--resolv-conf or K3S_RESOLV_CONF): not adding --resolv-conf=$resolv_conf"
else
    set -- "$@" "--resolv-conf=$resolv_conf"
fi

k3s_bin="${AIRFLOW_K3S_BIN:-/bin/k3s}"
log "exec $k3s_bin $*"
exec "$k3s_bin" "$@"
