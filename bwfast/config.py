"""broker.conf → typed, validated, frozen configuration.

One place turns the INI file and the command-line flags into dataclasses that
the rest of the broker trusts without re-checking. Every problem is a
``ConfigError`` whose message is one line naming the section and key, so a bad
file stops the broker before anything half-starts (CONTRACT: "a bad config
exits non-zero at once with one line naming the key or the problem").

Reading rules
- Keys are case-insensitive; our sections are ``[broker] [tls] [websocket]
  [persistence] [authentication] [acl] [api]``. An unknown key in them, or an
  unknown section, is fatal.
- Comments: whole lines starting with ``;`` or ``#``, and inline comments. An
  inline comment may follow a number, boolean or word with no space before it
  (``max_queued_messages = 1000; per offline session``). In values that can
  legitimately hold ``;`` or ``#`` (file paths, API username and password)
  only a comment preceded by whitespace is stripped.
- Relative paths (``data_dir``, certificate files) are resolved against the
  process working directory, not the config file's directory, as Mosquitto
  does; the dataclasses hold absolute paths.
- Precedence, lowest first: built-in defaults, Bevywise keys, our keys, flags.

Bevywise MQTT Route compatibility
    [CONFIG] PORT_NO                  -> [broker] port
    [CONFIG] TLS_ENABLED              -> [tls] enabled
    [CONFIG] TLS_PORT_NO              -> [tls] port
    [CONFIG] WS_PORT_NO               -> [websocket] port
    [CONFIG] WSS_PORT_NO              -> [websocket] tls_port
    [AUTHENTICATION] AUTHENTICATION_ENABLED -> [authentication] enabled
    [UI] UI_Http_Port                 -> [api] port
    [WEB_LOGIN_PAGE] WEB_USERNAME     -> [api] username
    [WEB_LOGIN_PAGE] WEB_PASSWORD     -> [api] password
    [SYS_TOPIC] SYSTOPIC = NO         -> [broker] sys_interval = 0 (also DISABLED)
    [SYS_TOPIC] SYSTOPIC_INTERVAL     -> [broker] sys_interval
The Bevywise broker always serves MQTT over WebSocket, so ``WS_PORT_NO`` or
``WSS_PORT_NO`` also turns ``[websocket] enabled`` on (an explicit
``[websocket] enabled`` still wins). Every other key of a Bevywise section is
reported in one warning line and otherwise ignored. A section counts as
Bevywise when its name is one of ``BEVYWISE_SECTIONS`` (for ``TLS`` and
``AUTHENTICATION``, which we share, only when written in capitals), or when it
is written in capitals in a file that has other Bevywise sections.
"""
from __future__ import annotations

import configparser
import dataclasses
import ipaddress
import os
import re
import socket
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from bwfast.errors import ConfigError

DEFAULT_CONFIG_FILE = "broker.conf"
DEFAULT_DATA_DIR = "./bwfast-data"
LOG_LEVELS = ("debug", "info", "warning", "error")
# Largest Remaining Length a packet can declare ([MQTT-2.2.3], 4-byte varint).
MAX_PACKET_SIZE = 268_435_455
MASK = "********"

# Section names of a Bevywise MQTT Route broker.conf. Only the keys listed in
# _BEVYWISE_MAP mean something here; the rest draw a warning.
BEVYWISE_SECTIONS = frozenset({
    "CONFIG", "TLS", "UI", "AUTHENTICATION", "WEB_LOGIN_PAGE", "SYS_TOPIC",
    "MQTT", "STORAGE", "REMOTE_BRIDGE", "WEB_PORT_SETTINGS", "LOG", "LOGGING",
    "DASHBOARD", "CLUSTER", "HIGH_PERFORMANCE", "LICENSE", "BRIDGE",
    "CUSTOM_STORAGE", "PYTHON_INTERCEPT", "INTERCEPT", "MISC",
})


def _cpu_count() -> int:
    """What ``workers = auto`` means: one SO_REUSEPORT worker per CPU."""
    return os.cpu_count() or 1


def _default_data_dir() -> str:
    return os.path.abspath(DEFAULT_DATA_DIR)


