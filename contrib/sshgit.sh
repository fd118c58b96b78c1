# ssh fallback for peers whose zpeer daemon is missing or too old to take `d remoteDeployDaemon`.
# Source this file from bash, zsh or sh:   . /path/to/contrib/sshgit.sh
#
#   sshCmd USER@HOST DIR CMD   run CMD with /bin/bash -c in DIR on HOST over ssh
#                              (DIR "" = the remote home, "~/x" = x under the remote home);
#                              status = the remote command's, or ssh's 255
#
# Example (bootstrap a peer):  sshCmd root@10.8.0.5 /opt/zpeer 'git pull --ff-only && pip install .'
#
# ssh joins its command words with spaces and hands the result to the remote login shell, so DIR
# and CMD are each sent as one single-quoted word: spaces, quotes, $, backticks, globs and
# newlines arrive as typed. The remote login shell must be POSIX-like (sh, dash, bash, zsh, ksh).

_sshgit_quote() {
    # Print $1 as one single-quoted shell word: each ' becomes '\'' (close, escaped quote, reopen).
    local _sg_rest="$1" _sg_out=
    while :; do
        case $_sg_rest in
            *\'*)
                _sg_out="$_sg_out${_sg_rest%%\'*}'\\''"
                _sg_rest=${_sg_rest#*\'}
                ;;
            *) break ;;
        esac
    done
    printf "'%s%s'" "$_sg_out" "$_sg_rest"
}

sshCmd() {
    if [ $# -ne 3 ] || [ -z "$1" ]; then
        echo "usage: sshCmd USER@HOST DIR CMD" >&2
        return 2
    fi
    local _sg_remote=
    case $2 in
        '') ;;
        '~') _sg_remote='cd && ' ;;
        # A quoted ~ would not expand, so the remote $HOME stands in for it.
        '~/'*) _sg_remote="cd -- \"\$HOME\"/$(_sshgit_quote "${2#\~/}") && " ;;
        *) _sg_remote="cd -- $(_sshgit_quote "$2") && " ;;
    esac
    # exec: the remote command's status (or signal) is the session's, which ssh hands back.
    _sg_remote="${_sg_remote}exec /bin/bash -c $(_sshgit_quote "$3")"
    # `--`: a host that starts with "-" is a host, never an ssh option.
    command ssh -- "$1" "$_sg_remote"
}
