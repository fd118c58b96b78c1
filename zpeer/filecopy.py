"""File copies (`d pushFile`, `d pullFile`): the stream a sender writes, the receiver that
writes it to disk without ever leaving its destination, and the spec an exec carries for one.

A copy is an exec channel whose command is zpeer's file agent (zpeer.daemon.file_agent) instead
of a shell: its stdin and stdout carry this module's two streams, so credit, pacing, resends,
the access policy and the audit are the exec channel's. Push: the CLI is the sender (its stream
goes to the agent's stdin), the agent on each peer the receiver (its answers come back on its
stdout). Pull: the agent is the sender (on its stdout), the CLI a receiver per peer.

Both streams are msgpack objects one after another:

    forward (sender -> receiver)
      ["m", [entry, ...]]        part of the manifest (entries in walk order, parents first)
      ["M"]                      end of the manifest: the receiver answers with ["n", ...]
      ["x", message]             something the sender could not list (a failure)
      ["f", i]                   file i's bytes follow, as bin objects of <= CHUNK_BYTES
      ["e", i, sha256, problem]  end of file i: the digest of what was sent, or a problem
                                 (it changed while read, it could not be read) and no digest
      ["q"]                      the end
    back (receiver -> sender)
      ["n", bitmap]              the files whose bytes it needs (bit i: file i)
      ["K", i]                   file i is in place
      ["F", i, message]          file i (or, i None, something else) failed there
      ["D", {counts}]            done: files, written, skipped, bytes, failed
    back on a pull (the CLI to every peer's agent at once): ["n", PEER, bitmap]

An entry is a map: p (path relative to the copy's root, bytes, "/" between components), k (kind:
f file, d directory, l symbolic link), m (mode bits), s (size), t (mtime in ns), u, g (uid,
gid), U, G (owner and group names), l (a link's target), h (sha256, with --checksum).

The receiver trusts nothing it is sent: every component is checked (no "", ".", "..", "/" or
NUL), every directory is entered by a descriptor opened with O_NOFOLLOW from the one before
(never a path: a symbolic link, sent or already there, is never followed), files are created
O_EXCL under a temporary name in their directory and renamed only once their bytes match the
sender's digest, and more bytes than announced end the copy.
"""
import errno
import grp
import hashlib
import os
import pwd
import secrets
import stat

import msgpack

from zpeer.errors import BadRequest

CHUNK_BYTES = 1 << 20
STREAM_BUFFER_BYTES = 8 << 20  # an unpacker holds at most this (a chunk and its neighbours)
MANIFEST_PART_ENTRIES = 512
ENTRIES_MAX = 1_000_000  # a manifest longer than this is an attack, not a tree
PATH_MAX_BYTES = 4096
NAME_MAX_BYTES = 255
SRCS_MAX = 10_000
OPS = ("recv", "send")
AGENT_MODULE = "zpeer.daemon.file_agent"
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class Violation(Exception):
    """The other side broke the stream's rules: the copy from it ends."""


def pack(obj):
    """One stream record."""
    return msgpack.packb(obj, use_bin_type=True)


def bin_header(n):
    """The msgpack header of a bin object of n bytes (the bytes follow it unchanged)."""
    if n < 256:
        return b"\xc4" + n.to_bytes(1, "big")
    if n < 65536:
        return b"\xc5" + n.to_bytes(2, "big")
    return b"\xc6" + n.to_bytes(4, "big")


def unpacker():
    """A stream reader that holds at most STREAM_BUFFER_BYTES."""
    return msgpack.Unpacker(raw=False, max_buffer_size=STREAM_BUFFER_BYTES,
                            max_bin_len=CHUNK_BYTES, max_str_len=PATH_MAX_BYTES * 2,
                            max_array_len=MANIFEST_PART_ENTRIES * 2, max_map_len=64,
                            strict_map_key=False)


