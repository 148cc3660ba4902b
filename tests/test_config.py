"""broker.conf parsing, validation, Bevywise compatibility and the CLI's
handling of a bad config (CONTRACT: "A bad config ... exits non-zero at once
with one line naming the key or the problem; nothing half-starts")."""
from __future__ import annotations

import configparser
import dataclasses
import datetime
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bwfast import __version__
from bwfast.cli import main
from bwfast.config import (
    SCHEMA,
    APIConfig,
    AuthConfig,
    BrokerConfig,
    Config,
    PersistenceConfig,
    TLSConfig,
    WebSocketConfig,
    load_config,
    to_dict,
    validate_tls_files,
)
from bwfast.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
SECRET = "s3cr3t-Pa55"


@pytest.fixture(autouse=True)
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test runs in an empty directory: no ./broker.conf, and relative
    paths resolve there."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def write(tmp_path: Path, text: str, name: str = "test.conf") -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def load_text(tmp_path: Path, text: str) -> Config:
    return load_config(write(tmp_path, text))


def error_of(tmp_path: Path, text: str, overrides: dict | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


# ---------------------------------------------------------------- defaults

def test_defaults_are_the_documented_values(tmp_path: Path) -> None:
    cfg = Config()
    assert cfg.broker == BrokerConfig(
        host="127.0.0.1", port=1883, workers=os.cpu_count() or 1,
        data_dir=str(tmp_path / "bwfast-data"), max_packet_size=268435455,
        max_inflight=20, max_queued_messages=1000, max_keepalive=65535,
        topic_alias_maximum=10, retain_available=True,
        allow_zero_length_clientid=True, sys_interval=10, log_level="info")
    assert cfg.tls == TLSConfig(enabled=False, port=8883, certfile="", keyfile="",
                                cafile="", require_certificate=False,
                                use_identity_as_username=False)
    assert cfg.websocket == WebSocketConfig(enabled=False, port=10443, tls_port=11443,
                                            path="/mqtt")
    assert cfg.persistence == PersistenceConfig(sync=True)
    assert cfg.authentication == AuthConfig(enabled=False)
    assert cfg.api == APIConfig(enabled=True, host="127.0.0.1", port=8080,
                                username="admin", password="admin", token_ttl=3600)
    assert cfg.source is None and cfg.warnings == []


def test_no_file_gives_defaults_and_the_default_password_warning() -> None:
    cfg = load_config(None)
    assert dataclasses.replace(cfg, warnings=[]) == Config()
    assert len(cfg.warnings) == 1 and "[api] password" in cfg.warnings[0]
    assert "admin" not in cfg.warnings[0]


def test_shipped_broker_conf_loads_as_the_defaults() -> None:
    cfg = load_config(str(REPO / "broker.conf"))
    assert cfg.source == str(REPO / "broker.conf")
    # ... except that it opens MQTT to every interface, and warns while auth is off.
    assert cfg.broker.host == "0.0.0.0"
    defaults = load_config(None)
    assert dataclasses.replace(
        cfg, source=None, broker=dataclasses.replace(cfg.broker, host="127.0.0.1"),
        warnings=defaults.warnings) == defaults
    assert cfg.warnings == defaults.warnings + [
        "MQTT listens on 0.0.0.0 with [authentication] enabled = false: any host that "
        "reaches the port may connect, publish and subscribe"]


def test_shipped_broker_conf_documents_every_key_and_nothing_else() -> None:
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";",))
    parser.read(REPO / "broker.conf")
    documented = {s: set(parser[s]) for s in parser.sections()}
    assert documented == {s: set(keys) for s, keys in SCHEMA.items()}


def test_schema_matches_the_dataclasses() -> None:
    for section, keys in SCHEMA.items():
        cls = type(getattr(Config(), section))
        assert {f.name for f in dataclasses.fields(cls)} == set(keys)


def test_default_config_file_is_read_when_present(tmp_path: Path) -> None:
    write(tmp_path, "[broker]\nport = 1999\n", name="broker.conf")
    cfg = load_config(None)
    assert cfg.broker.port == 1999
    assert cfg.source == str(tmp_path / "broker.conf")


