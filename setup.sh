#!/usr/bin/env bash
# qlite host setup. Idempotent: safe to run again at any time.
#
#   - Debian packages (podman, runsc, mmdebstrap, ...), preferring the newest
#     runsc Debian offers (bookworm-backports carries the systrap platform);
#   - <repo>/.venv from the machine's python3, with qlite installed into it;
#   - /usr/local/bin/qlite linked to the venv;
#   - the default template (debian-12) and the disposable template default-dvm.
#
# Downloads come only from Debian packages and PyPI.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$REPO/.venv"
export DEBIAN_FRONTEND=noninteractive

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: run as root (qlite drives podman and runsc as root)" >&2
    exit 1
fi

# Packages qlite needs on the host. runsc is handled separately below.
PACKAGES=(
    podman netavark aardvark-dns conmon catatonit uidmap iptables
    mmdebstrap nftables iproute2 util-linux bsdutils procps
    python3 python3-venv python3-dev gcc libc6-dev
    ca-certificates git gnupg tmux
    qemu-system-x86 qemu-utils busybox-static e2fsprogs kmod swtpm swtpm-tools tpm2-tools
)

# Adds bookworm-backports, reusing the URI of the host's existing Debian
# entry so no mirror host name is hard-coded here.
add_backports() {
    local f=/etc/apt/sources.list.d/qlite-backports.sources uri=""
    [ -f "$f" ] && return 0
    if grep -rqs 'bookworm-backports' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null; then
        return 0
    fi
    for src in /etc/apt/sources.list.d/*.sources; do
        [ -f "$src" ] || continue
        # The first stanza whose Suites include plain "bookworm".
        uri=$(awk 'BEGIN{RS=""} /Suites:[^\n]*bookworm( |\n|$)/ && !/security/ {
                 if (match($0, /URIs:[ \t]*[^ \t\n]+/)) { s=substr($0,RSTART,RLENGTH); sub(/URIs:[ \t]*/,"",s); print s; exit } }' "$src")
        [ -n "$uri" ] && break
    done
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri=$(awk '$1=="deb" { for (i=2;i<=NF;i++) if ($i !~ /^\[/ && $i ~ /:\/\//) { if ($(i+1)=="bookworm") { print $i; exit } } }' /etc/apt/sources.list)
    fi
    if [ -z "$uri" ]; then
        echo "setup.sh: no Debian bookworm apt entry found; using bookworm's runsc" >&2
        return 0
    fi
    cat >"$f" <<EOF
Types: deb
URIs: $uri
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
}

install_packages() {
    local missing=()
    for p in "${PACKAGES[@]}" runsc; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    local want_bp=0
    if . /etc/os-release && [ "${VERSION_CODENAME:-}" = bookworm ]; then
        add_backports
        want_bp=1
    fi
    if [ ${#missing[@]} -eq 0 ] && [ $want_bp -eq 1 ]; then
        # All present; upgrade runsc only if backports offers a newer one.
        if apt-cache policy runsc 2>/dev/null | grep -q bookworm-backports; then
            local inst cand
            inst=$(dpkg-query -W -f='${Version}' runsc)
            cand=$(apt-cache madison runsc | awk '/bookworm-backports/ {print $3; exit}')
            if [ -n "$cand" ] && dpkg --compare-versions "$cand" gt "$inst"; then
                missing+=(runsc)
            fi
        fi
    fi
    [ ${#missing[@]} -eq 0 ] && { say "Debian packages already installed"; return 0; }
    say "Installing Debian packages: ${missing[*]}"
    apt-get update -q
    local base=()
    for p in "${missing[@]}"; do [ "$p" = runsc ] || base+=("$p"); done
    [ ${#base[@]} -gt 0 ] && apt-get install -y -q --no-install-recommends "${base[@]}"
    if [ $want_bp -eq 1 ] && apt-get install -y -q --no-install-recommends -t bookworm-backports runsc; then
        :
    else
        apt-get install -y -q --no-install-recommends runsc
    fi
}

make_venv() {
    local py=/usr/bin/python3
    [ -x "$py" ] || py="$(command -v python3)"
    if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
        say "Creating $VENV from $py"
        rm -rf "$VENV"
        "$py" -m venv "$VENV"
    fi
    # Reinstall when pyproject.toml or the set of qlite's files changed since
    # the last install: strict mode links each file, so a new one needs it.
    local stamp="$VENV/.qlite-installed" sum
    sum=$({ cat "$REPO/pyproject.toml"; cd "$REPO" && find -L qlite -name __pycache__ -prune -o -type f \( -name '*.py' -o -name '*.tcss' \) -print | LC_ALL=C sort; } | sha256sum | cut -d' ' -f1)
    if [ "$(cat "$stamp" 2>/dev/null)" != "$sum" ]; then
        say "Installing qlite and its Python dependencies into $VENV"
        "$VENV/bin/python" -m pip install -q --upgrade pip
        # strict mode: a plain path entry (build/__editable__.*) holding
        # links to qlite's files, which imports as fast as an installed
        # package (it matters for disposable latency), and maps the tui/
        # folder to qlite.tui, so no package named "tui" is installed.
        rm -rf "$REPO/build/__editable__".*
        "$VENV/bin/python" -m pip install -q -e "$REPO[test,bench]" --config-settings editable_mode=strict
        echo "$sum" >"$stamp"
    else
        say "Python environment up to date"
    fi
    # An editable install leaves qlite's own modules uncompiled; without
    # bytecode every command (and a preloaded disposable's whole latency)
    # pays ~25 ms of compiling, and more wherever PYTHONDONTWRITEBYTECODE is set.
    # Both the installed links and the checkout (which tests import) get it.
    local tree
    tree=$(cd / && "$VENV/bin/python" -c 'import os, qlite; print(os.path.dirname(qlite.__file__))')
    "$VENV/bin/python" -m compileall -q "$tree" "$REPO/qlite" "$REPO/tui" >/dev/null
    ln -sfn "$VENV/bin/qlite" /usr/local/bin/qlite
}

install_packages
make_venv

say "Checking the host (qlite doctor)"
/usr/local/bin/qlite doctor || true

say "Building the default template and default-dvm if missing"
/usr/local/bin/qlite setup
