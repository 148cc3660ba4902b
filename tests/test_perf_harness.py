"""The load harness (perf/) measures itself: codec, argument parsing, and short runs
against its own null sink and forwarder (no broker needed); and a short seeded run
of the chaos harness against a bwfast it starts (perf/chaos.py)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from perf import brokers, mqtt, scenarios
from perf.__main__ import overrides, parser
from perf.brokers import HOST, SinkServer


def test_arguments_make_cases() -> None:
    args = parser().parse_args(["run", "pairwise:qos=1,clients=4", "--broker", "127.0.0.1:1883",
                                "--payload", "64", "--duration", "2"])
    case = scenarios.make_case(args.scenario, **overrides(args))
    assert (case.scenario, case.qos, case.clients, case.payload, case.duration) == (
        "pairwise", 1, 4, 64, 2.0)
    assert case.label == "pairwise q1 64B x4"
    assert scenarios.make_case("latency").rate == 5000
    assert scenarios.make_case("shared").subs == 4
    for bad in ("nosuch", "pairwise:colour=red", "pairwise:qos=3"):
        with pytest.raises(ValueError):
            scenarios.make_case(bad)
    cmp_args = parser().parse_args(["compare", "fanin", "cpu", "--quick", "--workers", "1"])
    assert cmp_args.scenarios == ["fanin", "cpu"] and cmp_args.workers == 1 and cmp_args.quick


def test_split_and_uniform_agree_on_any_chunking() -> None:
    pkts = [mqtt.publish(f"b/x/p/{i:05d}", b"\x07" * 200, 1, i + 1) for i in range(50)]
    stream = b"".join(pkts)
    packets, used = mqtt.split(stream)
    assert used == len(stream) and len(packets) == 50
    assert mqtt.uniform(stream, len(pkts[0]), mqtt.head_of(pkts[0])) == 50
    assert mqtt.uniform(stream + mqtt.ack(mqtt.PUBACK, 1), len(pkts[0]),
                        mqtt.head_of(pkts[0])) == 50
    assert mqtt.uniform(mqtt.ack(mqtt.PUBACK, 1) + stream, len(pkts[0]),
                        mqtt.head_of(pkts[0])) == -1
    rng = random.Random(6)
    rest, seen = b"", 0
    pos = 0
    while pos < len(stream):
        step = rng.randint(1, 300)
        found, used = mqtt.split(rest + stream[pos:pos + step])
        rest = (rest + stream[pos:pos + step])[used:]
        seen += len(found)
        pos += step
    assert seen == 50 and rest == b""
    (first, start, _), = mqtt.split(pkts[3])[0]
    pid, at = mqtt.publish_parts(pkts[3], first, start, mqtt.V311)
    assert pid == 4 and pkts[3][at:] == b"\x07" * 200


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_forwarder_self_test_loses_nothing(qos: int) -> None:
    case = scenarios.make_case("pairwise", qos=qos, clients=2, procs=1, duration=0.5,
                               warmup=0.2)
    with SinkServer("forward") as sink:
        res = scenarios.run_case(case, HOST, sink.port)
    assert res["delivered_per_s"] > 1000
    assert res["lost"] == 0 and res["disconnected"] == 0
    assert res["received"] == res["sent"] > 0


def test_null_sink_ceiling_and_storm() -> None:
    with SinkServer("null") as sink:
        pub = scenarios.run_case(scenarios.make_case("pubonly", clients=2, procs=1,
                                                     duration=0.5, warmup=0.2), HOST, sink.port)
        storm = scenarios.run_case(scenarios.make_case("connstorm", clients=200, procs=2),
                                   HOST, sink.port)
    assert pub["sent_per_s"] > 100_000
    assert storm["connected"] == 200 and storm["failed"] == 0


def test_latency_through_forwarder_is_timestamped() -> None:
    case = scenarios.make_case("latency", rate=2000, duration=0.5, warmup=0.2)
    with SinkServer("forward") as sink:
        res = scenarios.run_case(case, HOST, sink.port)
    assert res["samples"] > 500
    assert 0 < res["p50_ms"] <= res["p99_ms"] <= res["max_ms"] < 1000


def test_issue_13_cases_are_in_compare() -> None:
    labels = [scenarios.make_case(s).label for s in scenarios.DEFAULT_CASES]
    assert "pairwise q1 64B x16 w32" in labels and "pairwise q1 16B x10" in labels
    assert "cpu q0 16B x250 @25000/s" in labels and "cpu q0 16B x1000 @5000/s" in labels
    assert {"connstorm x10000", "authstorm x10000", "backlog 100000 q1 sync",
            "apibusy q0 16B x10 api 200/s over 5000"} <= set(labels)
    assert scenarios.make_case("apibusy:devices=7,api_rate=3").label.endswith(
        "api 3/s over 7")


def test_light_load_is_timestamped_one_message_per_write() -> None:
    """cpu: p50/p90 latency beside the CPU figures (no bulk-read naps)."""
    case = scenarios.make_case("cpu", clients=4, rate=400, duration=0.5, warmup=0.2)
    with SinkServer("forward") as sink:
        res = scenarios.run_case(case, HOST, sink.port)
    assert res["lost"] == 0 and res["samples"] > 0
    assert 0 < res["p50_ms"] <= res["p90_ms"] <= res["max_ms"]


def test_issue_shape_qos1_window_32_loses_nothing() -> None:
    case = scenarios.make_case("pairwise:qos=1,clients=2,payload=64,inflight=32", procs=1,
                               duration=0.5, warmup=0.2)
    with SinkServer("forward") as sink:
        res = scenarios.run_case(case, HOST, sink.port)
    assert res["lost"] == 0 and res["received"] == res["sent"] > 0


def test_authstorm_connects_carry_credentials() -> None:
    """The authstorm's CONNECTs carry each device's username and password."""
    pkt = mqtt.connect("c1", username="dev00001", password="pw")
    assert pkt[9] == 0xC2  # User Name, Password and Clean Session flags [MQTT-3.1.2-3]
    assert pkt.endswith(mqtt.utf8("c1") + mqtt.utf8("dev00001") + mqtt.utf8("pw"))
    assert mqtt.connect_client_id(pkt[2:]) == ("c1", mqtt.V311)


@pytest.mark.bwfast_only
def test_authstorm_against_bwfast_and_mosquitto(tmp_path: Path) -> None:
    """A tiny authstorm: the password_file (mosquitto_passwd -U) imported into bwfast
    with `bwfast passwd import`, and read by Mosquitto as it is; everyone gets in,
    and a storm without credentials is refused."""
    pwfile = tmp_path / "password_file"
    brokers.credentials(pwfile, 40)
    assert pwfile.read_text().count("$7$") == 40
    made = [brokers.bwfast(_dir(tmp_path, "bw"), 1, password_file=pwfile)]
    mosq = brokers.mosquitto(_dir(tmp_path, "mq"), pwfile)
    if mosq is not None:
        made.append(mosq)
    for broker in made:
        assert broker.start() is None, broker.tail()
        try:
            storm = scenarios.run_case(scenarios.make_case("authstorm", clients=40, procs=2),
                                       HOST, broker.port, broker.pids)
            assert (storm["connected"], storm["failed"]) == (40, 0), (broker.name, storm)
            anon = scenarios.run_case(scenarios.make_case("connstorm", clients=4, procs=1),
                                      HOST, broker.port)
            assert anon["connected"] == 0, (broker.name, anon)
        finally:
            broker.stop()


@pytest.mark.bwfast_only
def test_apibusy_loads_the_rest_api(tmp_path: Path) -> None:
    broker = brokers.bwfast(tmp_path, 1, api=True)
    assert broker.start() is None, broker.tail()
    try:
        case = scenarios.make_case("apibusy", devices=30, api_rate=50, clients=2, procs=1,
                                   duration=0.5, warmup=0.2)
        res = scenarios.run_case(case, HOST, broker.port, broker.pids,
                                 (broker.api_port, *brokers.API_LOGIN))
    finally:
        broker.stop()
    assert res["api_devices"] == 30 and res["api_errors"] == 0 and "api_req_per_s" in res
    assert res["received"] == res["sent"] > 0 and res["cpu_all_us_per_msg"] > 0


def _dir(root: Path, name: str) -> Path:
    (root / name).mkdir()
    return root / name


@pytest.mark.bwfast_only
def test_chaos_short_seeded_run_reports_nothing_broken() -> None:
    """`python -m perf chaos` for 40 s (seed 7, 4 workers): publishers at QoS 0/1/2 on
    four topics each, persistent v3.1.1/v5 and clean subscribers leaving and coming
    back at random (DISCONNECT, dropped socket, takeover: their sessions move between
    workers), workers SIGSTOPped for 1-3 s. Nothing out of order, nothing
    acknowledged lost, no QoS 2 twice, no QoS 1 again without DUP. (Worker SIGKILLs
    and whole-broker restarts are in the harness but not in this run: see the
    closing note for what they still break.)"""
    from perf import chaos

    report = chaos.run(40.0, 4, seed=7, kinds=("stop",), quiet=True)
    assert report["published"]["q1"] > 1000 and report["published"]["q2"] > 1000, report
    assert all(r["received"] > 1000 and r["connections"] > 3 for r in report["rows"]), report
    assert report["chaos"].get("stop", 0) >= 3, report
    assert report["totals"] == dict.fromkeys(chaos.COLUMNS, 0), chaos.table(report)