@dataclass(frozen=True)
class BrokerConfig:
    """``[broker]``: the MQTT listener and per-client limits."""

    host: str = "127.0.0.1"  # safe default; the shipped broker.conf opens 0.0.0.0
    port: int = 1883
    workers: int = field(default_factory=_cpu_count)
    data_dir: str = field(default_factory=_default_data_dir)  # absolute
    max_packet_size: int = MAX_PACKET_SIZE
    max_inflight: int = 20
    max_queued_messages: int = 1000  # 0: a persistent session queues nothing
    max_keepalive: int = 65535
    topic_alias_maximum: int = 10  # 0 turns topic aliases off
    retain_available: bool = True
    allow_zero_length_clientid: bool = True
    sys_interval: int = 10  # seconds between $SYS publications; 0 = no $SYS
    log_level: str = "info"
    max_connect_size: int = 65536  # bytes a CONNECT may take (before authentication)
    max_connections: int = 0  # clients at once, summed over workers; 0 = unlimited


@dataclass(frozen=True)
class TLSConfig:
    """``[tls]``: MQTT over TLS. Paths are absolute, or "" when unset."""

    enabled: bool = False
    port: int = 8883
    certfile: str = ""
    keyfile: str = ""
    cafile: str = ""
    require_certificate: bool = False
    use_identity_as_username: bool = False  # username := client certificate CN


@dataclass(frozen=True)
class WebSocketConfig:
    """``[websocket]``: MQTT over WebSocket (WSS on tls_port when TLS is on)."""

    enabled: bool = False
    port: int = 10443
    tls_port: int = 11443
    path: str = "/mqtt"


@dataclass(frozen=True)
class PersistenceConfig:
    """``[persistence]``: sync = QoS 1/2 on disk before the broker acks."""

    sync: bool = True


@dataclass(frozen=True)
class AuthConfig:
    """``[authentication]``: enabled = CONNECT needs a known username."""

    enabled: bool = False


@dataclass(frozen=True)
class AclConfig:
    """``[acl]``: topic permissions (CONTRACT.md, "Access control")."""

    enabled: bool = False
    file: str = ""          # a Mosquitto acl_file; absolute, or "" when unset
    default: str = "deny"   # what no rule grants: "deny" or "allow"


@dataclass(frozen=True)
class APIConfig:
    """``[api]``: the REST API and its login."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8080
    username: str = "admin"
    password: str = "admin"
    token_ttl: int = 3600
    metrics_auth: bool = False  # true: GET /metrics needs the login token too


def _host_name() -> str:
    """The host name as a subject token (dots and the like become '-')."""
    name = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:64]
    return name or "node"


@dataclass(frozen=True)
class ClusterConfig:
    """``[cluster]``: nodes joined into one broker through NATS (bwfast/nodes.py)."""

    enabled: bool = False
    node: str = ""  # unique name among the nodes; "" = the host name (see node_name)
    nats: str = "nats://127.0.0.1:4222"  # comma-separated server URLs
    user: str = ""
    password: str = ""
    credentials: str = ""  # a NATS .creds file (JWT + nkey); absolute, or ""
    tls_cafile: str = ""
    tls_certfile: str = ""
    tls_keyfile: str = ""
    lease: int = 10  # seconds without a word from a node before its routes are dropped
    durable_sessions: bool = False  # persistent sessions also in JetStream (nodedurable.py)

    @property
    def node_name(self) -> str:
        return self.node or _host_name()


@dataclass(frozen=True)
class Config:
    """The whole configuration. ``warnings`` are non-fatal lines to log."""

    broker: BrokerConfig = field(default_factory=BrokerConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    persistence: PersistenceConfig = field(default_factory=PersistenceConfig)
    authentication: AuthConfig = field(default_factory=AuthConfig)
    acl: AclConfig = field(default_factory=AclConfig)
    api: APIConfig = field(default_factory=APIConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    source: str | None = None  # absolute path of the file read, if any
    warnings: list[str] = field(default_factory=list, hash=False)
    notes: list[str] = field(default_factory=list, hash=False, compare=False)  # logged at info


_SECTION_CLASSES: dict[str, type] = {
    "broker": BrokerConfig,
    "tls": TLSConfig,
    "websocket": WebSocketConfig,
    "persistence": PersistenceConfig,
    "authentication": AuthConfig,
    "acl": AclConfig,
    "api": APIConfig,
    "cluster": ClusterConfig,
}


# ---------------------------------------------------------------- value parsers

class _Invalid(ValueError):
    """A value's problem, without its location (the caller adds that)."""


