"""Delivery workers as processes of their own, sharing one queue: a worker
killed with SIGKILL in the middle of the load loses nothing and stores
nothing twice (the queue lease brings its entries back, mailstore's
idempotency key makes a repeated delivery a no-op)."""

import collections
import signal
import subprocess
import time

from conftest import BIN, SingleNode, free_port, http_status, wait_until
from mail import imap_fetch_all, imap_login, make_message, send, wait_for_messages

ALICE, ALICE_PW = "alice@example.test", "delivery pw"
LEASE_SECS = 5


class DeliveryWorker:
    """`mailfleet serve --target delivery` on the node's data directory."""

    def __init__(self, node, name):
        self.node = node
        self.admin = free_port()
        self.log_path = node.data_dir.parent / f"delivery-{name}.log"
        self.proc = None

    def start(self):
        env = self.node.env({
            "MAILFLEET__LISTEN__ADMIN": f"127.0.0.1:{self.admin}",
            "MAILFLEET__DELIVERY__WORKERS": "4",
            "MAILFLEET__DELIVERY__LEASE_SECS": str(LEASE_SECS),
            "MAILFLEET__DELIVERY__RETRY_INTERVALS": '["1s"]',
        })
        self.proc = subprocess.Popen(
            [BIN, "serve", "--target", "delivery", "--data-dir", str(self.node.data_dir)],
            env=env, stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,
        )
        wait_until(lambda: http_status(f"http://127.0.0.1:{self.admin}/readyz") == 200,
                   what=f"delivery worker ready; log: {self.log_path}")
        return self

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)


def inbox_count(node):
    m = imap_login(node, ALICE, ALICE_PW)
    try:
        typ, data = m.select("INBOX", readonly=True)
        return int(data[0]) if typ == "OK" else 0
    finally:
        m.logout()


def test_kill_9_of_a_delivery_worker_loses_and_duplicates_nothing(tmp_path):
    node = SingleNode(tmp_path / "data")
    node.start(target="mailstore,filter,smtp-edge,access")
    workers = []
    try:
        node.add_user(ALICE, ALICE_PW)
        count = 120
        subjects = [f"load {i}" for i in range(count)]
        # The queue fills while no worker runs, so the kill below lands
        # while entries are in flight.
        for subject in subjects:
            code, _ = send(node, "bob@remote.test", [ALICE],
                           make_message("bob@remote.test", ALICE, subject))
            assert code == 250

        workers = [DeliveryWorker(node, "a"), DeliveryWorker(node, "b")]
        for worker in workers:
            worker.start()
        wait_until(lambda: inbox_count(node) >= 5, what="the first deliveries")
        workers[0].kill()
        # A replacement comes up on the same queue, as a pod would.
        workers[0] = DeliveryWorker(node, "a2").start()

        wait_for_messages(node, ALICE, ALICE_PW, count, timeout=120)
        # Leases of the killed worker ran out long ago by now; anything it
        # held has been redelivered: still exactly one of each.
        time.sleep(LEASE_SECS + 2)
        got = collections.Counter(m["Subject"] for m in imap_fetch_all(node, ALICE, ALICE_PW))
        assert set(got) == set(subjects), sorted(set(subjects) - set(got))[:5]
        duplicates = {s: n for s, n in got.items() if n != 1}
        assert not duplicates, duplicates
    finally:
        for worker in workers:
            worker.stop()
        node.stop()


# --- Remote delivery, DKIM and queue administration against a real DNS
# server (the testkit's `dns-server`) and an SMTP peer on 127.0.0.2.

import smtplib
import socketserver
import ssl
import threading

from conftest import dns_server_binary

REMOTE_PEER_IP = "127.0.0.2"


