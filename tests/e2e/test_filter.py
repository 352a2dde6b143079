"""The filter in a real `mailfleet serve`, against a real authoritative DNS
server: the testkit's `dns-server` example (hickory-server), serving test
zones from zone files, given to Mailfleet as `MAILFLEET__DNS__SERVERS`.

A message spoofing a domain with DMARC p=reject is refused in the SMTP
session, an aligned one is delivered with dmarc=pass in its
Authentication-Results, p=quarantine lands in Junk, GTUBE is refused, a
blocklisted client is stopped, and the Bayesian classifier is trained
with `mailfleet filter train`.
"""

import email
import subprocess
import time

import pytest

from conftest import SingleNode, dns_server_binary
from mail import imap_login, make_message, send

ALICE, ALICE_PW = "alice@example.test", "correct horse battery"
GTUBE = "XJS*C4JDBQADN1.NSBGR2-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"

ZONES = {
    # The client is 127.0.0.1: authorized here, so SPF aligns and passes.
    "good.test": '@ IN TXT "v=spf1 ip4:127.0.0.1 -all"\n'
                 '_dmarc IN TXT "v=DMARC1; p=reject"\n',
    # Nobody but 192.0.2.1 may send for spoof.test, and it says reject.
    "spoof.test": '@ IN TXT "v=spf1 ip4:192.0.2.1 -all"\n'
                  '_dmarc IN TXT "v=DMARC1; p=reject"\n',
    "quarantine.test": '@ IN TXT "v=spf1 ip4:192.0.2.1 -all"\n'
                       '_dmarc IN TXT "v=DMARC1; p=quarantine"\n',
    # A DNSBL listing 127.0.0.1 (RFC 5782 §5 test point is 127.0.0.2;
    # our client is 127.0.0.1).
    "bl.test": '1.0.0.127 IN A 127.0.0.2\n'
               '1.0.0.127 IN TXT "listed for tests"\n',
}




@pytest.fixture
def dns(tmp_path):
    args = []
    for origin, text in ZONES.items():
        path = tmp_path / f"{origin}.zone"
        path.write_text("$TTL 60\n" + text)
        args.append(f"{origin}={path}")
    proc = subprocess.Popen(
        [str(dns_server_binary()), *args],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    line = proc.stdout.readline()
    assert line.startswith("listening "), line
    yield line.split()[1]
    proc.stdin.close()
    proc.wait(timeout=10)


def start_node(tmp_path, dns_addr, **filter_keys):
    node = SingleNode(tmp_path / "data")
    env = {"MAILFLEET__DNS__SERVERS": f'["{dns_addr}"]'}
    for key, value in filter_keys.items():
        env[f"MAILFLEET__FILTER__{key.upper()}"] = value
    node.start(extra_env=env)
    node.add_user(ALICE, ALICE_PW)
    return node


@pytest.fixture
def node(tmp_path, dns):
    node = start_node(tmp_path, dns)
    yield node
    node.stop()


def send_from(node, sender, msg):
    return send(node, sender, [ALICE], msg)


def folder(node, name):
    """Every message of a folder, parsed, without setting \\Seen."""
    m = imap_login(node, ALICE, ALICE_PW)
    try:
        typ, data = m.select(name, readonly=True)
        assert typ == "OK", data
        out = []
        for i in range(1, int(data[0]) + 1):
            typ, data = m.fetch(str(i), "(BODY.PEEK[])")
            out.append(email.message_from_bytes(data[0][1]))
        return out
    finally:
        m.logout()


def wait_for(node, name, count, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        messages = folder(node, name)
        if len(messages) >= count:
            return messages
        time.sleep(0.2)
    raise AssertionError(f"{name} has {len(messages)} messages, expected {count}")


def test_spoofed_p_reject_is_refused_in_the_session(node):
    code, text = send_from(node, "ceo@spoof.test", make_message("ceo@spoof.test", ALICE))
    assert code == 550, (code, text)
    assert text.startswith(b"5.7.1"), text
    assert b"DMARC" in text and b"spoof.test" in text, text


def test_aligned_message_is_delivered_with_dmarc_pass(node):
    code, text = send_from(node, "news@good.test", make_message("news@good.test", ALICE))
    assert code == 250, (code, text)
    [delivered] = wait_for(node, "INBOX", 1)
    results = delivered["Authentication-Results"]
    assert results is not None, delivered.keys()
    assert "spf=pass" in results and "dmarc=pass" in results, results
    assert delivered["X-Spam-Status"].startswith("No"), delivered["X-Spam-Status"]


def test_quarantine_lands_in_junk_with_the_reason_in_headers(node):
    code, text = send_from(node, "x@quarantine.test", make_message("x@quarantine.test", ALICE))
    assert code == 250, (code, text)
    [junk] = wait_for(node, "Junk", 1)
    assert "DMARC_QUARANTINE" in junk["X-Spam-Status"], junk["X-Spam-Status"]
    assert "dmarc=fail" in junk["Authentication-Results"]
    assert folder(node, "INBOX") == []


def test_gtube_is_refused(node):
    msg = make_message("news@good.test", ALICE, body=f"test {GTUBE}\r\n")
    code, text = send_from(node, "news@good.test", msg)
    assert code == 554 and text.startswith(b"5.7.1"), (code, text)
    assert b"GTUBE" in text, text


def test_blocklisted_client_is_stopped(tmp_path, dns):
    node = start_node(tmp_path, dns, dnsbl_zones='["bl.test"]', dnsbl_score="20.0")
    try:
        code, text = send_from(node, "news@good.test", make_message("news@good.test", ALICE))
        assert code == 550 and text.startswith(b"5.7.1"), (code, text)
        assert b"RCVD_IN_DNSBL" in text, text
    finally:
        node.stop()


def test_filter_train_teaches_the_classifier(node, tmp_path):
    spam = tmp_path / "spam.mbox"
    ham = tmp_path / "ham.mbox"
    spam.write_text("".join(
        f"From x Tue Nov 24 10:00:00 2026\nSubject: cheap pills {i}\n\n"
        f"viagra pills pharmacy discount winner lottery prize {i}\n"
        for i in range(6)
    ))
    ham.write_text("".join(
        f"From x Tue Nov 24 10:00:00 2026\nSubject: meeting notes {i}\n\n"
        f"agenda for the project review tomorrow with the team {i}\n"
        for i in range(6)
    ))
    out = node.cli("filter", "train", "--spam", str(spam)).stdout
    assert "learned 6 message(s) as spam" in out, out
    out = node.cli("filter", "train", "--ham", str(ham)).stdout
    assert "learned 6 message(s) as ham" in out, out
    bad = node.cli("filter", "train", str(ham), check=False)
    assert bad.returncode != 0, "a class is required"

    msg = make_message("news@good.test", ALICE, subject="cheap pills",
                       body="viagra pills pharmacy discount winner lottery prize\r\n")
    code, text = send_from(node, "news@good.test", msg)
    assert code == 250, (code, text)
    # Trained spam words (BAYES_99) with a passing DMARC: scored, delivered.
    [delivered] = wait_for(node, "INBOX", 1)
    assert "BAYES_99" in delivered["X-Spam-Status"], delivered["X-Spam-Status"]
