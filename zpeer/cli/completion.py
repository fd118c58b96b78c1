"""Shell completion for `d`: bash, zsh and fish scripts generated from the click command tree."""
import os
import sys

import click

SHELLS = ("bash", "zsh", "fish")
HEADER = ("# {shell} completion for d (zpeer). Made by `python -m zpeer.cli.completion --write`; "
          "do not edit.\n")
FILES = {"bash": "d.bash", "zsh": "_d", "fish": "d.fish"}


def _kind(param):
    """What a parameter's value completes to: flag, peers, peer, choice, dir, file or any."""
    if isinstance(param, click.Option):
        if param.is_flag or param.count:
            return "flag"
        # a list (comma-separated or repeated) where the option takes several
        if "--peer" in param.opts or "--exclude" in param.opts:
            listed = param.multiple or any(m in (param.metavar or "") for m in (",", "all"))
            return "peers" if listed else "peer"
    elif param.name in ("id", "peer", "peer_id"):  # e.g. acceptPeer ID: one id, no list, no `all`
        return "peer"
    if isinstance(param.type, click.Choice):
        return "choice"
    if isinstance(param.type, click.Path):
        return "file" if param.type.file_okay else "dir"
    if param.name in ("directory", "repo"):
        return "dir"
    return "any"


class Param:
    """What the generators need to know about one click option or argument."""

    def __init__(self, param):
        self.names = [n for n in param.opts + param.secondary_opts if n.startswith("-")]
        self.kind = _kind(param)
        self.choices = [str(c) for c in getattr(param.type, "choices", ())]
        self.multiple = bool(getattr(param, "multiple", False) or getattr(param, "count", False))
        self.nargs = param.nargs
        # zsh's message
        self.label = (param.metavar or param.name.replace("_", " ")).replace(":", "\\:")
        self.help = _first_line(getattr(param, "help", None) or param.name.replace("_", " "))


class Command:
    """A visible command with its options and positional arguments, in click's order."""

    def __init__(self, name, cmd, ctx):
        self.name = name
        self.help = _first_line(cmd.get_short_help_str(limit=70))
        params = [p for p in cmd.get_params(ctx) if not getattr(p, "hidden", False)]
        self.opts = [Param(p) for p in params if isinstance(p, click.Option)]
        self.args = [Param(p) for p in params if isinstance(p, click.Argument)]


def _first_line(text):
    """First line of a help text, cut to fit on a completion menu line."""
    line = next(iter((text or "").strip().splitlines()), "")
    return line if len(line) <= 70 else line[:67] + "..."


def model(group):
    """Walk a click group into (top-level Command, [visible subcommands])."""
    ctx = click.Context(group, info_name="d", **group.context_settings)  # e.g. -h as well as --help
    found = [(name, group.get_command(ctx, name)) for name in group.list_commands(ctx)]
    return Command("", group, ctx), [
        Command(name, cmd, click.Context(cmd, parent=ctx, info_name=name, **cmd.context_settings))
        for name, cmd in found if cmd is not None and not cmd.hidden]


def _bkind(p):  # a parameter's entry in the bash kind table
    return "choice:" + " ".join(p.choices) if p.kind == "choice" else p.kind


def render_bash(top, cmds):
    """The bash script: tables from the click tree and pure-bash code (TAB starts no process)."""
    opts, kinds = [], []
    for c in [top] + cmds:
        key = c.name or "@"
        names = " ".join(n for p in c.opts for n in p.names)
        opts.append(f"    [{key}]='{names}'\n")
        kinds += [f"    [{key}:{n}]='{_bkind(p)}'\n" for p in c.opts
                  if p.kind != "flag" for n in p.names]
        kinds += [f"    [{key}:#{i if a.nargs == 1 else '*'}]='{_bkind(a)}'\n" for i,
                  a in enumerate(c.args)]
    return (HEADER.format(shell="bash") + BASH.replace("@CMDS@", " ".join(c.name for c in cmds))
            .replace("@OPTS@", "".join(opts)).replace("@KINDS@", "".join(kinds)))


BASH = r"""
# Tables from the click tree: the options of each command (@: before the command), and what the
# value of an option (CMD:--opt) or of a positional argument (CMD:#N, CMD:#* for all) completes to.
_d_commands='@CMDS@'
declare -gA _d_opts=(
@OPTS@)
declare -gA _d_kind=(
@KINDS@)

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
"""


def _zq(text, brackets=False):
    """Quote for a single-quoted zsh word; `brackets` also escapes it for an _arguments `[...]`."""
    if brackets:
        text = text.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")
    return text.replace("'", "'\\''")


def _zaction(p):
    return {"peers": "_d_peers", "peer": "_d_peer", "dir": "_files -/", "file": "_files",
            "choice": f"({' '.join(p.choices)})"}.get(p.kind, " ")


def _zspecs(c):
    """The _arguments specs of one command: options (with `=value` forms) then positionals."""
    specs = []
    for p in c.opts:
        if p.multiple:
            excl = "*"  # may repeat
        else:  # its names exclude each other
            excl = "(" + " ".join(p.names) + ")" if len(p.names) > 1 else ""
        for n in p.names:
            if p.kind == "flag":
                suffix = value = ""
            else:
                suffix = "=" if n.startswith("--") else "+"
                value = f":{_zq(p.label)}:{_zq(_zaction(p))}"
            specs.append(f"'{excl}{n}{suffix}[{_zq(p.help, True)}]{value}'")
    for i, a in enumerate(c.args):
        pos = str(i + 1) if a.nargs == 1 else "*"
        specs.append(f"'{pos}:{_zq(a.label)}:{_zq(_zaction(a))}'")
    return specs


def render_zsh(top, cmds):
    """The zsh script: autoloaded from $fpath as `_d`, or sourced (then it calls compdef)."""
    join = " \\\n            "
    described = "\n        ".join(f"'{_zq(c.name.replace(':', chr(92) + ':'))}:{_zq(c.help)}'"
                                   for c in cmds)
    branches = "".join(f"        {c.name}) _arguments -S{join}{join.join(_zspecs(c))} && ret=0 ;;\n"
                       for c in cmds)
    return (ZSH.replace("@HEADER@", HEADER.format(shell="zsh").rstrip("\n"))
            .replace("@TOP@", join.join(_zspecs(top)))
            .replace("@CMDS@", described).replace("@BRANCHES@", branches))


ZSH = r"""#compdef d
@HEADER@

# Peer ids come from the cache the daemon keeps, so TAB starts no Python and touches no network.
_d_peer_ids() {
    local f=${XDG_STATE_HOME:-$HOME/.local/state}/zpeer/peers.cache
    (( EUID == 0 )) && f=/var/lib/zpeer/peers.cache
    [[ -n $ZPEER_HOME ]] && f=$ZPEER_HOME/peers.cache
    [[ -r $f ]] && reply=(${${(f)"$(<$f)"}%$'\r'})
}

# --peer takes comma lists and `all`: complete the last element, keep the ones before it.
_d_peers() {
    local -a reply expl given
    _d_peer_ids
    if compset -P '*,'; then
        given=(${(s:,:)${IPREFIX##*=}}); reply=(${reply:|given})
    else
        reply=(all $reply)
    fi
    _wanted peers expl 'peer id' compadd -a reply
}

_d_peer() { local -a reply expl; _d_peer_ids; _wanted peers expl 'peer id' compadd -a reply }

_d() {
    local curcontext=$curcontext state state_descr line ret=1
    typeset -A opt_args
    _arguments -C -S \
            @TOP@ \
            '1: :->command' \
            '*:: :->args' && ret=0
    case $state in
    command)
        local -a cmds
        cmds=(
        @CMDS@
        )
        _describe -t commands 'd command' cmds && ret=0 ;;
    args)
        curcontext=${curcontext%:*:*}:d-$words[1]:
        case $words[1] in
@BRANCHES@        esac ;;
    esac
    return ret
}

# Autoloaded from $fpath the file is the body of _d; sourced, it registers _d itself.
if [[ $zsh_eval_context[-1] == loadautofunc ]]; then _d "$@"; else compdef _d d; fi
"""


def _fq(text):  # quote for a single-quoted fish word
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _fparam(cond, p, names=""):
    """One fish `complete` line for an option (with its `names`) or a positional argument."""
    value = {"peers": "-a '(__d_peers)'", "peer": "-a '(__d_peer_ids)'", "file": "-F",
             "choice": "-a "
             + _fq(" ".join(p.choices)),
             "dir": "-a '(__fish_complete_directories)'"}.get(p.kind, "")
    if names and p.kind not in ("flag", "file"):
        value = ("-x " + value).strip()  # takes a value, and not a file name
    return " ".join(w for w in ("complete -c d -n", _fq(cond), names, value, "-d", _fq(p.help))
                    if w) + "\n"


def _fnames(p):
    return " ".join(f"-l {n[2:]}" if n[1] == "-"
                    else f"-{'so'[len(n) > 2]} {n[1:]}" for n in p.names)


def render_fish(top, cmds):
    """The fish script: autoloaded from ~/.config/fish/completions/d.fish."""
    out = [HEADER.format(shell="fish"), FISH_HELPERS]
    out += [_fparam("__fish_use_subcommand", p, _fnames(p)) for p in top.opts]
    out += [f"complete -c d -n __fish_use_subcommand -a {_fq(c.name)} -d {_fq(c.help)}\n"
            for c in cmds]
    for c in cmds:
        out.append(f"\n# {c.name}\n")
        out += [_fparam(f"__fish_seen_subcommand_from {c.name}", p, _fnames(p)) for p in c.opts]
        out += [_fparam(f"__d_pos {c.name} {i if a.nargs == 1 else -1}", a) for i,
                a in enumerate(c.args)
                if a.kind in ("peer", "dir", "file", "choice")]
    return "".join(out)


FISH_HELPERS = r"""
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
"""


def render(shell, group=None):
    """The completion script for `shell` (bash, zsh or fish) from `group` (default: this CLI)."""
    if group is None and click.get_current_context(silent=True) is not None:
        group = click.get_current_context().find_root().command  # `d completion`: the running tree
    if group is None:
        from zpeer.cli.app import (
            cli as group,  # late: zpeer.cli.app imports this module
        )
    return {"bash": render_bash, "zsh": render_zsh, "fish": render_fish}[shell](*model(group))


@click.command("completion")
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell):
    """Print the tab-completion script for SHELL.

    \b
    Example:
      d completion bash > ~/.local/share/bash-completion/completions/d
      source <(d completion zsh)
    """
    click.echo(render(shell), nl=False)


def main(argv=None):
    """`python -m zpeer.cli.completion --write`: regenerate the scripts in completions/."""
    if (sys.argv[1:] if argv is None else argv) != ["--write"]:
        sys.stderr.write("usage: python -m zpeer.cli.completion --write\n")
        return 2
    checkout = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    outdir = os.path.join(checkout, "completions")
    for shell, name in FILES.items():
        with open(os.path.join(outdir, name), "w") as f:
            f.write(render(shell))
        print(f"wrote {os.path.join(outdir, name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
