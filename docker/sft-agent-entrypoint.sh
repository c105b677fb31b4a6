#!/bin/sh
# Entrypoint of the sft-agent container: put the TLS material where the agent's config
# expects it, then exec the agent (PID 1, so it gets SIGTERM from ECS / docker stop).
#
# Each of the client certificate, the client key and the CA bundle comes from, in order:
#   SFT_CLIENT_CERT_PEM | SFT_CLIENT_KEY_PEM | SFT_CA_BUNDLE_PEM   the PEM text itself
#                                                                  (ECS injects secrets so)
#   SFT_CLIENT_CERT_FILE | SFT_CLIENT_KEY_FILE | SFT_CA_BUNDLE_FILE  a mounted file
# and is written to $SFT_TLS_DIR (default /run/sft-agent/tls; mount a tmpfs there) as
# client.pem, client-key.pem and ca.pem, mode 0600. The certificate and key are required;
# without a CA bundle the config's ca_bundle must point elsewhere. The *_PEM variables are
# removed from the environment before the agent starts. Nothing secret is ever printed:
# no `set -x`, and printf is the shell's builtin, so PEM text never appears in argv.
set -eu

tls_dir="${SFT_TLS_DIR:-/run/sft-agent/tls}"
config="${SFT_AGENT_CONFIG:-/etc/sft-agent/config.yaml}"

fail() {
    echo "sft-agent-entrypoint: $*" >&2
    exit 1
}

umask 077
mkdir -p "$tls_dir" 2>/dev/null || fail "cannot create $tls_dir (read-only root? mount a tmpfs there or set SFT_TLS_DIR)"
[ -w "$tls_dir" ] || fail "$tls_dir is not writable by uid $(id -u) (mount a tmpfs there or set SFT_TLS_DIR)"

# place WHAT PEM_TEXT FILE_PATH TARGET -> 0 placed, 1 neither given
place() {
    what=$1 pem=$2 file=$3 target=$4
    tmp="$target.tmp.$$"
    if [ -n "$pem" ]; then
        printf '%s\n' "$pem" >"$tmp"
    elif [ -n "$file" ]; then
        [ -r "$file" ] || fail "$what file $file is not readable"
        cat -- "$file" >"$tmp"
    else
        return 1
    fi
    if ! grep -q -e '-----BEGIN ' "$tmp"; then
        rm -f -- "$tmp"
        fail "$what does not hold a PEM block"
    fi
    chmod 0600 "$tmp"
    mv -f -- "$tmp" "$target"
    return 0
}

place "client certificate (SFT_CLIENT_CERT_PEM / SFT_CLIENT_CERT_FILE)" \
    "${SFT_CLIENT_CERT_PEM:-}" "${SFT_CLIENT_CERT_FILE:-}" "$tls_dir/client.pem" ||
    [ -s "$tls_dir/client.pem" ] ||
    fail "no client certificate: set SFT_CLIENT_CERT_PEM or SFT_CLIENT_CERT_FILE"
place "client key (SFT_CLIENT_KEY_PEM / SFT_CLIENT_KEY_FILE)" \
    "${SFT_CLIENT_KEY_PEM:-}" "${SFT_CLIENT_KEY_FILE:-}" "$tls_dir/client-key.pem" ||
    [ -s "$tls_dir/client-key.pem" ] ||
    fail "no client key: set SFT_CLIENT_KEY_PEM or SFT_CLIENT_KEY_FILE"
place "CA bundle (SFT_CA_BUNDLE_PEM / SFT_CA_BUNDLE_FILE)" \
    "${SFT_CA_BUNDLE_PEM:-}" "${SFT_CA_BUNDLE_FILE:-}" "$tls_dir/ca.pem" ||
    echo "sft-agent-entrypoint: no CA bundle given; the config's ca_bundle is used as it is" >&2

unset SFT_CLIENT_CERT_PEM SFT_CLIENT_KEY_PEM SFT_CA_BUNDLE_PEM
[ -r "$config" ] || fail "agent config $config is not readable (set SFT_AGENT_CONFIG or mount it)"

exec sft-agent run --config "$config" "$@"