def bitmap(n, indices):
    """Bits i of `indices`, for n files."""
    bits = bytearray((n + 7) // 8)
    for i in indices:
        bits[i >> 3] |= 1 << (i & 7)
    return bytes(bits)


def has_bit(bits, i):
    """True if bit i is set."""
    return (i >> 3) < len(bits) and bool(bits[i >> 3] & (1 << (i & 7)))


def shown(path):
    """A path for people: non-UTF-8 bytes as \\xNN, control characters escaped (a name with a
    newline stays on one line)."""
    text = path.decode("utf-8", "backslashreplace") if isinstance(path, bytes) else str(path)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def failure(exc, path):
    """`Reason: path` for an OSError (`No space left on device: /srv/x`)."""
    reason = exc.strerror or str(exc) if isinstance(exc, OSError) else str(exc)
    return f"{reason}: {shown(path)}"


# --- the exec spec ------------------------------------------------------------------------
def check_spec(spec):
    """The `file` field of an exec, checked (BadRequest): op recv {dest} or send {srcs},
    checksum."""
    if not isinstance(spec, dict) or spec.get("op") not in OPS:
        raise BadRequest("A file copy is recv or send")
    out = {"op": spec["op"], "checksum": bool(spec.get("checksum"))}
    stall = spec.get("stall_s")
    if stall is not None:
        if not isinstance(stall, (int, float)) or isinstance(stall, bool) or not stall > 0:
            raise BadRequest("Bad stall limit for a file copy")
        out["stall_s"] = float(stall)
    if spec["op"] == "recv":
        dest = spec.get("dest")
        if dest is not None and not (isinstance(dest, (str, bytes)) and dest and _nul_free(dest)):
            raise BadRequest("Bad destination for a file copy")
        out["dest"] = dest
    else:
        srcs = spec.get("srcs")
        if not (isinstance(srcs, list) and 0 < len(srcs) <= SRCS_MAX and all(
                isinstance(s, (str, bytes)) and s and _nul_free(s) for s in srcs)):
            raise BadRequest("Bad sources for a file copy")
        out["srcs"] = srcs
    return out


def _nul_free(value):
    return (b"\0" if isinstance(value, bytes) else "\0") not in value


def agent_argv(python, spec, peer_id, creds=None):
    """The command line of the file agent for a checked spec, on peer `peer_id`; `creds`
    (user, group, extra_groups) is the user it becomes before it touches a file (the daemon's
    interpreter may be one that user cannot run)."""
    spec = check_spec(spec)
    argv = [python, "-I", "-m", AGENT_MODULE, spec["op"], "--peer", peer_id]
    if creds:
        groups = ",".join(str(g) for g in creds["extra_groups"])
        argv += ["--as", f"{creds['user']}:{creds['group']}:{groups}"]
    if spec["checksum"]:
        argv.append("--checksum")
    argv.append("--")
    paths = [spec["dest"] or "."] if spec["op"] == "recv" else spec["srcs"]
    return argv + [os.fsencode(p) for p in paths]


def describe(spec):
    """A file copy as `d history` shows it (the exec's cmd)."""
    if spec["op"] == "recv":
        dest = spec.get("dest") or "~"
        return f"pushFile -> {shown(os.fsencode(dest))}"
    return "pullFile " + " ".join(shown(os.fsencode(s)) for s in spec["srcs"])[:1000]


# --- names --------------------------------------------------------------------------------
def components(path):
    """The components of an entry's path, each checked (Violation for one that could leave the
    root: empty, ".", "..", a NUL, too long)."""
    if not isinstance(path, bytes) or not path or len(path) > PATH_MAX_BYTES:
        raise Violation("bad path in manifest")
    parts = path.split(b"/")
    for part in parts:
        if part in (b"", b".", b"..") or b"\0" in part or len(part) > NAME_MAX_BYTES:
            raise Violation(f"unsafe name in manifest: {shown(path)}")
    return parts


def source_name(src):
    """The name a source is copied under (as cp and scp name it): its last component."""
    name = os.path.basename(os.path.normpath(os.path.abspath(os.fsencode(src))))
    if not name:
        raise BadRequest(f"Cannot copy {shown(os.fsencode(src))}: give a directory below /")
    return name


# --- the sender ---------------------------------------------------------------------------
def walk(srcs, checksum=False):
    """(entries, local paths, errors) of the sources, recursively, parents first; symbolic
    links are entries of their own, never followed."""
    entries, paths, errors = [], [], []
    for src in srcs:
        src = os.fsencode(src)
        try:
            name = source_name(src)
        except BadRequest as exc:
            errors.append(exc.message)
            continue
        _walk_one(src, name, entries, paths, errors, checksum)
        if len(entries) > ENTRIES_MAX:
            raise BadRequest(f"Too many files: more than {ENTRIES_MAX}")
    return entries, paths, errors


def _walk_one(path, rel, entries, paths, errors, checksum):
    try:
        st = os.lstat(path)
    except OSError as exc:
        errors.append(failure(exc, path))
        return
    entry = _entry(rel, st)
    if entry is None:
        errors.append(f"Not a file, directory or symbolic link: {shown(path)}")
        return
    if entry["k"] == "l":
        try:
            entry["l"] = os.readlink(path)
        except OSError as exc:
            errors.append(failure(exc, path))
            return
    elif entry["k"] == "f" and checksum:
        try:
            entry["h"] = file_digest(path)
        except OSError as exc:
            errors.append(failure(exc, path))
            return
    entries.append(entry)
    paths.append(path)
    if entry["k"] == "d":
        try:
            names = sorted(os.listdir(path))
        except OSError as exc:
            errors.append(failure(exc, path))
            return
        for name in names:
            _walk_one(os.path.join(path, name), rel + b"/" + name, entries, paths, errors,
                      checksum)


_NAMES = {}


def _name_of(kind, number):
    """The user or group name of a number ("" when it has none), cached."""
    key = (kind, number)
    if key not in _NAMES:
        try:
            _NAMES[key] = (pwd.getpwuid(number).pw_name if kind == "u"
                           else grp.getgrgid(number).gr_name)
        except KeyError:
            _NAMES[key] = ""
    return _NAMES[key]


def _entry(rel, st):
    kind = ("f" if stat.S_ISREG(st.st_mode) else "d" if stat.S_ISDIR(st.st_mode)
            else "l" if stat.S_ISLNK(st.st_mode) else None)
    if kind is None:
        return None
    return {"p": rel, "k": kind, "m": stat.S_IMODE(st.st_mode),
            "s": st.st_size if kind == "f" else 0, "t": st.st_mtime_ns, "u": st.st_uid,
            "g": st.st_gid, "U": _name_of("u", st.st_uid), "G": _name_of("g", st.st_gid)}


def file_digest(path):
    """sha256 of a file's bytes (opened without following a link)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        h = hashlib.sha256()
        while True:
            data = os.read(fd, CHUNK_BYTES)
            if not data:
                return h.digest()
            h.update(data)
    finally:
        os.close(fd)


def manifest_records(entries, errors=()):
    """The manifest part of the forward stream, as packed records."""
    out = [pack(["x", message]) for message in errors]
    for start in range(0, len(entries), MANIFEST_PART_ENTRIES):
        out.append(pack(["m", entries[start:start + MANIFEST_PART_ENTRIES]]))
    out.append(pack(["M"]))
    return out


def file_records(i, entry, path, problems):
    """File i's records, as pieces of the forward stream: its data, then its end with the
    digest, or the problem that stopped it (it changed while read), which joins `problems`."""
    yield pack(["f", i])
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        problems.append(failure(exc, path))
        yield pack(["e", i, None, problems[-1]])
        return
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            problems.append(f"Not a regular file any more: {shown(path)}")
            yield pack(["e", i, None, problems[-1]])
            return
        h = hashlib.sha256()
        left = entry["s"]
        problem = None
        while left > 0:
            try:
                data = os.read(fd, min(CHUNK_BYTES, left))
            except OSError as exc:
                problem = failure(exc, path)
                break
            if not data:
                break
            left -= len(data)
            h.update(data)
            yield bin_header(len(data))
            yield data
        after = os.fstat(fd)
        if problem is None and (left or after.st_size != entry["s"]
                                or after.st_mtime_ns != entry["t"]
                                or before.st_mtime_ns != entry["t"]):
            problem = f"File changed while read: {shown(path)}"
        if problem is not None:
            problems.append(problem)
        yield pack(["e", i, None if problem else h.digest(), problem])
    finally:
        os.close(fd)


# --- the receiver -------------------------------------------------------------------------
class Receiver:
    """Writes one forward stream under `dest` (as cp: into it when it is a directory, else as
    it); `answer(record)` takes each back record. Feed it bytes; close() it however it ends."""

    def __init__(self, dest, answer, checksum=False, as_root=None):
        self.dest = os.fsencode(dest)
        self.answer, self.checksum = answer, checksum
        self.as_root = os.geteuid() == 0 if as_root is None else as_root
        self.reader = unpacker()
        self.entries = []
        self.state = "manifest"  # -> data -> done
        self.base_fd = None
        self.top_src = None
        self.top = None  # the name the one top-level entry takes (dest is not a directory)
        self.shown_base = self.dest
        self.needed = set()
        self.came = set()  # the needed files whose bytes came
        self.place = {}  # i -> (parent components, name) of a file it needs
        self.failed_dirs = set()  # components of directories that failed (their contents too)
        self.dirs = []  # (components, entry) to give their metadata at the end
        self.created = []  # components of directories this copy created
        self.current = None  # [i, fd, tmp name, parent fd, name, hash, bytes, error]
        self.counts = {"files": 0, "written": 0, "skipped": 0, "bytes": 0, "failed": 0}
        self.failures = []
        self._parent = (None, None)  # (components, fd): the last directory entered

    # stream ----------------------------------------------------------------------------
    def feed(self, data):
        """Take bytes of the forward stream (Violation when they break its rules)."""
        try:
            self.reader.feed(data)
        except msgpack.BufferFull:
            raise Violation("a record too large") from None
        try:
            for record in self.reader:
                self._record(record)
        except (msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, ValueError,
                TypeError, KeyError, IndexError) as exc:
            raise Violation(f"malformed stream ({type(exc).__name__})") from None

    def _record(self, record):
        if isinstance(record, (bytes, bytearray)):
            return self._data(record)
        if not isinstance(record, list) or not record or not isinstance(record[0], str):
            raise Violation("malformed record")
        kind = record[0]
        if self.state == "manifest":
            if kind == "m":
                self._manifest(record[1])
            elif kind == "x":
                self._fail(None, str(record[1])[:4096])
            elif kind == "M":
                self._plan()
            else:
                raise Violation(f"unexpected {kind!r} in the manifest")
        elif self.state == "data":
            if kind == "f":
                self._open(record[1])
            elif kind == "e":
                self._end(record[1], record[2], record[3])
            elif kind == "x":
                self._fail(None, str(record[1])[:4096])
            elif kind == "q":
                self._finish()
            else:
                raise Violation(f"unexpected {kind!r} in the data")
        else:
            raise Violation("records after the end")

    def _manifest(self, part):
        if not isinstance(part, list):
            raise Violation("malformed manifest")
        for entry in part:
            if not isinstance(entry, dict) or entry.get("k") not in ("f", "d", "l"):
                raise Violation("malformed entry")
            for key in ("m", "s", "t", "u", "g"):
                if type(entry.get(key)) is not int or not 0 <= entry[key] < 1 << 63:
                    raise Violation("malformed entry")
            if entry["k"] == "l" and not (isinstance(entry.get("l"), bytes) and entry["l"]
                                          and b"\0" not in entry["l"]
                                          and len(entry["l"]) <= PATH_MAX_BYTES):
                raise Violation("malformed link")
            components(entry.get("p"))
            self.entries.append(entry)
        if len(self.entries) > ENTRIES_MAX:
            raise Violation("too many entries")

    # placing ---------------------------------------------------------------------------
    def _root(self):
        """Open the root the entries go under; False (and every entry failed) if none."""
        tops = [e for e in self.entries if b"/" not in e["p"]]
        try:
            st = os.stat(self.dest)  # the destination itself may be a link the user named
        except FileNotFoundError:
            st = None
        except OSError as exc:
            self._fail(None, failure(exc, self.dest))
            return False
        if st is not None and stat.S_ISDIR(st.st_mode):
            parent, self.top = self.dest, None
        elif len(tops) == 1:
            self.top_src = tops[0]["p"]
            parent, self.top = os.path.split(self.dest)
            parent = parent or b"."
            if self.top in (b"", b".", b".."):
                self._fail(None, f"Not a directory: {shown(self.dest)}")
                return False
            self.shown_base = parent
        else:
            self._fail(None, f"Not a directory: {shown(self.dest)}" if st is not None else
                       f"No such directory: {shown(self.dest)}")
            return False
        try:
            self.base_fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            self._fail(None, failure(exc, parent))
            return False
        return True

    def _parts(self, entry):
        parts = components(entry["p"])
        if self.top is not None:
            if parts[0] != self.top_src:
                raise Violation("entries under two roots")
            parts[0] = self.top
        return parts

    def shown_path(self, parts):
        """Where components land, for messages."""
        return os.path.join(self.shown_base, *parts)

    def _enter(self, parts):
        """A descriptor of the directory at `parts` under the root, each step opened without
        following a link (the caller must not close it: it is cached)."""
        key = tuple(parts)
        if self._parent[0] == key:
            return self._parent[1]
        fd = os.dup(self.base_fd)
        try:
            for part in parts:
                nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                os.close(fd)
                fd = nxt
        except BaseException:
            os.close(fd)
            raise
        if self._parent[1] is not None:
            os.close(self._parent[1])
        self._parent = (key, fd)
        return fd

    def _under_failed(self, parts):
        return any(tuple(parts[:n]) in self.failed_dirs for n in range(1, len(parts)))

    def _plan(self):
        """The manifest is in: make directories and links, see which files are already there,
        and answer with the ones whose bytes are needed."""
        self.state = "data"
        if not self._root():
            self.counts["files"] = sum(e["k"] == "f" for e in self.entries)
            self.answer(["n", b""])
            return
        for i, entry in enumerate(self.entries):
            parts = self._parts(entry)
            if entry["k"] == "f":
                self.counts["files"] += 1
            if self._under_failed(parts):
                if entry["k"] == "f":
                    self.counts["failed"] += 1
                if entry["k"] == "d":
                    self.failed_dirs.add(tuple(parts))
                continue
            try:
                self._place(i, entry, parts)
            except OSError as exc:
                if entry["k"] == "d":
                    self.failed_dirs.add(tuple(parts))
                self._fail(i if entry["k"] == "f" else None,
                           failure(exc, self.shown_path(parts)))
        self.answer(["n", bitmap(len(self.entries), self.needed)])

    def _existing(self, dir_fd, name):
        try:
            return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def _place(self, i, entry, parts):
        dir_fd = self._enter(parts[:-1])
        name = parts[-1]
        old = self._existing(dir_fd, name)
        kind = entry["k"]
        if kind == "d":
            if old is None:
                try:
                    os.mkdir(name, 0o700, dir_fd=dir_fd)
                    self.created.append(parts)
                except FileExistsError:  # made just now by another copy into the same place
                    old = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if old is not None and not stat.S_ISDIR(old.st_mode):
                raise OSError(errno.EEXIST, "File exists (not a directory)")
            self.dirs.append((parts, entry))
        elif kind == "l":
            if old is None or not stat.S_ISLNK(old.st_mode) or \
                    os.readlink(name, dir_fd=dir_fd) != entry["l"]:
                if old is not None and stat.S_ISDIR(old.st_mode):
                    raise OSError(errno.EISDIR, "Is a directory")
                tmp = _temp_name(name)
                os.symlink(entry["l"], tmp, dir_fd=dir_fd)
                try:
                    self._own(tmp, dir_fd, entry, link=True)
                    os.rename(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                except BaseException:
                    _unlink(tmp, dir_fd)
                    raise
            os.utime(name, ns=(entry["t"], entry["t"]), dir_fd=dir_fd, follow_symlinks=False)
        else:
            if old is not None and stat.S_ISDIR(old.st_mode):
                raise OSError(errno.EISDIR, "Is a directory")
            if old is not None and stat.S_ISREG(old.st_mode) and old.st_size == entry["s"] and (
                    self._same_content(dir_fd, name, entry) if self.checksum
                    else old.st_mtime_ns == entry["t"]):
                self._touch_up(dir_fd, name, entry, old)
                self.counts["skipped"] += 1
                return
            self.needed.add(i)
            self.place[i] = (parts[:-1], name)

    def _same_content(self, dir_fd, name, entry):
        if not isinstance(entry.get("h"), bytes):
            return False
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            h = hashlib.sha256()
            while True:
                data = os.read(fd, CHUNK_BYTES)
                if not data:
                    return h.digest() == entry["h"]
                h.update(data)
        finally:
            os.close(fd)

    def _touch_up(self, dir_fd, name, entry, old):
        """An identical file already there: only its metadata, and only what differs (its
        inode and bytes stay)."""
        if (stat.S_IMODE(old.st_mode) == entry["m"] and old.st_mtime_ns == entry["t"]
                and (not self.as_root or (old.st_uid, old.st_gid) == self._ids(entry))):
            return
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                     dir_fd=dir_fd)
        try:
            self._meta(fd, entry)
        finally:
            os.close(fd)

    def _ids(self, entry):
        uid, gid = entry["u"], entry["g"]
        if entry.get("U"):
            try:
                uid = pwd.getpwnam(entry["U"]).pw_uid
            except (KeyError, ValueError, TypeError):
                pass
        if entry.get("G"):
            try:
                gid = grp.getgrnam(entry["G"]).gr_gid
            except (KeyError, ValueError, TypeError):
                pass
        return uid, gid

    def _own(self, name, dir_fd, entry, link=False):
        if self.as_root:
            os.chown(name, *self._ids(entry), dir_fd=dir_fd, follow_symlinks=not link)

    def _meta(self, fd, entry):
        """Owner (as root), mode, then times of an open file or directory."""
        if self.as_root:
            os.fchown(fd, *self._ids(entry))
        os.fchmod(fd, entry["m"] & 0o7777)
        os.utime(fd, ns=(entry["t"], entry["t"]))

    # data ------------------------------------------------------------------------------
    def _open(self, i):
        if type(i) is not int or not 0 <= i < len(self.entries) or self.entries[i]["k"] != "f":
            raise Violation("data for no file")
        if self.current is not None:
            raise Violation("a file inside another")
        if i not in self.needed:  # a fan-out sends what any peer needs: not this one's
            self.current = [i, None, None, None, None, None, 0, "skip"]
            return
        self.came.add(i)
        parts, name = self.place[i]
        tmp = _temp_name(name)
        cur = self.current = [i, None, tmp, None, name, hashlib.sha256(), 0, None]
        try:
            dir_fd = cur[3] = os.dup(self._enter(parts))
            cur[1] = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        except OSError as exc:
            cur[7] = failure(exc, self.shown_path(parts + [name]))
            self._discard()

    def _data(self, data):
        cur = self.current
        if cur is None:
            raise Violation("data outside a file")
        entry = self.entries[cur[0]]
        cur[6] += len(data)
        if cur[6] > entry["s"]:
            raise Violation(f"more data than announced for {shown(entry['p'])}")
        if cur[7] is not None:
            return  # skipped, or failed: the rest of its bytes go nowhere
        cur[5].update(data)
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(cur[1], view):]
        except OSError as exc:
            parts, name = self.place[cur[0]]
            cur[7] = failure(exc, self.shown_path(parts + [name]))
            self._discard()
        self.counts["bytes"] += len(data)

    def _end(self, i, digest, problem):
        cur = self.current
        if cur is None or cur[0] != i:
            raise Violation("end of a file never begun")
        self.current = None
        if cur[7] == "skip":
            return
        entry = self.entries[i]
        parts, name = self.place[i]
        where = self.shown_path(parts + [name])
        error = cur[7]
        if error is None:
            if problem is not None:
                error = str(problem)[:4096]
            elif cur[6] != entry["s"]:
                error = f"Short data ({cur[6]} of {entry['s']} bytes): {shown(where)}"
            elif digest != cur[5].digest():
                error = f"Checksum mismatch: {shown(where)}"
        if error is None:
            try:
                self._meta(cur[1], entry)
                os.close(cur[1])
                cur[1] = None
                os.rename(cur[2], name, src_dir_fd=cur[3], dst_dir_fd=cur[3])
                cur[2] = None
            except OSError as exc:
                error = failure(exc, where)
        self.current = cur
        self._discard()
        self.current = None
        if error is not None:
            self._fail(i, error)
        else:
            self.counts["written"] += 1
            self.answer(["K", i])

    def _discard(self):
        """Close and remove the current file's temporary (a failed or interrupted copy leaves
        nothing)."""
        cur = self.current
        if cur is None:
            return
        if cur[1] is not None:
            os.close(cur[1])
            cur[1] = None
        if cur[2] is not None and cur[3] is not None:
            _unlink(cur[2], cur[3])
            cur[2] = None
        if cur[3] is not None:
            os.close(cur[3])
            cur[3] = None
        if cur[7] is None or cur[7] == "skip":
            self.current = None

    def _finish(self):
        """The end: directories get their metadata, deepest first (a read-only one last)."""
        if self.current is not None:
            raise Violation("the end inside a file")
        for i in sorted(self.needed - self.came):
            parts, name = self.place[i]
            self._fail(i, f"Not sent: {shown(self.shown_path(parts + [name]))}")
        for parts, entry in reversed(self.dirs):
            if self._under_failed(parts + [b""]):
                continue
            try:
                fd = os.open(parts[-1], _DIR_FLAGS, dir_fd=self._enter(parts[:-1]))
                try:
                    self._meta(fd, entry)
                finally:
                    os.close(fd)
            except OSError as exc:
                self._fail(None, failure(exc, self.shown_path(parts)))
        self.state = "done"
        self.answer(["D", dict(self.counts)])

    def _fail(self, i, message):
        self.counts["failed"] += 1
        self.failures.append(message)
        self.answer(["F", i, message])

    def close(self):
        """However it ended: the temporary of a file in progress is removed, and when the copy
        did not complete, the directories it created and left empty too."""
        if self.current is not None:
            self.current[7] = self.current[7] or "interrupted"
            self._discard()
            self.current = None
        if self.state != "done" or self.failures:
            for parts in reversed(self.created):
                try:
                    os.rmdir(parts[-1], dir_fd=self._enter(parts[:-1]))
                except OSError:
                    pass
        if self._parent[1] is not None:
            os.close(self._parent[1])
            self._parent = (None, None)
        if self.base_fd is not None:
            os.close(self.base_fd)
            self.base_fd = None


def _temp_name(name):
    """A hidden temporary name next to `name` (kept under NAME_MAX)."""
    return b"." + name[:200] + b".zpeer-" + secrets.token_hex(4).encode()


def _unlink(name, dir_fd):
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass
