"""Non-ASCII mailbox names with Python's imaplib on a real single node:
imaplib sends names as given, so an IMAP4rev1 client names "Été" in
modified UTF-7 (RFC 3501 §5.1.3) and reads it back that way in LIST and
STATUS, while a client that enables UTF8=ACCEPT (RFC 6855) sees the same
mailbox by its UTF-8 name.
"""

import imaplib

import pytest

from mail import imap_login, make_message

ALICE, ALICE_PW = "alice@example.test", "utf7 names"


def test_modified_utf7_and_utf8_mailbox_names(single_node):
    node = single_node
    node.add_user(ALICE, ALICE_PW)
    m = imap_login(node, ALICE, ALICE_PW)
    try:
        typ, data = m.create('"&AMk-t&AOk-/&ZeVnLIqe-"')   # "Été/日本語"
        assert typ == "OK", data
        typ, data = m.list('""', '"&AMk-t&AOk-*"')
        assert typ == "OK", data
        assert data == [
            b'(\\HasChildren) "/" "&AMk-t&AOk-"',
            b'(\\HasNoChildren) "/" "&AMk-t&AOk-/&ZeVnLIqe-"',
        ], data

        msg = make_message("bob@remote.test", ALICE, subject="filed")
        typ, data = m.append('"&AMk-t&AOk-"', None, None, msg.as_bytes())
        assert typ == "OK", data
        typ, data = m.status('"&AMk-t&AOk-"', "(MESSAGES)")
        assert typ == "OK", data
        assert data == [b'"&AMk-t&AOk-" (MESSAGES 1)'], data
        typ, data = m.select('"&AMk-t&AOk-"')
        assert (typ, data) == ("OK", [b"1"]), data
        typ, data = m.uid("MOVE", "1", '"&AMk-t&AOk-/&ZeVnLIqe-"')
        assert typ == "OK", data

        # A malformed name is refused; the session goes on.
        with pytest.raises(imaplib.IMAP4.error, match="modified UTF-7"):
            m.create('"&AMk"')
        typ, data = m.noop()
        assert typ == "OK", data
    finally:
        m.logout()

    # A UTF-8 client sees the same mailboxes by their UTF-8 names.
    m = imap_login(node, ALICE, ALICE_PW)
    try:
        # imaplib then sends str arguments as UTF-8.
        typ, data = m.enable("UTF8=ACCEPT")
        assert typ == "OK", data
        typ, data = m.list('""', '"Été/*"')
        assert typ == "OK", data
        assert data == ['(\\HasNoChildren) "/" "Été/日本語"'.encode()], data
        typ, data = m.select('"Été/日本語"')
        assert (typ, data) == ("OK", [b"1"]), data
    finally:
        m.logout()
