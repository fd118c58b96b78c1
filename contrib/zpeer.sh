# zpeer shell helpers. Source this file from bash, zsh or sh:   . /path/to/contrib/zpeer.sh
#
#   getPeerIdByIp IP            print the id of the peer connected from IP
#                               (status 1 and "No peer found with IP: IP" on stderr when none)
#   execOnPeerByIp IP DIR CMD   run CMD with /bin/bash -c in DIR on the peer connected from IP
#                               (DIR "" = the remote home); status = the remote command's
#   forEachPeer CMD             run CMD on every peer online now, in parallel, output lines
#                               prefixed "ID: "; status = the largest remote status
#
# They only call `d`, so they work wherever `d` does and need the local daemon running.
# Failures of zpeer itself (status 255, e.g. "Failed to connect") come through unchanged.

getPeerIdByIp() {
    if [ $# -ne 1 ] || [ -z "$1" ]; then
        echo "usage: getPeerIdByIp IP" >&2
        return 2
    fi
    local _zp_err _zp_rc
    # The id goes straight to stdout (fd 3); stderr is held back so that "no such peer" (status 1)
    # reads the same for every caller, while any other failure shows d's own message.
    # `&& ... ||` keeps a failing lookup from ending a caller that runs under `set -e`.
    { _zp_err=$(command d getPeerIdByIp "$1" 2>&1 1>&3 3>&-) && _zp_rc=0 || _zp_rc=$?; } 3>&1
    case $_zp_rc in
        0) return 0 ;;
        1) echo "No peer found with IP: $1" >&2 ;;
        *) [ -z "$_zp_err" ] || printf '%s\n' "$_zp_err" >&2 ;;
    esac
    return "$_zp_rc"
}

execOnPeerByIp() {
    if [ $# -ne 3 ] || [ -z "$1" ]; then
        echo "usage: execOnPeerByIp IP DIR CMD" >&2
        return 2
    fi
    local _zp_id
    _zp_id=$(getPeerIdByIp "$1") || return
    if [ -z "$2" ]; then
        command d execOnPeer --peer "$_zp_id" --shellCmd "$3"
    else
        command d execOnPeer --peer "$_zp_id" --directory "$2" --shellCmd "$3"
    fi
}

forEachPeer() {
    if [ $# -lt 1 ] || [ -z "$*" ]; then
        echo "usage: forEachPeer CMD" >&2
        return 2
    fi
    local _zp_ids
    # Only the peers online now, not `--peer all`: a switched-off laptop is not a failure of CMD
    # (it would be reported as "Peer offline" and make the status 255).
    _zp_ids=$(command d listPeers --ids --online) || return
    # Several words are joined with spaces, as ssh does with its command words.
    command d execOnPeer --peer "$(printf '%s\n' "$_zp_ids" | paste -s -d , -)" --shellCmd "$*"
}
