#!/bin/sh
# Alertmanager's entrypoint in compose.yaml: writes the configuration it runs with, TEMPLATE plus
# the `operators` receiver's webhook and/or e-mail from the environment, to OUTPUT, then runs
# COMMAND. Alertmanager reads no environment variables itself.
#   entrypoint.sh TEMPLATE OUTPUT COMMAND...
# ALERTMANAGER_WEBHOOK_URL: alerts are POSTed there as JSON (Alertmanager's webhook format).
# ALERTMANAGER_EMAIL_TO: alerts are mailed there, from ALERTMANAGER_EMAIL_FROM through
#   ALERTMANAGER_SMTP_SMARTHOST (host:port, STARTTLS), logging in as ALERTMANAGER_SMTP_USERNAME
#   with ALERTMANAGER_SMTP_PASSWORD when a username is set.
set -eu
template=$1
out=$2
shift 2

fail() {
    echo "alertmanager: error: $1" >&2
    exit 2
}

quoted() {  # a YAML double-quoted scalar
    printf '"%s"' "$(printf '%s' "$1" | sed 's/[\\"]/\\&/g')"
}

webhook=${ALERTMANAGER_WEBHOOK_URL:-}
to=${ALERTMANAGER_EMAIL_TO:-}
from=${ALERTMANAGER_EMAIL_FROM:-}
smarthost=${ALERTMANAGER_SMTP_SMARTHOST:-}
username=${ALERTMANAGER_SMTP_USERNAME:-}
password=${ALERTMANAGER_SMTP_PASSWORD:-}

if [ -z "$webhook" ] && [ -z "$to" ]; then
    fail "alerts would reach nobody: set ALERTMANAGER_WEBHOOK_URL and/or ALERTMANAGER_EMAIL_TO in .env"
fi
if [ -n "$to" ] && { [ -z "$from" ] || [ -z "$smarthost" ]; }; then
    fail "ALERTMANAGER_EMAIL_TO needs ALERTMANAGER_EMAIL_FROM and ALERTMANAGER_SMTP_SMARTHOST (host:port) in .env"
fi

{
    cat "$template"
    if [ -n "$webhook" ]; then
        printf '    webhook_configs:\n'
        printf '      - url: %s\n' "$(quoted "$webhook")"
        printf '        send_resolved: true\n'
    fi
    if [ -n "$to" ]; then
        printf '    email_configs:\n'
        printf '      - to: %s\n' "$(quoted "$to")"
        printf '        from: %s\n' "$(quoted "$from")"
        printf '        smarthost: %s\n' "$(quoted "$smarthost")"
        printf '        send_resolved: true\n'
        if [ -n "$username" ]; then
            printf '        auth_username: %s\n' "$(quoted "$username")"
            printf '        auth_password: %s\n' "$(quoted "$password")"
        fi
    fi
} > "$out"

exec "$@"