Parser = Callable[[str], Any]
_INT_RE = re.compile(r"[+-]?[0-9]+")
_BOOLS = {"true": True, "yes": True, "on": True, "1": True,
          "false": False, "no": False, "off": False, "0": False}
# Bevywise writes some switches as ENABLED / DISABLED ([SYS_TOPIC] SYSTOPIC).
_SWITCHES = {**_BOOLS, "enabled": True, "disabled": False}


def _integer(lo: int, hi: int) -> Parser:
    def parse(text: str) -> int:
        if not _INT_RE.fullmatch(text):
            raise _Invalid(f"{text!r} is not an integer")
        n = int(text)
        if not lo <= n <= hi:
            raise _Invalid(f"{n} is out of range {lo}..{hi}")
        return n
    return parse


_port = _integer(1, 65535)


def _boolean(text: str) -> bool:
    try:
        return _BOOLS[text.lower()]
    except KeyError:
        raise _Invalid(f"{text!r} is not a boolean (true/false, yes/no, on/off, 1/0)") from None


def _switch(text: str) -> bool:
    try:
        return _SWITCHES[text.lower()]
    except KeyError:
        raise _Invalid(f"{text!r} is not ENABLED/DISABLED or a boolean "
                       "(true/false, yes/no, on/off, 1/0)") from None


def _workers(text: str) -> int:
    if text.lower() == "auto":
        return _cpu_count()
    try:
        return _integer(1, 1024)(text)
    except _Invalid as e:
        raise _Invalid(f"{e} (or 'auto')") from None


def _log_level(text: str) -> str:
    level = text.lower()
    if level not in LOG_LEVELS:
        raise _Invalid(f"{text!r} is not one of {', '.join(LOG_LEVELS)}")
    return level


def _word(text: str) -> str:
    """A host name or address: one non-empty token."""
    if not text:
        raise _Invalid("must not be empty")
    if any(c.isspace() for c in text):
        raise _Invalid(f"{text!r} contains whitespace")
    return text


def _secret(text: str) -> str:
    """Credentials: never echo the value in a message."""
    if not text:
        raise _Invalid("must not be empty")
    return text


def _optional_secret(text: str) -> str:
    return text


def _ws_path(text: str) -> str:
    text = _word(text)
    if not text.startswith("/"):
        raise _Invalid(f"{text!r} must start with '/'")
    return text


def _directory(text: str) -> str:
    if not text:
        raise _Invalid("must not be empty")
    return os.path.abspath(os.path.expanduser(text))


def _optional_file(text: str) -> str:
    return os.path.abspath(os.path.expanduser(text)) if text else ""


_NODE_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _node_name(text: str) -> str:
    """One NATS subject token: letters, digits, '-' and '_' ("" = the host name)."""
    if text and not _NODE_RE.fullmatch(text):
        raise _Invalid(f"{text!r} must be 1-64 letters, digits, '-' or '_'")
    return text


def _nats_urls(text: str) -> str:
    urls = [u.strip() for u in text.split(",")]
    for url in urls:
        if not re.fullmatch(r"(nats|tls|ws|wss)://[^\s/,]+", url):
            raise _Invalid(f"{url!r} is not a nats://host:port URL")
    return ",".join(urls)


def _acl_default(text: str) -> str:
    word = text.lower()
    if word not in ("deny", "allow"):
        raise _Invalid(f"{text!r} is not 'deny' or 'allow'")
    return word


@dataclass(frozen=True)
class _Key:
    parse: Parser
    raw: bool = False  # may hold ';' or '#': strip only " ;comment"


