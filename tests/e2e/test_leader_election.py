"""Leader election end to end: two real `mailfleet serve` processes contend
for the housekeeping Leases through the real `kube` client, found the way a
pod outside the cluster finds its API server (KUBECONFIG).

The API server is a STAND-IN: no Kubernetes API server can run on this
machine (kube-apiserver, k3s and kind are in none of the registries it can
reach). It serves what the election uses, GET/POST/PUT of namespaced
coordination.k8s.io/v1 Leases, with the API server's rules for them: every
write bumps resourceVersion, a PUT with a stale one is a 409 Conflict, a
POST of an existing name a 409 AlreadyExists, a missing lease a 404 Status.
(services/runtime/tests/leader.rs tests the same rules in Rust, races and
conflicts included.)

What a user checks: exactly one replica exports the mailfleet_queue_*
gauges; when it is killed the other takes over once the lease has run out;
when it is stopped cleanly (SIGTERM) the lease is released and the other
takes over at once.
"""

import json
import re
import signal
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from conftest import SingleNode, wait_until

NAMESPACE = "mail"
QUEUE_LEASE = "mailfleet-queue-metrics"
PRUNE_LEASE = "mailfleet-history-prune"
LEASE_SECS = 3
_PATH = re.compile(r"^/apis/coordination\.k8s\.io/v1/namespaces/([^/]+)/leases(?:/([^/]+))?$")


class LeaseApi:
    """The stand-in API server, in a thread of the test."""

    def __init__(self):
        self.leases = {}
        self.version = 0
        self.lock = threading.Lock()
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, code, body):
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _status(self, code, reason, name, message):
                self._send(code, {
                    "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": message, "reason": reason, "code": code,
                    "details": {"name": name, "group": "coordination.k8s.io", "kind": "leases"},
                })

            def _route(self):
                m = _PATH.match(self.path.split("?", 1)[0])
                if not m:
                    self._status(404, "NotFound", "", f"no route {self.path}")
                    return None
                return m.group(1), m.group(2)

            def _body(self):
                return json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))

            def do_GET(self):
                route = self._route()
                if route is None:
                    return
                with api.lock:
                    lease = api.leases.get(route)
                if lease is None:
                    self._status(404, "NotFound", route[1], f'leases.coordination.k8s.io "{route[1]}" not found')
                else:
                    self._send(200, lease)

            def do_POST(self):
                route = self._route()
                if route is None:
                    return
                lease = self._body()
                key = (route[0], lease["metadata"]["name"])
                with api.lock:
                    if key in api.leases:
                        code = 409
                    else:
                        code = 201
                        api.version += 1
                        lease["metadata"].update(namespace=route[0], resourceVersion=str(api.version))
                        api.leases[key] = lease
                if code == 409:
                    self._status(409, "AlreadyExists", key[1], f'leases.coordination.k8s.io "{key[1]}" already exists')
                else:
                    self._send(201, lease)

            def do_PUT(self):
                route = self._route()
                if route is None:
                    return
                lease = self._body()
                with api.lock:
                    current = api.leases.get(route)
                    if current is None:
                        code = 404
                    elif lease["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
                        code = 409
                    else:
                        code = 200
                        api.version += 1
                        lease["metadata"]["resourceVersion"] = str(api.version)
                        api.leases[route] = lease
                if code == 404:
                    self._status(404, "NotFound", route[1], f'leases.coordination.k8s.io "{route[1]}" not found')
                elif code == 409:
                    self._status(409, "Conflict", route[1], "the object has been modified")
                else:
                    self._send(200, lease)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def holder(self, name):
        with self.lock:
            lease = self.leases.get((NAMESPACE, name))
        return ((lease or {}).get("spec") or {}).get("holderIdentity")

    def kubeconfig(self, path):
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config",
            "clusters": [{"name": "stand-in", "cluster": {"server": self.url}}],
            "users": [{"name": "mailfleet", "user": {}}],
            "contexts": [{"name": "stand-in", "context": {
                "cluster": "stand-in", "user": "mailfleet", "namespace": NAMESPACE}}],
            "current-context": "stand-in",
        }))
        return path


