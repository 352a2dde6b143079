"""The walking skeleton on a single node: one `mailfleet serve` process."""

import email
import signal
import smtplib
import socket
import subprocess
import time
import urllib.request

import pytest

from conftest import BIN, SingleNode, free_port, http_status
from mail import (
    imap_fetch_all, imap_login, make_message, pop3_login, send, wait_for_messages,
)

ALICE, ALICE_PW = "alice@example.test", "correct horse battery"


def test_deliver_then_read_over_imap_and_pop3(single_node):
    single_node.add_user(ALICE, ALICE_PW)
    msg = make_message("bob@remote.test", ALICE, subject="first mail")
    code, text = send(single_node, "bob@remote.test", [ALICE], msg)
    assert code == 250 and b"queued as" in text, (code, text)

    wait_for_messages(single_node, ALICE, ALICE_PW, 1)
    [got] = imap_fetch_all(single_node, ALICE, ALICE_PW)
    assert got["Subject"] == "first mail"
    assert got["Message-ID"] == msg["Message-ID"]
    assert "Hello from the tests." in got.get_payload()
    # smtp-edge stamped it: the client's HELO and IP, our hostname, ESMTP.
    received = got["Received"]
    assert "client.tests" in received and "127.0.0.1" in received, received
    assert "by localhost" in received and "ESMTP" in received, received

    # BODY.PEEK left it unseen; BODY[] marks it \Seen; STORE clears it again.
    m = imap_login(single_node, ALICE, ALICE_PW)
    m.select("INBOX")
    typ, data = m.fetch("1", "(FLAGS)")
    assert b"\\Seen" not in data[0]
    typ, data = m.fetch("1", "(BODY[])")
    assert typ == "OK"
    typ, data = m.fetch("1", "(FLAGS)")
    assert b"\\Seen" in data[0], data
    typ, data = m.store("1", "-FLAGS", "(\\Seen)")
    assert typ == "OK" and b"\\Seen" not in data[0], data
    typ, data = m.list()
    names = b" ".join(data)
    assert b"INBOX" in names and b"Junk" in names, data
    m.logout()

    p = pop3_login(single_node, ALICE, ALICE_PW)
    count, size = p.stat()
    assert count == 1 and size > 0
    resp, lines, octets = p.retr(1)
    assert resp.startswith(b"+OK")
    assert email.message_from_bytes(b"\r\n".join(lines))["Subject"] == "first mail"
    p.dele(1)
    p.quit()

    p = pop3_login(single_node, ALICE, ALICE_PW)
    assert p.stat()[0] == 0
    p.quit()


def test_wrong_password_is_refused(single_node):
    single_node.add_user(ALICE, ALICE_PW)
    with pytest.raises(Exception) as e:
        imap_login(single_node, ALICE, "wrong")
    assert "AUTHENTICATIONFAILED" in str(e.value) or "NO" in str(e.value)
    with pytest.raises(Exception):
        pop3_login(single_node, ALICE, "wrong")


def test_unknown_local_user_is_refused_at_rcpt(single_node):
    single_node.add_user(ALICE, ALICE_PW)
    with smtplib.SMTP(single_node.host, single_node.ports["smtp"], timeout=30) as s:
        s.ehlo("client.tests")
        s.mail("bob@remote.test")
        code, text = s.rcpt("nobody@example.test")
        assert code == 550 and text.startswith(b"5.1.1"), (code, text)
        # The session goes on: a known recipient is still accepted.
        assert s.rcpt(ALICE)[0] == 250


def test_relay_is_refused_without_auth(single_node):
    single_node.add_user(ALICE, ALICE_PW)
    with smtplib.SMTP(single_node.host, single_node.ports["smtp"], timeout=30) as s:
        s.ehlo("client.tests")
        s.mail(ALICE)
        code, text = s.rcpt("victim@elsewhere.test")
        assert code == 554 and text.startswith(b"5.7.1"), (code, text)


def test_swaks_delivers(single_node):
    single_node.add_user(ALICE, ALICE_PW)
    out = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{single_node.ports['smtp']}", "--to", ALICE,
         "--from", "carol@remote.test", "--header", "Subject: via swaks", "--body", "swaks body"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "queued as" in out.stdout
    wait_for_messages(single_node, ALICE, ALICE_PW, 1)
    [got] = imap_fetch_all(single_node, ALICE, ALICE_PW)
    assert got["Subject"] == "via swaks"


