"""/metrics after one delivery: the numbers an SRE reads during an incident.

The exposition is parsed (OpenMetrics text from prometheus-client) into
samples keyed by name and labels, so an assertion reads one series exactly
rather than matching a substring that a neighbouring series could satisfy.
"""

import json
import re
import threading
import urllib.request

from conftest import SingleNode, free_port, wait_until
from mail import imap_login, make_message, send, wait_for_messages
from test_delivery import ALICE as DELIVERY_ALICE, ALICE_PW as DELIVERY_ALICE_PW
from test_delivery import REMOTE_PEER_IP, Dns, Peer, submit

ALICE, ALICE_PW = "alice@example.test", "correct horse battery"

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?')


def parse_metrics(text):
    """{(name, frozenset of (label, value))): float} and {name: type}."""
    samples, types = {}, {}
    for line in text.splitlines():
        if not line or line == "# EOF":
            continue
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            types[name] = kind
            continue
        if line.startswith("#"):
            continue
        # An exemplar follows " # "; it is not part of the sample.
        line = line.split(" # ", 1)[0]
        m = _SAMPLE.match(line)
        assert m, f"unparsable metrics line: {line!r}"
        name, _, labels_text, value = m.groups()
        labels = {}
        if labels_text:
            pos = 0
            while pos < len(labels_text):
                lm = _LABEL.match(labels_text, pos)
                assert lm, f"bad labels in {line!r}"
                labels[lm.group(1)] = re.sub(r"\\(.)", lambda e: {"n": "\n"}.get(e.group(1), e.group(1)),
                                             lm.group(2))
                pos = lm.end()
        key = (name, frozenset(labels.items()))
        assert key not in samples, f"duplicate series {line!r}"
        samples[key] = float(value)
    return samples, types


def test_parser_reads_labels_and_exemplars():
    samples, types = parse_metrics(
        '# TYPE x counter\nx_total{a="1",b="q\\"uote"} 3 # {trace_id="t"} 1.0\ny 2.5\n# EOF\n')
    assert samples[("x_total", frozenset({("a", "1"), ("b", 'q"uote')}))] == 3
    assert samples[("y", frozenset())] == 2.5
    assert types == {"x": "counter"}


class Metrics:
    def __init__(self, server):
        with urllib.request.urlopen(server.admin_url + "/metrics", timeout=5) as r:
            assert r.status == 200
            self.samples, self.types = parse_metrics(r.read().decode())

    def get(self, name, **labels):
        """The value of exactly this series; None when it is not exported."""
        return self.samples.get((name, frozenset(labels.items())))

    def names(self):
        return {name for name, _ in self.samples}


def test_metrics_after_one_local_delivery(single_node):
    single_node.add_user(ALICE, ALICE_PW)
    msg = make_message("bob@remote.test", ALICE, subject="metrics")
    code, text = send(single_node, "bob@remote.test", [ALICE], msg)
    assert code == 250, (code, text)
    wait_for_messages(single_node, ALICE, ALICE_PW, 1)

    # The queue gauges are refreshed every 5 s: wait for the emptied queue.
    def queue_empty():
        m = Metrics(single_node)
        return m.get("mailfleet_queue_depth") == 0 and m.get("mailfleet_queue_entries", status="due") == 0
    wait_until(queue_empty, timeout=20, interval=0.5, what="queue depth back to 0")

    # One more IMAP session, so the access counters are seen after a login.
    imap = imap_login(single_node, ALICE, ALICE_PW)
    imap.logout()
    m = Metrics(single_node)

    # SMTP: one transaction queued, its size observed.
    assert m.get("mailfleet_smtp_transactions_total", result="queued") == 1
    assert m.get("mailfleet_smtp_accepted_message_size_bytes_count") == 1
    assert m.get("mailfleet_smtp_accepted_message_size_bytes_sum") > len(msg.as_bytes())
    assert m.types["mailfleet_smtp_accepted_message_size_bytes"] == "histogram"

    # Delivery: one local attempt, delivered; latency and end-to-end observed.
    assert m.get("mailfleet_delivery_attempts_total", destination="local", result="delivered") == 1
    for result in ("deferred", "bounced", "failed"):
        assert m.get("mailfleet_delivery_attempts_total", destination="local", result=result) in (None, 0)
    assert m.get("mailfleet_delivery_attempt_duration_seconds_count", destination="local") == 1
    assert m.get("mailfleet_delivery_end_to_end_seconds_count", destination="local") == 1
    e2e = m.get("mailfleet_delivery_end_to_end_seconds_sum", destination="local")
    assert 0 <= e2e < 30, e2e
    # Cumulative buckets: the +Inf bucket holds every observation.
    assert m.get("mailfleet_delivery_end_to_end_seconds_bucket", destination="local", le="+Inf") == 1
    assert m.get("mailfleet_delivery_entries_total", result="done") == 1

    # Queue: nothing left, by status and by domain.
    assert m.get("mailfleet_queue_depth") == 0
    for status in ("due", "deferred", "leased"):
        assert m.get("mailfleet_queue_entries", status=status) == 0, status
    assert not [k for k in m.samples if k[0] == "mailfleet_queue_domain_entries"]

    # Mailstore: the Deliver RPC succeeded, with its latency.
    assert m.get("mailfleet_mailstore_operations_total", rpc="Mailstore/Deliver", result="ok") == 1
    assert m.get("mailfleet_mailstore_operation_duration_seconds_count", rpc="Mailstore/Deliver") == 1
    assert m.get("mailfleet_mailstore_deliveries_total", result="stored") == 1

    # Access: IMAP sessions were accepted and logged in; none open now.
    assert m.get("mailfleet_access_sessions_total", protocol="imap") >= 2
    assert m.get("mailfleet_access_logins_total", protocol="imap", result="ok") >= 2
    assert m.get("mailfleet_access_commands_total", protocol="imap", command="LOGIN") >= 2

    def sessions_closed():
        return Metrics(single_node).get("mailfleet_access_active_sessions", protocol="imap") == 0
    wait_until(sessions_closed, timeout=5, what="imap sessions closed")

    # Every counter follows the convention: its samples end in _total.
    for name, kind in m.types.items():
        if kind == "counter":
            assert any(n == name + "_total" for n in m.names()) or not any(
                n.startswith(name) for n in m.names()), name


