"""smtp-edge as a careful operator tries it from outside, with clients
nobody here wrote (Python's smtplib and swaks) against a real
`mailfleet serve`: a pipelined session, STARTTLS on the MX, AUTH submission
on 2587 (STARTTLS) and 2465 (implicit TLS), relay attempts.

The single node has no certificate configured, so it generated a
self-signed one into <data_dir>/tls/; the clients trust exactly that file
and verify the server against it.
"""

import socket
import ssl
import smtplib
import subprocess

import pytest

from mail import imap_fetch_all, make_message, wait_for_messages

ALICE, ALICE_PW = "alice@example.test", "correct horse battery"
BOB, BOB_PW = "bob@example.test", "tr0ub4dor&3"


def tls_context(node):
    cafile = node.data_dir / "tls" / "self-signed.crt"
    assert cafile.exists(), "the single node generates a certificate at start"
    ctx = ssl.create_default_context(cafile=str(cafile))
    # TLS 1.2+ only, as the server.
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def test_pipelined_session_gets_every_reply_in_order(single_node):
    single_node.add_user(ALICE, ALICE_PW)
    with socket.create_connection((single_node.host, single_node.ports["smtp"]), timeout=30) as s:
        f = s.makefile("rb")
        assert f.readline().startswith(b"220 ")
        s.sendall(
            b"EHLO client.tests\r\n"
            b"MAIL FROM:<bob@remote.test>\r\n"
            b"RCPT TO:<" + ALICE.encode() + b">\r\n"
            b"RCPT TO:<nobody@example.test>\r\n"
            b"RCPT TO:<victim@elsewhere.test>\r\n"
            b"DATA\r\n"
        )
        ehlo = []
        while True:
            line = f.readline()
            ehlo.append(line)
            if line[3:4] == b" ":
                break
        assert b"250-PIPELINING\r\n" in ehlo and b"250-CHUNKING\r\n" in ehlo, ehlo
        assert b"250-STARTTLS\r\n" in ehlo, ehlo
        assert not any(b"AUTH" in l for l in ehlo), "no AUTH on the MX"
        replies = [f.readline() for _ in range(5)]
        assert [r[:9] for r in replies] == [
            b"250 2.1.0", b"250 2.1.5", b"550 5.1.1", b"554 5.7.1", b"354 2.0.0",
        ], replies
        s.sendall(b"Subject: pipelined\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        assert f.readline().startswith(b"250 2.0.0 Ok: queued as ")
        assert f.readline().startswith(b"221 ")
    wait_for_messages(single_node, ALICE, ALICE_PW, 1)


def test_starttls_on_the_mx_is_verified_and_recorded(single_node):
    single_node.add_user(ALICE, ALICE_PW)
    with smtplib.SMTP(single_node.host, single_node.ports["smtp"], timeout=30) as s:
        s.ehlo("client.tests")
        assert s.has_extn("starttls")
        code, _ = s.starttls(context=tls_context(single_node))
        assert code == 220
        s.ehlo("client.tests")
        assert not s.has_extn("starttls")
        assert s.sock.version() in ("TLSv1.2", "TLSv1.3")
        msg = make_message("bob@remote.test", ALICE, subject="over starttls")
        s.send_message(msg)
    wait_for_messages(single_node, ALICE, ALICE_PW, 1)
    [got] = imap_fetch_all(single_node, ALICE, ALICE_PW)
    received = " ".join(got.get_all("Received"))
    assert "with ESMTPS (TLSv1.3 TLS13_" in received, received


def test_submission_on_2587_starttls_then_auth(single_node):
    single_node.add_user(ALICE, ALICE_PW)
    single_node.add_user(BOB, BOB_PW)
    with smtplib.SMTP(single_node.host, single_node.ports["submission"], timeout=30) as s:
        s.ehlo("mua.tests")
        # No password in clear: AUTH appears only after STARTTLS.
        assert not s.has_extn("auth")
        with pytest.raises(smtplib.SMTPNotSupportedError):
            s.login(ALICE, ALICE_PW)
        code, text = s.mail(ALICE)
        assert (code, text[:5]) == (530, b"5.7.0"), (code, text)
        s.rset()
        s.starttls(context=tls_context(single_node))
        s.ehlo("mua.tests")
        assert "PLAIN" in s.esmtp_features["auth"] and "LOGIN" in s.esmtp_features["auth"]
        with pytest.raises(smtplib.SMTPAuthenticationError) as wrong:
            s.login(ALICE, "wrong password")
        assert wrong.value.smtp_code == 535
        assert wrong.value.smtp_error.startswith(b"5.7.8")
        code, _ = s.login(ALICE, ALICE_PW)
        assert code == 235
        # Only as herself.
        code, text = s.mail(BOB)
        assert (code, text[:5]) == (553, b"5.7.1"), (code, text)
        s.rset()
        # To a remote domain: accepted and queued for delivery.
        refused = s.sendmail(ALICE, ["someone@elsewhere.test", BOB],
                             b"Subject: from alice\r\n\r\nhello bob\r\n")
        assert refused == {}
    wait_for_messages(single_node, BOB, BOB_PW, 1)
    [got] = imap_fetch_all(single_node, BOB, BOB_PW)
    # Submission added what the client left out (RFC 6409 §8).
    assert got["Message-ID"] and got["Date"], dict(got)
    assert "ESMTPSA" in got["Received"], got["Received"]


def test_submissions_on_2465_is_tls_from_the_first_byte(single_node):
    single_node.add_user(ALICE, ALICE_PW)
    ctx = tls_context(single_node)
    with smtplib.SMTP_SSL(single_node.host, single_node.ports["submissions"],
                          context=ctx, timeout=30) as s:
        s.ehlo("mua.tests")
        assert not s.has_extn("starttls")
        # AUTH LOGIN explicitly (smtplib would pick PLAIN).
        s.user, s.password = ALICE, ALICE_PW
        code, _ = s.auth("LOGIN", s.auth_login, initial_response_ok=False)
        assert code == 235
        s.send_message(make_message(ALICE, ALICE, subject="note to self"))
    wait_for_messages(single_node, ALICE, ALICE_PW, 1)
    [got] = imap_fetch_all(single_node, ALICE, ALICE_PW)
    assert got["Subject"] == "note to self"
    assert "ESMTPSA (TLSv1.3" in got["Received"], got["Received"]


def test_relay_attempts_are_refused(single_node):
    single_node.add_user(ALICE, ALICE_PW)
    with smtplib.SMTP(single_node.host, single_node.ports["smtp"], timeout=30) as s:
        s.ehlo("attacker.tests")
        s.mail("spammer@attacker.tests")
        for rcpt in [
            "victim@elsewhere.test",
            "victim%elsewhere.test@example.test",
            "elsewhere.test!victim@example.test",
            '"victim@elsewhere.test"@example.test',
            "alice@example.test.",
            "@example.test:victim@elsewhere.test",
            "alice@[127.0.0.1]",
        ]:
            code, text = s.rcpt(rcpt)
            assert code in (554, 501), (rcpt, code, text)
            if code == 554:
                assert text.startswith(b"5.7.1"), (rcpt, text)
    # Authenticated submission without TLS is not even possible.
    with smtplib.SMTP(single_node.host, single_node.ports["submission"], timeout=30) as s:
        s.ehlo("attacker.tests")
        code, text = s.mail(ALICE)
        assert code == 530, (code, text)


def test_swaks_starttls_auth_and_implicit_tls(single_node):
    single_node.add_user(ALICE, ALICE_PW)
    cafile = str(single_node.data_dir / "tls" / "self-signed.crt")
    common = ["swaks", "--from", ALICE, "--to", ALICE, "--auth-user", ALICE,
              "--auth-password", ALICE_PW, "--tls-verify", "--tls-ca-path", cafile,
              "--tls-sni", "localhost", "--timeout", "30"]
    runs = [
        ["--server", f"127.0.0.1:{single_node.ports['submission']}", "--tls", "--auth", "PLAIN"],
        ["--server", f"127.0.0.1:{single_node.ports['submissions']}", "--tlsc", "--auth", "LOGIN"],
    ]
    for args in runs:
        result = subprocess.run(common + args, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "235 2.7.0" in result.stdout and "queued as" in result.stdout, result.stdout
    # Wrong password: swaks reports the 535.
    result = subprocess.run(
        ["swaks", "--server", f"127.0.0.1:{single_node.ports['submission']}", "--tls",
         "--tls-verify", "--tls-ca-path", cafile, "--auth", "PLAIN", "--auth-user", ALICE,
         "--auth-password", "nope", "--from", ALICE, "--to", ALICE],
        capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "535 5.7.8" in result.stdout, result.stdout
    wait_for_messages(single_node, ALICE, ALICE_PW, 2)


def test_submission_as_an_alias_with_the_real_directory(single_node):
    single_node.add_user(ALICE, ALICE_PW)
    single_node.add_user(BOB, BOB_PW)
    single_node.cli("alias", "add", "sales@example.test", ALICE)
    ctx = tls_context(single_node)
    with smtplib.SMTP_SSL(single_node.host, single_node.ports["submissions"],
                          context=ctx, timeout=30) as s:
        s.login(ALICE, ALICE_PW)
        assert s.sendmail("sales@example.test", [BOB], b"Subject: as sales\r\n\r\nx\r\n") == {}
    with smtplib.SMTP_SSL(single_node.host, single_node.ports["submissions"],
                          context=ctx, timeout=30) as s:
        s.login(BOB, BOB_PW)
        code, text = s.mail("sales@example.test")
        assert (code, text[:5]) == (553, b"5.7.1"), (code, text)
    wait_for_messages(single_node, BOB, BOB_PW, 1)


def test_proxy_protocol_from_a_trusted_balancer_and_bdat(tmp_path):
    """A load balancer on loopback sends PROXY v1 and v2; the message, sent
    with BDAT, carries the real client's address in Received:."""
    from conftest import SingleNode
    import struct

    node = SingleNode(tmp_path / "data")
    node.start(extra_env={"MAILFLEET__SMTP__PROXY_TRUSTED_NETWORKS": '["127.0.0.0/8"]'})
    try:
        node.add_user(ALICE, ALICE_PW)
        v2 = (b"\r\n\r\n\x00\r\nQUIT\n" + bytes([0x21, 0x11]) + struct.pack("!H", 12)
              + socket.inet_aton("198.51.100.23") + socket.inet_aton("127.0.0.1")
              + struct.pack("!HH", 40000, 25))
        for header, ip in [(b"PROXY TCP4 203.0.113.9 127.0.0.1 40000 25\r\n", "203.0.113.9"),
                           (v2, "198.51.100.23")]:
            with socket.create_connection((node.host, node.ports["smtp"]), timeout=30) as s:
                s.sendall(header)
                f = s.makefile("rb")
                assert f.readline().startswith(b"220 ")
                body = f"Subject: via {ip}\r\n\r\nchunked\r\n".encode()
                s.sendall(b"EHLO balanced.tests\r\nMAIL FROM:<bob@remote.test>\r\n"
                          + b"RCPT TO:<" + ALICE.encode() + b">\r\n"
                          + b"BDAT %d LAST\r\n" % len(body) + body + b"QUIT\r\n")
                replies = [line for line in f.readlines()]
                assert replies[-2].startswith(b"250 2.0.0 Ok: queued as"), replies
        # Without a header, a connection from the trusted range is closed.
        with socket.create_connection((node.host, node.ports["smtp"]), timeout=30) as s:
            s.sendall(b"EHLO sneaky.tests\r\n")
            try:
                assert s.recv(100) == b""
            except ConnectionResetError:
                pass
        wait_for_messages(node, ALICE, ALICE_PW, 2)
        received = sorted(" ".join(m.get_all("Received")) for m in imap_fetch_all(node, ALICE, ALICE_PW))
        assert any("[198.51.100.23]" in r for r in received), received
        assert any("[203.0.113.9]" in r for r in received), received
    finally:
        node.stop()



def send_to_team_and_catch_all(node):
    node.add_user(ALICE, ALICE_PW)
    node.add_user(BOB, BOB_PW)
    node.cli("alias", "add", "team@example.test", ALICE, BOB)
    with smtplib.SMTP(node.host, node.ports["smtp"], timeout=30) as s:
        s.ehlo("client.tests")
        s.mail("someone@remote.test")
        assert s.rcpt("nobody@example.test")[0] == 550
        s.rset()
    node.cli("catch-all", "set", "example.test", ALICE)
    with smtplib.SMTP(node.host, node.ports["smtp"], timeout=30) as s:
        s.ehlo("client.tests")
        # One alias of two accounts, one unknown name caught by the catch-all.
        refused = s.sendmail("someone@remote.test", ["team@example.test", "nobody@example.test"],
                             b"Subject: to the team\r\n\r\nhello\r\n")
        assert refused == {}


def test_mx_recipients_through_aliases_and_catch_all(single_node):
    send_to_team_and_catch_all(single_node)
    # alice once: the alias and the catch-all both resolve to her.
    wait_for_messages(single_node, ALICE, ALICE_PW, 1)
    assert len(imap_fetch_all(single_node, ALICE, ALICE_PW)) == 1
    log = single_node.log_path.read_text()
    assert "recipients=2" in log, "smtp-edge queues one recipient per account"


def test_every_account_of_an_alias_gets_the_message(single_node):
    send_to_team_and_catch_all(single_node)
    wait_for_messages(single_node, BOB, BOB_PW, 1, timeout=10)
