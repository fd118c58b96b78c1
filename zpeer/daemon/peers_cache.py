"""peers.cache: the peer ids that completions and scripts read, one per line, sorted."""

from zpeer import config


def write_cache(path, ids):
    """Write peers.cache atomically: one id per line, sorted (for completion and scripts)."""
    body = "".join(f"{i}\n" for i in sorted(set(ids)))
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == body:
                return False
    except OSError:
        pass
    config.write_private(path, body.encode(), mode=0o644)  # completion reads it as any user
    return True


class PeersCache:
    """peers.cache, rewritten only when the peer set moved (its generation, which the leader
    bumps on every change and announces to workers)."""

    def __init__(self, path):
        self.path, self.gen = path, None

    def forget(self):
        """Rewrite it at the next refresh (the link was rebuilt, or a refresh failed)."""
        self.gen = None

    def moved(self, gen):
        """True once for each new generation: the file must be refreshed now."""
        if gen == self.gen:
            return False
        self.gen = gen
        return True

    def write(self, ids):
        """Rewrite the file with these ids (nothing is written when they are the same)."""
        write_cache(self.path, ids)
