"""IMAP and POP3 against a real `mailfleet serve`, with Python's imaplib and
poplib (clients nobody here wrote), over TLS: implicit TLS on imaps/pop3s,
STARTTLS/STLS on the plain ports, LOGINDISABLED before TLS from a
non-loopback address. Folders, APPEND, COPY, MOVE, flags, SEARCH, IDLE with
two sessions, EXPUNGE, quota, and a 10,000-message mailbox whose timings are
printed (run with -s to see them)."""

import email.utils
import imaplib
import poplib
import re
import socket
import ssl
import time

import pytest

from conftest import LocalCluster, SingleNode
from mail import make_message, send, wait_for_messages

ALICE, ALICE_PW = "alice@example.test", "correct horse battery"
BOB, BOB_PW = "bob@example.test", "bob's password"


def tls_context(server, check_hostname=True):
    """Trusts exactly the node's self-signed certificate (on the local
    cluster, the access process's)."""
    cert = server.data_dir / "tls" / "self-signed.crt"
    if not cert.exists():
        cert = server.data_dir / "access" / "tls" / "self-signed.crt"
    ctx = ssl.create_default_context(cafile=str(cert))
    ctx.check_hostname = check_hostname
    return ctx


def imaps(server, user=ALICE, password=ALICE_PW):
    m = imaplib.IMAP4_SSL(server.host, server.ports["imaps"], ssl_context=tls_context(server), timeout=30)
    m.login(user, password)
    return m


def message(subject, body="Hello.", sender="carol@remote.test", to=ALICE):
    return (
        f"From: Carol <{sender}>\r\nTo: {to}\r\nSubject: {subject}\r\n"
        f"Date: {email.utils.formatdate()}\r\nMessage-ID: <{time.time_ns()}@tests>\r\n\r\n{body}\r\n"
    ).encode()


def code(response_line):
    """The bracketed response code of an imaplib answer line."""
    text = response_line.decode() if isinstance(response_line, bytes) else response_line
    found = re.search(r"\[([^\]]*)\]", text)
    return found.group(1) if found else None


