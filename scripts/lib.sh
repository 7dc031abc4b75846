# Shared by kindler's default cluster scripts. Sourced, not run.
# The scripts take create_env.sh's interface: -n NAME -p kind|k3d [flags...].

set -euo pipefail

say() { printf '%s\n' "$*"; }
die() { printf 'kindler: %s\n' "$1" >&2; exit "${2:-1}"; }

# Fails with a clear message when a tool the action needs is missing.
need() {
    local tool=$1 hint=$2
    command -v "$tool" >/dev/null 2>&1 || die "$tool is not installed or not in PATH ($hint); install it, or point this command at your own script in /etc/kindler/kindler.toml" 127
}

need_docker() {
    need docker "https://docs.docker.com/engine/install/"
    docker info >/dev/null 2>&1 || die "docker is installed but its daemon cannot be reached (is it running, and is the kindler user in the docker group?)" 69
}

need_provider() {
    case "$provider" in
        k3d) need k3d "https://k3d.io" ;;
        kind) need kind "https://kind.sigs.k8s.io" ;;
        *) die "unknown provider '$provider' (expected kind or k3d)" 64 ;;
    esac
}

name=""; provider="${KINDLER_PROVIDER:-k3d}"; node_port=30080; pf_port=""
register_portainer=1; haproxy_route=1; register_argocd=1; context=""

parse_args() {
    while [ $# -gt 0 ]; do
        case "$1" in
            -n|--name) name=$2; shift 2 ;;
            -p|--provider) provider=$2; shift 2 ;;
            --node-port) node_port=$2; shift 2 ;;
            --pf-port) pf_port=$2; shift 2 ;;
            --context) context=$2; shift 2 ;;
            --register-portainer) register_portainer=1; shift ;;
            --no-register-portainer) register_portainer=0; shift ;;
            --haproxy-route) haproxy_route=1; shift ;;
            --no-haproxy-route) haproxy_route=0; shift ;;
            --register-argocd) register_argocd=1; shift ;;
            --no-register-argocd) register_argocd=0; shift ;;
            *) die "unknown argument '$1'" 64 ;;
        esac
    done
    [ -n "$name" ] || die "missing -n NAME" 64
    context=${context:-$provider-$name}
}

# Does the provider know a cluster of this name?
cluster_exists() {
    case "$provider" in
        k3d) k3d cluster get "$name" >/dev/null 2>&1 ;;
        kind) kind get clusters 2>/dev/null | grep -qx -- "$name" ;;
    esac
}

# The node containers of a kind cluster.
kind_nodes() {
    docker ps -a --filter "label=io.x-k8s.kind.cluster=$name" --format '{{.Names}}'
}
