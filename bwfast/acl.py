"""Access control: who may read and write which topics (CONTRACT.md, "Access control").

Rules come from two sources and are used together:

- a Mosquitto ``acl_file`` (``[acl] file``), parsed here with Mosquitto's own
  syntax: ``topic [read|write|readwrite|deny] FILTER`` lines before any ``user``
  line are for anonymous clients, ``user NAME`` starts that user's rules,
  ``pattern [ACCESS] FILTER`` applies to everyone with ``%u`` / ``%c``
  substituted; an omitted access word means readwrite;
- run-time rules in LMDB (database ``acl``), managed through REST and
  ``bwfast acl``: each is (kind, who, topic, access) with kind ``username``,
  ``clientid`` or ``pattern`` (who is "" for a pattern).

Deciding, for one client and one topic: a ``deny`` rule that matches wins over
any grant; else a grant of the asked access (read or write) allows; else
``[acl] default``. A SUBSCRIBE filter is refused when a deny rule covers every
topic it can match, or, with ``default = deny``, when no read grant can match
any of them; a filter that is partly denied is granted and each message is
checked at delivery (so ``#`` never leaks a denied topic).

This module is pure logic plus the LMDB row format; enforcement lives where
packets are handled (handlers, router, fast lane), through :class:`ClientAcl`.
"""
from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from bwfast.topics import topic_matches, valid_filter

log = logging.getLogger("bwfast.acl")

READ, WRITE = 1, 2
ACCESS_WORDS = ("read", "write", "readwrite", "deny")
KINDS = ("username", "clientid", "pattern")
DB = "acl"
MAX_CACHE = 4096  # decisions kept per client; past that the cache starts over


class AclError(ValueError):
    """A bad rule or acl_file line; the message names what and where."""


@dataclass(frozen=True)
class Rule:
    """One rule as stored or read: ``who`` is "" for patterns and anonymous file rules."""

    kind: str     # "username", "clientid", "pattern", or "anonymous" (acl_file only)
    who: str
    topic: str
    access: str   # one of ACCESS_WORDS

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "who": self.who, "topic": self.topic, "access": self.access}


def check_rule(kind: str, who: str, topic: str, access: str) -> Rule:
    """Validate one run-time rule; raise AclError naming the bad field."""
    if kind not in KINDS:
        raise AclError(f"kind must be one of {', '.join(KINDS)}")
    if kind != "pattern" and not who:
        raise AclError(f"{kind} must not be empty")
    if kind == "pattern":
        who = ""
    if "\x00" in who:
        raise AclError(f"{kind} must not contain U+0000")
    if access not in ACCESS_WORDS:
        raise AclError(f"access must be one of {', '.join(ACCESS_WORDS)}")
    if not topic or not valid_filter(topic.replace("%u", "u").replace("%c", "c")):
        raise AclError("topic must be a valid topic filter")
    return Rule(kind, who, topic, access)


# -- LMDB rows -------------------------------------------------------------------------------

def rule_key(rule: Rule) -> bytes:
    """One row per (kind, who, topic): adding it again replaces its access."""
    return "\x00".join((rule.kind, rule.who, rule.topic)).encode()


def rule_value(rule: Rule) -> list[str]:
    return [rule.kind, rule.who, rule.topic, rule.access]


def rule_from_value(value: list[str]) -> Rule:
    return Rule(*value)


def stored_rules(store: Any) -> list[Rule]:
    """Every run-time rule in LMDB (``store`` is a bwfast.store.Store). A row that
    is not a valid rule is left out with a warning: one bad row must not stop
    every other rule from loading."""
    rules = []
    for key, value in store.items(DB):
        try:
            rules.append(check_rule(*value))
        except (AclError, TypeError, ValueError):
            log.warning("acl: LMDB row %r is not a valid rule; left out", key[:80])
    return rules


# -- the acl_file ------------------------------------------------------------------------------

def parse_acl_file(text: str, name: str = "acl_file") -> list[Rule]:
    """Mosquitto's acl_file syntax (mosquitto.conf(5), "acl_file")."""
    rules: list[Rule] = []
    user: str | None = None
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        word, _, rest = line.partition(" ")
        rest = rest.strip()
        if word == "user":
            if not rest:
                raise AclError(f"{name} line {lineno}: 'user' needs a name")
            user = rest
            continue
        if word not in ("topic", "pattern"):
            raise AclError(f"{name} line {lineno}: expected 'topic', 'pattern' or 'user'")
        access, _, filt = rest.partition(" ")
        if access in ACCESS_WORDS:
            filt = filt.strip()
        else:
            access, filt = "readwrite", rest
        if not filt or not valid_filter(filt.replace("%u", "u").replace("%c", "c")):
            raise AclError(f"{name} line {lineno}: {filt!r} is not a valid topic filter")
        if word == "pattern":
            rules.append(Rule("pattern", "", filt, access))
        elif user is None:
            rules.append(Rule("anonymous", "", filt, access))
        else:
            rules.append(Rule("username", user, filt, access))
    return rules


