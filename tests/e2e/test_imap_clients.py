"""Two more IMAP/POP3 clients nobody here wrote, over implicit TLS against a
real `mailfleet serve`: mbsync (isync) synchronising a Maildir both ways —
folders, new mail, flags, deletions — and curl's IMAP/POP3 support."""

import imaplib
import shutil
import subprocess
import time

import pytest

from test_imap import ALICE, ALICE_PW, imaps, message

pytestmark = pytest.mark.skipif(shutil.which("mbsync") is None or shutil.which("curl") is None,
                                reason="mbsync (isync) and curl are needed")


def cert(server):
    return str(server.data_dir / "tls" / "self-signed.crt")


def mbsync(server, tmp_path):
    config = tmp_path / "mbsyncrc"
    maildir = tmp_path / "mail"
    maildir.mkdir(exist_ok=True)
    config.write_text(f"""
IMAPAccount mailfleet
Host 127.0.0.1
Port {server.ports['imaps']}
User {ALICE}
Pass "{ALICE_PW}"
SSLType IMAPS
CertificateFile {cert(server)}

IMAPStore far
Account mailfleet

MaildirStore near
Path {maildir}/
Inbox {maildir}/INBOX
SubFolders Verbatim

Channel everything
Far :far:
Near :near:
Patterns *
Create Both
Remove None
Expunge Both
SyncState *
""")
    result = subprocess.run(["mbsync", "-c", str(config), "-a"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    return maildir


def files(folder):
    return sorted(p for sub in ("cur", "new") for p in (folder / sub).iterdir())


def test_mbsync_two_way_maildir_sync(single_node, tmp_path):
    single_node.add_user(ALICE, ALICE_PW)
    m = imaps(single_node)
    m.create("Projects")
    m.append("INBOX", None, None, message("one"))
    m.append("INBOX", "(\\Flagged)", None, message("two"))
    m.append("Projects", None, None, message("plan"))
    m.logout()

    maildir = mbsync(single_node, tmp_path)
    inbox = files(maildir / "INBOX")
    assert len(inbox) == 2, inbox
    assert any(p.name.endswith(",F") for p in inbox), inbox
    assert len(files(maildir / "Projects")) == 1

    # Near side: a new folder with a message, one INBOX message read, the
    # other deleted (trashed + expunged).
    (maildir / "Drafts2" / "new").mkdir(parents=True)
    (maildir / "Drafts2" / "cur").mkdir()
    (maildir / "Drafts2" / "tmp").mkdir()
    (maildir / "Drafts2" / "new" / f"{int(time.time())}.1.local").write_bytes(message("from the laptop"))
    first, second = inbox
    first.rename(first.parent.parent / "cur" / (first.name.split(":2,")[0] + ":2,S"))
    second.rename(second.parent.parent / "cur" / (second.name.split(":2,")[0] + ":2,FT"))
    mbsync(single_node, tmp_path)

    m = imaps(single_node)
    typ, listed = m.list()
    assert b'"Drafts2"' in b" ".join(listed), listed
    typ, data = m.select("Drafts2")
    assert data == [b"1"], data
    typ, data = m.select("INBOX")
    assert data == [b"1"], data
    typ, data = m.fetch("1", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert b"\\Seen" in data[0][0] and b"Subject: one" in data[0][1], data

    # Far side: new mail and a flag change reach the Maildir.
    m.append("INBOX", None, None, message("three"))
    m.store("1", "+FLAGS", "(\\Answered)")
    m.logout()
    mbsync(single_node, tmp_path)
    inbox = files(maildir / "INBOX")
    assert len(inbox) == 2, inbox
    assert any(p.name.endswith(":2,RS") for p in inbox), inbox


def curl(*args, input=None):
    result = subprocess.run(["curl", "-sS", "--max-time", "30", *args], input=input,
                            capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_curl_imap_and_pop3_over_tls(single_node, tmp_path):
    single_node.add_user(ALICE, ALICE_PW)
    base = f"imaps://127.0.0.1:{single_node.ports['imaps']}"
    auth = ["--cacert", cert(single_node), "-u", f"{ALICE}:{ALICE_PW}"]
    # APPEND through curl's upload, then SEARCH, FETCH by UID, and a list.
    eml = tmp_path / "m.eml"
    eml.write_bytes(message("from curl", body="curl body"))
    curl(*auth, "-T", str(eml), f"{base}/INBOX")
    assert b"* SEARCH 1" in curl(*auth, f"{base}/INBOX", "-X", "SEARCH SUBJECT curl")
    assert b"curl body" in curl(*auth, f"{base}/INBOX;UID=1")
    assert b"INBOX" in curl(*auth, f"{base}/")

    pop3 = f"pop3s://127.0.0.1:{single_node.ports['pop3s']}"
    assert curl(*auth, f"{pop3}/").strip().startswith(b"1 ")
    assert b"curl body" in curl(*auth, f"{pop3}/1")
