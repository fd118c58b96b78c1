"""CURVE key pairs of a node and the join tokens that carry the leader's key to a new worker.

A node's key pair lives in ZPEER_HOME/curve.key (secret, 0600) and curve.pub; it is generated
on first use. A join token is `zpeer1.` + base64url(JSON {"a": leader address, "k": leader
public key (z85), "s": one-time secret}); the leader stores only a hash of the secret.
"""
import base64
import hashlib
import hmac
import json
import secrets

from zpeer import config
from zpeer.errors import BadKey

SECRET_FILE = "curve.key"
PUBLIC_FILE = "curve.pub"
TOKEN_PREFIX = "zpeer1."


def load_or_create_keypair(home=None):
    """Return (public, secret) z85 bytes, creating them (0600, without a race) on first use."""
    import zmq  # the CLI never needs keys, keep zmq out of its import path

    secret_path = config.path_in_home(SECRET_FILE, home)
    public_path = config.path_in_home(PUBLIC_FILE, home)
    try:
        with open(secret_path, "rb") as f:
            secret = f.read().strip()
        public = zmq.curve_public(secret)
    except FileNotFoundError:
        public, secret = zmq.curve_keypair()
        config.write_private(secret_path, secret + b"\n")
    except ValueError as exc:  # not a z85 secret: making a new one would change the node's identity
        raise BadKey(secret_path, exc) from None
    try:
        with open(public_path, "rb") as f:
            stale = f.read().strip() != public  # getPeerStatus shows this copy: keep it true
    except FileNotFoundError:
        stale = True
    if stale:
        config.write_private(public_path, public + b"\n")
    return public, secret


def read_public_key(home=None):
    """The node's public key as text, or None before the daemon first ran."""
    try:
        with open(config.path_in_home(PUBLIC_FILE, home), encoding="ascii") as f:
            return f.read().strip() or None
    except FileNotFoundError:
        return None


def valid_z85_key(key):
    """A CURVE public key in z85 text is exactly 40 characters of the z85 alphabet."""
    alphabet = ("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                ".-:+=^!/*?&<>()[]{}@%$#")
    return isinstance(key, str) and len(key) == 40 and all(c in alphabet for c in key)


def make_token(address, leader_key):
    """A new join token and the hash of its secret (what the leader stores)."""
    secret = secrets.token_urlsafe(24)
    body = json.dumps({"a": address, "k": leader_key, "s": secret}, separators=(",", ":"))
    token = TOKEN_PREFIX + base64.urlsafe_b64encode(body.encode()).decode().rstrip("=")
    return token, hash_secret(secret)


def parse_token(token):
    """Return {"address", "leader_key", "secret"} from a token; ValueError when malformed."""
    token = (token or "").strip()
    if not token.startswith(TOKEN_PREFIX):
        raise ValueError("not a zpeer join token (it starts with `zpeer1.`)")
    raw = token[len(TOKEN_PREFIX):]
    try:
        body = json.loads(base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)))
    except (ValueError, TypeError):
        raise ValueError("join token is damaged (cannot decode it)") from None
    if not (isinstance(body, dict) and isinstance(body.get("a"), str)
            and valid_z85_key(body.get("k")) and isinstance(body.get("s"), str)):
        raise ValueError("join token is damaged (fields missing)")
    config.split_host_port(body["a"])
    return {"address": body["a"], "leader_key": body["k"], "secret": body["s"]}


def hash_secret(secret):
    """SHA-256 hex of a token secret."""
    return hashlib.sha256(secret.encode()).hexdigest()


def same_hash(a, b):
    """Constant-time comparison of two secret hashes."""
    return hmac.compare_digest(a.encode(), b.encode())
