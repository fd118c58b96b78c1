"""zpeer-ssh's command line, parsed as ssh.c parses it: its getopt string (bundled flags, attached
values), the options after the destination (getopt again, as ssh does, up to the command), `--`,
and `-o` in both forms with case-insensitive keys, where the first value given wins; and the
answers that need no daemon (`-G`, `-O`). It imports only `os` and `sys` (zpeer.cli.ssh says why).
"""
import os

PROG = "zpeer-ssh"
# ssh.c's getopt string (OpenSSH 9): a letter followed by ':' takes a value
OPTSTRING = "1246ab:c:e:fgi:kl:m:no:p:qstvxAB:CD:E:F:GI:J:KL:MNO:P:Q:R:S:TVw:W:XYy"
FLAGS = frozenset(c for i, c in enumerate(OPTSTRING) if c != ":" and OPTSTRING[i + 1:i + 2] != ":")
VALUED = frozenset(c for i, c in enumerate(OPTSTRING) if OPTSTRING[i + 1:i + 2] == ":")
USAGE = ("usage: zpeer-ssh [-46AaCfGgKkMNnqsTtVvXxYy] [-e escape_char] [-l login_name] "
         "[-o option] [-p port] ... [user@]peer [command [argument ...]]")
FORWARDS = {"L": "-L", "R": "-R", "D": "-D", "localforward": "LocalForward",
            "remoteforward": "RemoteForward", "dynamicforward": "DynamicForward"}
TTY_WORDS = {"no": "no", "false": "no", "yes": "yes", "true": "yes", "force": "force",
             "auto": "auto"}
YES_NO = {"yes": True, "true": True, "no": False, "false": False}
QUIET_LEVELS = ("quiet", "fatal", "error")  # LogLevel values below INFO: no warnings
TIME_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MUX_WORDS = ("check", "forward", "exit", "stop", "cancel", "proxy")


class SshExit(Exception):
    """Leave with `code`, after one line on stderr when there is a message."""

    def __init__(self, code, message=""):
        super().__init__(message)
        self.code, self.message = code, message


def usage_error(message):
    """A command line ssh would refuse: one line and 255, as ssh exits."""
    return SshExit(255, message)


class Settings:
    """What the command line asks for, as ssh resolves it (the first value of an option wins)."""

    def __init__(self):
        self.host = None         # the destination as written (for -G's `host`)
        self.user = None
        self.hostname = None     # the peer: the destination's host part, or HostName=
        self.port = None
        self.peer = None
        self.request_tty = None  # -t, -tt, -T and RequestTTY=, in ssh's order (None: auto)
        self.session_type = None  # None (a command or a shell), "none" (-N), "subsystem" (-s)
        self.stdin_null = None
        self.fork = None
        self.connect_timeout_s = None
        self.send_env = []       # SendEnv patterns, in order (`-PATTERN` removes)
        self.set_env = None      # NAME=VALUE of the first SetEnv
        self.remote_command = None
        self.escape = None
        self.log_level = None
        self.verbose = 0
        self.quiet = False
        self.forwards = []       # forwarding asked for (refused unless ClearAllForwardings)
        self.clear_forwardings = None
        self.dump = False        # -G
        self.mux = None          # -O CTL
        self.command = []
        self.seen = set()        # -o keys given (first wins)

    def first(self, name, value):
        """Set an option that keeps its first value."""
        if getattr(self, name) is None:
            setattr(self, name, value)

    def tty(self):
        """RequestTTY: no, yes, force or auto."""
        return self.request_tty or "auto"

    def warnings(self):
        """Whether ssh would print its INFO-level messages (not with -q or a quieter LogLevel)."""
        return not self.quiet and (self.log_level or "info") not in QUIET_LEVELS


def split_words(text):
    """A config line's arguments as ssh's argv_split reads them: blanks separate, "double" and
    'single' quotes group, a backslash escapes a quote, a backslash or a blank."""
    words, word, quote, has_word, i = [], [], None, False, 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in "\\\"' \t" and quote != "'":
            word.append(text[i + 1])
            has_word, i = True, i + 2
            continue
        if quote:
            if c == quote:
                quote = None
            else:
                word.append(c)
        elif c in "\"'":
            quote, has_word = c, True
        elif c in " \t":
            if has_word:
                words.append("".join(word))
                word, has_word = [], False
        else:
            word.append(c)
            has_word = True
        i += 1
    if quote:
        raise usage_error(f"{PROG}: command-line line 0: invalid quotes")
    if has_word:
        words.append("".join(word))
    return words