def queue_series(node):
    with urllib.request.urlopen(node.admin_url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    return [line for line in text.splitlines() if line.startswith("mailfleet_queue_")]


def leader_gauge(node, job):
    with urllib.request.urlopen(node.admin_url + "/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(r'^mailfleet_leader\{job="%s"\} (\d+)$' % re.escape(job), text, re.M)
    return int(m.group(1)) if m else None


def exports_depth(node):
    return any(line.startswith("mailfleet_queue_depth ") for line in queue_series(node))


def test_one_replica_does_the_housekeeping_and_hands_it_over(tmp_path):
    api = LeaseApi()
    kubeconfig = api.kubeconfig(tmp_path / "kubeconfig")
    nodes = {}

    def start(name):
        (tmp_path / name).mkdir(exist_ok=True)
        node = SingleNode(tmp_path / name / "data")
        node.start(extra_env={
            "KUBECONFIG": str(kubeconfig),
            "POD_NAME": name,
            "MAILFLEET__CLUSTER__LEADER_ELECTION": "kubernetes",
            "MAILFLEET__CLUSTER__LEASE_DURATION_SECS": str(LEASE_SECS),
        })
        nodes[name] = node
        return node

    try:
        start("replica-a")
        start("replica-b")
        wait_until(lambda: api.holder(QUEUE_LEASE) and api.holder(PRUNE_LEASE), timeout=15,
                   what="both housekeeping leases held")
        assert {api.holder(QUEUE_LEASE), api.holder(PRUNE_LEASE)} <= set(nodes)

        leader = nodes[api.holder(QUEUE_LEASE)]
        follower = next(n for n in nodes.values() if n is not leader)
        wait_until(lambda: exports_depth(leader), timeout=15, what="the leader exports the queue gauges")
        # mailfleet_leader{job} says who does what (a job's gauge appears
        # when the process first asks for the job, e.g. opens the queue).
        assert leader_gauge(leader, "queue-metrics") == 1
        wait_until(lambda: leader_gauge(follower, "queue-metrics") == 0, timeout=10,
                   what="the follower reports it does not do the queue gauges")
        assert queue_series(follower) == [], "a follower exports queue gauges"
        wait_until(lambda: all(leader_gauge(n, "history-prune") is not None for n in nodes.values()),
                   timeout=10, what="both report on history pruning")
        assert leader_gauge(nodes[api.holder(PRUNE_LEASE)], "history-prune") == 1
        assert sum(leader_gauge(n, "history-prune") for n in nodes.values()) == 1

        # kill -9: no release; the follower waits for the lease to run out.
        leader_name = api.holder(QUEUE_LEASE)
        follower_name = next(n for n in nodes if n != leader_name)
        leader.stop(signal.SIGKILL)
        killed = time.monotonic()
        wait_until(lambda: api.holder(QUEUE_LEASE) == follower_name, timeout=LEASE_SECS * 3,
                   interval=0.05, what="takeover after the leader was killed")
        took = time.monotonic() - killed
        print(f"takeover after SIGKILL of the leader: {took:.2f}s (lease {LEASE_SECS}s)")
        # Renewed at most one retry period (1 s) before the kill: live for 2 s more.
        assert took >= LEASE_SECS - 1.2, f"took over a live lease after {took:.1f}s"
        wait_until(lambda: exports_depth(follower), timeout=5, what="the new leader exports the gauges")
        wait_until(lambda: api.holder(PRUNE_LEASE) == follower_name, timeout=LEASE_SECS * 3,
                   what="history pruning taken over too")

        # The killed replica comes back as a follower; then the leader is
        # stopped cleanly: it releases its leases, and the other takes over
        # at its next retry (a third of the lease), not after an expiry.
        restarted = start(leader_name)
        time.sleep(1.5)
        assert queue_series(restarted) == [], "two replicas export queue gauges"
        assert follower.stop(signal.SIGTERM) == 0
        stopped = time.monotonic()
        wait_until(lambda: api.holder(QUEUE_LEASE) == leader_name, timeout=LEASE_SECS,
                   interval=0.05, what="takeover after a clean shutdown")
        handover = time.monotonic() - stopped
        print(f"takeover after SIGTERM of the leader: {handover:.2f}s (lease {LEASE_SECS}s)")
        assert handover < LEASE_SECS - 0.5
        wait_until(lambda: exports_depth(restarted), timeout=5, what="gauges after the handover")
    finally:
        for node in nodes.values():
            if node.proc is not None:
                node.stop(signal.SIGKILL)
