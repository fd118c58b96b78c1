# fish completion for d (zpeer). Made by `python -m zpeer.cli.completion --write`; do not edit.

# Peer ids come from the cache the daemon keeps, so TAB starts no Python and touches no network.
function __d_peer_ids
    set -l f $HOME/.local/state/zpeer/peers.cache
    test -n "$XDG_STATE_HOME"; and set f $XDG_STATE_HOME/zpeer/peers.cache
    test "$EUID" = 0; and set f /var/lib/zpeer/peers.cache
    test -n "$ZPEER_HOME"; and set f $ZPEER_HOME/peers.cache
    test -r $f; and string trim -- <$f | string match -rv '^$'
end

# --peer takes comma lists and `all`: complete the last element, keep the ones before it.
function __d_peers
    set -l pre (commandline -ct | string replace -r '^--peer=' '' | string match -r '^.*,')
    set -l given
    if test -n "$pre"
        set given (string split , -- $pre)
    else
        set pre ''  # an empty list would make $pre$id expand to nothing
        echo all
    end
    for id in (__d_peer_ids)
        contains -- $id $given; or echo $pre$id
    end
end

# True when the command line is at positional argument N (-1: any) of command CMD.
function __d_pos -a cmd n
    set -l args (string match -rv '^-' -- (commandline -opc))
    test "$args[2]" = "$cmd"; or return 1
    test "$n" = -1; or test (count $args) -eq (math $n + 2)
end

complete -c d -f
complete -c d -n '__fish_use_subcommand' -l version -d 'Show the version and exit.'
complete -c d -n '__fish_use_subcommand' -s h -l help -d 'Show this message and exit.'
complete -c d -n __fish_use_subcommand -a 'daemon' -d 'Run this node\'s daemon in the foreground (what systemd starts).'
complete -c d -n __fish_use_subcommand -a 'setPeerConfig' -d 'Set this node\'s role and settings; a running daemon applies them at...'
complete -c d -n __fish_use_subcommand -a 'getPeerStatus' -d 'Show this node\'s config and state: role, id, leader, link, version,...'
complete -c d -n __fish_use_subcommand -a 'registerWorker' -d 'Register this node as a worker of a leader (with a token: accepted...'
complete -c d -n __fish_use_subcommand -a 'joinToken' -d 'Leader: print a one-time join token (leader address, key and...'
complete -c d -n __fish_use_subcommand -a 'listPeers' -d 'List the peers registered with the leader (asks the leader from any...'
complete -c d -n __fish_use_subcommand -a 'acceptPeer' -d 'Leader: accept a pending peer\'s key so it can run and receive...'
complete -c d -n __fish_use_subcommand -a 'removePeer' -d 'Leader: revoke a peer\'s key and cut its connection at once.'
complete -c d -n __fish_use_subcommand -a 'getPeerIdByIp' -d 'Print the id of the peer whose connection comes from IP (exit 1 if...'
complete -c d -n __fish_use_subcommand -a 'dbSanityCheck' -d 'Check the local database (integrity, schema); on a worker delete...'
complete -c d -n __fish_use_subcommand -a 'execOnPeer' -d 'Run CMD on peers; remote stdout/stderr stream here byte-exact; exit...'
complete -c d -n __fish_use_subcommand -a 'shell' -d 'A login shell on a peer in a pseudo-terminal; exit = the shell\'s.'
complete -c d -n __fish_use_subcommand -a 'ssh' -d 'Run a command on a peer with ssh\'s command line (the same program...'
complete -c d -n __fish_use_subcommand -a 'pushFile' -d 'Copy local files and directories to peers; exit 0 when every file...'
complete -c d -n __fish_use_subcommand -a 'pullFile' -d 'Copy files and directories from peers; exit 0 when every file came...'
complete -c d -n __fish_use_subcommand -a 'history' -d 'Show the leader\'s audit log of executed commands, newest first.'
complete -c d -n __fish_use_subcommand -a 'policy' -d 'Leader: show the access policy (who may run on whom, as which user,...'
complete -c d -n __fish_use_subcommand -a 'demo' -d 'Start a leader and two workers on loopback, show them working, then...'
complete -c d -n __fish_use_subcommand -a 'completion' -d 'Print the tab-completion script for SHELL.'
complete -c d -n __fish_use_subcommand -a 'install-completion' -d 'Install tab completion for your shell in its standard user location.'
complete -c d -n __fish_use_subcommand -a 'remotePull' -d 'Run each peer\'s own pull recipe (default `git pull --ff-only` in...'
complete -c d -n __fish_use_subcommand -a 'remoteBd' -d 'Run each peer\'s own build recipe in its repo (default: reinstall...'
complete -c d -n __fish_use_subcommand -a 'remoteDeployDaemon' -d 'Pull, build, restart each peer\'s daemon, and wait until it runs the...'
complete -c d -n __fish_use_subcommand -a 'restartDaemon' -d 'Restart a daemon in place (re-exec, or its restart recipe); running...'

