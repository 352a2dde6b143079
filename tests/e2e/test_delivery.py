"""Delivery workers as processes of their own, sharing one queue: a worker
killed with SIGKILL in the middle of the load loses nothing and stores
nothing twice (the queue lease brings its entries back, mailstore's
idempotency key makes a repeated delivery a no-op)."""

import collections
import signal
import subprocess
import time

from conftest import BIN, SingleNode, free_port, http_status, wait_until
from mail import imap_fetch_all, imap_login, make_message, send, wait_for_messages

ALICE, ALICE_PW = "alice@example.test", "delivery pw"
LEASE_SECS = 5


class DeliveryWorker:
    """`mailfleet serve --target delivery` on the node's data directory."""

    def __init__(self, node, name):
        self.node = node
        self.admin = free_port()
        self.log_path = node.data_dir.parent / f"delivery-{name}.log"
        self.proc = None

    def start(self):
        env = self.node.env({
            "MAILFLEET__LISTEN__ADMIN": f"127.0.0.1:{self.admin}",
            "MAILFLEET__DELIVERY__WORKERS": "4",
            "MAILFLEET__DELIVERY__LEASE_SECS": str(LEASE_SECS),
            "MAILFLEET__DELIVERY__RETRY_INTERVALS": '["1s"]',
        })
        self.proc = subprocess.Popen(
            [BIN, "serve", "--target", "delivery", "--data-dir", str(self.node.data_dir)],
            env=env, stdout=open(self.log_path, "ab"), stderr=subprocess.STDOUT,
        )
        wait_until(lambda: http_status(f"http://127.0.0.1:{self.admin}/readyz") == 200,
                   what=f"delivery worker ready; log: {self.log_path}")
        return self

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=30)


def inbox_count(node):
    m = imap_login(node, ALICE, ALICE_PW)
    try:
        typ, data = m.select("INBOX", readonly=True)
        return int(data[0]) if typ == "OK" else 0
    finally:
        m.logout()


def test_kill_9_of_a_delivery_worker_loses_and_duplicates_nothing(tmp_path):
    node = SingleNode(tmp_path / "data")
    node.start(target="mailstore,filter,smtp-edge,access")
    workers = []
    try:
        node.add_user(ALICE, ALICE_PW)
        count = 120
        subjects = [f"load {i}" for i in range(count)]
        # The queue fills while no worker runs, so the kill below lands
        # while entries are in flight.
        for subject in subjects:
            code, _ = send(node, "bob@remote.test", [ALICE],
                           make_message("bob@remote.test", ALICE, subject))
            assert code == 250

        workers = [DeliveryWorker(node, "a"), DeliveryWorker(node, "b")]
        for worker in workers:
            worker.start()
        wait_until(lambda: inbox_count(node) >= 5, what="the first deliveries")
        workers[0].kill()
        # A replacement comes up on the same queue, as a pod would.
        workers[0] = DeliveryWorker(node, "a2").start()

        wait_for_messages(node, ALICE, ALICE_PW, count, timeout=120)
        # Leases of the killed worker ran out long ago by now; anything it
        # held has been redelivered: still exactly one of each.
        time.sleep(LEASE_SECS + 2)
        got = collections.Counter(m["Subject"] for m in imap_fetch_all(node, ALICE, ALICE_PW))
        assert set(got) == set(subjects), sorted(set(subjects) - set(got))[:5]
        duplicates = {s: n for s, n in got.items() if n != 1}
        assert not duplicates, duplicates
    finally:
        for worker in workers:
            worker.stop()
        node.stop()