def read_acl_file(path: str) -> list[Rule]:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise AclError(f"[acl] file: cannot read {path!r}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise AclError(f"[acl] file: {path!r} is not UTF-8 text") from None
    return parse_acl_file(text, path)


# -- filters against filters ---------------------------------------------------------------------

def filters_intersect(a: str, b: str) -> bool:
    """Can some topic match both filters? (`$` topics only by a literal first level.)"""
    la, lb = a.split("/"), b.split("/")
    if (la[0].startswith("$") or lb[0].startswith("$")) and la[0] != lb[0]:
        return False  # wildcards never match a `$` first level [MQTT-4.7.2-1]
    i = 0
    while True:
        if i < len(la) and la[i] == "#":
            return True
        if i < len(lb) and lb[i] == "#":
            return True
        if i == len(la) or i == len(lb):
            return len(la) == len(lb)
        x, y = la[i], lb[i]
        if x != y and x != "+" and y != "+":
            return False
        i += 1


def filter_covers(wide: str, narrow: str) -> bool:
    """Does every topic that ``narrow`` matches also match ``wide``?"""
    lw, ln = wide.split("/"), narrow.split("/")
    if lw[0] in ("+", "#") and ln[0].startswith("$"):
        return False  # wildcards never match a `$` first level [MQTT-4.7.2-1]
    for i, w in enumerate(lw):
        if w == "#":
            return True
        if i == len(ln):
            return False
        n = ln[i]
        if n == "#":
            return False
        if w != "+" and w != n:
            return False
    return len(ln) == len(lw)


# -- compiled per client -------------------------------------------------------------------------

class Rules:
    """Every rule a worker knows, compiled; ``generation`` moves on each reload."""

    def __init__(self, default_allow: bool = False) -> None:
        self.default_allow = default_allow
        self.generation = 0
        self.anonymous: list[tuple[str, str]] = []
        self.users: dict[str, list[tuple[str, str]]] = {}
        self.clients: dict[str, list[tuple[str, str]]] = {}
        self.patterns: list[tuple[str, str]] = []

    def load(self, rules: Iterable[Rule]) -> None:
        self.anonymous, self.users, self.clients, self.patterns = [], {}, {}, []
        for r in rules:
            entry = (r.topic, r.access)
            if r.kind == "anonymous":
                self.anonymous.append(entry)
            elif r.kind == "username":
                self.users.setdefault(r.who, []).append(entry)
            elif r.kind == "clientid":
                self.clients.setdefault(r.who, []).append(entry)
            else:
                self.patterns.append(entry)
        self.generation += 1

    def for_client(self, username: str | None, client_id: str) -> ClientAcl:
        return ClientAcl(self, username, client_id)

    def rules_of(self, username: str | None, client_id: str) -> Iterator[tuple[str, str]]:
        """(filter, access) of every rule that applies to this client, patterns substituted."""
        if username is None:
            yield from self.anonymous
        else:
            yield from self.users.get(username, ())
        yield from self.clients.get(client_id, ())
        for filt, access in self.patterns:
            if "%u" in filt:
                if username is None or _wild(username):
                    continue  # Mosquitto: %u patterns don't apply to anonymous clients
                filt = filt.replace("%u", username)
            if "%c" in filt:
                if _wild(client_id):
                    continue
                filt = filt.replace("%c", client_id)
            yield filt, access


def _wild(name: str) -> bool:
    """A username or client id with a wildcard must not widen a pattern: client id
    "+" would turn ``clients/%c/#`` into every client's topics. A pattern meant for
    it names topics that cannot exist (no topic name holds + or # [MQTT-4.7.1-1]),
    so it is left out; Mosquitto denies such clients the patterns likewise."""
    return "+" in name or "#" in name


class ClientAcl:
    """One client's view of the rules, with its decisions cached per topic.

    The cache is dropped when the rules' generation moves (a reload, a REST
    change), so a decision never outlives the rule that made it.
    """

    __slots__ = ("rules", "username", "client_id", "generation", "denies", "grants", "cache")

    def __init__(self, rules: Rules, username: str | None, client_id: str) -> None:
        self.rules = rules
        self.username = username
        self.client_id = client_id
        self.generation = -1
        self.denies: list[str] = []
        self.grants: list[tuple[str, int]] = []
        self.cache: dict[str, int] = {}

    def _compile(self) -> None:
        self.generation = self.rules.generation
        self.denies, self.grants = [], []
        for filt, access in self.rules.rules_of(self.username, self.client_id):
            if access == "deny":
                self.denies.append(filt)
            else:
                bits = READ if access == "read" else WRITE if access == "write" else READ | WRITE
                self.grants.append((filt, bits))
        self.cache = {}

    def allowed(self, topic: str) -> int:
        """READ | WRITE bits this client has on a topic name (cached)."""
        if self.generation != self.rules.generation:
            self._compile()
        bits = self.cache.get(topic)
        if bits is not None:
            return bits
        bits = 0
        if not any(topic_matches(d, topic) for d in self.denies):
            if self.rules.default_allow:
                bits = READ | WRITE
            else:
                for filt, b in self.grants:
                    if topic_matches(filt, topic):
                        bits |= b
                        if bits == READ | WRITE:
                            break
        cache = self.cache
        if len(cache) >= MAX_CACHE:
            cache.clear()
        cache[topic] = bits
        return bits

    def known_writable(self, topic: str) -> bool:
        """A decision already made allows writing ``topic`` (the fast lane asks this
        and leaves anything else to the general path, which decides and caches)."""
        return (self.generation == self.rules.generation
                and bool(self.cache.get(topic, 0) & WRITE))

    def may_read(self, topic: str) -> bool:
        return bool(self.allowed(topic) & READ)

    def may_write(self, topic: str) -> bool:
        return bool(self.allowed(topic) & WRITE)

    def may_subscribe(self, filt: str) -> bool:
        """Grant a filter unless every topic it matches is denied (or, default deny,
        none can be read); delivery checks each topic against :meth:`may_read`."""
        if self.generation != self.rules.generation:
            self._compile()
        if any(filter_covers(d, filt) for d in self.denies):
            return False
        if self.rules.default_allow:
            return True
        return any(b & READ and filters_intersect(f, filt) for f, b in self.grants)