# daemon
complete -c d -n '__fish_seen_subcommand_from daemon' -l log-level -x -a 'DEBUG INFO WARNING ERROR' -d 'Log verbosity (logs go to stderr).'
complete -c d -n '__fish_seen_subcommand_from daemon' -s h -l help -d 'Show this message and exit.'

# setPeerConfig
complete -c d -n '__fish_seen_subcommand_from setPeerConfig' -l role -x -a 'leader worker' -d 'leader (binds, holds the registry) or worker.'
complete -c d -n '__fish_seen_subcommand_from setPeerConfig' -l id -x -d 'This node\'s peer id.'
complete -c d -n '__fish_seen_subcommand_from setPeerConfig' -l bind -x -d 'Leader: address to listen on (default 0.0.0.0:3520).'
complete -c d -n '__fish_seen_subcommand_from setPeerConfig' -l advertise -x -d 'Leader: its IP in the registry when bound to all addresses.'
complete -c d -n '__fish_seen_subcommand_from setPeerConfig' -l leader -x -d 'Worker: the leader\'s address.'
complete -c d -n '__fish_seen_subcommand_from setPeerConfig' -l leader-key -x -d 'Worker: the leader\'s CURVE public key (z85) to pin.'
complete -c d -n '__fish_seen_subcommand_from setPeerConfig' -l source-ip -x -d 'Worker: local address the leader connection leaves from.'
complete -c d -n '__fish_seen_subcommand_from setPeerConfig' -l group -x -d 'Unix group allowed to use the CLI socket (0770).'
complete -c d -n '__fish_seen_subcommand_from setPeerConfig' -l heartbeat -x -d 'Heartbeat interval (default 1.0); peers are offline after 3 missed.'
complete -c d -n '__fish_seen_subcommand_from setPeerConfig' -l heartbeat-budget -x -d 'Leader: heartbeats/s it takes from all peers (default 350); bigger ...'
complete -c d -n '__fish_seen_subcommand_from setPeerConfig' -l history-rows -x -d 'Leader: audit rows `d history` keeps, the newest (default 100000; 0...'
complete -c d -n '__fish_seen_subcommand_from setPeerConfig' -l record-sessions -l no-record-sessions -d 'Leader: record what pseudo-terminal sessions print (`d history --re...'
complete -c d -n '__fish_seen_subcommand_from setPeerConfig' -l repo -x -a '(__fish_complete_directories)' -d 'Deploy recipe: repository directory on this peer.'
complete -c d -n '__fish_seen_subcommand_from setPeerConfig' -l pull-cmd -x -d 'Deploy recipe: pull command (default git pull --ff-only).'
complete -c d -n '__fish_seen_subcommand_from setPeerConfig' -l build-cmd -x -d 'Deploy recipe: build command.'
complete -c d -n '__fish_seen_subcommand_from setPeerConfig' -l restart-cmd -x -d 'Deploy recipe: daemon restart command.'
complete -c d -n '__fish_seen_subcommand_from setPeerConfig' -s h -l help -d 'Show this message and exit.'

