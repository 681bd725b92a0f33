#!/bin/sh
# Install or upgrade talkbot as a systemd service: a venv under $PREFIX, the hardened unit
# and its socket unit, the service user and $CONFDIR with a config and two secret files.
# Idempotent: run it again to upgrade. It never overwrites a config or a secret that exists.
#
#   sudo deploy/install.sh
#
# Settings (environment):
#   PREFIX=/opt/talkbot           the venv goes to $PREFIX/venv
#   CONFDIR=/etc/talkbot          talkbot.toml, bot_secret, api_key
#   UNITDIR=/etc/systemd/system   where talkbot.service and talkbot.socket go
#   STATEDIR=/var/lib/talkbot     the store (the unit's StateDirectory=talkbot)
#   SERVICE_USER=talkbot          the system user the service runs as
#   PYTHON=python3                Python 3.11 or newer, for the venv
#   PACKAGE=<this checkout>       what pip installs (a path, a wheel, a requirement)
#   PIP_OPTS=                     extra pip options (e.g. --no-index --find-links DIR)
#   SKIP_SYSTEMCTL=1              touch nothing outside these directories: no user, no
#                                 chown, no systemctl (staging, packaging, tests)
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
PREFIX=${PREFIX:-/opt/talkbot}
CONFDIR=${CONFDIR:-/etc/talkbot}
UNITDIR=${UNITDIR:-/etc/systemd/system}
STATEDIR=${STATEDIR:-/var/lib/talkbot}
SERVICE_USER=${SERVICE_USER:-talkbot}
PYTHON=${PYTHON:-python3}
PACKAGE=${PACKAGE:-$REPO}
PIP_OPTS=${PIP_OPTS:-}
SKIP_SYSTEMCTL=${SKIP_SYSTEMCTL:-0}

say() { printf 'talkbot install: %s\n' "$*"; }
die() { printf 'talkbot install: %s\n' "$*" >&2; exit 1; }
system() { [ "$SKIP_SYSTEMCTL" != 1 ]; }

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
    || die "$PYTHON is not Python 3.11 or newer (set PYTHON=...)"
if system && [ "$(id -u)" != 0 ]; then
    die "run as root (or with SKIP_SYSTEMCTL=1 for an install that changes no system state)"
fi

# -- the service user ------------------------------------------------------------------
if system; then
    if id -u "$SERVICE_USER" >/dev/null 2>&1; then
        say "user $SERVICE_USER: kept"
    else
        useradd --system --home-dir "$STATEDIR" --no-create-home \
            --shell /usr/sbin/nologin --comment "talkbot service" "$SERVICE_USER"
        say "user $SERVICE_USER: created"
    fi
fi

# -- the venv and the package ------------------------------------------------------------
mkdir -p "$PREFIX"
if [ -x "$PREFIX/venv/bin/python" ]; then
    say "venv $PREFIX/venv: kept"
else
    "$PYTHON" -m venv "$PREFIX/venv"
    say "venv $PREFIX/venv: created"
fi
# shellcheck disable=SC2086 # PIP_OPTS is a list of options
"$PREFIX/venv/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade \
    $PIP_OPTS "$PACKAGE"
say "package: installed ($("$PREFIX/venv/bin/python" -m pip show talkbot 2>/dev/null \
    | sed -n 's/^Version: /talkbot /p'))"
install -m 0644 "$REPO/README.md" "$PREFIX/README.md"

# -- the units -----------------------------------------------------------------------------
# talkbot.socket holds the webhook port across restarts of talkbot.service (README).
mkdir -p "$UNITDIR"
rendered=$(mktemp)
trap 'rm -f "$rendered"' EXIT
unit_changed=0
socket_changed=0
for name in talkbot.service talkbot.socket; do
    unit="$UNITDIR/$name"
    sed -e "s#/opt/talkbot#$PREFIX#g" -e "s#/etc/talkbot#$CONFDIR#g" \
        -e "s#^User=talkbot\$#User=$SERVICE_USER#" -e "s#^Group=talkbot\$#Group=$SERVICE_USER#" \
        "$REPO/systemd/$name" >"$rendered"
    if [ -f "$unit" ] && cmp -s "$rendered" "$unit"; then
        say "unit $unit: unchanged"
    else
        install -m 0644 "$rendered" "$unit"
        say "unit $unit: installed"
        unit_changed=1
        if [ "$name" = talkbot.socket ]; then socket_changed=1; fi
    fi