def test_queue_gauges_name_the_deferring_domain(tmp_path):
    """A remote peer answering 451 keeps the entry in the queue: the gauges
    say which domain and since when, the attempt counts as deferred."""
    port = free_port()
    peer = Peer(port)  # mode "defer": 451 to every RCPT
    threading.Thread(target=peer.serve_forever, daemon=True).start()
    dns = Dns(tmp_path)
    dns.start({"remote.test": f"@ IN MX 10 mx.remote.test.\nmx IN A {REMOTE_PEER_IP}\n"})
    node = SingleNode(tmp_path / "data")
    node.start(extra_env={
        "MAILFLEET__HOSTNAME": "mx.example.test",
        "MAILFLEET__DNS__SERVERS": f'["127.0.0.1:{dns.port}"]',
        "MAILFLEET__DELIVERY__REMOTE_SMTP_PORT": str(port),
        "MAILFLEET__DELIVERY__RETRY_INTERVALS": '["1h"]',
    })
    try:
        node.add_user(DELIVERY_ALICE, DELIVERY_ALICE_PW)
        submit(node, "stuck")

        def deferred():
            m = Metrics(node)
            return (m.get("mailfleet_queue_entries", status="deferred") == 1
                    and m.get("mailfleet_queue_domain_entries", domain="remote.test") == 1)
        wait_until(deferred, timeout=30, interval=0.5, what="the deferred entry in the gauges")
        m = Metrics(node)
        assert m.get("mailfleet_queue_depth") == 1
        assert m.get("mailfleet_queue_entries", status="due") == 0
        assert m.get("mailfleet_queue_entries", status="leased") == 0
        age = m.get("mailfleet_queue_oldest_entry_age_seconds", status="deferred")
        assert 0 <= age < 60, age
        assert m.get("mailfleet_queue_domain_oldest_entry_age_seconds", domain="remote.test") == age
        assert m.get("mailfleet_delivery_attempts_total", destination="remote", result="deferred") == 1
        assert m.get("mailfleet_delivery_attempt_duration_seconds_count", destination="remote") == 1
        # Not delivered: no end-to-end time yet.
        assert m.get("mailfleet_delivery_end_to_end_seconds_count", destination="remote") in (None, 0)
        assert m.get("mailfleet_smtp_transactions_total", result="queued") == 1
    finally:
        node.stop()
        dns.stop()
        peer.shutdown()


def test_json_logs_carry_trace_ids_with_otlp(tmp_path):
    """With OTLP on and JSON logs, the lines logged inside the SMTP session
    carry its trace id. The exporter's endpoint need not answer: spans are
    made (and their export fails quietly) all the same."""
    node = SingleNode(tmp_path / "data")
    node.start(extra_env={
        "MAILFLEET__TELEMETRY__LOG_FORMAT": "json",
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{free_port()}",
    })
    try:
        node.add_user(ALICE, ALICE_PW)
        code, _ = send(node, "bob@remote.test", [ALICE], make_message("bob@remote.test", ALICE))
        assert code == 250
        wait_for_messages(node, ALICE, ALICE_PW, 1)
    finally:
        node.stop()
    lines = [json.loads(l) for l in node.log_path.read_text().splitlines() if l.startswith("{")]
    queued = [l for l in lines if l.get("fields", {}).get("message") == "message queued"]
    assert queued, "no 'message queued' line in the log"
    [line] = queued[:1]
    assert re.fullmatch(r"[0-9a-f]{32}", line.get("trace_id", "")), line
    assert re.fullmatch(r"[0-9a-f]{16}", line.get("span_id", "")), line
    # The delivery continues the session's trace: its lines share the id.
    same_trace = [l for l in lines if l.get("trace_id") == line["trace_id"]]
    assert any("delivered" in l.get("fields", {}).get("message", "") for l in same_trace), same_trace