# getPeerStatus
complete -c d -n '__fish_seen_subcommand_from getPeerStatus' -l json -d 'Print a JSON object.'
complete -c d -n '__fish_seen_subcommand_from getPeerStatus' -s h -l help -d 'Show this message and exit.'

# registerWorker
complete -c d -n '__fish_seen_subcommand_from registerWorker' -l id -x -d 'Peer id (default: this host\'s name).'
complete -c d -n '__fish_seen_subcommand_from registerWorker' -l token -x -d 'Join token from `d joinToken` on the leader (accepted at once); `-`...'
complete -c d -n '__fish_seen_subcommand_from registerWorker' -l token-file -F -d 'Read the join token from FILE (it then never stands in the process ...'
complete -c d -n '__fish_seen_subcommand_from registerWorker' -l leader -x -d 'Leader address (default: the token\'s).'
complete -c d -n '__fish_seen_subcommand_from registerWorker' -l leader-key -x -d 'Leader public key when enrolling without a token.'
complete -c d -n '__fish_seen_subcommand_from registerWorker' -l source-ip -x -d 'Local address to connect from.'
complete -c d -n '__fish_seen_subcommand_from registerWorker' -s h -l help -d 'Show this message and exit.'

# joinToken
complete -c d -n '__fish_seen_subcommand_from joinToken' -l ttl -x -d 'How long the token can be used (once).'
complete -c d -n '__fish_seen_subcommand_from joinToken' -l id -x -d 'The one peer id the token may enrol.'
complete -c d -n '__fish_seen_subcommand_from joinToken' -l replace -d 'With --id: the token may rebind that id, already accepted, to a new...'
complete -c d -n '__fish_seen_subcommand_from joinToken' -l target-only -d 'The peer it enrols can be run on but starts nothing elsewhere.'
complete -c d -n '__fish_seen_subcommand_from joinToken' -l count -x -d 'Print N tokens, one per line (a fleet enrolled at once).'
complete -c d -n '__fish_seen_subcommand_from joinToken' -s h -l help -d 'Show this message and exit.'

# listPeers
complete -c d -n '__fish_seen_subcommand_from listPeers' -l ids -d 'Only peer ids, one per line (for scripts).'
complete -c d -n '__fish_seen_subcommand_from listPeers' -l online -d 'Only peers that are online.'
complete -c d -n '__fish_seen_subcommand_from listPeers' -l json -d 'JSON array of {id, ip, role, online, last_seen, version}.'
complete -c d -n '__fish_seen_subcommand_from listPeers' -l pending -d 'Leader: peers waiting for `d acceptPeer`.'
complete -c d -n '__fish_seen_subcommand_from listPeers' -s h -l help -d 'Show this message and exit.'

# acceptPeer
complete -c d -n '__fish_seen_subcommand_from acceptPeer' -l key -x -d 'Accept only if the waiting key starts with KEY (the peer\'s getPeerS...'
complete -c d -n '__fish_seen_subcommand_from acceptPeer' -l target-only -d 'The peer can be run on but starts nothing elsewhere.'
complete -c d -n '__fish_seen_subcommand_from acceptPeer' -s h -l help -d 'Show this message and exit.'
complete -c d -n '__d_pos acceptPeer 0' -a '(__d_peer_ids)' -d 'peer id'

# removePeer
complete -c d -n '__fish_seen_subcommand_from removePeer' -s h -l help -d 'Show this message and exit.'
complete -c d -n '__d_pos removePeer 0' -a '(__d_peer_ids)' -d 'peer id'

# getPeerIdByIp
complete -c d -n '__fish_seen_subcommand_from getPeerIdByIp' -s h -l help -d 'Show this message and exit.'

