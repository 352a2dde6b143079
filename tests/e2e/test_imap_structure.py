"""ENVELOPE and BODYSTRUCTURE are rendered once, when mailstore stores the
message, and FETCH answers them without reading the message: with the blob
gone they still come back, byte for byte; a message stored before the
renderings existed (empty columns) gets the same answer computed from the
blob."""

import shutil
import sqlite3
from email.message import EmailMessage

from mail import imap_login, send, wait_for_messages

ALICE, ALICE_PW = "alice@example.test", "correct horse battery"
ITEMS = "(ENVELOPE BODYSTRUCTURE BODY)"


def multipart():
    msg = EmailMessage()
    msg["From"] = "Jörg Bob <bob@remote.test>"
    msg["To"] = ALICE
    msg["Cc"] = "Eve <eve@remote.test>"
    msg["Subject"] = "résumé attached"
    msg["Message-ID"] = "<structure@remote.test>"
    msg["Date"] = "Mon, 1 Jan 2024 10:00:00 +0000"
    msg.set_content("Hello,\r\nmy CV.\r\n")
    msg.add_attachment(b"%PDF-1.4 not really", maintype="application", subtype="pdf",
                       filename="cv.pdf")
    return msg


def fetch_structure(node):
    m = imap_login(node, ALICE, ALICE_PW)
    try:
        typ, data = m.select("INBOX", readonly=True)
        assert typ == "OK", data
        typ, data = m.fetch("1", ITEMS)
        assert typ == "OK", data
        # imaplib splits literals out; join everything back into one answer.
        return b"".join(p if isinstance(p, bytes) else b"".join(p) for p in data)
    finally:
        m.logout()


def test_fetch_answers_structure_from_what_was_stored_at_delivery(single_node):
    single_node.add_user(ALICE, ALICE_PW)
    code, text = send(single_node, "bob@remote.test", [ALICE], multipart())
    assert code == 250, (code, text)
    wait_for_messages(single_node, ALICE, ALICE_PW, 1)

    stored = fetch_structure(single_node)
    # The subject as sent in the header: an RFC 2047 word, 7-bit.
    assert b'"=?utf-8?q?r=C3=A9sum=C3=A9?= attached"' in stored, stored
    assert b'ENVELOPE ("Mon, 01 Jan 2024 10:00:00 +0000" ' in stored, stored
    assert b'"MIXED"' in stored, stored
    assert b'("APPLICATION" "PDF"' in stored and b'"cv.pdf"' in stored, stored
    assert b'(("=?UTF-8?B?SsO2cmcgQm9i?=" NIL "bob" "remote.test"))' in stored, stored

    # Without the blob, FETCH of the structure still answers the same: it
    # was not read. (BODY[] would fail.)
    store_dir = single_node.data_dir / "blobs" / "store"
    moved = single_node.data_dir.parent / "blobs-away"
    shutil.move(store_dir, moved)
    try:
        assert fetch_structure(single_node) == stored
    finally:
        shutil.move(moved, store_dir)

    # A message from before the renderings were stored: computed from the
    # blob, the same bytes.
    db = sqlite3.connect(single_node.data_dir / "mailstore.db", timeout=10)
    with db:
        db.execute("UPDATE messages SET envelope = '', body_structure = '', body_simple = ''")
    db.close()
    assert fetch_structure(single_node) == stored
