"""A single node with its message blobs in S3 (`backends.blob_url`), against a
real S3-compatible server: moto_server, started by scripts/lib/infra.sh and
found through MAILFLEET_TEST_S3_URL. Mail delivered over SMTP lands in the
bucket under its SHA-256, is read back over IMAP, and its object goes when the
last message referring to it is expunged."""

import hashlib
import os
import re
import urllib.request
import uuid

import pytest

from conftest import SingleNode, wait_until
from mail import imap_login, make_message, send, wait_for_messages

ALICE, ALICE_PW = "alice@example.test", "correct horse battery"
PREFIX = "mailfleet"


def s3_url():
    url = os.environ.get("MAILFLEET_TEST_S3_URL")
    if not url:
        pytest.fail("MAILFLEET_TEST_S3_URL is not set: these tests need an S3-compatible "
                    "server, e.g. `moto_server -p 5000` (scripts/lib/infra.sh starts one)")
    return url.rstrip("/")


def s3_request(method, path):
    # The test reads the bucket on its own, not through Mailfleet's client.
    # moto checks no signatures, but reads an object only for a request that
    # names an access key (anonymous reads of private objects get 403).
    req = urllib.request.Request(
        s3_url() + path, method=method, data=b"" if method == "PUT" else None,
        headers={"Authorization": "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/"
                                  "aws4_request, SignedHeaders=host, Signature=00"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return resp.read()


def keys(bucket, prefix):
    body = s3_request("GET", f"/{bucket}?list-type=2&prefix={prefix}").decode()
    return sorted(re.findall(r"<Key>([^<]+)</Key>", body))


@pytest.fixture
def s3_node(tmp_path):
    bucket = f"mailfleet-{uuid.uuid4().hex[:12]}"
    s3_request("PUT", f"/{bucket}")
    node = SingleNode(tmp_path / "data")
    node.bucket = bucket
    node.start(extra_env={
        "MAILFLEET__BACKENDS__BLOB_URL": f"s3://{bucket}/{PREFIX}",
        "MAILFLEET__BACKENDS__BLOB_S3_ENDPOINT": s3_url(),
        "MAILFLEET__BACKENDS__BLOB_S3_ALLOW_HTTP": "true",
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
    })
    yield node
    node.stop()


def test_delivered_mail_lives_in_the_bucket_and_goes_with_its_last_reference(s3_node):
    node, bucket = s3_node, s3_node.bucket
    node.add_user(ALICE, ALICE_PW)
    msg = make_message("bob@remote.test", ALICE, subject="stored in s3")
    code, text = send(node, "bob@remote.test", [ALICE], msg)
    assert code == 250, (code, text)
    wait_for_messages(node, ALICE, ALICE_PW, 1)

    m = imap_login(node, ALICE, ALICE_PW)
    m.select("INBOX")
    typ, data = m.fetch("1", "(BODY.PEEK[])")
    assert typ == "OK", data
    body = data[0][1]
    assert b"Subject: stored in s3" in body and b"Hello from the tests." in body

    # The mailbox copy is the object <prefix>/store/<sha256 of the bytes>.
    digest = hashlib.sha256(body).hexdigest()
    assert keys(bucket, f"{PREFIX}/store/") == [f"{PREFIX}/store/{digest}"]
    assert s3_request("GET", f"/{bucket}/{PREFIX}/store/{digest}") == body
    # The spool went to the bucket too and was emptied once delivered;
    # nothing was written to the local blob directory.
    wait_until(lambda: keys(bucket, f"{PREFIX}/spool/") == [], what="spool emptied")
    local = node.data_dir / "blobs"
    assert not local.exists() or not [p for p in local.rglob("*") if p.is_file()]

    # A copy shares the object: expunging the original keeps it.
    typ, data = m.copy("1", "Archive")
    assert typ == "OK", data
    m.store("1", "+FLAGS", "(\\Deleted)")
    typ, data = m.expunge()
    assert typ == "OK", data
    assert keys(bucket, f"{PREFIX}/store/") == [f"{PREFIX}/store/{digest}"]
    typ, data = m.select("Archive")
    assert typ == "OK" and data[0] == b"1", data
    typ, data = m.fetch("1", "(BODY.PEEK[])")
    assert data[0][1] == body

    # The last reference goes: so does the object.
    m.store("1", "+FLAGS", "(\\Deleted)")
    typ, data = m.expunge()
    assert typ == "OK", data
    wait_until(lambda: keys(bucket, f"{PREFIX}/store/") == [], what="object deleted")
    m.logout()