# dbSanityCheck
complete -c d -n '__fish_seen_subcommand_from dbSanityCheck' -l dry-run -d 'Report what would be changed, change nothing.'
complete -c d -n '__fish_seen_subcommand_from dbSanityCheck' -s h -l help -d 'Show this message and exit.'

# execOnPeer
complete -c d -n '__fish_seen_subcommand_from execOnPeer' -l peer -x -a '(__d_peers)' -d 'Target peer; repeat, give a list (commas or blanks), a range (web[1...'
complete -c d -n '__fish_seen_subcommand_from execOnPeer' -l exclude -x -a '(__d_peers)' -d 'Leave these peers out of the ones --peer selects (as pdsh -x): `--p...'
complete -c d -n '__fish_seen_subcommand_from execOnPeer' -l directory -x -a '(__fish_complete_directories)' -d 'Working directory on the peer (default: home; `~/x` and relative pa...'
complete -c d -n '__fish_seen_subcommand_from execOnPeer' -l shellCmd -x -d 'Command line run with /bin/bash -c.'
complete -c d -n '__fish_seen_subcommand_from execOnPeer' -l timeout -x -d 'Kill the remote process group after this long (exit 124).'
complete -c d -n '__fish_seen_subcommand_from execOnPeer' -l user -x -d 'Run as this user (the target daemon must run as root).'
complete -c d -n '__fish_seen_subcommand_from execOnPeer' -l batch -x -d 'Run on at most N peers at a time.'
complete -c d -n '__fish_seen_subcommand_from execOnPeer' -l json -d 'JSON Lines events (start/stdout/stderr/exit/error).'
complete -c d -n '__fish_seen_subcommand_from execOnPeer' -s n -l no-stdin -d 'Do not forward stdin, as ssh -n (a `while read` loop keeps its input).'
complete -c d -n '__fish_seen_subcommand_from execOnPeer' -s b -l gather -d 'Print each distinct stdout once, under the peers that printed it, a...'
complete -c d -n '__fish_seen_subcommand_from execOnPeer' -s t -l tty -d 'Run CMD in a pseudo-terminal (one peer; stdout and stderr merged, s...'
complete -c d -n '__fish_seen_subcommand_from execOnPeer' -s e -l escape -x -d 'With -t: Escape character after a newline (default ~), or `none` (a...'
complete -c d -n '__fish_seen_subcommand_from execOnPeer' -s h -l help -d 'Show this message and exit.'

# shell
complete -c d -n '__fish_seen_subcommand_from shell' -l peer -x -a '(__d_peer_ids)' -d 'The peer to open a shell on.'
complete -c d -n '__fish_seen_subcommand_from shell' -l directory -x -a '(__fish_complete_directories)' -d 'Start in this directory (default: the user\'s home).'
complete -c d -n '__fish_seen_subcommand_from shell' -l user -x -d 'Log in as this user (the target daemon must run as root).'
complete -c d -n '__fish_seen_subcommand_from shell' -s e -l escape -x -d 'Escape character after a newline (default ~), or `none` (as ssh -e).'
complete -c d -n '__fish_seen_subcommand_from shell' -s h -l help -d 'Show this message and exit.'

# ssh
complete -c d -n '__fish_seen_subcommand_from ssh' -l help -d 'Show this message and exit.'

