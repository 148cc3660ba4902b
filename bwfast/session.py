"""Session state: subscriptions, packet ids, QoS 1/2 in flight, the offline queue.

Routing is not here (router.py decides *who* gets a message); a session
decides *how*: at once, in flight with a packet id, or queued while the client
is offline or its receive maximum is reached [MQTT-4.9.0-2].
"""
from __future__ import annotations

import time
from collections import deque
from typing import TYPE_CHECKING, Any

from bwfast.codes import PUBREL
from bwfast.message import Message
from bwfast.packet import encode_ack

if TYPE_CHECKING:
    from bwfast.acl import ClientAcl
    from bwfast.protocol import Connection
    from bwfast.worker import Worker

NEVER_EXPIRES = 0xFFFFFFFF

# inflight entry fields: [state, msg, qos, retain, sub_ids, seq]
AWAIT_ACK, AWAIT_COMP = 0, 1
STAGED = 2  # a QoS 0 queue entry that has an LMDB record (written by a move)


class SubOpts:
    """One subscription's options (MQTT 5.0 §3.8.3.1)."""

    __slots__ = ("qos", "no_local", "rap", "rh", "sub_id")

    def __init__(self, qos: int, no_local: bool = False, rap: bool = False, rh: int = 0,
                 sub_id: int = 0) -> None:
        self.qos = qos
        self.no_local = no_local
        self.rap = rap
        self.rh = rh
        self.sub_id = sub_id

    @classmethod
    def from_byte(cls, options: int, sub_id: int = 0) -> SubOpts:
        return cls(options & 3, bool(options & 4), bool(options & 8), (options >> 4) & 3, sub_id)

    def to_record(self) -> list:
        return [self.qos, self.no_local, self.rap, self.rh, self.sub_id]

    @classmethod
    def from_record(cls, rec: list) -> SubOpts:
        return cls(*rec)


def queue_key(client_id: str, seq: int) -> bytes:
    return client_id.encode() + b"\x00" + seq.to_bytes(8, "big")