def seconds(text):
    """ssh's time format (`10`, `1m30s`, `none`) in seconds, or None."""
    if text.lower() == "none":
        return None
    total, digits = 0, ""
    for c in text.lower():
        if c.isdigit():
            digits += c
        elif c in TIME_UNITS and digits:
            total, digits = total + int(digits) * TIME_UNITS[c], ""
        else:
            raise usage_error(f"{PROG}: command-line line 0: invalid time value: {text}")
    if digits:
        total += int(digits)
    return total or None


def config_option(settings, line):
    """One `-o` option: `Key=Value`, `Key Value` or `Key = Value`, keys in any case."""
    text = line.strip()
    end = 0
    while end < len(text) and text[end] not in " \t=":
        end += 1
    key, rest = text[:end].lower(), text[end:].lstrip(" \t")
    if rest.startswith("="):
        rest = rest[1:].lstrip(" \t")
    if not key:
        raise usage_error(f"{PROG}: command-line line 0: missing option name")
    args = split_words(rest)
    if not args and key not in ("sendenv", "setenv"):
        raise usage_error(f"{PROG}: command-line line 0: missing argument for {text[:end]}")
    value = args[0] if args else ""
    if key in FORWARDS:
        settings.forwards.append(FORWARDS[key])
    elif key == "user":
        settings.first("user", value)
    elif key == "hostname":
        settings.first("hostname", value)
    elif key == "port":
        settings.first("port", value)
    elif key == "requesttty":
        if value.lower() not in TTY_WORDS:
            raise usage_error(f"{PROG}: command-line line 0: unsupported RequestTTY: {value}")
        settings.first("request_tty", TTY_WORDS[value.lower()])
    elif key == "sessiontype":
        word = value.lower()
        if word not in ("none", "subsystem", "default"):
            raise usage_error(f"{PROG}: command-line line 0: unsupported SessionType: {value}")
        settings.first("session_type", word if word != "default" else "")
    elif key in ("stdinnull", "forkafterauthentication", "clearallforwardings"):
        if value.lower() not in YES_NO:
            raise usage_error(f"{PROG}: command-line line 0: unsupported option: {value}")
        name = {"stdinnull": "stdin_null", "forkafterauthentication": "fork",
                "clearallforwardings": "clear_forwardings"}[key]
        settings.first(name, YES_NO[value.lower()])
    elif key == "connecttimeout":
        if key not in settings.seen:
            settings.connect_timeout_s = seconds(value)
    elif key == "sendenv":
        settings.send_env.extend(args)
    elif key == "setenv":
        bad = [a for a in args if "=" not in a or a.startswith("=")]
        if bad:
            raise usage_error(f"{PROG}: command-line line 0: invalid SetEnv: {bad[0]}")
        if settings.set_env is None:
            settings.set_env = args
    elif key == "remotecommand":
        settings.first("remote_command", rest)
    elif key == "escapechar":
        settings.first("escape", escape_char(value))
    elif key == "loglevel":
        settings.first("log_level", value.lower())
    # everything else ssh takes (ports, keys, ciphers, ...) means nothing here
    settings.seen.add(key)


def escape_char(text):
    """`-e` as ssh checks it: one character, `^X`, or `none`."""
    if text == "none" or len(text) == 1 or (len(text) == 2 and text[0] == "^"):
        return text
    raise usage_error(f"Bad escape character '{text}'.")


def option(settings, letter, value):
    """One option letter of the command line (value: its argument, for the VALUED ones)."""
    if letter == "V":
        from zpeer import __version__

        raise SshExit(0, f"{PROG} {__version__} (zpeer), OpenSSH_9 command line")
    if letter == "l":
        settings.first("user", value)
    elif letter == "p":
        if not value.isdigit() or not 0 < int(value) < 65536:
            raise usage_error(f"Bad port '{value}'")
        settings.first("port", value)
    elif letter == "o":
        config_option(settings, value)
    elif letter == "t":  # -t asks for a terminal, -tt (or -t over RequestTTY=yes) forces one
        settings.request_tty = "force" if settings.request_tty == "yes" else "yes"
    elif letter == "T":
        settings.request_tty = "no"
    elif letter == "n":
        settings.stdin_null = True
    elif letter == "N":
        settings.session_type = "none"
    elif letter == "s":
        settings.session_type = "subsystem"
    elif letter == "f":
        settings.fork = True
    elif letter == "G":
        settings.dump = True
    elif letter == "q":
        settings.quiet = True
    elif letter == "v":
        settings.verbose += 1
    elif letter == "e":
        settings.escape = escape_char(value)
    elif letter == "O":
        if value not in MUX_WORDS:
            raise usage_error("Invalid multiplex command.")
        settings.mux = value
    elif letter == "Q":
        raise SshExit(0)  # no algorithms to list: zpeer's links are CurveZMQ
    elif letter in FORWARDS:
        settings.forwards.append(FORWARDS[letter])
    elif letter in ("W", "w"):
        raise SshExit(255, f"{PROG}: -{letter} (forwarding) is not supported: zpeer runs "
                           "commands, it forwards no connections")
    # anything else ssh takes (-4 -6 -A -C -i -F -J -S -M -x ...) means nothing for zpeer


