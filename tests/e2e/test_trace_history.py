"""`mailfleet trace <queue id | Message-ID>`: the history of one message as
an operator without a tracing backend sees it. smtp-edge records received
and verdict, delivery each outcome (with the remote host and its reply) and
each DSN; mailstore keeps them; the CLI reads them through the admin API."""

import re
import smtplib
import ssl
import threading

from conftest import SingleNode, free_port, wait_until
from mail import make_message, send, wait_for_messages
from test_delivery import ALICE, ALICE_PW, REMOTE_PEER_IP, Dns, Peer, PeerSession

TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ"


def queued_id(reply_text):
    """The queue id of a `250 2.0.0 Ok: queued as <id>` reply."""
    text = reply_text.decode() if isinstance(reply_text, bytes) else reply_text
    match = re.search(r"queued as (\S+)", text)
    assert match, text
    return match.group(1)


def trace(node, id, check=True):
    return node.cli("trace", id, check=check)


def stages(output):
    """The stage column of each line, in order."""
    return [line.split()[1] for line in output.splitlines() if line.strip()]


def test_trace_of_a_local_delivery_by_queue_id_and_message_id(single_node):
    single_node.add_user(ALICE, ALICE_PW)
    msg = make_message("bob@remote.test", ALICE, subject="traced")
    code, text = send(single_node, "bob@remote.test", [ALICE], msg)
    assert code == 250, (code, text)
    queue_id = queued_id(text)
    wait_for_messages(single_node, ALICE, ALICE_PW, 1)

    out = wait_until(
        lambda: (o := trace(single_node, queue_id, check=False).stdout)
        and "delivered" in o and o,
        what="the delivered event in the history",
    )
    lines = out.splitlines()
    assert stages(out) == ["received", "verdict", "delivered"], out
    assert all(re.match(TIME + "  ", line) for line in lines), out
    assert "client 127.0.0.1" in lines[0] and "from <bob@remote.test>" in lines[0], out
    assert "1 recipient(s)" in lines[0], out
    assert "accept score" in lines[1], out
    assert f"{ALICE}  mailstore" in lines[2] and "mailbox INBOX uid 1" in lines[2], out

    # The Message-ID finds the same history, with or without <>.
    message_id = msg["Message-ID"]
    assert trace(single_node, message_id).stdout == out
    assert trace(single_node, message_id.strip("<>")).stdout == out

    # Nothing known: exit 1 and a clear message.
    missing = trace(single_node, "<nobody@nowhere.test>", check=False)
    assert missing.returncode == 1, missing
    assert "no history for <nobody@nowhere.test>" in missing.stderr, missing.stderr


class RejectingSession(PeerSession):
    """The test peer, answering 550 where it would defer when told to."""

    def reply(self, line):
        if getattr(self.server, "reject", False) and line.startswith("451"):
            line = "550 5.1.1 no such user here"
        super().reply(line)


def submit(node, rcpt, subject):
    """alice -> rcpt over submission (STARTTLS, AUTH); the queue id."""
    ctx = ssl.create_default_context(cafile=str(node.data_dir / "tls" / "self-signed.crt"))
    msg = make_message(ALICE, rcpt, subject=subject)
    with smtplib.SMTP(node.host, node.ports["submission"], timeout=30) as s:
        s.ehlo("mua.tests")
        s.starttls(context=ctx)
        s.ehlo("mua.tests")
        s.login(ALICE, ALICE_PW)
        s.mail(ALICE)
        code, text = s.rcpt(rcpt)
        assert code == 250, (code, text)
        code, text = s.data(msg.as_bytes())
        assert code == 250, (code, text)
    return queued_id(text), msg["Message-ID"]


def test_trace_of_remote_deferral_delivery_and_bounce(tmp_path):
    port = free_port()
    peer = Peer(port)
    peer.RequestHandlerClass = RejectingSession
    threading.Thread(target=peer.serve_forever, daemon=True).start()
    dns = Dns(tmp_path)
    dns.start({"remote.test": f"@ IN MX 10 mx.remote.test.\nmx IN A {REMOTE_PEER_IP}\n"})
    node = SingleNode(tmp_path / "data")
    shared = {"MAILFLEET__DNS__SERVERS": f'["127.0.0.1:{dns.port}"]'}
    node.start(extra_env={
        **shared,
        "MAILFLEET__DELIVERY__REMOTE_SMTP_PORT": str(port),
        "MAILFLEET__DELIVERY__RETRY_INTERVALS": '["1s"]',
    })
    cli = node.cli
    node.cli = lambda *args, **kw: cli(*args, env_extra=shared, **kw)
    try:
        node.add_user(ALICE, ALICE_PW)

        # 451 first, 250 on the retry: deferred, then delivered.
        peer.mode = "defer-once"
        queue_id, message_id = submit(node, "carol@remote.test", "deferred then delivered")
        out = wait_until(
            lambda: (o := trace(node, queue_id, check=False).stdout)
            and "delivered" in o and o,
            what="deferred then delivered in the history",
        )
        assert stages(out) == ["received", "verdict", "deferred", "delivered"], out
        lines = out.splitlines()
        assert "authenticated" in lines[0], out
        deferred, delivered = lines[2], lines[3]
        assert "carol@remote.test  mx.remote.test  451 4.7.1 come back later" in deferred, out
        assert re.search("next retry " + TIME, deferred), out
        assert "carol@remote.test  mx.remote.test  250 " in delivered, out
        assert trace(node, message_id).stdout == out

        # 550: bounced, and the sender gets a DSN (recorded, and delivered
        # to alice's INBOX under its own queue id).
        peer.reject = True
        peer.mode = "defer"
        queue_id, message_id = submit(node, "dave@remote.test", "bounced")
        out = wait_until(
            lambda: (o := trace(node, queue_id, check=False).stdout) and "dsn" in o and o,
            what="bounced and dsn in the history",
        )
        assert stages(out) == ["received", "verdict", "bounced", "dsn"], out
        lines = out.splitlines()
        assert "dave@remote.test  mx.remote.test  550 5.1.1 no such user here" in lines[2], out
        dsn_id = re.search(r"queued as (\S+)\)", lines[3]).group(1)
        assert f"failed notice to <{ALICE}>" in lines[3], out
        wait_for_messages(node, ALICE, ALICE_PW, 1)
        dsn = wait_until(
            lambda: (o := trace(node, dsn_id, check=False).stdout) and "delivered" in o and o,
            what="the DSN's own history",
        )
        assert stages(dsn) == ["delivered"], dsn
        assert f"{ALICE}  mailstore" in dsn, dsn
    finally:
        node.stop()
        dns.stop()
        peer.shutdown()