class Session:
    __slots__ = ("client_id", "worker", "version", "expiry", "subs", "inflight", "queue",
                 "qos2_in", "conn", "next_pid", "seq", "receive_max", "max_packet",
                 "will", "will_delay", "will_handle", "expiry_handle", "disconnected_at",
                 "stored", "live", "moved_to", "seen", "adopted_from", "username", "acl",
                 "held")

    def __init__(self, client_id: str, worker: Worker) -> None:
        self.client_id = client_id
        self.worker = worker
        self.version = 4
        self.expiry = 0                     # seconds after disconnect; NEVER_EXPIRES = never
        self.subs: dict[str, SubOpts] = {}
        self.inflight: dict[int, list] = {}  # packet id -> entry, in send order
        # Entries waiting for a free slot or a connection; made on first use
        # (an empty deque costs 760 bytes, for each of thousands of idle clients).
        self.queue: deque[list] | None = None
        self.qos2_in: set[int] = set()       # PUBREC sent, PUBREL not yet received
        self.conn: Connection | None = None
        self.next_pid = 1
        self.seq = 0
        self.receive_max = worker.cfg.broker.max_inflight
        self.max_packet = 0                  # the client's Maximum Packet Size; 0 = none
        self.will: Message | None = None
        self.will_delay = 0
        self.will_handle: Any = None
        self.expiry_handle: Any = None
        self.disconnected_at = 0.0
        self.stored = False                  # has a record in LMDB
        self.live = False                    # CONNACK sent: messages may go out
        self.moved_to = -1                   # >= 0: handed over to that worker, forward there
        self.seen: set[int] | None = None    # while moving here: ids of messages delivered
        self.adopted_from = -1               # >= 0: just taken from that dead worker
        self.username: str | None = None     # of the client's last CONNECT (kept in LMDB)
        self.acl: ClientAcl | None = None    # [acl] enabled: what this client may read
        # While moving in from a live worker: messages routed here directly, held
        # until the old holder's last forwarded one is in (end_move_in).
        self.held: list[tuple] | None = None

    @property
    def persistent(self) -> bool:
        return self.expiry > 0

    # -- delivery -------------------------------------------------------------------
    def set_user(self, username: str | None) -> None:
        """The client's username: what the ACL decides on (the session keeps it while
        offline, so its queue is checked the same way)."""
        self.username = username
        rules = self.worker.acl_rules
        if rules is not None:
            self.acl = rules.for_client(username, self.client_id)

    def denied(self, topic: str) -> bool:
        """May this client not read ``topic`` (CONTRACT.md, "Access control")?"""
        acl = self.acl
        return acl is not None and not acl.may_read(topic)

    def deliver(self, msg: Message, qos: int, retain: bool, sub_ids: list[int] | None) -> None:
        """Hand one message to this session with the subscription's QoS already applied.

        Every delivery comes here (routed, forwarded by a peer, retained on
        subscribe, wills, $SYS), so this is where a topic the client may not
        read is held back: a wide filter never leaks a denied topic.
        """
        acl = self.acl
        if acl is not None and not acl.may_read(msg.topic):
            return
        held = self.held
        if held is not None and self.moved_to < 0:
            # Moving in: the old holder still forwards what it got before we did;
            # those come first, so a message routed here directly waits [MQTT-4.6.0-6].
            # A QoS 1/2 one is in LMDB meanwhile: its publisher's ack waits for that.
            held.append((msg, qos, retain, sub_ids, self._persist_new(msg, qos, retain, sub_ids)
                         if qos else 0))
            return
        self.deliver_now(msg, qos, retain, sub_ids)

    def end_move_in(self, keep_seen: bool = False) -> None:
        """The old holder forwarded its last message: deliver the held ones it did not."""
        held: list | None
        held, self.held = self.held, None
        for item in held or ():
            self.deliver_now(*item)
        if self.adopted_from < 0 and not keep_seen:
            self.seen = None
        self.worker.router.invalidate()

    def deliver_now(self, msg: Message, qos: int, retain: bool, sub_ids: list[int] | None,
                    seq: int = 0) -> None:
        """Deliver without holding: what the old holder forwards while moving in.
        ``seq``: the message already has that LMDB queue record (held ones)."""
        if self.moved_to >= 0:
            # Handed over to another worker that is still taking over our routes. A
            # QoS 1/2 message goes into the session's LMDB queue first (its publisher's
            # ack waits for that); the new holder takes the record over.
            if qos and not seq:
                seq = self.seq = self._next_seq()
                self.worker.store.put("queue", queue_key(self.client_id, seq),
                                      [msg.to_record(), qos, retain, sub_ids, 0, AWAIT_ACK])
            self.worker.forward_to_session(self.moved_to, self, msg, qos, retain, sub_ids, seq)
            return
        seen = self.seen
        if seen is not None and msg.mid:
            # Moving in from another worker, or just restored: a message may come
            # twice (both ways, or from LMDB and a peer's held frames), once.
            if msg.mid in seen:
                if seq and not self._holds(seq):  # (a rescan may have taken the same record)
                    self.worker.store.delete("queue", queue_key(self.client_id, seq))
                return
            if len(seen) >= 200_000:  # bounded: past that a repeat is possible (QoS 1 allows it)
                seen.clear()
            seen.add(msg.mid)
        conn = self.conn
        self.worker.history.command(self.client_id, msg)
        if qos == 0:
            if self.live and not self.queue:
                if conn.congested:  # type: ignore[union-attr]
                    self.worker.stats.dropped += 1  # a slow reader must not eat the memory
                    return
                self._send(conn, msg, 0, retain, 0, sub_ids)  # type: ignore[arg-type]
            elif self.persistent or conn is not None:
                # Behind what is queued (offline, or waiting for the QoS 1/2 window):
                # a QoS 0 message queued earlier must not be overtaken [MQTT-4.6.0-6].
                self._enqueue(msg, 0, retain, sub_ids)
            return
        if not self.live or self.queue or len(self.inflight) >= self.receive_max:
            self._enqueue(msg, qos, retain, sub_ids, seq)
            return
        self._send_inflight([AWAIT_ACK, msg, qos, retain, sub_ids,
                             seq or self._persist_new(msg, qos, retain, sub_ids)])

    def _holds(self, seq: int) -> bool:
        return any(e[5] == seq for e in self.queue or ()) or any(
            e[5] == seq for e in self.inflight.values())

    def _send(self, conn: Connection, msg: Message, qos: int, retain: bool, pid: int,
              sub_ids: list[int] | None, dup: bool = False, durable: bool = False) -> bool:
        """Encode and write; ``durable``: the connection's output leaves only once what
        is staged in LMDB (the packet id this goes out with) is committed."""
        alias = 0
        new_alias = False
        if conn.alias_max_out:
            # v5 Topic Alias towards the client, up to its Topic Alias Maximum (§3.3.2.3.4).
            aliases = conn.out_aliases
            alias = aliases.get(msg.topic, 0)
            if not alias and len(aliases) < conn.alias_max_out:
                alias = len(aliases) + 1
                new_alias = True
        data = msg.encode(self.version, qos, retain, pid, sub_ids, dup, alias, not new_alias)
        if self.max_packet and len(data) > self.max_packet:
            # [MQTT-3.1.2-25]: never send a packet over the client's maximum; drop it.
            self.worker.stats.dropped += 1
            return False
        if new_alias:  # the client learns an alias only from a packet it gets
            conn.out_aliases[msg.topic] = alias
        if durable:
            self.worker.hold_until_commit(conn)
        conn.write(data)
        self.worker.stats.msgs_sent += 1
        return True

    def _enqueue(self, msg: Message, qos: int, retain: bool, sub_ids: list[int] | None,
                 seq: int = 0) -> None:
        limit = self.worker.cfg.broker.max_queued_messages
        if self.queue is not None and len(self.queue) >= limit:
            self.worker.stats.dropped += 1
            if seq:
                self.worker.store.delete("queue", queue_key(self.client_id, seq))
            return
        if qos:
            seq = seq or self._persist_new(msg, qos, retain, sub_ids)
        elif self.persistent:
            # In memory only, but numbered among the QoS 1/2 records: a move to
            # another worker writes it out in its place (stage_volatile).
            seq = self.seq = self._next_seq()
        else:
            seq = 0
        queue = self._queue()
        if not queue and self.live:
            self.worker.router.invalidate()  # the fast lane must not pass the queue (_plain)
        queue.append([AWAIT_ACK, msg, qos, retain, sub_ids, seq])

    def _queue(self) -> deque[list]:
        """The offline queue, made on first use."""
        if self.queue is None:
            self.queue = deque()
        return self.queue

    def _persist_new(self, msg: Message, qos: int, retain: bool, sub_ids: list[int] | None) -> int:
        """Stage a QoS 1/2 message of a persistent session in LMDB; return its sequence."""
        if not self.persistent:
            return 0
        self.seq = self._next_seq()
        self.worker.store.put("queue", queue_key(self.client_id, self.seq),
                              [msg.to_record(), qos, retain, sub_ids, 0, AWAIT_ACK])
        return self.seq

    def _next_seq(self) -> int:
        """Queue records are numbered by creation time (ns, kept increasing): whichever
        worker writes one (the holder, an old holder forwarding, orphans.py), a
        restart reads a session's records back in the order they came."""
        return max(self.seq + 1, time.time_ns())

    def _alloc_pid(self) -> int:
        pid = self.next_pid
        inflight = self.inflight
        while pid in inflight:
            pid = pid + 1 if pid < 65535 else 1
        self.next_pid = pid + 1 if pid < 65535 else 1
        return pid

    def _send_inflight(self, entry: list) -> None:
        conn = self.conn
        assert conn is not None
        pid = self._alloc_pid()
        msg, qos, retain, sub_ids, seq = entry[1], entry[2], entry[3], entry[4], entry[5]
        if seq:
            self._persist_state(pid, entry)
        # QoS 2 exactly once across a crash: the PUBLISH leaves once its packet id is
        # committed, so whoever loads the session after a crash resends it with that
        # id (DUP) and the client, which may have sent PUBREC, knows it is no new one.
        if not self._send(conn, msg, qos, retain, pid, sub_ids, durable=bool(seq) and qos == 2):
            if seq:
                self.worker.store.delete("queue", queue_key(self.client_id, seq))
            return
        self.inflight[pid] = entry

    def _persist_state(self, pid: int, entry: list) -> None:
        # The message is already durable; its packet id and state only spare a
        # redelivery after a crash, so they are not worth an fsync.
        self.worker.store.put("queue", queue_key(self.client_id, entry[5]),
                              [entry[1].to_record(), entry[2], entry[3], entry[4], pid, entry[0]],
                              durable=False)

    def pump(self) -> None:
        """Move queued messages into flight while the receive maximum allows."""
        conn = self.conn
        if conn is None or not self.live:
            return
        queue = self.queue
        if not queue:
            return
        now = time.time()
        while queue and len(self.inflight) < self.receive_max:
            entry = queue.popleft()
            msg = entry[1]
            if msg.expired(now) or self.denied(msg.topic):
                # [MQTT-3.3.2-5]: an expired message is not delivered; nor one the
                # rules deny now (they may have changed while it waited).
                if _has_record(entry):
                    self.worker.store.delete("queue", queue_key(self.client_id, entry[5]))
                continue
            if entry[2] == 0:
                if entry[0] == STAGED:  # it has an LMDB record (a move, or orphans.py)
                    self.worker.store.delete("queue", queue_key(self.client_id, entry[5]),
                                             durable=False)
                self._send(conn, msg, 0, entry[3], 0, entry[4])
            else:
                self._send_inflight(entry)
        if not queue:
            self.worker.router.invalidate()  # the fast lane may take this session again

    # -- acknowledgements from the client ---------------------------------------------
    def on_puback(self, pid: int) -> bool:
        entry = self.inflight.get(pid)
        if entry is None or entry[2] != 1:
            return False
        del self.inflight[pid]
        self._forget(entry)
        self.pump()
        return True

    def on_pubrec(self, pid: int, reason_code: int) -> bool:
        entry = self.inflight.get(pid)
        if entry is None or entry[2] != 2:
            return False
        if reason_code >= 0x80:  # v5: the receiver refused it; the exchange ends here
            del self.inflight[pid]
            self._forget(entry)
            self.pump()
            return True
        entry[0] = AWAIT_COMP
        if entry[5]:
            self._persist_state(pid, entry)
        return True

    def on_pubcomp(self, pid: int) -> bool:
        entry = self.inflight.get(pid)
        if entry is None or entry[0] != AWAIT_COMP:
            return False
        del self.inflight[pid]
        self._forget(entry)
        self.pump()
        return True

    def _forget(self, entry: list) -> None:
        """Acknowledged: the record goes (no fsync: at worst it is delivered again)."""
        if entry[5]:
            self.worker.store.delete("queue", queue_key(self.client_id, entry[5]), durable=False)

    # -- reconnect ------------------------------------------------------------------
    def resume(self) -> None:
        """Resend what was in flight, DUP set, then the queue [MQTT-4.4.0-1]."""
        conn = self.conn
        assert conn is not None
        self.live = True
        self.worker.router.invalidate()
        for pid, entry in list(self.inflight.items()):
            if entry[0] == AWAIT_COMP:
                conn.write(encode_ack(PUBREL, pid, 0, self.version))
            elif self.denied(entry[1].topic):
                del self.inflight[pid]  # the rules changed while it waited: not sent again
                self._forget(entry)
            else:
                self._send(conn, entry[1], entry[2], entry[3], pid, entry[4], dup=True)
        self.pump()

    def stage_volatile(self) -> None:
        """Handing the session to another worker: write its queued QoS 0 messages
        (memory only until now) to LMDB in their place among the QoS 1/2 records,
        so the new holder loads them in order (lazily: QoS 0 is never acknowledged)."""
        for entry in self.queue or ():
            if entry[2] == 0 and entry[5]:
                self.worker.store.put(
                    "queue", queue_key(self.client_id, entry[5]),
                    [entry[1].to_record(), 0, entry[3], entry[4], 0, STAGED], durable=False)

    def discard_state(self) -> None:
        """Drop queued and in-flight messages (clean start or expiry)."""
        store = self.worker.store
        for entry in list(self.inflight.values()) + list(self.queue or ()):
            if _has_record(entry):
                store.delete("queue", queue_key(self.client_id, entry[5]))
        self.inflight.clear()
        self.queue = None
        self.qos2_in.clear()

    def restore_entry(self, seq: int, rec: list) -> None:
        """Put one persisted queue record back (broker restart)."""
        msg_rec, qos, retain, sub_ids, pid, state = rec
        if qos == 0:
            state = STAGED  # its record goes once it is sent
        entry = [state, Message.from_record(msg_rec), qos, retain, sub_ids, seq]
        self.seq = max(self.seq, seq)
        if pid and pid not in self.inflight:
            self.inflight[pid] = entry
            self.next_pid = pid + 1 if pid < 65535 else 1
        else:
            if not self.queue and self.live:
                self.worker.router.invalidate()
            self._queue().append(entry)


def _has_record(entry: list) -> bool:
    """Does this queue entry have an LMDB record (QoS 0 ones only once staged)?"""
    return bool(entry[5]) and (entry[2] != 0 or entry[0] == STAGED)