def test_mail_survives_a_restart(single_node):
    single_node.add_user(ALICE, ALICE_PW)
    send(single_node, "bob@remote.test", [ALICE], make_message("bob@remote.test", ALICE, "kept"))
    wait_for_messages(single_node, ALICE, ALICE_PW, 1)
    assert single_node.stop() == 0
    single_node.start()
    [got] = imap_fetch_all(single_node, ALICE, ALICE_PW)
    assert got["Subject"] == "kept"
    p = pop3_login(single_node, ALICE, ALICE_PW)
    assert p.stat()[0] == 1
    p.quit()


def test_queued_mail_survives_kill_9(tmp_path):
    """A 250 means durable: kill -9 before any delivery, restart, and it arrives."""
    node = SingleNode(tmp_path / "data")
    node.start()
    node.add_user(ALICE, ALICE_PW)
    node.stop()
    # No delivery target: the message can only wait in the queue.
    node.start(target="mailstore,filter,smtp-edge")
    code, text = send(node, "bob@remote.test", [ALICE], make_message("bob@remote.test", ALICE, "durable"))
    assert code == 250
    node.stop(signal.SIGKILL)
    node.start()
    try:
        wait_for_messages(node, ALICE, ALICE_PW, 1)
        [got] = imap_fetch_all(node, ALICE, ALICE_PW)
        assert got["Subject"] == "durable"
    finally:
        node.stop()


def test_sigterm_closes_open_smtp_sessions_with_421(single_node):
    sock = socket.create_connection((single_node.host, single_node.ports["smtp"]), timeout=30)
    f = sock.makefile("rb")
    assert f.readline().startswith(b"220")
    sock.sendall(b"EHLO client.tests\r\n")
    while True:
        line = f.readline()
        assert line.startswith(b"250"), line
        if line[3:4] == b" ":
            break
    single_node.proc.send_signal(signal.SIGTERM)
    line = f.readline()
    assert line.startswith(b"421"), line
    assert single_node.proc.wait(timeout=30) == 0
    single_node.proc = None


def test_admin_cli_manages_domains_and_users(single_node):
    single_node.cli("domain", "add", "example.test")
    single_node.cli("domain", "add", "other.test")
    assert set(single_node.cli("domain", "list").stdout.split()) >= {"example.test", "other.test"}
    single_node.cli("user", "add", "dave@example.test", "--password-stdin", input="s3cret\n")
    assert "dave@example.test" in single_node.cli("user", "list").stdout.split()
    # The password from stdin works, argon2-verified by the directory.
    imap_login(single_node, "dave@example.test", "s3cret").logout()

    # A user in a domain we do not serve is refused with a clear message.
    bad = single_node.cli("user", "add", "x@nowhere.test", "--password", "p", check=False)
    assert bad.returncode != 0 and bad.stderr

    single_node.cli("user", "del", "dave@example.test")
    assert "dave@example.test" not in single_node.cli("user", "list").stdout.split()
    gone = single_node.cli("user", "del", "dave@example.test", check=False)
    assert gone.returncode != 0


def test_admin_api_requires_the_token(single_node):
    wrong = single_node.cli("domain", "list", check=False,
                            env_extra={"MAILFLEET_ADMIN_TOKEN": "not-the-token"})
    assert wrong.returncode != 0 and "token" in wrong.stderr
    req = urllib.request.Request(single_node.admin_url + "/api/v1/domains")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 401


def test_health_ready_and_metrics(single_node):
    assert http_status(single_node.admin_url + "/healthz") == 200
    assert http_status(single_node.admin_url + "/readyz") == 200
    single_node.add_user(ALICE, ALICE_PW)
    send(single_node, "bob@remote.test", [ALICE], make_message("bob@remote.test", ALICE))
    wait_for_messages(single_node, ALICE, ALICE_PW, 1)
    text = urllib.request.urlopen(single_node.admin_url + "/metrics", timeout=5).read().decode()
    assert "mailfleet_" in text, text[:500]


def test_bad_config_exits_64_before_binding(tmp_path):
    port = free_port()
    node = SingleNode(tmp_path / "data")
    env = node.env({"MAILFLEET__LISTEN__ADMIN": f"127.0.0.1:{port}",
                    "MAILFLEET__BACKENDS__QUEUE_URL": "kafka://nope"})
    out = subprocess.run([BIN, "serve", "--data-dir", str(node.data_dir)], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 64, out.stderr
    assert "backends.queue_url" in out.stderr
    conf = tmp_path / "bad.toml"
    conf.write_text('[smtp]\nmax_recipients = "many"\n')
    out = subprocess.run([BIN, "config", "check", str(conf)], capture_output=True, text=True)
    assert out.returncode == 64 and "max_recipients" in out.stderr
