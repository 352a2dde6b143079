"""Directory administration through the CLI against a real `mailfleet serve`:
aliases, per-domain catch-all and per-account quota, observed by sending
mail with smtplib and reading it with imaplib."""

import imaplib
import smtplib
import time

from mail import imap_login, make_message, send, wait_for_messages

ALICE, ALICE_PW = "alice@example.test", "alice password"
BOB, BOB_PW = "bob@example.test", "bob password"


def inbox_count(server, user, password):
    m = imap_login(server, user, password)
    try:
        typ, data = m.select("INBOX", readonly=True)
        return int(data[0])
    finally:
        m.logout()


def test_alias_and_catch_all(single_node):
    single_node.add_user(ALICE, ALICE_PW)
    single_node.add_user(BOB, BOB_PW)
    out = single_node.cli("alias", "add", "Team@Example.test", ALICE, BOB).stdout
    assert "team@example.test" in out.lower(), out
    listed = single_node.cli("alias", "list").stdout
    assert "team@example.test -> alice@example.test, bob@example.test" in listed, listed

    code, text = send(single_node, "carol@remote.test", ["team@example.test"],
                      make_message("carol@remote.test", "team@example.test", subject="to the team"))
    assert code == 250, text
    # Every account of the alias gets it.
    wait_for_messages(single_node, ALICE, ALICE_PW, 1)
    wait_for_messages(single_node, BOB, BOB_PW, 1)

    # An alias may not shadow an account; unknown targets are refused.
    assert single_node.cli("alias", "add", BOB, ALICE, check=False).returncode != 0
    assert single_node.cli("alias", "add", "x@example.test", "ghost@example.test", check=False).returncode != 0

    # Unknown local part: 550 until a catch-all is set.
    with smtplib.SMTP(single_node.host, single_node.ports["smtp"], timeout=30) as s:
        s.ehlo("client.tests")
        s.mail("carol@remote.test")
        code, _ = s.rcpt("random@example.test")
        assert code == 550, code
    single_node.cli("catch-all", "set", "example.test", BOB)
    code, text = send(single_node, "carol@remote.test", ["random@example.test"],
                      make_message("carol@remote.test", "random@example.test", subject="caught"))
    assert code == 250, text
    wait_for_messages(single_node, BOB, BOB_PW, 2)
    single_node.cli("catch-all", "clear", "example.test")
    with smtplib.SMTP(single_node.host, single_node.ports["smtp"], timeout=30) as s:
        s.ehlo("client.tests")
        s.mail("carol@remote.test")
        assert s.rcpt("random@example.test")[0] == 550

    single_node.cli("alias", "del", "team@example.test")
    assert "team@" not in single_node.cli("alias", "list").stdout


def test_quota_defers_delivery_and_refuses_append(single_node):
    single_node.add_user(ALICE, ALICE_PW)
    code, text = send(single_node, "carol@remote.test", [ALICE],
                      make_message("carol@remote.test", ALICE, subject="fits"))
    assert code == 250, text
    wait_for_messages(single_node, ALICE, ALICE_PW, 1)
    shown = single_node.cli("quota", "show", ALICE).stdout
    assert "in 1 messages, limit none" in shown, shown

    single_node.cli("quota", "set", ALICE, "1K")
    assert "limit 1024 bytes" in single_node.cli("quota", "show", ALICE).stdout

    # Over quota, IMAP APPEND gets NO [OVERQUOTA] (RFC 9208 §4.1).
    m = imap_login(single_node, ALICE, ALICE_PW)
    typ, data = m.append("INBOX", None, None, b"Subject: big\r\n\r\n" + b"x" * 2000 + b"\r\n")
    assert typ == "NO" and b"[OVERQUOTA]" in data[0], (typ, data)
    typ, data = m.getquotaroot("INBOX")
    assert typ == "OK", data
    m.logout()

    # Delivery over quota is deferred (4.2.2 semantics: retried later), so
    # the message does not arrive while the quota is too small...
    code, text = send(single_node, "carol@remote.test", [ALICE],
                      make_message("carol@remote.test", ALICE, subject="too big " + "y" * 2000))
    assert code == 250, text
    time.sleep(3)
    assert inbox_count(single_node, ALICE, ALICE_PW) == 1
    # ...and is not lost: a bigger quota and the next attempt deliver it
    # (the first retry interval is minutes, so only the quota is checked here).
    single_node.cli("quota", "set", ALICE, "0")
    m = imap_login(single_node, ALICE, ALICE_PW)
    typ, data = m.append("INBOX", None, None, b"Subject: big\r\n\r\n" + b"x" * 2000 + b"\r\n")
    assert typ == "OK", data
    m.logout()


def test_over_quota_bounces_with_5_2_2_when_configured_permanent(tmp_path):
    from conftest import SingleNode
    from mail import imap_fetch_all

    node = SingleNode(tmp_path / "data")
    node.start(extra_env={"MAILFLEET__MAILSTORE__OVER_QUOTA_PERMANENT": "true"})
    try:
        node.add_user(ALICE, ALICE_PW)
        node.add_user(BOB, BOB_PW)
        node.cli("quota", "set", ALICE, "1K")
        code, text = send(node, BOB, [ALICE],
                          make_message(BOB, ALICE, subject="too big", body="z" * 4000 + "\r\n"))
        assert code == 250, text
        # The DSN (RFC 3464) comes back to the local sender, mailbox full.
        wait_for_messages(node, BOB, BOB_PW, 1)
        [dsn] = imap_fetch_all(node, BOB, BOB_PW)
        report = dsn.as_string()
        assert "Status: 5.2.2" in report, report
        assert inbox_count(node, ALICE, ALICE_PW) == 0
    finally:
        node.stop()
