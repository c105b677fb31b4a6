#!/usr/bin/env bash
# Infrastructure checks: `terraform fmt -check` over terraform/ and checkov over terraform/
# (framework terraform) and .github/workflows (framework github_actions).
#
# Providers cannot be downloaded in this build environment, so there is no
# `terraform init/validate/plan` here: the pipelines do those in GitHub Actions, and
# tests/infra asserts the properties that matter on the parsed HCL.
#
# checkov is installed, pinned, into a venv of its own (its dependency pins clash with the
# project's): $INFRA_CHECKS_CACHE, else $XDG_CACHE_HOME or ~/.cache, else $TMPDIR.
# Needs only Python 3 with venv and pip. terraform is used when on PATH (or $TERRAFORM);
# without it the fmt check is reported as skipped, unless INFRA_CHECKS_REQUIRE_TERRAFORM=1
# makes that a failure.
#
# Exit status: 0 when every check that ran passed, 1 otherwise.
set -uo pipefail
cd "$(dirname "$0")/.."

CHECKOV_VERSION="${CHECKOV_VERSION:-3.3.30}"
PYTHON="${PYTHON:-python3}"
TERRAFORM="${TERRAFORM:-terraform}"
export PIP_DISABLE_PIP_VERSION_CHECK=1

declare -a summary=()
failed=0

note() { printf 'infra-checks: %s\n' "$*"; }
record() { summary+=("$(printf '%-28s %s' "$1" "$2")"); }

# ---- terraform fmt ------------------------------------------------------------------------
if command -v "$TERRAFORM" >/dev/null 2>&1; then
    note "terraform fmt -check -recursive terraform/ ($("$TERRAFORM" version 2>/dev/null | head -n 1))"
    fmt_err="$(mktemp)"
    if fmt_out="$("$TERRAFORM" fmt -check -recursive -diff terraform/ 2>"$fmt_err")"; then
        record "terraform fmt" "passed"
    else
        printf '%s\n' "$fmt_out"
        grep -v -e 'CLI configuration' -e '^[│╷╵]' -e '^$' "$fmt_err" || true
        record "terraform fmt" "FAILED (files above need \`terraform fmt\`)"
        failed=1
    fi
    rm -f "$fmt_err"
elif [ "${INFRA_CHECKS_REQUIRE_TERRAFORM:-0}" = "1" ]; then
    record "terraform fmt" "FAILED (terraform not found and INFRA_CHECKS_REQUIRE_TERRAFORM=1)"
    failed=1
else
    record "terraform fmt" "SKIPPED (terraform not installed; set INFRA_CHECKS_REQUIRE_TERRAFORM=1 to fail instead)"
fi

# ---- checkov, in its own venv ---------------------------------------------------------------
cache_root="${INFRA_CHECKS_CACHE:-${XDG_CACHE_HOME:-${HOME:-/nonexistent}/.cache}/data-egress-infra-checks}"
if ! mkdir -p "$cache_root" 2>/dev/null || [ ! -w "$cache_root" ]; then
    cache_root="${TMPDIR:-/tmp}/data-egress-infra-checks"
    mkdir -p "$cache_root"
fi
venv="$cache_root/checkov-$CHECKOV_VERSION"
checkov="$venv/bin/checkov"

if ! "$checkov" --version >/dev/null 2>&1; then
    note "installing checkov $CHECKOV_VERSION into $venv (once; about 1-2 minutes)"
    rm -rf "$venv"
    install_log="$(mktemp)"
    install_start=$SECONDS
    if { "$PYTHON" -m venv "$venv" &&
        "$venv/bin/python" -m pip install --quiet --upgrade pip &&
        "$venv/bin/python" -m pip install --quiet "checkov==$CHECKOV_VERSION"; } >"$install_log" 2>&1; then
        note "installed checkov $CHECKOV_VERSION in $((SECONDS - install_start)) s"
    else
        cat "$install_log"
        record "checkov" "FAILED (could not install checkov $CHECKOV_VERSION with $PYTHON)"
        failed=1
    fi
    rm -f "$install_log"
fi

run_checkov() { # label framework directory
    local label=$1 framework=$2 dir=$3 out line
    note "checkov --framework $framework -d $dir"
    out="$(mktemp)"
    "$checkov" -d "$dir" --framework "$framework" --quiet --compact --skip-download >"$out" 2>&1
    local rc=$?
    # --quiet prints only failed checks, then one summary line per framework.
    grep -v -e '^\s*$' "$out" | grep -v -e 'Passed checks:' || true
    line="$(grep -E 'Passed checks: [0-9]+, Failed checks: [0-9]+, Skipped checks: [0-9]+' "$out" | tail -n 1)"
    rm -f "$out"
    if [ -z "$line" ]; then
        record "$label" "FAILED (checkov printed no summary; exit $rc)"
        failed=1
    elif [ "$rc" -ne 0 ] || ! grep -q 'Failed checks: 0,' <<<"$line"; then
        record "$label" "FAILED ($line)"
        failed=1
    else
        record "$label" "passed ($line)"
    fi
}

if [ -x "$checkov" ]; then
    note "checkov $("$checkov" --version 2>/dev/null)"
    run_checkov "checkov terraform/" terraform terraform
    run_checkov "checkov .github/workflows" github_actions .github/workflows
fi

# ---- summary -------------------------------------------------------------------------------
echo
echo "infra-checks summary"
for row in "${summary[@]}"; do
    echo "  $row"
done
if [ "$failed" -ne 0 ]; then
    echo "infra-checks: FAILED"
    exit 1
fi
echo "infra-checks: OK"
