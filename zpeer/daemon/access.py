"""The leader's access policy: who may run on whom, as which user, and who may read the history.

No rules: every accepted peer may run on every peer and read the history (one owner's fleet).
Rules narrow that, per kind of request (runs, history reads): a request is refused when a deny
rule matches it, or when there are allow rules of its kind and none matches it. A peer enrolled
as target-only starts nothing elsewhere and reads no history. The leader's own CLI is its admin's
and is not subject to the rules (whoever is root there can change them anyway).

Selectors are written as `--peer` takes them (zpeer.targets): ids, comma lists, ranges
(`web[1-3]`), patterns (`'web*'`) and `all`; users likewise as names, lists or patterns. No I/O
here: zpeer.daemon.registry stores the rules, the leader asks `check_run` for each exec it routes.
"""
import fnmatch

from zpeer import targets
from zpeer.errors import BadRequest, NotAllowed

ACTIONS = ("allow", "deny")
KINDS = ("run", "history")
RULES_MAX = 1000  # a policy is read by people: more rules than this is a script gone wrong


class Selector:
    """The peers (or users) one rule's field names: exact names, patterns, or all."""

    def __init__(self, text):
        self.text = text
        names = targets.peer_names([text])  # BadRequest for a bad range
        if not names:
            raise BadRequest("A policy rule needs at least one name in each field")
        self.every = "all" in names or "*" in names
        self.exact = frozenset(n for n in names if not targets.is_pattern(n))
        self.patterns = tuple(n for n in names if targets.is_pattern(n))

    def matches(self, name):
        """True if this selector names `name`."""
        return (self.every or name in self.exact
                or any(fnmatch.fnmatchcase(name, p) for p in self.patterns))


class Rule:
    """One rule: allow or deny ORIGINS to run on (or read the history of) TARGETS [as USERS]."""

    def __init__(self, number, action, origins, targets_text, users=None, kind="run"):
        if action not in ACTIONS:
            raise BadRequest(f"A policy rule is allow or deny, not {action!r}")
        if kind not in KINDS:
            raise BadRequest(f"A policy rule is about run or history, not {kind!r}")
        if users is not None and kind == "history":
            raise BadRequest("--user means nothing for a history rule")
        self.number, self.action, self.kind = number, action, kind
        self.origins, self.targets = Selector(origins), Selector(targets_text)
        self.users = None if users is None else Selector(users)

    def record(self):
        """The rule as `d policy` shows it."""
        return {"n": self.number, "action": self.action, "kind": self.kind,
                "origins": self.origins.text, "targets": self.targets.text,
                "users": None if self.users is None else self.users.text}


class AccessPolicy:
    """The rules in force and the target-only peers; answers whether a request is allowed."""

    def __init__(self, rules=(), target_only=()):
        self.rules = list(rules)
        self.target_only = set(target_only)

    @property
    def open(self):
        """True when nothing is narrowed (the leader skips every check)."""
        return not self.rules and not self.target_only

    def allows(self, kind, origin, target, user=None, any_user=False):
        """True if `origin` may do `kind` on `target` as `user` (None: a user the leader
        cannot name), or with `any_user` as some user."""
        if origin in self.target_only:
            return False
        allows_of_kind = allowed = False
        for rule in self.rules:
            if rule.kind != kind or not (rule.origins.matches(origin)
                                         and rule.targets.matches(target)):
                allows_of_kind |= rule.kind == kind and rule.action == "allow"
                continue
            deny = rule.action == "deny"
            if _names_user(rule, user, any_user, deny):
                if deny:
                    return False
                allowed = True
            allows_of_kind |= not deny
        return allowed or not allows_of_kind

    def check_run(self, origin, target, user):
        """Raise NotAllowed unless `origin` may run on `target` as `user` (the account the
        command would run as: --user, or the target daemon's own)."""
        if self.open or self.allows("run", origin, target, user):
            return
        if origin in self.target_only:
            raise NotAllowed(f"Not allowed: {origin} may not run on {target} "
                             f"({origin} is target-only)")
        as_user = user and self.allows("run", origin, target, any_user=True)
        raise NotAllowed(f"Not allowed: {origin} may not run on {target}"
                         + (f" as {user}" if as_user else ""))

    def history_filter(self, reader):
        """A predicate on a history row's target for what `reader` may read, or None for all;
        NotAllowed if it may read nothing at all."""
        if self.open:
            return None
        allows = [r for r in self.rules if r.kind == "history" and r.action == "allow"]
        refused = reader in self.target_only or (
            allows and not any(r.origins.matches(reader) for r in allows)) or any(
            r.kind == "history" and r.action == "deny" and r.targets.every
            and r.origins.matches(reader) for r in self.rules)
        if refused:
            raise NotAllowed(f"Not allowed: {reader} may not read the history")
        return lambda target: self.allows("history", reader, target)

    def records(self):
        """What `d policy` shows: the rules in order, and the target-only peers."""
        return {"rules": [r.record() for r in self.rules],
                "target_only": sorted(self.target_only)}


def _names_user(rule, user, any_user, deny):
    """True if the rule is about this user: a rule naming no users is about all; `any_user`
    asks whether some user escapes a deny or fits an allow; a user the leader cannot name
    (None) is refused by a deny naming users and fits no allow naming users."""
    if rule.users is None:
        return True
    if any_user:
        return not deny
    if user is None:
        return deny
    return rule.users.matches(user)