class Peer(socketserver.ThreadingTCPServer):
    """An SMTP server that defers (451) or accepts RCPT as the test says,
    and keeps what it accepted (dot-unstuffed)."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port):
        self.mode = "defer"
        self.received = []
        self.lock = threading.Lock()
        super().__init__((REMOTE_PEER_IP, port), PeerSession)


class PeerSession(socketserver.StreamRequestHandler):
    def reply(self, line):
        self.wfile.write(line.encode() + b"\r\n")

    def handle(self):
        peer = self.server
        self.reply("220 peer.remote.test ESMTP")
        rcpts = []
        while True:
            line = self.rfile.readline()
            if not line:
                return
            verb = line[:4].upper()
            if verb == b"EHLO":
                self.wfile.write(b"250-peer.remote.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n")
            elif verb == b"MAIL":
                rcpts = []
                self.reply("250 2.1.0 ok")
            elif verb == b"RCPT":
                if peer.mode == "defer-once":
                    peer.mode = "accept"
                    self.reply("451 4.7.1 come back later")
                elif peer.mode == "defer":
                    self.reply("451 4.7.1 come back later")
                else:
                    rcpts.append(line)
                    self.reply("250 2.1.5 ok")
            elif verb == b"DATA":
                if not rcpts:
                    self.reply("554 5.5.1 no valid recipients")
                    continue
                self.reply("354 go ahead")
                data = b""
                while True:
                    l = self.rfile.readline()
                    if l in (b".\r\n", b""):
                        break
                    data += l[1:] if l.startswith(b".") else l
                with peer.lock:
                    peer.received.append(data)
                self.reply("250 2.0.0 ok")
            elif verb == b"QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("250 ok")




class Dns:
    """The testkit DNS server on a fixed port, restartable with new zones."""

    def __init__(self, tmp_path):
        self.tmp_path = tmp_path
        self.port = free_port()
        self.proc = None

    def start(self, zones):
        self.stop()
        args = []
        for origin, text in zones.items():
            path = self.tmp_path / f"{origin}.zone"
            path.write_text("$TTL 1\n" + text)
            args.append(f"{origin}={path}")
        self.proc = subprocess.Popen(
            [str(dns_server_binary()), "--addr", f"127.0.0.1:{self.port}", *args],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        line = self.proc.stdout.readline()
        assert line.startswith("listening "), line

    def stop(self):
        if self.proc:
            self.proc.stdin.close()
            self.proc.wait(timeout=10)
            self.proc = None


def submit(node, subject, ctx=None):
    """alice -> carol@remote.test over submission, STARTTLS and AUTH."""
    if ctx is None:
        ctx = ssl.create_default_context(cafile=str(node.data_dir / "tls" / "self-signed.crt"))
    with smtplib.SMTP(node.host, node.ports["submission"], timeout=30) as s:
        s.ehlo("mua.tests")
        s.starttls(context=ctx)
        s.ehlo("mua.tests")
        s.login(ALICE, ALICE_PW)
        refused = s.sendmail(ALICE, ["carol@remote.test"],
                             f"From: {ALICE}\r\nTo: carol@remote.test\r\nSubject: {subject}\r\n"
                             f"\r\nline\r\n.\r\nlast\r\n".encode())
        assert refused == {}


def queue_ids(node, *args):
    out = node.cli("queue", "list", *args).stdout.splitlines()
    return [line.split()[0] for line in out[:-1]]


def queue_administration(node, peer, ctx=None, on_deferred=None):
    """`mailfleet queue list|show|retry|bounce|delete` on mail the peer
    defers (the retry interval is an hour: entries wait for the operator).
    `on_deferred` runs while the first message waits for its retry.
    Returns what the peer received: the one message retried by hand."""
    # 1. Deferred by the peer: visible in the queue, then retried by hand.
    peer.mode = "defer"
    submit(node, "first", ctx)
    wait_until(lambda: queue_ids(node, "--status", "deferred"), timeout=60,
               what="a deferred entry")
    [first] = queue_ids(node, "--domain", "remote.test")
    assert queue_ids(node, "--domain", "other.test") == []
    show = node.cli("queue", "show", first).stdout
    assert f"id:        {first}" in show, show
    assert "carol@remote.test (remote): pending, 1 attempt(s)" in show, show
    assert "451 4.7.1 come back later" in show and "next retry +" in show, show
    if on_deferred:
        on_deferred()
    peer.mode = "accept"
    assert "1 entry retried now" in node.cli("queue", "retry", "--domain", "remote.test").stdout
    wait_until(lambda: peer.received, what="the delivery after the retry")
    wait_until(lambda: queue_ids(node) == [], what="an empty queue")
    [data] = peer.received
    assert data.endswith(b"\r\nline\r\n.\r\nlast\r\n"), data

    # 2. Bounced by the operator: the sender gets a DSN.
    peer.mode = "defer"
    submit(node, "second", ctx)
    wait_until(lambda: queue_ids(node, "--status", "deferred"), timeout=60,
               what="a deferred entry")
    [second] = queue_ids(node)
    assert "1 entry bounced" in node.cli("queue", "bounce", second).stdout
    wait_for_messages(node, ALICE, ALICE_PW, 1)
    [dsn] = imap_fetch_all(node, ALICE, ALICE_PW)
    assert dsn.get_content_type() == "multipart/report"
    report = dsn.as_string()
    assert "Final-Recipient: rfc822; carol@remote.test" in report
    assert "delivery cancelled by the postmaster" in report
    wait_until(lambda: queue_ids(node) == [], what="an empty queue")

    # 3. Deleted by the operator: gone, nobody told.
    submit(node, "third", ctx)
    wait_until(lambda: queue_ids(node, "--status", "deferred"), timeout=60,
               what="a deferred entry")
    [third] = queue_ids(node)
    assert "1 entry deleted" in node.cli("queue", "delete", third).stdout
    assert queue_ids(node) == []
    # 4. Nothing of it comes back: not the deleted entry, not a second
    #    copy of the retried or bounced ones.
    time.sleep(3)
    assert queue_ids(node) == []
    assert len(peer.received) == 1
    assert len(imap_fetch_all(node, ALICE, ALICE_PW)) == 1
    return peer.received


def test_remote_delivery_by_mx_dkim_and_queue_administration(tmp_path):
    port = free_port()
    peer = Peer(port)
    threading.Thread(target=peer.serve_forever, daemon=True).start()
    dns = Dns(tmp_path)
    remote_zone = f"@ IN MX 10 mx.remote.test.\nmx IN A {REMOTE_PEER_IP}\n"
    dns.start({"remote.test": remote_zone})
    node = SingleNode(tmp_path / "data")
    # The CLI reads the same configuration as the server (hostname, DNS).
    shared = {
        "MAILFLEET__HOSTNAME": "mx.example.test",
        "MAILFLEET__DNS__SERVERS": f'["127.0.0.1:{dns.port}"]',
    }
    node.start(extra_env={
        **shared,
        "MAILFLEET__DELIVERY__REMOTE_SMTP_PORT": str(port),
        # Deferred entries wait for the operator in this test.
        "MAILFLEET__DELIVERY__RETRY_INTERVALS": '["1h"]',
    })
    cli = node.cli
    node.cli = lambda *args, **kw: cli(*args, env_extra=shared, **kw)
    try:
        node.add_user(ALICE, ALICE_PW)
        out = node.cli("dkim", "generate", "example.test", "--selector", "s1",
                       "--algorithm", "ed25519").stdout
        record = [l for l in out.splitlines() if l.startswith("s1._domainkey.example.test.")][0]
        assert 'IN TXT "v=DKIM1; k=ed25519; p=' in record
        records = node.cli("dns", "records", "example.test").stdout
        assert "example.test. IN MX 10 mx.example.test." in records
        assert "s1._domainkey.example.test. IN TXT" in records
        # Publish the key, then `dns check` finds it (and the missing MX).
        txt = record.split(" IN TXT ", 1)[1]
        dns.start({"remote.test": remote_zone, "example.test": f"s1._domainkey IN TXT {txt}\n"})
        check = node.cli("dns", "check", "example.test", check=False)
        assert check.returncode != 0
        assert "ok      TXT s1._domainkey.example.test: public key matches" in check.stdout, check.stdout
        assert "MISSING MX example.test" in check.stdout, check.stdout

        [data] = queue_administration(node, peer)
        assert data.startswith(b"DKIM-Signature: v=1; a=ed25519-sha256;"), data[:200]
        assert b" d=example.test;" in data and b" s=s1;" in data
    finally:
        node.stop()
        dns.stop()
        peer.shutdown()


def test_cluster_delivers_remote_mail_over_jetstream_and_redis(tmp_path, monkeypatch):
    """The same remote path on the local cluster: the queue on JetStream
    (the deferral is written back as a new message and retried), the
    per-domain slots in Redis, the DKIM key in PostgreSQL."""
    from conftest import LocalCluster

    port = free_port()
    peer = Peer(port)
    peer.mode = "defer-once"
    threading.Thread(target=peer.serve_forever, daemon=True).start()
    dns = Dns(tmp_path)
    dns.start({"remote.test": f"@ IN MX 10 mx.remote.test.\nmx IN A {REMOTE_PEER_IP}\n"})
    for key, value in {
        "MAILFLEET__HOSTNAME": "mx.example.test",
        "MAILFLEET__DNS__SERVERS": f'["127.0.0.1:{dns.port}"]',
        "MAILFLEET__DELIVERY__REMOTE_SMTP_PORT": str(port),
        "MAILFLEET__DELIVERY__RETRY_INTERVALS": '["1s"]',
    }.items():
        monkeypatch.setenv(key, value)
    cluster = LocalCluster(tmp_path / "cluster")
    cluster.data_dir.mkdir(parents=True)
    cluster.start()
    try:
        cluster.add_user(ALICE, ALICE_PW)
        cluster.cli("dkim", "generate", "example.test", "--selector", "c1")
        # The cluster's certificate is not what this test is about.
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with smtplib.SMTP(cluster.host, cluster.ports["submission"], timeout=30) as s:
            s.ehlo("mua.tests")
            s.starttls(context=ctx)
            s.ehlo("mua.tests")
            s.login(ALICE, ALICE_PW)
            assert s.sendmail(ALICE, ["carol@remote.test"],
                              f"From: {ALICE}\r\nSubject: cluster\r\n\r\nhi\r\n".encode()) == {}
        wait_until(lambda: peer.received, timeout=60, what="delivery through the cluster")
        # The first RCPT was answered 451 (the peer only accepts after it):
        # what arrived came from the retry, once.
        assert peer.mode == "accept"
        time.sleep(3)
        [data] = peer.received
        assert data.startswith(b"DKIM-Signature: v=1; a=rsa-sha256;"), data[:120]
        assert b" s=c1;" in data
        assert data.endswith(b"Subject: cluster\r\n\r\nhi\r\n"), data[-80:]
    finally:
        cluster.stop()
        cluster.purge()
        dns.stop()
        peer.shutdown()


def test_cluster_queue_administration_over_jetstream(tmp_path, monkeypatch):
    """`mailfleet queue list|show|retry|bounce|delete` against the local
    cluster: the queue is a JetStream work-queue stream read by sequence
    (the admin API runs in the mailstore process, the workers in the
    delivery process), a deferral is a new message with a not-before time,
    and a retry, bounce or delete by the operator replaces or removes it."""
    from conftest import LocalCluster

    port = free_port()
    peer = Peer(port)
    threading.Thread(target=peer.serve_forever, daemon=True).start()
    dns = Dns(tmp_path)
    dns.start({"remote.test": f"@ IN MX 10 mx.remote.test.\nmx IN A {REMOTE_PEER_IP}\n"})
    for key, value in {
        "MAILFLEET__HOSTNAME": "mx.example.test",
        "MAILFLEET__DNS__SERVERS": f'["127.0.0.1:{dns.port}"]',
        "MAILFLEET__DELIVERY__REMOTE_SMTP_PORT": str(port),
        # Deferred entries wait for the operator in this test.
        "MAILFLEET__DELIVERY__RETRY_INTERVALS": '["1h"]',
    }.items():
        monkeypatch.setenv(key, value)
    cluster = LocalCluster(tmp_path / "cluster")
    cluster.data_dir.mkdir(parents=True)
    cluster.start()
    try:
        cluster.add_user(ALICE, ALICE_PW)
        # The cluster's certificate is not what this test is about.
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        assert queue_ids(cluster) == []

        def gauges_name_the_domain():
            # The admin API's process opened the queue for `queue list`:
            # its gauges read the stream entry by entry, like SQLite's.
            from test_metrics import Metrics

            def deferred():
                m = Metrics(cluster)
                return (m.get("mailfleet_queue_entries", status="deferred") == 1
                        and m.get("mailfleet_queue_domain_entries", domain="remote.test") == 1)
            wait_until(deferred, timeout=30, interval=0.5, what="the deferred entry in the gauges")
            m = Metrics(cluster)
            assert m.get("mailfleet_queue_depth") == 1
            assert m.get("mailfleet_queue_entries", status="leased") == 0
            age = m.get("mailfleet_queue_oldest_entry_age_seconds", status="deferred")
            assert 0 <= age < 120, age

        queue_administration(cluster, peer, ctx, on_deferred=gauges_name_the_domain)
    finally:
        cluster.stop()
        cluster.purge()
        dns.stop()
        peer.shutdown()
