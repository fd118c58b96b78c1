"""Which audit rows retention deletes: fairly across origins, so that no peer's flood of cheap
commands pushes other peers' rows out of the kept history.

When more rows are kept than `history_rows`, the surplus comes from the origins that hold the
most rows, down to a common level (water-filling), oldest rows first within each origin: rows of
an origin that holds no more than the others go only once every origin is down to its size.
"""
IN_CHUNK = 500  # rowids per `IN (...)` statement


def shares(counts, surplus):
    """{origin: how many of its rows go} for `surplus` rows out of per-origin `counts`: each
    origin is cut down to a common level, the largest first."""
    if surplus <= 0 or not counts:
        return {}
    surplus = min(surplus, sum(counts.values()))

    def above(level):  # rows above a level, in all
        return sum(max(0, c - level) for c in counts.values())

    low, high = 0, max(counts.values())  # above(low) >= surplus > above(high) (= 0)
    while high - low > 1:
        mid = (low + high) // 2
        if above(mid) >= surplus:
            low = mid
        else:
            high = mid
    take = {o: max(0, c - high) for o, c in counts.items()}
    left = surplus - sum(take.values())
    for origin in sorted(o for o, c in counts.items() if c >= high):  # one more each, in turn
        if left <= 0:
            break
        take[origin] += 1
        left -= 1
    return {o: n for o, n in take.items() if n}


def prune(db, table, keep, most):
    """Delete at most `most` rows so that about `keep` remain, as `shares` says; returns the
    jobs of the rows deleted."""
    counts = dict(db.execute_sql(f"SELECT origin, COUNT(*) FROM {table} GROUP BY origin"))
    victims = []
    for origin, n in shares(counts, min(sum(counts.values()) - keep, most)).items():
        victims.extend(db.execute_sql(
            f"SELECT rowid, job FROM {table} WHERE origin = ? ORDER BY rowid LIMIT ?",
            (origin, n)).fetchall())
    for i in range(0, len(victims), IN_CHUNK):
        chunk = [rowid for rowid, _ in victims[i:i + IN_CHUNK]]
        db.execute_sql(f"DELETE FROM {table} WHERE rowid IN ({', '.join('?' * len(chunk))})",
                       chunk)
    return [job for _, job in victims]