SCHEMA: dict[str, dict[str, _Key]] = {
    "broker": {
        "host": _Key(_word),
        "port": _Key(_port),
        "workers": _Key(_workers),
        "data_dir": _Key(_directory, raw=True),
        "max_packet_size": _Key(_integer(16, MAX_PACKET_SIZE)),
        "max_inflight": _Key(_integer(1, 65535)),
        "max_queued_messages": _Key(_integer(0, 2**31 - 1)),
        "max_keepalive": _Key(_integer(0, 65535)),
        "topic_alias_maximum": _Key(_integer(0, 65535)),
        "retain_available": _Key(_boolean),
        "allow_zero_length_clientid": _Key(_boolean),
        "sys_interval": _Key(_integer(0, 86400)),
        "log_level": _Key(_log_level),
        "max_connect_size": _Key(_integer(64, MAX_PACKET_SIZE)),
        "max_connections": _Key(_integer(0, 2**31 - 1)),
    },
    "tls": {
        "enabled": _Key(_boolean),
        "port": _Key(_port),
        "certfile": _Key(_optional_file, raw=True),
        "keyfile": _Key(_optional_file, raw=True),
        "cafile": _Key(_optional_file, raw=True),
        "require_certificate": _Key(_boolean),
        "use_identity_as_username": _Key(_boolean),
    },
    "websocket": {
        "enabled": _Key(_boolean),
        "port": _Key(_port),
        "tls_port": _Key(_port),
        "path": _Key(_ws_path),
    },
    "persistence": {"sync": _Key(_boolean)},
    "authentication": {"enabled": _Key(_boolean)},
    "acl": {
        "enabled": _Key(_boolean),
        "file": _Key(_optional_file, raw=True),
        "default": _Key(_acl_default),
    },
    "api": {
        "enabled": _Key(_boolean),
        "host": _Key(_word),
        "port": _Key(_port),
        "username": _Key(_secret, raw=True),
        "password": _Key(_secret, raw=True),
        "token_ttl": _Key(_integer(1, 31_536_000)),
        "metrics_auth": _Key(_boolean),
    },
    "cluster": {
        "enabled": _Key(_boolean),
        "node": _Key(_node_name),
        "nats": _Key(_nats_urls),
        "user": _Key(_optional_secret, raw=True),
        "password": _Key(_optional_secret, raw=True),
        "credentials": _Key(_optional_file, raw=True),
        "tls_cafile": _Key(_optional_file, raw=True),
        "tls_certfile": _Key(_optional_file, raw=True),
        "tls_keyfile": _Key(_optional_file, raw=True),
        "lease": _Key(_integer(2, 3600)),
        "durable_sessions": _Key(_boolean),
    },
}

# (SECTION, KEY) upper-cased -> (canonical spelling, our section, our key)
_BEVYWISE_MAP: dict[tuple[str, str], tuple[str, str, str]] = {
    ("CONFIG", "PORT_NO"): ("[CONFIG] PORT_NO", "broker", "port"),
    ("CONFIG", "TLS_ENABLED"): ("[CONFIG] TLS_ENABLED", "tls", "enabled"),
    ("CONFIG", "TLS_PORT_NO"): ("[CONFIG] TLS_PORT_NO", "tls", "port"),
    ("CONFIG", "WS_PORT_NO"): ("[CONFIG] WS_PORT_NO", "websocket", "port"),
    ("CONFIG", "WSS_PORT_NO"): ("[CONFIG] WSS_PORT_NO", "websocket", "tls_port"),
    ("AUTHENTICATION", "AUTHENTICATION_ENABLED"):
        ("[AUTHENTICATION] AUTHENTICATION_ENABLED", "authentication", "enabled"),
    ("UI", "UI_HTTP_PORT"): ("[UI] UI_Http_Port", "api", "port"),
    ("WEB_LOGIN_PAGE", "WEB_USERNAME"): ("[WEB_LOGIN_PAGE] WEB_USERNAME", "api", "username"),
    ("WEB_LOGIN_PAGE", "WEB_PASSWORD"): ("[WEB_LOGIN_PAGE] WEB_PASSWORD", "api", "password"),
    ("SYS_TOPIC", "SYSTOPIC"): ("[SYS_TOPIC] SYSTOPIC", "broker", "sys_interval"),
    ("SYS_TOPIC", "SYSTOPIC_INTERVAL"):
        ("[SYS_TOPIC] SYSTOPIC_INTERVAL", "broker", "sys_interval"),
}
_WS_IMPLYING = {("CONFIG", "WS_PORT_NO"), ("CONFIG", "WSS_PORT_NO")}

# CLI flag name in the overrides dict -> (section, key, flag as typed)
OVERRIDES: dict[str, tuple[str, str, str]] = {
    "port": ("broker", "port", "--port"),
    "api_port": ("api", "port", "--api-port"),
    "workers": ("broker", "workers", "--workers"),
    "data_dir": ("broker", "data_dir", "--data-dir"),
    "log_level": ("broker", "log_level", "--log-level"),
}

_COMMENT_ANYWHERE = re.compile(r"[;#]")

# A value with where it came from ("[broker] port", "[CONFIG] PORT_NO", "--port").
Slot = tuple[str, str]
Setting = tuple[Any, str]