def test_config_is_frozen_and_hashable() -> None:
    cfg = load_config(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.broker.port = 1  # type: ignore[misc]
    assert hash(cfg) == hash(load_config(None))


# ---------------------------------------------------------------- every key

EVERY_KEY = """
    [broker]
    host = 127.0.0.2
    port = 1884
    workers = 3
    data_dir = ./store
    max_packet_size = 65536
    max_inflight = 7
    max_queued_messages = 0
    max_keepalive = 600
    topic_alias_maximum = 0
    retain_available = false
    allow_zero_length_clientid = no
    sys_interval = 0
    log_level = DEBUG

    [tls]
    enabled = false
    port = 8884
    certfile = certs/server.pem
    keyfile = certs/server.key
    cafile = certs/ca.pem
    require_certificate = yes
    use_identity_as_username = on

    [websocket]
    enabled = on
    port = 9001
    tls_port = 9002
    path = /ws

    [persistence]
    sync = off

    [authentication]
    enabled = 1

    [api]
    enabled = true
    host = 0.0.0.0
    port = 8081
    username = root
    password = %(not)s interpolated
    token_ttl = 60
"""


def test_every_key_is_parsed(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, EVERY_KEY)
    assert cfg.broker == BrokerConfig(
        host="127.0.0.2", port=1884, workers=3, data_dir=str(tmp_path / "store"),
        max_packet_size=65536, max_inflight=7, max_queued_messages=0,
        max_keepalive=600, topic_alias_maximum=0, retain_available=False,
        allow_zero_length_clientid=False, sys_interval=0, log_level="debug")
    assert cfg.tls == TLSConfig(
        enabled=False, port=8884, certfile=str(tmp_path / "certs/server.pem"),
        keyfile=str(tmp_path / "certs/server.key"), cafile=str(tmp_path / "certs/ca.pem"),
        require_certificate=True, use_identity_as_username=True)
    assert cfg.websocket == WebSocketConfig(enabled=True, port=9001, tls_port=9002,
                                            path="/ws")
    assert cfg.persistence == PersistenceConfig(sync=False)
    assert cfg.authentication == AuthConfig(enabled=True)
    assert cfg.api == APIConfig(enabled=True, host="0.0.0.0", port=8081, username="root",
                                password="%(not)s interpolated", token_ttl=60)
    assert cfg.warnings == []


def test_workers_auto_is_the_cpu_count(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "[broker]\nworkers = AUTO\n")
    assert cfg.broker.workers == (os.cpu_count() or 1)


@pytest.mark.parametrize("text,value", [
    ("true", True), ("TRUE", True), ("yes", True), ("Yes", True), ("on", True), ("1", True),
    ("false", False), ("FALSE", False), ("no", False), ("NO", False), ("off", False),
    ("0", False),
])
def test_booleans(tmp_path: Path, text: str, value: bool) -> None:
    assert load_text(tmp_path, f"[persistence]\nsync = {text}\n").persistence.sync is value


def test_data_dir_is_relative_to_the_working_directory_not_the_file(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    path = write(tmp_path, "[broker]\ndata_dir = ./db\n", name="etc/broker.conf")
    assert load_config(path).broker.data_dir == str(tmp_path / "db")


# ---------------------------------------------------------------- bad values

@pytest.mark.parametrize("section,key,value,problem", [
    ("broker", "port", "abc", "[broker] port: 'abc' is not an integer"),
    ("broker", "port", "0", "[broker] port: 0 is out of range 1..65535"),
    ("broker", "port", "65536", "[broker] port: 65536 is out of range 1..65535"),
    ("broker", "port", "18.83", "[broker] port: '18.83' is not an integer"),
    ("broker", "port", "", "[broker] port: '' is not an integer"),
    ("broker", "host", "", "[broker] host: must not be empty"),
    ("broker", "workers", "many", "[broker] workers: 'many' is not an integer"),
    ("broker", "workers", "0", "[broker] workers: 0 is out of range 1..1024"),
    ("broker", "data_dir", "", "[broker] data_dir: must not be empty"),
    ("broker", "max_packet_size", "15", "[broker] max_packet_size: 15 is out of range"),
    ("broker", "max_packet_size", "268435456", "[broker] max_packet_size: 268435456 is out"),
    ("broker", "max_inflight", "0", "[broker] max_inflight: 0 is out of range 1..65535"),
    ("broker", "max_queued_messages", "-1", "[broker] max_queued_messages: -1 is out of range"),
    ("broker", "max_keepalive", "65536", "[broker] max_keepalive: 65536 is out of range"),
    ("broker", "topic_alias_maximum", "x", "[broker] topic_alias_maximum: 'x' is not an"),
    ("broker", "retain_available", "maybe", "[broker] retain_available: 'maybe' is not a boolean"),
    ("broker", "allow_zero_length_clientid", "2", "[broker] allow_zero_length_clientid: '2'"),
    ("broker", "sys_interval", "-5", "[broker] sys_interval: -5 is out of range 0..86400"),
    ("broker", "log_level", "verbose", "[broker] log_level: 'verbose' is not one of debug"),
    ("tls", "enabled", "si", "[tls] enabled: 'si' is not a boolean"),
    ("tls", "port", "99999", "[tls] port: 99999 is out of range 1..65535"),
    ("tls", "require_certificate", "y", "[tls] require_certificate: 'y' is not a boolean"),
    ("websocket", "port", "ws", "[websocket] port: 'ws' is not an integer"),
    ("websocket", "tls_port", "0", "[websocket] tls_port: 0 is out of range"),
    ("websocket", "path", "mqtt", "[websocket] path: 'mqtt' must start with '/'"),
    ("persistence", "sync", "always", "[persistence] sync: 'always' is not a boolean"),
    ("authentication", "enabled", "", "[authentication] enabled: '' is not a boolean"),
    ("api", "enabled", "nope", "[api] enabled: 'nope' is not a boolean"),
    ("api", "host", "local host", "[api] host: 'local host' contains whitespace"),
    ("api", "port", "http", "[api] port: 'http' is not an integer"),
    ("api", "username", "", "[api] username: must not be empty"),
    ("api", "password", "", "[api] password: must not be empty"),
    ("api", "token_ttl", "0", "[api] token_ttl: 0 is out of range"),
])
def test_bad_value_names_the_key(tmp_path: Path, section: str, key: str, value: str,
                                 problem: str) -> None:
    message = error_of(tmp_path, f"[{section}]\n{key} = {value}\n")
    assert message.startswith(f"{tmp_path / 'test.conf'}: {problem}")


def test_unknown_key_is_fatal(tmp_path: Path) -> None:
    message = error_of(tmp_path, "[broker]\nport = 1883\nfrobnicate = 1\n")
    assert message.endswith("[broker] frobnicate: unknown key")


def test_unknown_key_in_our_tls_section_is_fatal_even_in_a_bevywise_file(
        tmp_path: Path) -> None:
    message = error_of(tmp_path, "[CONFIG]\nPORT_NO = 1883\n[tls]\ncertfle = x.pem\n")
    assert message.endswith("[tls] certfle: unknown key")


@pytest.mark.parametrize("section", ["brokr", "DEFAULT", "mqtt_extra"])
def test_unknown_section_is_fatal(tmp_path: Path, section: str) -> None:
    message = error_of(tmp_path, f"[{section}]\nport = 1\n")
    assert message.endswith(f"[{section}]: unknown section")


def test_key_twice_in_different_case_is_fatal(tmp_path: Path) -> None:
    message = error_of(tmp_path, "[broker]\nport = 1\nPort = 2\n")
    assert "[broker] Port: key appears twice" in message


def test_same_section_twice_is_fatal(tmp_path: Path) -> None:
    assert "[api]: section appears twice" in error_of(tmp_path, "[api]\n[broker]\n[api]\n")


def test_key_before_any_section_is_fatal(tmp_path: Path) -> None:
    assert "line 1: a key before any [section]" in error_of(tmp_path, "port = 1883\n")


def test_line_without_equals_is_fatal_without_echoing_it(tmp_path: Path) -> None:
    message = error_of(tmp_path, f"[api]\nport = 8080\n{SECRET}\n")
    assert "line 3: expected 'key = value'" in message
    assert SECRET not in message


def test_missing_config_file_is_fatal(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config("nowhere.conf")
    assert str(info.value) == "cannot read config file 'nowhere.conf': No such file or directory"


def test_passwords_never_appear_in_messages(tmp_path: Path) -> None:
    text = f"[api]\npassword = {SECRET}\npassword = {SECRET}\n"
    assert SECRET not in error_of(tmp_path, text)
    text = f"[WEB_LOGIN_PAGE]\nWEB_PASSWORD = {SECRET}\n[api]\npassword = other\n"
    cfg = load_text(tmp_path, text)
    assert cfg.api.password == "other"
    assert not any(SECRET in w or "other" in w for w in cfg.warnings)
    assert SECRET not in json.dumps(to_dict(load_text(tmp_path, f"[api]\npassword={SECRET}\n")))


def test_to_dict_masks_the_password_and_is_json(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, f"[api]\npassword = {SECRET}\n")
    out = to_dict(cfg)
    assert out["api"]["password"] == "********"
    assert out["broker"]["port"] == 1883 and out["source"] == cfg.source
    json.dumps(out)
    assert cfg.api.password == SECRET
    assert cfg.warnings == []  # not the default password any more


# ---------------------------------------------------------------- comments, case

def test_inline_comments(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, """
        # a comment line
        ; another
        [broker]                  ; section comment
        port = 1884 ; comment
        max_queued_messages = 1000; per offline persistent session
        max_inflight = 5# hash, no space
        retain_available = false;off
        log_level = warning   # loud
        [api]
        username = a;b#c
        password = pa;ss#word ; comment after a space
        [tls]
        cafile =                  ; set with require_certificate for mutual TLS
        [persistence]
        sync = true               ; QoS 1/2 messages of persistent sessions are on
                                  ; disk before the broker acknowledges them
    """)
    assert cfg.broker.port == 1884
    assert cfg.broker.max_queued_messages == 1000
    assert cfg.broker.max_inflight == 5
    assert cfg.broker.retain_available is False
    assert cfg.broker.log_level == "warning"
    assert cfg.api.username == "a;b#c"
    assert cfg.api.password == "pa;ss#word"
    assert cfg.tls.cafile == ""
    assert cfg.persistence.sync is True


CONTRACT_EXAMPLE = """
    [broker]
    host = 0.0.0.0
    port = 1883
    workers = auto            ; SO_REUSEPORT worker processes; auto = CPU count
    data_dir = ./bwfast-data  ; the LMDB environment
    max_packet_size = 268435455
    max_inflight = 20         ; per client, QoS 1/2 sent and not yet acknowledged
    max_queued_messages = 1000; per offline persistent session
    max_keepalive = 65535     ; v5 Server Keep Alive when a client asks for more
    topic_alias_maximum = 10  ; v5, both directions; 0 turns aliases off
    retain_available = true
    allow_zero_length_clientid = true

    [tls]                     ; MQTT over TLS
    enabled = false
    port = 8883
    certfile =
    keyfile =
    cafile =                  ; set with require_certificate for mutual TLS
    require_certificate = false

    [websocket]               ; MQTT over WebSocket, subprotocol "mqtt"
    enabled = false
    port = 10443
    tls_port = 11443          ; WSS, served when [tls] is enabled too
    path = /mqtt

    [persistence]
    sync = true               ; QoS 1/2 messages of persistent sessions are on
                              ; disk before the broker acknowledges them

    [authentication]
    enabled = false           ; true: CONNECT needs a username/password known
                              ; to the broker (added with the REST API or CLI)

    [api]
    enabled = true
    host = 127.0.0.1          ; local only until you choose otherwise
    port = 8080
    username = admin          ; REST login, as in the Bevywise broker.conf
    password = admin          ; a warning is logged at start while it is the default
    token_ttl = 3600          ; seconds
"""


def test_contract_example_loads_as_the_defaults(tmp_path: Path) -> None:
    """The contract's example is the shipped file: the defaults, MQTT on all interfaces."""
    cfg = load_text(tmp_path, CONTRACT_EXAMPLE)
    defaults = load_config(None)
    assert cfg.broker.host == "0.0.0.0"
    assert dataclasses.replace(
        cfg, source=None, broker=dataclasses.replace(cfg.broker, host="127.0.0.1"),
        warnings=defaults.warnings) == defaults


def test_keys_and_our_section_names_are_case_insensitive(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, """
        [Broker]
        PORT = 1884
        Max_Inflight = 3
        [API]
        Token_TTL = 99
    """)
    assert (cfg.broker.port, cfg.broker.max_inflight, cfg.api.token_ttl) == (1884, 3, 99)


# ---------------------------------------------------------------- Bevywise

BEVYWISE = f"""
    [CONFIG]
    PORT_NO = 1885
    TLS_ENABLED = FALSE
    TLS_PORT_NO = 8884
    WS_PORT_NO = 10444
    WSS_PORT_NO = 11444
    LOG_LEVEL = DEBUG

    [TLS]
    CA_CERTIFICATE = ./Certificate/root/root.crt
    SERVER_CERTIFICATE = ./Certificate/server/server.crt

    [AUTHENTICATION]
    AUTHENTICATION_ENABLED = YES

    [UI]
    UI_Http_Port = 8081

    [WEB_LOGIN_PAGE]
    WEB_USERNAME = operator
    WEB_PASSWORD = {SECRET}

    [SYS_TOPIC]
    SYSTOPIC = YES
    SYSTOPIC_INTERVAL = 30

    [REMOTE_BRIDGE]
    BRIDGE_ENABLED = FALSE

    [STORAGE]
    STORAGE_NAME = SQLITE

    [SOME_NEWER_SECTION]
    FEATURE = ON
"""


def test_bevywise_file_maps_onto_our_keys(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, BEVYWISE)
    assert cfg.broker.port == 1885
    assert cfg.tls.enabled is False and cfg.tls.port == 8884
    assert cfg.websocket == WebSocketConfig(enabled=True, port=10444, tls_port=11444,
                                            path="/mqtt")
    assert cfg.authentication.enabled is True
    assert cfg.api.port == 8081
    assert (cfg.api.username, cfg.api.password) == ("operator", SECRET)
    assert cfg.broker.sys_interval == 30
    assert cfg.broker.log_level == "info"  # LOG_LEVEL is not ours


def test_bevywise_keys_without_meaning_are_one_warning_each(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, BEVYWISE)
    assert cfg.warnings == [
        "ignored Bevywise key [CONFIG] LOG_LEVEL: no meaning in bwfast",
        "ignored Bevywise key [TLS] CA_CERTIFICATE: no meaning in bwfast",
        "ignored Bevywise key [TLS] SERVER_CERTIFICATE: no meaning in bwfast",
        "ignored Bevywise key [REMOTE_BRIDGE] BRIDGE_ENABLED: no meaning in bwfast",
        "ignored Bevywise key [STORAGE] STORAGE_NAME: no meaning in bwfast",
        "ignored Bevywise key [SOME_NEWER_SECTION] FEATURE: no meaning in bwfast",
    ]


def test_bevywise_keys_are_case_insensitive(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "[CONFIG]\nport_no = 1886\n[UI]\nui_http_port = 8090\n")
    assert (cfg.broker.port, cfg.api.port) == (1886, 8090)


def test_bevywise_systopic_no_turns_sys_off(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "[SYS_TOPIC]\nSYSTOPIC_INTERVAL = 30\nSYSTOPIC = NO\n")
    assert cfg.broker.sys_interval == 0
    cfg = load_text(tmp_path, "[SYS_TOPIC]\nSYSTOPIC = YES\n")
    assert cfg.broker.sys_interval == 10


def test_bevywise_systopic_enabled_and_disabled(tmp_path: Path) -> None:
    """Bevywise's own broker.conf writes SYSTOPIC = ENABLED; it used to be fatal."""
    cfg = load_text(tmp_path, "[SYS_TOPIC]\nSYSTOPIC = ENABLED\nSYSTOPIC_INTERVAL = 30\n")
    assert cfg.broker.sys_interval == 30
    assert not any("SYSTOPIC" in w for w in cfg.warnings)
    cfg = load_text(tmp_path, "[SYS_TOPIC]\nSYSTOPIC = disabled\nSYSTOPIC_INTERVAL = 30\n")
    assert cfg.broker.sys_interval == 0
    assert error_of(tmp_path, "[SYS_TOPIC]\nSYSTOPIC = SOMETIMES\n").endswith(
        "[SYS_TOPIC] SYSTOPIC: 'SOMETIMES' is not ENABLED/DISABLED or a boolean "
        "(true/false, yes/no, on/off, 1/0)")


def test_bevywise_bad_value_names_the_bevywise_key(tmp_path: Path) -> None:
    assert error_of(tmp_path, "[CONFIG]\nPORT_NO = abc\n").endswith(
        "[CONFIG] PORT_NO: 'abc' is not an integer")
    assert error_of(tmp_path, "[AUTHENTICATION]\nAUTHENTICATION_ENABLED = MAYBE\n").endswith(
        "[AUTHENTICATION] AUTHENTICATION_ENABLED: 'MAYBE' is not a boolean "
        "(true/false, yes/no, on/off, 1/0)")


def test_our_key_wins_over_bevywise_with_a_warning(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "[CONFIG]\nPORT_NO = 1885\n[broker]\nport = 1886\n")
    assert cfg.broker.port == 1886
    assert "[broker] port overrides Bevywise [CONFIG] PORT_NO" in cfg.warnings


def test_explicit_websocket_enabled_wins_over_ws_port_no(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "[CONFIG]\nWS_PORT_NO = 9001\n[websocket]\nenabled = false\n")
    assert cfg.websocket.enabled is False and cfg.websocket.port == 9001


def test_our_keys_in_a_capitalised_tls_section_still_apply(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "[TLS]\nport = 8899\nSERVER_KEY = x\n")
    assert cfg.tls.port == 8899
    assert cfg.warnings[0] == "ignored Bevywise key [TLS] SERVER_KEY: no meaning in bwfast"
    assert len(cfg.warnings) == 2  # and the default API password


def test_capitalised_unknown_section_is_fatal_outside_a_bevywise_file(tmp_path: Path) -> None:
    assert error_of(tmp_path, "[SOME_NEWER_SECTION]\nX = 1\n").endswith(
        "[SOME_NEWER_SECTION]: unknown section")


def test_bevywise_tls_enabled_needs_our_certificate_keys(tmp_path: Path) -> None:
    message = error_of(tmp_path, "[CONFIG]\nTLS_ENABLED = TRUE\n")
    assert message.endswith("[tls] certfile: required when [CONFIG] TLS_ENABLED is true")


# ---------------------------------------------------------------- overrides

def test_overrides_apply_after_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[broker]\nport = 1884\nworkers = 2\n[api]\nport = 8081\n")
    cfg = load_config(path, {"port": 1999, "api_port": "9000", "workers": "auto",
                             "data_dir": "elsewhere", "log_level": "ERROR"})
    assert cfg.broker.port == 1999 and cfg.api.port == 9000
    assert cfg.broker.workers == (os.cpu_count() or 1)
    assert cfg.broker.data_dir == str(tmp_path / "elsewhere")
    assert cfg.broker.log_level == "error"


def test_none_overrides_are_ignored(tmp_path: Path) -> None:
    path = write(tmp_path, "[broker]\nport = 1884\n")
    assert load_config(path, {"port": None, "workers": None}).broker.port == 1884


def test_overrides_without_a_file(tmp_path: Path) -> None:
    assert load_config(None, {"workers": 4}).broker.workers == 4


@pytest.mark.parametrize("name,value,problem", [
    ("port", "abc", "[broker] port (--port): 'abc' is not an integer"),
    ("api_port", 70000, "[api] port (--api-port): 70000 is out of range 1..65535"),
    ("workers", "0", "[broker] workers (--workers): 0 is out of range 1..1024 (or 'auto')"),
    ("data_dir", "", "[broker] data_dir (--data-dir): must not be empty"),
    ("log_level", "loud", "[broker] log_level (--log-level): 'loud' is not one of"),
])
def test_bad_override_names_the_flag(name: str, value: object, problem: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, {name: value})
    assert str(info.value).startswith(problem)


def test_unknown_override_is_an_error() -> None:
    with pytest.raises(ConfigError, match="unknown override 'host'"):
        load_config(None, {"host": "x"})


# ---------------------------------------------------------------- ports

def test_mqtt_and_api_ports_must_differ(tmp_path: Path) -> None:
    assert error_of(tmp_path, "[broker]\nport = 8080\n").endswith(
        "[broker] port and [api] port are both 8080")


def test_override_port_clash_names_the_flag() -> None:
    with pytest.raises(ConfigError, match=r"^--port and \[api\] port are both 8080$"):
        load_config(None, {"port": 8080})


def test_ports_of_disabled_listeners_may_coincide(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, """
        [tls]
        port = 1883
        [websocket]
        port = 1883
        tls_port = 1883
        [api]
        enabled = false
        port = 1883
    """)
    assert cfg.broker.port == 1883


def test_websocket_port_clash_when_enabled(tmp_path: Path) -> None:
    text = "[websocket]\nenabled = true\nport = 8080\n"
    assert error_of(tmp_path, text).endswith("[websocket] port and [api] port are both 8080")


def test_wss_port_counts_only_with_tls(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "[websocket]\nenabled = true\ntls_port = 1883\n")
    assert cfg.websocket.tls_port == 1883


# ---------------------------------------------------------------- TLS files

def make_cert(directory: Path, name: str = "server") -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .sign(key, hashes.SHA256()))
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def tls_conf(cert: Path | str, key: Path | str, extra: str = "") -> str:
    return f"[tls]\nenabled = true\ncertfile = {cert}\nkeyfile = {key}\n{extra}"


def test_tls_with_a_good_certificate(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    cfg = load_text(tmp_path, tls_conf("server.crt", "server.key",
                                       "cafile = server.crt\nrequire_certificate = true\n"))
    assert cfg.tls.certfile == str(cert) and cfg.tls.keyfile == str(key)
    assert cfg.tls.cafile == str(cert)
    validate_tls_files(cfg)


def test_tls_enabled_without_certfile(tmp_path: Path) -> None:
    assert error_of(tmp_path, "[tls]\nenabled = true\nkeyfile = k.pem\n").endswith(
        "[tls] certfile: required when [tls] enabled is true")


def test_tls_enabled_without_keyfile(tmp_path: Path) -> None:
    cert, _ = make_cert(tmp_path)
    assert error_of(tmp_path, f"[tls]\nenabled = true\ncertfile = {cert}\n").endswith(
        "[tls] keyfile: required when [tls] enabled is true")


def test_tls_missing_file_names_key_and_file(tmp_path: Path) -> None:
    cert, _ = make_cert(tmp_path)
    message = error_of(tmp_path, tls_conf(cert, "missing.key"))
    assert message.endswith(
        f"[tls] keyfile: cannot read '{tmp_path / 'missing.key'}': No such file or directory")


def test_tls_unreadable_cafile(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    (tmp_path / "ca").mkdir()
    message = error_of(tmp_path, tls_conf(cert, key, "cafile = ca\n"))
    assert f"[tls] cafile: cannot read '{tmp_path / 'ca'}'" in message


def test_tls_files_are_not_checked_while_tls_is_off(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "[tls]\ncertfile = missing.crt\nkeyfile = missing.key\n")
    validate_tls_files(cfg)
    assert cfg.tls.certfile == str(tmp_path / "missing.crt")


def test_require_certificate_needs_cafile(tmp_path: Path) -> None:
    assert error_of(tmp_path, "[tls]\nrequire_certificate = true\n").endswith(
        "[tls] require_certificate: needs [tls] cafile, the CA that signs client certificates")


def test_use_identity_as_username_needs_require_certificate(tmp_path: Path) -> None:
    assert error_of(tmp_path, "[tls]\nuse_identity_as_username = true\n").endswith(
        "[tls] use_identity_as_username: needs [tls] require_certificate = true")


def test_mismatched_key_names_the_keyfile(tmp_path: Path) -> None:
    cert, _ = make_cert(tmp_path, "a")
    _, other_key = make_cert(tmp_path, "b")
    cfg = load_text(tmp_path, tls_conf(cert, other_key))
    with pytest.raises(ConfigError) as info:
        validate_tls_files(cfg)
    assert str(info.value) == (f"[tls] keyfile: '{other_key}' does not match the "
                               f"certificate in [tls] certfile '{cert}'")


def test_garbage_certificate_names_the_certfile(tmp_path: Path) -> None:
    _, key = make_cert(tmp_path)
    (tmp_path / "bad.crt").write_text("not a certificate\n")
    cfg = load_text(tmp_path, tls_conf("bad.crt", key))
    with pytest.raises(ConfigError, match=r"^\[tls\] certfile: '.*bad\.crt' holds no usable"):
        validate_tls_files(cfg)


def test_encrypted_key_is_refused_without_a_prompt(tmp_path: Path) -> None:
    cert, key_path = make_cert(tmp_path)
    key = serialization.load_pem_private_key(key_path.read_bytes(), None)
    key_path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase")))
    cfg = load_text(tmp_path, tls_conf(cert, key_path))
    with pytest.raises(ConfigError, match=r"^\[tls\] keyfile: '.*server\.key' is not a usable"):
        validate_tls_files(cfg)


def test_garbage_cafile_names_the_cafile(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    (tmp_path / "ca.pem").write_text("junk\n")
    cfg = load_text(tmp_path, tls_conf(cert, key, "cafile = ca.pem\n"))
    with pytest.raises(ConfigError, match=r"^\[tls\] cafile: '.*ca\.pem' holds no usable"):
        validate_tls_files(cfg)


# ---------------------------------------------------------------- CLI

def run_cli(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python -m bwfast`` in ``cwd``, importing this checkout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-m", "bwfast", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=10)


@pytest.mark.parametrize("text,problem", [
    ("[broker]\nmax_inflight = 0\n", "[broker] max_inflight: 0 is out of range 1..65535"),
    ("[broker]\nfrobnicate = 1\n", "[broker] frobnicate: unknown key"),
    ("[tls]\nenabled = true\ncertfile = no.crt\nkeyfile = no.key\n",
     "[tls] certfile: cannot read"),
])
def test_cli_bad_config_exits_with_one_line(tmp_path: Path, text: str, problem: str) -> None:
    write(tmp_path, text, name="bad.conf")
    result = run_cli(tmp_path, "--config", "bad.conf")
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"bwfast: bad.conf: {problem}")


def test_cli_mismatched_key_is_caught_before_start(tmp_path: Path) -> None:
    cert, _ = make_cert(tmp_path, "a")
    _, key = make_cert(tmp_path, "b")
    write(tmp_path, tls_conf(cert, key), name="tls.conf")
    result = run_cli(tmp_path, "--config", "tls.conf")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"bwfast: [tls] keyfile: '{key}' does not match the certificate in "
        f"[tls] certfile '{cert}'"]


def test_cli_bad_flag_and_missing_file(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "--port", "abc")
    assert (result.returncode, result.stderr) == (
        2, "bwfast: [broker] port (--port): 'abc' is not an integer\n")
    result = run_cli(tmp_path, "--config", "missing.conf")
    assert (result.returncode, result.stderr) == (
        2, "bwfast: cannot read config file 'missing.conf': No such file or directory\n")


def test_cli_version(tmp_path: Path) -> None:
    result = run_cli(tmp_path, "--version")
    assert (result.returncode, result.stdout) == (0, f"bwfast {__version__}\n")


def test_cli_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, "[api]\nport = 1883\n", name="clash.conf")
    assert main(["--config", "clash.conf"]) == 2
    assert capsys.readouterr().err == (
        "bwfast: clash.conf: [broker] port and [api] port are both 1883\n")
    assert main(["--config", "clash.conf", "--api-port", "8081", "--port", "x"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_passwd_subcommand_without_an_action_is_a_usage_error(
        capsys: pytest.CaptureFixture[str]) -> None:
    """`bwfast passwd` is dispatched to its own parser (bwfast/passwd.py), which
    names the actions it takes when given none of them."""
    with pytest.raises(SystemExit) as exc:
        main(["passwd", "alice"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "add|set|remove|list" in err and "invalid choice: 'alice'" in err


# ---------------------------------------------------------------- exposure

EXPOSED = ("MQTT listens on 0.0.0.0 with [authentication] enabled = false: any host "
           "that reaches the port may connect, publish and subscribe")


def test_no_file_listens_on_loopback_and_says_how_to_open_it() -> None:
    cfg = load_config(None)
    assert cfg.broker.host == "127.0.0.1"
    assert cfg.notes == ["no config file: MQTT listens on 127.0.0.1 only; to accept other "
                         "hosts, set [broker] host = 0.0.0.0 in a broker.conf"]
    assert not any("MQTT listens" in w for w in cfg.warnings)


def test_non_loopback_without_authentication_warns_once(tmp_path: Path) -> None:
    cfg = load_text(tmp_path, "[broker]\nhost = 0.0.0.0\n")
    assert cfg.warnings.count(EXPOSED) == 1 and cfg.notes == []
    cfg = load_text(tmp_path, "[broker]\nhost = 192.0.2.7\n")
    assert any(w.startswith("MQTT listens on 192.0.2.7 with") for w in cfg.warnings)
    cfg = load_text(tmp_path, "[broker]\nhost = 0.0.0.0\n[authentication]\nenabled = true\n")
    assert not any("MQTT listens" in w for w in cfg.warnings)
    for host in ("127.0.0.1", "127.0.0.5", "::1", "localhost"):
        cfg = load_text(tmp_path, f"[broker]\nhost = {host}\n")
        assert not any("MQTT listens" in w for w in cfg.warnings), host
        assert cfg.notes == []  # a file was given: its choice, nothing to explain
