"""Users teach the Bayesian classifier by filing mail, on a real single node:
messages moved into Junk over IMAP are learnt as spam, messages moved out
of Junk as ham (moving junk to Trash teaches nothing), the filter counts
them on /metrics, and the next similar message carries a BAYES_ rule in its
X-Spam-Status header. Python's imaplib is the client.
"""

import email
import re
import time
import urllib.request

from conftest import wait_until
from mail import imap_login, make_message, send

ALICE, ALICE_PW = "alice@example.test", "junk learner"

SPAM_BODY = "zorblax quintrel vaporine megaflux offer for you {i}\r\n"
HAM_BODY = "sprocket committee minutes from the allotment garden {i}\r\n"


def learned(node):
    """mailfleet_filter_bayes_learned_total by class."""
    with urllib.request.urlopen(node.admin_url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    counts = {}
    for m in re.finditer(
            r'^mailfleet_filter_bayes_learned_total\{class="(\w+)"\} (\d+)', text, re.M):
        counts[m.group(1)] = int(m.group(2))
    return counts


def count(m, mailbox):
    typ, data = m.select(mailbox, readonly=True)
    assert typ == "OK", data
    return int(data[0])


def subjects(m, mailbox):
    """Subject and X-Spam-Status of every message of `mailbox`."""
    n = count(m, mailbox)
    out = []
    for i in range(1, n + 1):
        typ, data = m.fetch(str(i), "(BODY.PEEK[HEADER])")
        assert typ == "OK", data
        msg = email.message_from_bytes(data[0][1])
        out.append((msg["Subject"], msg["X-Spam-Status"] or ""))
    return out


def test_moves_into_and_out_of_junk_train_the_classifier(single_node):
    node = single_node
    node.add_user(ALICE, ALICE_PW)

    # Five spams arrive in INBOX over SMTP.
    for i in range(5):
        msg = make_message("deals@offers.test", ALICE, subject=f"megaflux offer {i}",
                           body=SPAM_BODY.format(i=i))
        code, text = send(node, "deals@offers.test", [ALICE], msg)
        assert code == 250, (code, text)
    m = imap_login(node, ALICE, ALICE_PW)
    try:
        wait_until(lambda: count(m, "INBOX") == 5, what="five messages in INBOX")
        # Five hams that the filter had put in Junk (APPEND teaches nothing).
        for i in range(5):
            ham = make_message("secretary@garden.test", ALICE, subject=f"garden minutes {i}",
                               body=HAM_BODY.format(i=i))
            typ, data = m.append("Junk", None, None, ham.as_bytes())
            assert typ == "OK", data
        assert learned(node) == {}

        # The user files the spams as junk (RFC 6851 MOVE) ...
        m.select("INBOX")
        typ, data = m.uid("MOVE", "1:*", "Junk")
        assert typ == "OK", data
        # ... and rescues the hams (UIDs 1-5 of Junk) into INBOX.
        m.select("Junk")
        typ, data = m.uid("MOVE", "1:5", "INBOX")
        assert typ == "OK", data
        # Deleting junk into Trash says nothing about it.
        typ, data = m.uid("MOVE", "6", "Trash")
        assert typ == "OK", data
        # A COPY into Junk teaches too.
        m.select("INBOX")
        typ, data = m.copy("1", "Junk")
        assert typ == "OK", data

        # Learning runs in the background: the replies did not wait for it.
        wait_until(lambda: learned(node) == {"spam": 6, "ham": 5},
                   what=f"6 spam and 5 ham learnt (now {learned(node)})")
        time.sleep(0.5)
        assert learned(node) == {"spam": 6, "ham": 5}, "Trash taught nothing"
    finally:
        m.logout()

    # A new spam of the same kind is now recognised by Bayes.
    msg = make_message("deals@offers.test", ALICE, subject="megaflux offer again",
                       body=SPAM_BODY.format(i="again"))
    code, text = send(node, "deals@offers.test", [ALICE], msg)
    assert code == 250, (code, text)
    m = imap_login(node, ALICE, ALICE_PW)
    try:
        def arrived():
            return [s for box in ("INBOX", "Junk") for s in subjects(m, box)
                    if s[0] == "megaflux offer again"]
        wait_until(lambda: arrived(), what="the new spam delivered")
        [(_, status)] = arrived()
        assert re.search(r"BAYES_(99|90|70)", status), status
    finally:
        m.logout()


def test_learning_can_be_switched_off(tmp_path):
    from conftest import SingleNode
    node = SingleNode(tmp_path / "data")
    node.start(extra_env={"MAILFLEET__ACCESS__LEARN_FROM_JUNK_MOVES": "false"})
    try:
        node.add_user(ALICE, ALICE_PW)
        m = imap_login(node, ALICE, ALICE_PW)
        try:
            msg = make_message("deals@offers.test", ALICE, body=SPAM_BODY.format(i=0))
            typ, data = m.append("INBOX", None, None, msg.as_bytes())
            assert typ == "OK", data
            m.select("INBOX")
            typ, data = m.uid("MOVE", "1", "Junk")
            assert typ == "OK", data
            time.sleep(1.0)
            assert learned(node) == {}
        finally:
            m.logout()
    finally:
        node.stop()