done

# -- configuration and secrets -----------------------------------------------------------
mkdir -p "$CONFDIR"
chmod 0750 "$CONFDIR"
system && chown "root:$SERVICE_USER" "$CONFDIR"
# Secrets: root-only. systemd reads them at start (LoadCredential=) and hands them in.
if [ -e "$CONFDIR/bot_secret" ]; then
    say "secret $CONFDIR/bot_secret: kept"
else
    (umask 077 && "$PYTHON" -c 'import secrets; print(secrets.token_hex(32))' \
        >"$CONFDIR/bot_secret")
    say "secret $CONFDIR/bot_secret: created (a fresh random secret for occ talk:bot:install)"
fi
if [ -e "$CONFDIR/api_key" ]; then
    say "secret $CONFDIR/api_key: kept"
else
    (umask 077 && : >"$CONFDIR/api_key")
    say "secret $CONFDIR/api_key: created empty (put the model API key there, if any)"
fi
# The reference config, always current, to compare with after an upgrade.
install -m 0644 "$HERE/talkbot.example.toml" "$CONFDIR/talkbot.example.toml"
if [ -e "$CONFDIR/talkbot.toml" ]; then
    say "config $CONFDIR/talkbot.toml: kept (compare with talkbot.example.toml after upgrades)"
else
    (umask 027 && sed \
        -e "s#^bot_secret = .*#bot_secret_file = \"$CONFDIR/bot_secret\"#" \
        -e "s#^api_key = .*#api_key_file = \"$CONFDIR/api_key\"#" \
        -e "s#^path = \"talkbot.sqlite3\"#path = \"$STATEDIR/talkbot.sqlite3\"#" \
        -e '/^# Or read it from a file/d' -e '/^# bot_secret_file = /d' -e '/^# api_key_file = /d' \
        "$HERE/talkbot.example.toml" >"$CONFDIR/talkbot.toml")
    chmod 0640 "$CONFDIR/talkbot.toml"
    system && chown "root:$SERVICE_USER" "$CONFDIR/talkbot.toml"
    say "config $CONFDIR/talkbot.toml: created from the example; edit it"
fi

# -- systemd -------------------------------------------------------------------------------
if system; then
    [ "$unit_changed" = 1 ] && systemctl daemon-reload
    # The socket listens from boot on; the service Requires= it in any case.
    systemctl enable --quiet talkbot.socket
    # An upgrade takes effect now if the service runs; a first install waits for you.
    if [ "$socket_changed" = 0 ]; then
        systemctl try-restart talkbot.service  # the socket stays open: no webhook lost
    elif systemctl is-active --quiet talkbot.service; then
        # A new or changed listener (as on the first upgrade to socket activation, when
        # the daemon holds the port itself): only a stop and a start moves the port.
        systemctl stop talkbot.service talkbot.socket
        systemctl start talkbot.socket talkbot.service
    else
        systemctl try-restart talkbot.socket
    fi
fi

cat <<EOF
talkbot install: done. Next:
  1. edit $CONFDIR/talkbot.toml ([nextcloud] url, [llm], [access] admins and admin_room)
  2. $PREFIX/venv/bin/talkbot check --config $CONFDIR/talkbot.toml
  3. $PREFIX/venv/bin/talkbot nextcloud-setup --config $CONFDIR/talkbot.toml
     and run the occ commands it prints on the Nextcloud server (deploy/NEXTCLOUD.md)
  4. systemctl enable --now talkbot.socket talkbot && systemctl status talkbot
EOF
