"""The same path on the local cluster: five processes over NATS JetStream,
PostgreSQL, Redis and a shared blob directory (scripts/local-cluster)."""

import email
import smtplib

from conftest import LocalCluster
from mail import imap_fetch_all, make_message, pop3_login, send, wait_for_messages

ALICE, ALICE_PW = "alice@example.test", "cluster pw"


def test_cluster_delivers_refuses_and_survives_restart(tmp_path):
    cluster = LocalCluster(tmp_path / "cluster")
    cluster.data_dir.mkdir(parents=True)
    cluster.start()
    try:
        cluster.add_user(ALICE, ALICE_PW)
        code, text = send(cluster, "bob@remote.test", [ALICE],
                          make_message("bob@remote.test", ALICE, "over the cluster"))
        assert code == 250 and b"queued as" in text

        wait_for_messages(cluster, ALICE, ALICE_PW, 1)
        [got] = imap_fetch_all(cluster, ALICE, ALICE_PW)
        assert got["Subject"] == "over the cluster"

        p = pop3_login(cluster, ALICE, ALICE_PW)
        assert p.stat()[0] == 1
        assert email.message_from_bytes(b"\r\n".join(p.retr(1)[1]))["Subject"] == "over the cluster"
        p.quit()

        with smtplib.SMTP(cluster.host, cluster.ports["smtp"], timeout=30) as s:
            s.ehlo("client.tests")
            s.mail("bob@remote.test")
            code, text = s.rcpt("nobody@example.test")
            assert code == 550 and text.startswith(b"5.1.1")
            code, text = s.rcpt("victim@elsewhere.test")
            assert code == 554 and text.startswith(b"5.7.1")
    finally:
        assert cluster.stop() == 0

    # Everything down (servers included), then up again on the same directory.
    cluster.start()
    try:
        [got] = imap_fetch_all(cluster, ALICE, ALICE_PW)
        assert got["Subject"] == "over the cluster"
        p = pop3_login(cluster, ALICE, ALICE_PW)
        assert p.stat()[0] == 1
        p.quit()
    finally:
        cluster.stop()
        cluster.purge()
