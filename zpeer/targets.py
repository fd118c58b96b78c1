"""Which peers a `--peer` or `--exclude` value names: lists, ranges, patterns and `all`.

A value is a comma list, or names separated by blanks or newlines. Each name is a peer id, `all`,
a range as pdsh and clush write them (`web[1-3,7]`: web1 web2 web3 web7; `node[01-10]` keeps
the zero padding; several brackets multiply), or a pattern with `*` or `?` (`'web*'`), matched
against the registry's ids as `all` is. Peer ids hold none of `[`, `]`, `*`, `?`
(config.valid_peer_id), so no name is ambiguous. A range or pattern an older daemon does not
know is, to it, an unknown peer: it runs nothing.

No sockets and no I/O: the origin daemon resolves targets (api, rollout); the CLI only asks
many_peers whether output lines get `ID: ` prefixes, and `fold` writes a set of ids the short
way back (`--gather`'s headers).
"""
import fnmatch
import re

from zpeer.errors import BadRequest, PeerNotFound

MAX_NAMES = 10_000  # a range that names more peers than this is a typo, not a fleet
MAX_BRACKETS = 8  # ranges in one name (rack[1-4]-node[01-40] has two)
RANGE_HINT = "a range is NAME[1-3,7] (digits; [01-10] keeps the zero padding)"


def peer_names(requested):
    """The names in --peer values, ranges expanded (BadRequest for a range that is not one).

    `--peer "$(d listPeers --ids --online)"`: ids hold no blanks, so blanks separate too."""
    names = []
    for item in requested:
        if "[" not in item and "]" not in item:  # the common case, on every exec: no range to parse
            names.extend(item.replace(",", " ").split())
            continue
        for word in _words(item):
            if word.count("[") > MAX_BRACKETS:  # (each is a level of _expand's recursion)
                raise _bad_range(word)
            names.extend(_expand(word))
            if len(names) > MAX_NAMES:
                raise BadRequest(f"Too many peers named: more than {MAX_NAMES}", hint=RANGE_HINT)
    return names


def many_peers(requested):
    """True when --peer names a list (several names, `all`, a pattern or a comma): output lines
    get `ID: ` prefixes."""
    names = peer_names(requested)
    return (len(names) > 1 or any(name == "all" or is_pattern(name) for name in names)
            or any("," in item for item in requested))


def is_pattern(name):
    """True for a name with a shell-style wildcard (`*` or `?`)."""
    return "*" in name or "?" in name


def needs_known(names):
    """True when resolving names needs the registry's ids (`all` or a pattern)."""
    return any(name == "all" or is_pattern(name) for name in names)


def resolve_targets(requested, known, exclude=()):
    """The peers --peer names (order kept, duplicates dropped), `all` and patterns matched
    against the known ids, less the --exclude ones. Every pattern must match and every
    excluded name must be a peer selected (a typo must not let the peer it meant run the
    command), and a peer must be left."""
    # a dict keeps the order and answers "seen?" at once (a list would scan for each name)
    targets = {}
    for name in peer_names(requested):
        for peer in _matches(name, known, "no peer id matches this pattern (`d listPeers`)"):
            targets.setdefault(peer, None)
    if not all(isinstance(name, str) for name in exclude):
        raise BadRequest("bad or missing field 'exclude'")
    excluded = peer_names(exclude)
    if exclude and not excluded:  # `--exclude "$PROD"` with PROD unset must not run on it
        raise BadRequest("No peer given: --exclude is empty")
    hint = "--exclude names a peer that --peer does not select (`d listPeers`)"
    for name in excluded:
        if not is_pattern(name) and name != "all" and name not in targets:
            raise PeerNotFound(name, hint=hint)
        for peer in _matches(name, list(targets), hint):
            del targets[peer]
    if exclude and not targets:
        raise BadRequest("No peer left: --exclude removes every peer --peer selects")
    return list(targets)