def _name(section: str, key: str) -> str:
    return f"[{section}] {key}"


def _clean(text: str, raw: bool) -> str:
    if not raw:
        text = _COMMENT_ANYWHERE.split(text, maxsplit=1)[0]
    return text.strip()


def _parse(key: _Key, text: str, where: str) -> Any:
    try:
        return key.parse(_clean(text, key.raw))
    except _Invalid as e:
        raise ConfigError(f"{where}: {e}") from None


# ---------------------------------------------------------------- reading

def _read_text(path: str | None) -> tuple[str | None, str | None, str | None]:
    """Return (absolute source, name for messages, text); all None: no file."""
    if path is None:
        if not os.path.isfile(DEFAULT_CONFIG_FILE):
            return None, None, None
        path = DEFAULT_CONFIG_FILE
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read config file {path!r}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    return os.path.abspath(path), path, text


def _ini(text: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(
        interpolation=None,  # '%' is an ordinary character (passwords)
        inline_comment_prefixes=(";", "#"),
        default_section="\x00no-default\x00",  # [DEFAULT] is just unknown
        strict=True,
    )
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    try:
        parser.read_string(text)
    except configparser.MissingSectionHeaderError as e:
        raise ConfigError(f"line {e.lineno}: a key before any [section]") from None
    except configparser.DuplicateSectionError as e:
        raise ConfigError(f"[{e.section}]: section appears twice (line {e.lineno})") from None
    except configparser.DuplicateOptionError as e:
        raise ConfigError(f"[{e.section}] {e.option}: key appears twice "
                          f"(line {e.lineno})") from None
    except configparser.ParsingError as e:
        lineno = e.errors[0][0] if e.errors else "?"
        raise ConfigError(f"line {lineno}: expected 'key = value'") from None
    except configparser.Error as e:
        raise ConfigError(str(e).splitlines()[0]) from None
    return parser


def _is_bevywise(section: str) -> bool:
    """A known Bevywise section; [TLS]/[AUTHENTICATION] only in capitals."""
    return section.upper() in BEVYWISE_SECTIONS and (
        section.lower() not in SCHEMA or section.isupper())


class _FileReader:
    """Sorts one parsed file into our settings, Bevywise settings, warnings."""

    def __init__(self, parser: configparser.ConfigParser) -> None:
        self.parser = parser
        self.native: dict[Slot, Setting] = {}
        self.bevywise: dict[Slot, Setting] = {}
        self.implied: dict[Slot, Setting] = {}
        self.warnings: list[str] = []
        self.systopic_off: str | None = None
        self._seen: dict[tuple[str, str], str] = {}
        self._bevywise_file = any(_is_bevywise(s) for s in parser.sections())

    def read(self) -> None:
        for section in self.parser.sections():
            self._section(section)
        if self.systopic_off is not None:
            self.bevywise[("broker", "sys_interval")] = (0, self.systopic_off)

    def _section(self, section: str) -> None:
        ours = section.lower() if section.lower() in SCHEMA else None
        bevy = _is_bevywise(section) or (
            ours is None and self._bevywise_file and section.isupper())
        if ours is None and not bevy:
            raise ConfigError(f"[{section}]: unknown section")
        lenient = bevy and (ours is None or section.isupper())
        for key, text in self.parser.items(section):
            self._once(ours or section.upper(), section, key)
            mapped = _BEVYWISE_MAP.get((section.upper(), key.upper()))
            if ours is not None and key.lower() in SCHEMA[ours]:
                where = _name(ours, key.lower())
                slot = (ours, key.lower())
                self.native[slot] = (_parse(SCHEMA[ours][key.lower()], text, where), where)
            elif mapped is not None:
                self._bevywise_key(section.upper(), key.upper(), mapped, text)
            elif lenient:
                self.warnings.append(
                    f"ignored Bevywise key [{section}] {key}: no meaning in bwfast")
            else:
                raise ConfigError(f"[{ours}] {key}: unknown key")

    def _once(self, canonical: str, section: str, key: str) -> None:
        """Keys are case-insensitive, so 'Port' after 'port' is a repeat."""
        ident = (canonical, key.lower())
        if ident in self._seen:
            raise ConfigError(f"[{section}] {key}: key appears twice "
                              f"(also as {self._seen[ident]})")
        self._seen[ident] = _name(section, key)

    def _bevywise_key(self, section: str, key: str,
                      mapped: tuple[str, str, str], text: str) -> None:
        where, ours, our_key = mapped
        if (section, key) == ("SYS_TOPIC", "SYSTOPIC"):
            if not _parse(_Key(_switch), text, where):
                self.systopic_off = where
            return
        self.bevywise[(ours, our_key)] = (_parse(SCHEMA[ours][our_key], text, where), where)
        if (section, key) in _WS_IMPLYING:
            self.implied[("websocket", "enabled")] = (True, where)


def _merge_file(reader: _FileReader) -> dict[Slot, Setting]:
    """Defaults < implied < Bevywise < ours; say when ours hides a Bevywise key."""
    values = dict(reader.implied)
    values.update(reader.bevywise)
    for slot, (value, where) in reader.native.items():
        if slot in reader.bevywise:
            reader.warnings.append(f"{where} overrides Bevywise {reader.bevywise[slot][1]}")
        values[slot] = (value, where)
    return values


def _apply_overrides(overrides: Mapping[str, Any], values: dict[Slot, Setting]) -> None:
    for name, raw in overrides.items():
        if name not in OVERRIDES:
            raise ConfigError(f"unknown override {name!r}")
        if raw is None:
            continue
        section, key, flag = OVERRIDES[name]
        where = f"{_name(section, key)} ({flag})"
        values[(section, key)] = (_parse(SCHEMA[section][key], str(raw), where), flag)


def _build(values: dict[Slot, Setting], source: str | None, warnings: list[str]) -> Config:
    parts: dict[str, Any] = {}
    for section, cls in _SECTION_CLASSES.items():
        kwargs = {key: v for (s, key), (v, _) in values.items() if s == section}
        parts[section] = cls(**kwargs)
    return Config(**parts, source=source, warnings=warnings)


# ---------------------------------------------------------------- cross-checks

def _check_tls(cfg: Config, origin: Callable[[str, str], str]) -> None:
    tls = cfg.tls
    if tls.require_certificate and not tls.cafile:
        raise ConfigError("[tls] require_certificate: needs [tls] cafile, the CA "
                          "that signs client certificates")
    if tls.use_identity_as_username and not tls.require_certificate:
        raise ConfigError("[tls] use_identity_as_username: needs "
                          "[tls] require_certificate = true")
    if not tls.enabled:
        return
    for key in ("certfile", "keyfile"):
        if not getattr(tls, key):
            raise ConfigError(f"[tls] {key}: required when {origin('tls', 'enabled')} is true")
    for key in ("certfile", "keyfile", "cafile"):
        path = getattr(tls, key)
        if path:
            _check_readable(f"[tls] {key}", path)


def _check_readable(where: str, path: str) -> None:
    try:
        with open(path, "rb"):
            pass
    except OSError as e:
        raise ConfigError(f"{where}: cannot read {path!r}: {e.strerror}") from None


def _check_ports(cfg: Config, origin: Callable[[str, str], str]) -> None:
    """Listeners that will be bound must not share a port."""
    used: list[tuple[int, str]] = [(cfg.broker.port, origin("broker", "port"))]
    if cfg.tls.enabled:
        used.append((cfg.tls.port, origin("tls", "port")))
    if cfg.websocket.enabled:
        used.append((cfg.websocket.port, origin("websocket", "port")))
        if cfg.tls.enabled:
            used.append((cfg.websocket.tls_port, origin("websocket", "tls_port")))
    if cfg.api.enabled:
        used.append((cfg.api.port, origin("api", "port")))
    for i, (port, first) in enumerate(used):
        for other, second in used[i + 1:]:
            if port == other:
                raise ConfigError(f"{first} and {second} are both {port}")


def _check_cluster(cfg: Config) -> None:
    cl = cfg.cluster
    if bool(cl.user) != bool(cl.password):
        raise ConfigError("[cluster] password: [cluster] user and password go together")
    if cl.credentials and cl.user:
        raise ConfigError("[cluster] credentials: use either credentials or user/password")
    if bool(cl.tls_certfile) != bool(cl.tls_keyfile):
        raise ConfigError("[cluster] tls_keyfile: tls_certfile and tls_keyfile go together")
    for key in ("credentials", "tls_cafile", "tls_certfile", "tls_keyfile"):
        if getattr(cl, key):
            _check_readable(f"[cluster] {key}", getattr(cl, key))


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach a listener bound to ``host``."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to anything


def _exposure(cfg: Config) -> tuple[list[str], list[str]]:
    """(warnings, notes) about who can reach MQTT (CONTRACT: safe defaults)."""
    host = cfg.broker.host
    if not is_loopback(host):
        if not cfg.authentication.enabled:
            return [f"MQTT listens on {host} with [authentication] enabled = false: any "
                    "host that reaches the port may connect, publish and subscribe"], []
        return [], []
    if cfg.source is None:
        return [], [f"no config file: MQTT listens on {host} only; to accept other "
                    "hosts, set [broker] host = 0.0.0.0 in a broker.conf"]
    return [], []


def _default_password_warning(cfg: Config) -> list[str]:
    if cfg.api.enabled and cfg.api.password == APIConfig.password:
        return ["[api] password is still the default: change it before "
                "exposing the REST API"]
    return []


# ---------------------------------------------------------------- public API

def load_config(path: str | None, overrides: Mapping[str, Any] | None = None) -> Config:
    """Read ``path`` (None: ./broker.conf if present, else defaults), apply
    ``overrides`` (CLI flags: port, api_port, workers, data_dir, log_level;
    None values are skipped), validate, and return a frozen Config.

    Raises ConfigError with one line naming the key and the problem.
    """
    source, label, text = _read_text(path)
    values: dict[Slot, Setting] = {}
    warnings: list[str] = []
    if text is not None:
        try:
            reader = _FileReader(_ini(text))
            reader.read()
        except ConfigError as e:
            raise ConfigError(f"{label}: {e}") from None
        values = _merge_file(reader)
        warnings = reader.warnings
    _apply_overrides(overrides or {}, values)
    cfg = _build(values, source, warnings)

    def origin(section: str, key: str) -> str:
        return values.get((section, key), (None, _name(section, key)))[1]

    try:
        _check_tls(cfg, origin)
        _check_ports(cfg, origin)
        if cfg.acl.file:
            _check_readable("[acl] file", cfg.acl.file)
        _check_cluster(cfg)
    except ConfigError as e:
        raise ConfigError(f"{label}: {e}" if label else str(e)) from None
    warnings.extend(_default_password_warning(cfg))
    exposed, notes = _exposure(cfg)
    warnings.extend(exposed)
    cfg.notes.extend(notes)
    return cfg


def _no_password() -> bytes:
    """Keeps OpenSSL from prompting on the terminal for an encrypted key."""
    return b""


def validate_tls_files(cfg: Config) -> None:
    """Load the TLS files the way a listener will, so a bad certificate, a key
    that doesn't match it, or an unusable CA file stops the broker at start
    with one line naming the file. Does nothing when TLS is off.
    """
    tls = cfg.tls
    if not tls.enabled:
        return
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.load_verify_locations(cafile=tls.certfile)
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(f"[tls] certfile: {tls.certfile!r} holds no usable PEM "
                          f"certificate ({_ssl_reason(e)})") from None
    try:
        ctx.load_cert_chain(tls.certfile, tls.keyfile, password=_no_password)
    except ssl.SSLError as e:
        if e.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(f"[tls] keyfile: {tls.keyfile!r} does not match the "
                              f"certificate in [tls] certfile {tls.certfile!r}") from None
        raise ConfigError(f"[tls] keyfile: {tls.keyfile!r} is not a usable unencrypted "
                          f"PEM private key ({_ssl_reason(e)})") from None
    except OSError as e:
        raise ConfigError(f"[tls] keyfile: cannot read {tls.keyfile!r}: {e.strerror}") from None
    if tls.cafile:
        try:
            ctx.load_verify_locations(cafile=tls.cafile)
        except (ssl.SSLError, OSError) as e:
            raise ConfigError(f"[tls] cafile: {tls.cafile!r} holds no usable PEM "
                              f"CA certificate ({_ssl_reason(e)})") from None


def _ssl_reason(e: Exception) -> str:
    if isinstance(e, ssl.SSLError):
        return str(e.reason or e.library or "SSL error")
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return type(e).__name__


def to_dict(cfg: Config) -> dict[str, Any]:
    """A plain dict for logging and debugging, the API password masked."""
    out = dataclasses.asdict(cfg)
    out["api"]["password"] = MASK
    if out["cluster"]["password"]:
        out["cluster"]["password"] = MASK
    return out