# pushFile
complete -c d -n '__fish_seen_subcommand_from pushFile' -l peer -x -a '(__d_peers)' -d 'Target peer; repeat, give a list (commas or blanks), a range (web[1...'
complete -c d -n '__fish_seen_subcommand_from pushFile' -l exclude -x -a '(__d_peers)' -d 'Leave these peers out of the ones --peer selects (as pdsh -x): `--p...'
complete -c d -n '__fish_seen_subcommand_from pushFile' -l dest -x -d 'Where on the peers (default: the user\'s home); an existing director...'
complete -c d -n '__fish_seen_subcommand_from pushFile' -l user -x -d 'Write as this user (the target daemon must run as root).'
complete -c d -n '__fish_seen_subcommand_from pushFile' -l batch -x -d 'Copy to at most N peers at a time.'
complete -c d -n '__fish_seen_subcommand_from pushFile' -l checksum -d 'Skip files whose content is the same (not only size and mtime).'
complete -c d -n '__fish_seen_subcommand_from pushFile' -l stall -x -d 'Leave a peer that takes no data for this long behind.'
complete -c d -n '__fish_seen_subcommand_from pushFile' -l json -d 'JSON Lines events (start/file/error/done).'
complete -c d -n '__fish_seen_subcommand_from pushFile' -s h -l help -d 'Show this message and exit.'

# pullFile
complete -c d -n '__fish_seen_subcommand_from pullFile' -l peer -x -a '(__d_peers)' -d 'Target peer; repeat, give a list (commas or blanks), a range (web[1...'
complete -c d -n '__fish_seen_subcommand_from pullFile' -l exclude -x -a '(__d_peers)' -d 'Leave these peers out of the ones --peer selects (as pdsh -x): `--p...'
complete -c d -n '__fish_seen_subcommand_from pullFile' -l dest -x -d 'Local directory; from several peers each gets DIR/PEER/.'
complete -c d -n '__fish_seen_subcommand_from pullFile' -l user -x -d 'Read as this user (the target daemon must run as root).'
complete -c d -n '__fish_seen_subcommand_from pullFile' -l batch -x -d 'Copy from at most N peers at a time.'
complete -c d -n '__fish_seen_subcommand_from pullFile' -l checksum -d 'Skip files whose content is the same (not only size and mtime).'
complete -c d -n '__fish_seen_subcommand_from pullFile' -l json -d 'JSON Lines events (start/file/error/done).'
complete -c d -n '__fish_seen_subcommand_from pullFile' -s h -l help -d 'Show this message and exit.'

# history
complete -c d -n '__fish_seen_subcommand_from history' -l peer -x -a '(__d_peer_ids)' -d 'Only execs that ran on (or came from) this peer.'
complete -c d -n '__fish_seen_subcommand_from history' -l limit -x -d 'Rows to show.'
complete -c d -n '__fish_seen_subcommand_from history' -l json -d 'JSON array.'
complete -c d -n '__fish_seen_subcommand_from history' -l replay -x -d 'Play a recorded pty session back in this terminal, at its pace.'
complete -c d -n '__fish_seen_subcommand_from history' -l speed -x -d 'With --replay: N times as fast.'
complete -c d -n '__fish_seen_subcommand_from history' -l verify -d 'Leader: check every row against the audit\'s hash chain (exit 1 if a...'
complete -c d -n '__fish_seen_subcommand_from history' -s h -l help -d 'Show this message and exit.'

# policy
complete -c d -n '__fish_seen_subcommand_from policy' -l json -d 'The rules as JSON.'
complete -c d -n '__fish_seen_subcommand_from policy' -s h -l help -d 'Show this message and exit.'

# demo
complete -c d -n '__fish_seen_subcommand_from demo' -l keep -d 'Leave the demo cluster running (prints how to stop it).'
complete -c d -n '__fish_seen_subcommand_from demo' -s h -l help -d 'Show this message and exit.'

# completion
complete -c d -n '__fish_seen_subcommand_from completion' -s h -l help -d 'Show this message and exit.'
complete -c d -n '__d_pos completion 0' -a 'bash zsh fish' -d 'shell'

# install-completion
complete -c d -n '__fish_seen_subcommand_from install-completion' -l shell -x -a 'bash zsh fish' -d 'Shell to install for (default: from $SHELL).'
complete -c d -n '__fish_seen_subcommand_from install-completion' -s h -l help -d 'Show this message and exit.'

