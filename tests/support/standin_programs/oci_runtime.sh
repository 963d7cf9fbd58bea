#!/bin/sh
# STAND-IN for @NAME@ (@PACKAGE@ @VERSION@), nodeforge test fixture: an OCI runtime CLI
# ([--root DIR] run|create --bundle DIR ID) that checks its bundle and reports the start.
echo "$(date -u +%Y-%m-%dT%H:%M:%SZ) @NAME@ $*" >>"${NODEFORGE_STANDIN_LOG:-/var/log/nodeforge-standins.log}" 2>/dev/null || true
bundle="" id="" cmd=""
while [ $# -gt 0 ]; do
    case "$1" in
        --version|-v) echo "@NAME@ version @VERSION@ (nodeforge stand-in)"; exit 0 ;;
        --root|--log|--log-format) shift ;;
        --bundle|-b) shift; bundle="$1" ;;
        run|create|start|delete|kill|state) cmd="$1" ;;
        -*) ;;
        *) id="$1" ;;
    esac
    shift
done
if [ "$cmd" = run ] || [ "$cmd" = create ]; then
    [ -f "$bundle/config.json" ] || { echo "@NAME@: $bundle/config.json: no such file" >&2; exit 1; }
    echo "@NAME@: container $id started (stand-in)"
fi
exit 0
