"""Typed fields of a CLI request: what a handler takes from a request map, or BadRequest."""
from zpeer.errors import BadRequest


def arg(header, name, types, default=None, required=False):
    """A typed request field (BadRequest when present with the wrong type, or missing when
    required)."""
    value = header.get(name, default)
    if value is None and not required:
        return default
    if not isinstance(value, types) or isinstance(value, bool):  # bool is an int subclass
        raise BadRequest(f"bad or missing field {name!r}")
    return value
