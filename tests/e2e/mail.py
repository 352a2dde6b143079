"""Client-side helpers: send with smtplib, read with imaplib and poplib."""

import email
import imaplib
import poplib
import smtplib
import time
import uuid
from email.message import EmailMessage


def make_message(sender, rcpt, subject=None, body="Hello from the tests.\r\n"):
    msg = EmailMessage()
    msg["From"] = sender
    msg["To"] = rcpt
    msg["Subject"] = subject or f"test {uuid.uuid4()}"
    msg["Message-ID"] = f"<{uuid.uuid4()}@tests.mailfleet>"
    msg.set_content(body)
    return msg


def send(server, sender, rcpts, msg):
    """Sends over SMTP and returns the final reply (code, text) of DATA."""
    with smtplib.SMTP(server.host, server.ports["smtp"], timeout=30) as s:
        s.ehlo("client.tests")
        s.mail(sender)
        for r in rcpts:
            code, text = s.rcpt(r)
            assert code == 250, (r, code, text)
        return s.data(msg.as_bytes())


def imap_login(server, user, password):
    m = imaplib.IMAP4(server.host, server.ports["imap"], timeout=30)
    m.login(user, password)
    return m


def wait_for_messages(server, user, password, count, timeout=30):
    """Polls INBOX over IMAP until it holds `count` messages."""
    deadline = time.time() + timeout
    seen = None
    while time.time() < deadline:
        m = imap_login(server, user, password)
        try:
            typ, data = m.select("INBOX", readonly=True)
            assert typ == "OK", data
            seen = int(data[0])
            if seen >= count:
                return seen
        finally:
            m.logout()
        time.sleep(0.2)
    raise AssertionError(f"{user} has {seen} messages, expected {count}")


def imap_fetch_all(server, user, password):
    """Every message of INBOX as parsed email objects, without setting \\Seen."""
    m = imap_login(server, user, password)
    try:
        typ, data = m.select("INBOX")
        assert typ == "OK", data
        n = int(data[0])
        out = []
        for i in range(1, n + 1):
            typ, data = m.fetch(str(i), "(UID BODY.PEEK[])")
            assert typ == "OK", data
            out.append(email.message_from_bytes(data[0][1]))
        return out
    finally:
        m.logout()


def pop3_login(server, user, password):
    p = poplib.POP3(server.host, server.ports["pop3"], timeout=30)
    p.user(user)
    p.pass_(password)
    return p