# remotePull
complete -c d -n '__fish_seen_subcommand_from remotePull' -l peer -x -a '(__d_peers)' -d 'Target peer; repeat, give a list (commas or blanks), a range (web[1...'
complete -c d -n '__fish_seen_subcommand_from remotePull' -l exclude -x -a '(__d_peers)' -d 'Leave these peers out of the ones --peer selects (as pdsh -x): `--p...'
complete -c d -n '__fish_seen_subcommand_from remotePull' -l timeout -x -d 'Kill the step\'s remote process group after this long (exit 124).'
complete -c d -n '__fish_seen_subcommand_from remotePull' -l batch -x -d 'Run on at most N peers at a time.'
complete -c d -n '__fish_seen_subcommand_from remotePull' -l json -d 'JSON Lines events (start/stdout/stderr/exit/error).'
complete -c d -n '__fish_seen_subcommand_from remotePull' -s h -l help -d 'Show this message and exit.'

# remoteBd
complete -c d -n '__fish_seen_subcommand_from remoteBd' -l peer -x -a '(__d_peers)' -d 'Target peer; repeat, give a list (commas or blanks), a range (web[1...'
complete -c d -n '__fish_seen_subcommand_from remoteBd' -l exclude -x -a '(__d_peers)' -d 'Leave these peers out of the ones --peer selects (as pdsh -x): `--p...'
complete -c d -n '__fish_seen_subcommand_from remoteBd' -l timeout -x -d 'Kill the step\'s remote process group after this long (exit 124).'
complete -c d -n '__fish_seen_subcommand_from remoteBd' -l batch -x -d 'Run on at most N peers at a time.'
complete -c d -n '__fish_seen_subcommand_from remoteBd' -l json -d 'JSON Lines events (start/stdout/stderr/exit/error).'
complete -c d -n '__fish_seen_subcommand_from remoteBd' -s h -l help -d 'Show this message and exit.'

# remoteDeployDaemon
complete -c d -n '__fish_seen_subcommand_from remoteDeployDaemon' -l peer -x -a '(__d_peers)' -d 'Target peer; repeat, give a list (commas or blanks), a range (web[1...'
complete -c d -n '__fish_seen_subcommand_from remoteDeployDaemon' -l exclude -x -a '(__d_peers)' -d 'Leave these peers out of the ones --peer selects (as pdsh -x): `--p...'
complete -c d -n '__fish_seen_subcommand_from remoteDeployDaemon' -l batch -x -d 'Deploy N peers at a time (the leader always last, alone).'
complete -c d -n '__fish_seen_subcommand_from remoteDeployDaemon' -l keep-going -d 'Go on with the other peers after a failure.'
complete -c d -n '__fish_seen_subcommand_from remoteDeployDaemon' -l wait -x -d 'How long a restarted peer may take to come back.'
complete -c d -n '__fish_seen_subcommand_from remoteDeployDaemon' -l timeout -x -d 'Kill the step\'s remote process group after this long (exit 124).'
complete -c d -n '__fish_seen_subcommand_from remoteDeployDaemon' -s h -l help -d 'Show this message and exit.'

# restartDaemon
complete -c d -n '__fish_seen_subcommand_from restartDaemon' -l peer -x -a '(__d_peers)' -d 'Peer(s) whose daemon to restart (default: this node\'s).'
complete -c d -n '__fish_seen_subcommand_from restartDaemon' -l exclude -x -a '(__d_peers)' -d 'Leave these peers out of the ones --peer selects (as pdsh -x): `--p...'
complete -c d -n '__fish_seen_subcommand_from restartDaemon' -l batch -x -d 'Restart N peers at a time (the leader always last, alone).'
complete -c d -n '__fish_seen_subcommand_from restartDaemon' -l wait -x -d 'How long a restarted peer may take to come back.'
complete -c d -n '__fish_seen_subcommand_from restartDaemon' -s h -l help -d 'Show this message and exit.'
