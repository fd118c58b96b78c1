# bash completion for d (zpeer). Made by `python -m zpeer.cli.completion --write`; do not edit.

# Tables from the click tree: the options of each command (@: before the command), and what the
# value of an option (CMD:--opt) or of a positional argument (CMD:#N, CMD:#* for all) completes to.
_d_commands='daemon setPeerConfig getPeerStatus registerWorker joinToken listPeers acceptPeer removePeer getPeerIdByIp dbSanityCheck execOnPeer shell ssh pushFile pullFile history policy demo completion install-completion remotePull remoteBd remoteDeployDaemon restartDaemon'
declare -gA _d_opts=(
    [@]='--version -h --help'
    [daemon]='--log-level -h --help'
    [setPeerConfig]='--role --id --bind --advertise --leader --leader-key --source-ip --group --heartbeat --heartbeat-budget --history-rows --record-sessions --no-record-sessions --repo --pull-cmd --build-cmd --restart-cmd -h --help'
    [getPeerStatus]='--json -h --help'
    [registerWorker]='--id --token --token-file --leader --leader-key --source-ip -h --help'
    [joinToken]='--ttl --id --replace --target-only --count -h --help'
    [listPeers]='--ids --online --json --pending -h --help'
    [acceptPeer]='--key --target-only -h --help'
    [removePeer]='-h --help'
    [getPeerIdByIp]='-h --help'
    [dbSanityCheck]='--dry-run -h --help'
    [execOnPeer]='--peer --exclude --directory --shellCmd --timeout --user --batch --json -n --no-stdin -b --gather -t --tty -e --escape -h --help'
    [shell]='--peer --directory --user -e --escape -h --help'
    [ssh]='--help'
    [pushFile]='--peer --exclude --dest --user --batch --checksum --stall --json -h --help'
    [pullFile]='--peer --exclude --dest --user --batch --checksum --json -h --help'
    [history]='--peer --limit --json --replay --speed --verify -h --help'
    [policy]='--json -h --help'
    [demo]='--keep -h --help'
    [completion]='-h --help'
    [install-completion]='--shell -h --help'
    [remotePull]='--peer --exclude --timeout --batch --json -h --help'
    [remoteBd]='--peer --exclude --timeout --batch --json -h --help'
    [remoteDeployDaemon]='--peer --exclude --batch --keep-going --wait --timeout -h --help'
    [restartDaemon]='--peer --exclude --batch --wait -h --help'
)
declare -gA _d_kind=(
    [daemon:--log-level]='choice:DEBUG INFO WARNING ERROR'
    [setPeerConfig:--role]='choice:leader worker'
    [setPeerConfig:--id]='any'
    [setPeerConfig:--bind]='any'
    [setPeerConfig:--advertise]='any'
    [setPeerConfig:--leader]='any'
    [setPeerConfig:--leader-key]='any'
    [setPeerConfig:--source-ip]='any'
    [setPeerConfig:--group]='any'
    [setPeerConfig:--heartbeat]='any'
    [setPeerConfig:--heartbeat-budget]='any'
    [setPeerConfig:--history-rows]='any'
    [setPeerConfig:--repo]='dir'
    [setPeerConfig:--pull-cmd]='any'
    [setPeerConfig:--build-cmd]='any'
    [setPeerConfig:--restart-cmd]='any'
    [registerWorker:--id]='any'
    [registerWorker:--token]='any'
    [registerWorker:--token-file]='file'
    [registerWorker:--leader]='any'
    [registerWorker:--leader-key]='any'
    [registerWorker:--source-ip]='any'
    [joinToken:--ttl]='any'
    [joinToken:--id]='any'
    [joinToken:--count]='any'
    [acceptPeer:--key]='any'
    [acceptPeer:#0]='peer'
    [removePeer:#0]='peer'
    [getPeerIdByIp:#0]='any'
    [execOnPeer:--peer]='peers'
    [execOnPeer:--exclude]='peers'
    [execOnPeer:--directory]='dir'
    [execOnPeer:--shellCmd]='any'
    [execOnPeer:--timeout]='any'
    [execOnPeer:--user]='any'
    [execOnPeer:--batch]='any'
    [execOnPeer:-e]='any'
    [execOnPeer:--escape]='any'
    [shell:--peer]='peer'
    [shell:--directory]='dir'
    [shell:--user]='any'
    [shell:-e]='any'
    [shell:--escape]='any'
    [ssh:#*]='any'
    [pushFile:--peer]='peers'
    [pushFile:--exclude]='peers'
    [pushFile:--dest]='any'
    [pushFile:--user]='any'
    [pushFile:--batch]='any'
    [pushFile:--stall]='any'
    [pushFile:#*]='any'
    [pullFile:--peer]='peers'
    [pullFile:--exclude]='peers'
    [pullFile:--dest]='any'
    [pullFile:--user]='any'
    [pullFile:--batch]='any'
    [pullFile:#*]='any'
    [history:--peer]='peer'
    [history:--limit]='any'
    [history:--replay]='any'
    [history:--speed]='any'
    [completion:#0]='choice:bash zsh fish'
    [install-completion:--shell]='choice:bash zsh fish'
    [remotePull:--peer]='peers'
    [remotePull:--exclude]='peers'
    [remotePull:--timeout]='any'
    [remotePull:--batch]='any'
    [remoteBd:--peer]='peers'
    [remoteBd:--exclude]='peers'
    [remoteBd:--timeout]='any'
    [remoteBd:--batch]='any'
    [remoteDeployDaemon:--peer]='peers'
    [remoteDeployDaemon:--exclude]='peers'
    [remoteDeployDaemon:--batch]='any'
    [remoteDeployDaemon:--wait]='any'
    [remoteDeployDaemon:--timeout]='any'
    [restartDaemon:--peer]='peers'
    [restartDaemon:--exclude]='peers'
    [restartDaemon:--batch]='any'
    [restartDaemon:--wait]='any'
)

# Peer ids come from the cache the daemon keeps, so TAB starts no Python and touches no network.
_d_peers() {
    local cur=$1 pre= id f=${XDG_STATE_HOME:-$HOME/.local/state}/zpeer/peers.cache
    ((EUID == 0)) && f=/var/lib/zpeer/peers.cache
    [[ -n ${ZPEER_HOME:-} ]] && f=$ZPEER_HOME/peers.cache
    local -a ids=()
    [[ -r $f ]] && mapfile -t ids <"$f"
    if [[ -z ${2:-} ]]; then
        # --peer takes comma lists: complete the last element, keep the ones before it.
        if [[ $cur == *,* ]]; then pre=${cur%,*},; cur=${cur##*,}; else ids+=(all); fi
    fi
    COMPREPLY=()
    for id in "${ids[@]}"; do
        id=${id%$'\r'}
        [[ -z $id || $id != "$cur"* || ,$pre == *,"$id",* ]] && continue
        COMPREPLY+=("$pre$id")
    done
}

_d_words() {  # the words of $1 that start with $2
    local w; COMPREPLY=()
    for w in $1; do [[ $w == "$2"* ]] && COMPREPLY+=("$w"); done
}

_d_complete() {  # $1: a kind from _d_kind, $2: the word being completed
    case $1 in
        peers) _d_peers "$2" ;;
        peer) _d_peers "$2" one ;;
        dir | file)
            compopt -o filenames 2>/dev/null
            mapfile -t COMPREPLY < <(compgen "-${1:0:1}" -- "$2") ;;
        choice:*) _d_words "${1#choice:}" "$2" ;;
        *) COMPREPLY=() ;;
    esac
}

_d() {
    local cur=${COMP_WORDS[COMP_CWORD]} prev= cmd=@ w i npos=0
    ((COMP_CWORD > 0)) && prev=${COMP_WORDS[COMP_CWORD - 1]}
    # COMP_WORDBREAKS splits --opt=value into `--opt` `=` `value`: treat it like `--opt value`.
    if [[ $cur == = ]]; then cur=
    elif [[ $prev == = ]] && ((COMP_CWORD > 1)); then prev=${COMP_WORDS[COMP_CWORD - 2]}; fi
    for ((i = 1; i < COMP_CWORD; i++)); do
        w=${COMP_WORDS[i]}
        if [[ $w == -* ]]; then
            # Skip an option's value so it is not taken for the command or an argument.
            if [[ -n ${_d_kind[$cmd:$w]:-} ]]; then
                ((i++))
                [[ ${COMP_WORDS[i]:-} == = ]] && ((i++))
            fi
        elif [[ $cmd == @ ]]; then cmd=$w
        else ((npos++)); fi
    done
    if [[ $prev == -* && -n ${_d_kind[$cmd:$prev]:-} ]]; then
        _d_complete "${_d_kind[$cmd:$prev]}" "$cur"
    elif [[ $cur == -* ]]; then
        _d_words "${_d_opts[$cmd]:-}" "$cur"
    elif [[ $cmd == @ ]]; then
        _d_words "$_d_commands" "$cur"
    elif [[ -n ${_d_kind[$cmd:#$npos]:-${_d_kind[$cmd:#*]:-}} ]]; then
        _d_complete "${_d_kind[$cmd:#$npos]:-${_d_kind[$cmd:#*]}}" "$cur"
    else
        _d_words "${_d_opts[$cmd]:-}" "$cur"
    fi
}

complete -F _d d