def getopt(settings, args, start):
    """Parse options from args[start:] as BSD getopt does, up to the first word that is not
    one (or `--`); returns (index of that word, whether `--` ended the options)."""
    i = start
    while i < len(args):
        word = args[i]
        if word == "--":
            return i + 1, True
        if not word.startswith("-") or word == "-":
            return i, False
        j = 1
        while j < len(word):
            letter = word[j]
            if letter in VALUED:
                value = word[j + 1:]
                if not value:
                    i += 1
                    if i >= len(args):
                        raise usage_error(f"{PROG}: option requires an argument -- {letter}")
                    value = args[i]
                option(settings, letter, value)
                break
            if letter not in FLAGS:
                raise usage_error(f"{PROG}: unknown option -- {letter}")
            option(settings, letter, None)
            j += 1
        i += 1
    return i, False


def destination(settings, word):
    """`[USER@]PEER`, `[PEER]` or `ssh://[USER@]PEER[:PORT]`, as ssh reads them."""
    user, port = None, None
    if word[:6].lower() == "ssh://":
        rest = word[6:].rstrip("/")
        if "@" in rest:
            user, rest = rest.rsplit("@", 1)
        if rest.startswith("["):
            host, _, tail = rest[1:].partition("]")
            port = tail[1:] if tail.startswith(":") else None
        else:
            host, _, port = rest.partition(":")
            port = port or None
        if not host or (user is not None and not user):
            raise usage_error(f"{PROG}: invalid destination: {word}")
    else:
        host = word
        if "@" in word:
            user, host = word.rsplit("@", 1)
            if not user:
                raise usage_error(USAGE)
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
    if not host:
        raise usage_error(USAGE)
    settings.host = host
    settings.first("user", user)
    settings.first("port", port)
    settings.peer = host


def parse(args):
    """The Settings of an ssh command line (SshExit for one ssh would refuse, or -V / -Q)."""
    settings = Settings()
    i, ended = getopt(settings, args, 0)
    if i >= len(args):
        raise usage_error(USAGE)
    destination(settings, args[i])
    i += 1
    if not ended and i < len(args):  # options after the destination, as ssh parses again
        i, ended = getopt(settings, args, i)
    settings.command = args[i:]
    return settings


def peer_of(settings):
    """The peer a command runs on: HostName= when given, else the destination's host."""
    return settings.hostname or settings.peer


def local_user():
    """The invoking user's name (ssh's default User)."""
    import pwd

    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return str(os.getuid())


def dump(settings):
    """`-G`: the resolved settings, as ssh prints them (lower-case keys, one per line)."""
    escape = settings.escape or "~"
    lines = [f"host {settings.host}", f"user {settings.user or local_user()}",
             f"hostname {peer_of(settings)}", f"port {settings.port or 22}",
             "batchmode no", f"clearallforwardings {yes_no(settings.clear_forwardings)}",
             f"connecttimeout {settings.connect_timeout_s or 'none'}",
             f"escapechar {escape}", f"forkafterauthentication {yes_no(settings.fork)}",
             f"loglevel {(settings.log_level or ('quiet' if settings.quiet else 'info')).upper()}",
             f"requesttty {settings.tty()}",
             f"sessiontype {settings.session_type or 'default'}",
             f"stdinnull {yes_no(settings.stdin_null)}"]
    if settings.remote_command is not None:
        lines.append(f"remotecommand {settings.remote_command}")
    lines += [f"sendenv {p}" for p in settings.send_env]
    lines += [f"setenv {e}" for e in settings.set_env or ()]
    return "\n".join(lines) + "\n"


def yes_no(flag):
    """ssh's spelling of a flag in -G."""
    return "yes" if flag else "no"


def mux_answer(word):
    """`-O CTL`: there is no master connection to control; what ssh says when one answers."""
    if word in ("forward", "cancel", "proxy"):
        raise SshExit(255, f"{PROG}: -O {word} is not supported: zpeer forwards no connections")
    return {"check": "Master running (zpeer: no master needed)",
            "exit": "Exit request sent.", "stop": "Stop listening request sent."}[word]