def test_client_workflow_over_implicit_tls(single_node):
    single_node.add_user(ALICE, ALICE_PW)
    m = imaps(single_node)
    typ, caps = m.capability()
    caps = caps[0].decode().split()
    for needed in ("IMAP4rev1", "UIDPLUS", "MOVE", "IDLE", "SPECIAL-USE", "AUTH=PLAIN", "CONDSTORE", "QUOTA"):
        assert needed in caps, caps
    assert "STARTTLS" not in caps and "LOGINDISABLED" not in caps, caps

    # Folders: nested CREATE, LIST with special use, RENAME, DELETE, SUBSCRIBE.
    assert m.create("Projects/2026")[0] == "OK"
    assert m.create("Scratch")[0] == "OK"
    typ, listed = m.list()
    listing = b"\n".join(listed).decode()
    assert '"Projects/2026"' in listing and "\\HasChildren" in listing, listing
    assert "\\Sent" in listing and "\\Junk" in listing and "\\Trash" in listing, listing
    assert m.create("Scratch")[0] == "NO"
    assert m.rename("Scratch", "Scratch2")[0] == "OK"
    assert m.subscribe("Projects/2026")[0] == "OK"
    assert m.unsubscribe("Scratch2")[0] == "OK"
    typ, lsub = m.lsub()
    assert b"Projects/2026" in b" ".join(lsub) and b"Scratch2" not in b" ".join(lsub), lsub
    assert m.delete("Scratch2")[0] == "OK"
    typ, listed = m.list()
    assert b"Scratch" not in b" ".join(listed)

    # APPEND with flags and a date: APPENDUID (UIDPLUS).
    typ, data = m.append("INBOX", "(\\Flagged)", imaplib.Time2Internaldate(time.time()), message("first"))
    assert typ == "OK" and code(data[0]).startswith("APPENDUID "), data
    for subject in ("second", "third quarterly report"):
        typ, data = m.append("INBOX", None, None, message(subject, body=f"body of {subject}"))
        assert typ == "OK", data
    typ, data = m.status("INBOX", "(MESSAGES UNSEEN UIDNEXT)")
    assert b"MESSAGES 3" in data[0] and b"UNSEEN 3" in data[0] and b"UIDNEXT 4" in data[0], data

    typ, data = m.select("INBOX")
    assert typ == "OK" and data == [b"3"], data

    # SEARCH over flags, headers and body; UID SEARCH.
    assert m.search(None, "FLAGGED")[1] == [b"1"]
    assert m.search(None, "SUBJECT", "quarterly")[1] == [b"3"]
    assert m.search(None, "BODY", '"body of second"')[1] == [b"2"]
    assert m.search(None, "FROM", "carol", "NOT", "FLAGGED")[1] == [b"2 3"]
    assert m.uid("SEARCH", None, "UID", "2:*")[1] == [b"2 3"]

    # FETCH ENVELOPE and BODYSTRUCTURE and a header field.
    typ, data = m.fetch("3", "(ENVELOPE BODYSTRUCTURE BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK", data
    flat = b" ".join(part if isinstance(part, bytes) else b" ".join(part) for part in data)
    assert b'"third quarterly report"' in flat and b'"TEXT" "PLAIN"' in flat, flat
    assert b"Subject: third quarterly report" in flat, flat

    # Flags.
    typ, data = m.store("2", "+FLAGS", "(\\Seen $Work)")
    assert typ == "OK" and b"\\Seen" in data[0] and b"$Work" in data[0], data
    assert m.search(None, "KEYWORD", "$Work")[1] == [b"2"]

    # COPY answers COPYUID; MOVE removes the source (RFC 6851).
    typ, data = m.copy("1", "Projects/2026")
    assert typ == "OK" and code(data[0]).startswith("COPYUID "), data
    typ, data = m.uid("MOVE", "3", "Archive")
    assert typ == "OK", data
    typ, data = m.select("INBOX")
    assert data == [b"2"], data
    typ, data = m.status("Archive", "(MESSAGES)")
    assert b"MESSAGES 1" in data[0], data
    typ, data = m.status("Projects/2026", "(MESSAGES)")
    assert b"MESSAGES 1" in data[0], data

    # EXPUNGE and UID EXPUNGE.
    m.store("1:2", "+FLAGS", "(\\Deleted)")
    typ, data = m.uid("EXPUNGE", "2")
    assert typ == "OK", data
    typ, data = m.expunge()
    assert typ == "OK", data
    typ, data = m.select("INBOX")
    assert data == [b"0"], data

    typ, data = m.getquotaroot("INBOX")
    assert typ == "OK", data
    m.logout()


def test_starttls_and_logindisabled_from_a_non_loopback_address(tmp_path):
    """From 127.0.0.1 plain LOGIN is allowed; from another address the server
    says LOGINDISABLED until STARTTLS (and refuses LOGIN/USER before it)."""
    address = non_loopback_address()
    if address is None:
        pytest.skip("no non-loopback IPv4 address on this machine")
    node = SingleNode(tmp_path / "data")
    node.start(extra_env={
        "MAILFLEET__LISTEN__IMAP": f"0.0.0.0:{node.ports['imap']}",
        "MAILFLEET__LISTEN__POP3": f"0.0.0.0:{node.ports['pop3']}",
    })
    try:
        node.add_user(ALICE, ALICE_PW)
        m = imaplib.IMAP4(address, node.ports["imap"], timeout=30)
        caps = m.capabilities
        assert "LOGINDISABLED" in caps and "STARTTLS" in caps and "AUTH=PLAIN" not in caps, caps
        with pytest.raises(imaplib.IMAP4.error, match="PRIVACYREQUIRED"):
            m.login(ALICE, ALICE_PW)
        # The name in the certificate is localhost: verify the chain only.
        m.starttls(ssl_context=tls_context(node, check_hostname=False))
        assert "LOGINDISABLED" not in m.capabilities and "STARTTLS" not in m.capabilities, m.capabilities
        assert m.login(ALICE, ALICE_PW)[0] == "OK"
        assert m.select("INBOX")[0] == "OK"
        m.logout()

        p = poplib.POP3(address, node.ports["pop3"], timeout=30)
        capa = p.capa()
        assert "STLS" in capa and "USER" not in capa, capa
        with pytest.raises(poplib.error_proto):
            p.user(ALICE)
        p.stls(context=tls_context(node, check_hostname=False))
        assert "USER" in p.capa() and "STLS" not in p.capa()
        p.user(ALICE)
        p.pass_(ALICE_PW)
        assert p.stat()[0] == 0
        p.quit()

        # From loopback, STARTTLS is offered but not required.
        m = imaplib.IMAP4("127.0.0.1", node.ports["imap"], timeout=30)
        assert "STARTTLS" in m.capabilities and "LOGINDISABLED" not in m.capabilities, m.capabilities
        m.starttls(ssl_context=tls_context(node))
        m.login(ALICE, ALICE_PW)
        m.logout()
    finally:
        node.stop()


def non_loopback_address():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.254", 9))  # no packet is sent
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


def test_pop3_download_and_delete_over_tls(single_node):
    single_node.add_user(ALICE, ALICE_PW)
    for subject in ("pop one", "pop two"):
        code_, text = send(single_node, "carol@remote.test", [ALICE],
                           make_message("carol@remote.test", ALICE, subject=subject))
        assert code_ == 250, text
    wait_for_messages(single_node, ALICE, ALICE_PW, 2)

    p = poplib.POP3_SSL(single_node.host, single_node.ports["pop3s"], context=tls_context(single_node), timeout=30)
    assert "STLS" not in p.capa()
    p.user(ALICE)
    p.pass_(ALICE_PW)
    count, _ = p.stat()
    assert count == 2
    uidl = p.uidl()[1]
    resp, lines, _ = p.retr(1)
    assert b"Subject: pop one" in b"\n".join(lines)
    p.dele(1)
    p.quit()

    p = poplib.POP3(single_node.host, single_node.ports["pop3"], timeout=30)
    p.stls(context=tls_context(single_node))
    # AUTH PLAIN (RFC 5034) with an initial response.
    import base64
    resp = p._shortcmd("AUTH PLAIN " + base64.b64encode(f"\0{ALICE}\0{ALICE_PW}".encode()).decode())
    assert resp.startswith(b"+OK"), resp
    assert p.stat()[0] == 1
    # UIDL is stable across sessions.
    assert p.uidl()[1][0].split()[1] == uidl[1].split()[1]
    p.quit()


def test_local_cluster_imap_over_tls_with_idle_across_processes(tmp_path):
    """On the local cluster (PostgreSQL metadata, NATS change events): the
    same client workflow over implicit TLS, and IDLE in `access` hearing a
    delivery committed by the separate `mailstore` process."""
    cluster = LocalCluster(tmp_path / "cluster")
    cluster.data_dir.mkdir(parents=True)
    cluster.start()
    try:
        cluster.add_user(ALICE, ALICE_PW)
        m = imaps(cluster)
        assert m.create("Projects")[0] == "OK"
        typ, data = m.append("INBOX", None, None, message("cluster one"))
        assert typ == "OK" and code(data[0]).startswith("APPENDUID "), data
        m.select("INBOX")
        typ, data = m.copy("1", "Projects")
        assert typ == "OK" and code(data[0]).startswith("COPYUID "), data
        assert m.search(None, "SUBJECT", '"cluster one"')[1] == [b"1"]

        idler = RawImap(cluster)
        assert idler.command("a1", f'LOGIN {ALICE} "{ALICE_PW}"')[-1].startswith("a1 OK")
        idler.command("a2", "SELECT INBOX")
        idler.send("a3 IDLE")
        assert idler.line().startswith("+ ")
        code_, text = send(cluster, "carol@remote.test", [ALICE],
                           make_message("carol@remote.test", ALICE, subject="via smtp"))
        assert code_ == 250, text
        assert idler.line() == "* 2 EXISTS"
        typ, data = m.uid("MOVE", "1", "Archive")
        assert typ == "OK", data
        assert idler.line() == "* 1 EXPUNGE"
        idler.send("DONE")
        assert idler.line() == "a3 OK IDLE terminated"
        m.logout()

        p = poplib.POP3_SSL(cluster.host, cluster.ports["pop3s"], context=tls_context(cluster), timeout=30)
        p.user(ALICE)
        p.pass_(ALICE_PW)
        assert p.stat()[0] == 1
        p.dele(1)
        p.quit()
    finally:
        cluster.stop()
        cluster.purge()


class RawImap:
    """A line-level IMAP client over TLS, for IDLE (imaplib has none)."""

    def __init__(self, server):
        raw = socket.create_connection((server.host, server.ports["imaps"]), timeout=30)
        self.sock = tls_context(server).wrap_socket(raw, server_hostname="127.0.0.1")
        self.file = self.sock.makefile("rb")
        assert self.line().startswith("* OK")

    def line(self):
        return self.file.readline().decode().rstrip("\r\n")

    def send(self, text):
        self.sock.sendall(text.encode() + b"\r\n")

    def command(self, tag, text):
        self.send(f"{tag} {text}")
        lines = []
        while True:
            line = self.line()
            lines.append(line)
            if line.startswith(tag + " "):
                return lines


def test_two_sessions_idle_sees_new_mail_and_expunge(single_node):
    single_node.add_user(ALICE, ALICE_PW)
    other = imaps(single_node)
    other.append("INBOX", None, None, message("already there"))

    idler = RawImap(single_node)
    assert idler.command("a1", f'LOGIN {ALICE} "{ALICE_PW}"')[-1].startswith("a1 OK")
    assert "* 1 EXISTS" in idler.command("a2", "SELECT INBOX")
    idler.send("a3 IDLE")
    assert idler.line().startswith("+ ")

    # New mail through SMTP and through APPEND in the other session.
    code_, text = send(single_node, "carol@remote.test", [ALICE],
                       make_message("carol@remote.test", ALICE, subject="pushed"))
    assert code_ == 250, text
    assert idler.line() == "* 2 EXISTS"
    other.append("INBOX", None, None, message("appended"))
    assert idler.line() == "* 3 EXISTS"

    # The other session expunges message 1: the idler hears EXPUNGE.
    other.select("INBOX")
    other.store("1", "+FLAGS", "(\\Deleted)")
    # Flag changes may be announced as FETCH before the EXPUNGE.
    other.expunge()
    while True:
        line = idler.line()
        if line == "* 1 EXPUNGE":
            break
        assert line.startswith("* 1 FETCH"), line
    idler.send("DONE")
    assert idler.line() == "a3 OK IDLE terminated"
    lines = idler.command("a4", "UID FETCH 1:* (UID)")
    assert lines == ["* 1 FETCH (UID 2)", "* 2 FETCH (UID 3)", "a4 OK UID FETCH completed"], lines
    other.logout()


def test_ten_thousand_message_mailbox_stays_fast(single_node):
    count = 10_000
    single_node.add_user(ALICE, ALICE_PW)
    m = imaps(single_node)
    # Pipelined APPENDs with LITERAL+ (RFC 7888): one round trip per batch.
    started = time.monotonic()
    batch = 500
    for first in range(0, count, batch):
        commands = []
        for i in range(first, min(first + batch, count)):
            body = message(f"message {i}", body=f"number {i}")
            flags = "(\\Seen) " if i % 2 else ""
            commands.append(f"p{i} APPEND INBOX {flags}{{{len(body)}+}}\r\n".encode() + body + b"\r\n")
        m.sock.sendall(b"".join(commands))
        done = 0
        while done < len(commands):
            line = m.readline()
            if line.startswith(b"p"):
                assert b" OK " in line, line
                done += 1
    append_secs = time.monotonic() - started

    timings = {}

    def timed(name, f):
        t = time.monotonic()
        result = f()
        timings[name] = time.monotonic() - t
        return result

    typ, data = timed("SELECT", lambda: m.select("INBOX"))
    assert typ == "OK" and data == [str(count).encode()], data
    typ, data = timed("FETCH 1:* (FLAGS UID)", lambda: m.fetch("1:*", "(FLAGS UID)"))
    assert typ == "OK" and len(data) == count, len(data)
    typ, data = timed("SEARCH UNSEEN", lambda: m.search(None, "UNSEEN"))
    assert len(data[0].split()) == count // 2
    typ, data = timed("UID SEARCH 9990:*", lambda: m.uid("SEARCH", None, "UID", "9990:*"))
    assert len(data[0].split()) == 11
    typ, data = timed("SEARCH SUBJECT (header metadata stored at delivery)", lambda: m.search(None, "SUBJECT", '"message 9999"'))
    assert data == [str(count).encode()], data
    m.logout()

    print(f"\n10,000-message mailbox: {count} APPENDs in {append_secs:.1f} s "
          f"({count / append_secs:.0f}/s)")
    for name, secs in timings.items():
        print(f"  {name}: {secs * 1000:.0f} ms")
    for name in ("SELECT", "FETCH 1:* (FLAGS UID)", "SEARCH UNSEEN", "UID SEARCH 9990:*"):
        assert timings[name] < 3.0, (name, timings[name])