def fold(ids):
    """Ids written as names and ranges, as clush does (web1 web2 web3 db1: `db1,web[1-3]`): the
    inverse of peer_names. Only a trailing number is folded; `node[01-10]` keeps its padding."""
    numbered, names = {}, []
    for peer in sorted(set(ids)):
        match = _TRAILING_NUMBER.match(peer)
        if match is None:
            names.append((peer, peer))
        else:
            numbered.setdefault(match.group(1), []).append(match.group(2))
    for prefix, numbers in numbered.items():
        widths = {len(n) for n in numbers if n.startswith("0") and len(n) > 1}  # zero-padded groups
        groups = {}
        for n in numbers:
            groups.setdefault(len(n) if len(n) in widths else 0, []).append(n)
        for width, group in groups.items():
            values = sorted(int(n) for n in group)
            first = prefix + str(values[0]).zfill(width)
            names.append((first,
                          first if len(values) == 1 else f"{prefix}[{_runs(values, width)}]"))
    return ",".join(text for _, text in sorted(names))


# a prefix that is not all digits, then digits
_TRAILING_NUMBER = re.compile(r"(.*?[^0-9])([0-9]+)$")


def _runs(values, width):
    """Sorted numbers as `1-3,7`, each zero-padded to width."""
    parts, start = [], 0
    for i in range(1, len(values) + 1):
        if i == len(values) or values[i] != values[i - 1] + 1:
            low, high = str(values[start]).zfill(width), str(values[i - 1]).zfill(width)
            parts.append(low if start == i - 1 else f"{low}-{high}")
            start = i
    return ",".join(parts)


def _matches(name, known, hint):
    """The peers one name stands for: all known ids, the ones a pattern matches (at least one),
    or the name itself."""
    if name == "all":
        return list(known)
    if not is_pattern(name):
        return [name]
    hits = [peer for peer in known if fnmatch.fnmatchcase(peer, name)]
    if not hits:
        raise PeerNotFound(name, hint=hint)
    return hits


def _words(item):
    """Split a value on commas and blanks that are not inside brackets (`web[1-3,7],db1`)."""
    words, word, depth = [], "", 0
    for char in item:
        depth += (char == "[") - (char == "]" and depth > 0)
        if depth == 0 and (char == "," or char.isspace()):
            if word:
                words.append(word)
            word = ""
        else:
            word += char
    return words + [word] if word else words


def _expand(word):
    """A name with its bracketed ranges expanded, left to right."""
    start = word.find("[")
    if start < 0:
        if "]" in word:
            raise _bad_range(word)
        return [word]
    end = word.find("]", start)
    if end < 0 or "[" in word[start + 1:end]:
        raise _bad_range(word)
    values = []
    for part in word[start + 1:end].split(","):
        low, dash, high = part.strip().partition("-")
        if not _digits(low) or (dash and not _digits(high)) or (dash and int(high) < int(low)):
            raise _bad_range(word)
        width = len(low) if low.startswith("0") else 0
        if int(high or low) - int(low) >= MAX_NAMES:
            raise BadRequest(f"Too many peers named: {word} names more than {MAX_NAMES}",
                             hint=RANGE_HINT)
        values.extend(str(n).zfill(width) for n in range(int(low), int(high or low) + 1))
    tails = _expand(word[end + 1:])
    if len(values) * len(tails) > MAX_NAMES:
        raise BadRequest(f"Too many peers named: {word} names more than {MAX_NAMES}",
                         hint=RANGE_HINT)
    return [word[:start] + value + tail for value in values for tail in tails]


def _digits(text):
    """ASCII digits only (str.isdigit also takes '²' and other scripts' digits)."""
    return bool(text) and text.isascii() and text.isdigit()


def _bad_range(word):
    """The error for a bracket that is not a range."""
    return BadRequest(f"Bad peer range: {word}", hint=RANGE_HINT)
