"""Fixtures that start real Mailfleet processes on free loopback ports.

`single_node` runs `mailfleet serve` (target all) on a fresh data directory;
`local_cluster` runs `scripts/local-cluster`, i.e. private NATS, PostgreSQL
and Redis plus one process per target. Tests drive them with clients nobody
here wrote: Python's smtplib, imaplib and poplib, and swaks.
"""

import atexit
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = os.environ.get("MAILFLEET_BIN", str(ROOT / "target" / "debug" / "mailfleet"))

LISTEN_KEYS = [
    "smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s",
    "admin", "filter_grpc", "mailstore_grpc",
]


def dns_server_binary():
    """The testkit's authoritative DNS server (hickory-server), built on demand."""
    path = ROOT / "target" / "debug" / "examples" / "dns-server"
    if not path.exists():
        subprocess.run(
            ["cargo", "build", "-q", "-p", "mailfleet-testkit", "--example", "dns-server"],
            cwd=ROOT, check=True, timeout=900,
        )
    return path


_HERMETIC_DNS = None


def hermetic_dns():
    """A DNS server that answers NXDOMAIN for every name, started once.

    Servers under test use it unless a test gives its own, so SPF, DMARC and
    iprev lookups of test domains never leave the machine and never wait on
    the host's resolver.
    """
    global _HERMETIC_DNS
    if _HERMETIC_DNS is None:
        zone = Path(os.environ.get("TMPDIR", "/tmp")) / f"mailfleet-e2e-{os.getpid()}.zone"
        zone.write_text("$TTL 60\n")
        proc = subprocess.Popen(
            [str(dns_server_binary()), f"nothing.invalid={zone}"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        line = proc.stdout.readline()
        assert line.startswith("listening "), line
        atexit.register(lambda: (proc.stdin.close(), proc.wait(timeout=10), zone.unlink()))
        _HERMETIC_DNS = line.split()[1]
    return _HERMETIC_DNS


_given_ports = set()


def free_port():
    """A loopback port free now, and never the same one twice in this run:
    the kernel may hand a just-released port out again, and two listeners of
    one node given the same port fail with EADDRINUSE (seen in CI: the
    mailstore's gRPC port equal to the submissions port)."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _given_ports:
            _given_ports.add(port)
            return port


def wait_until(predicate, timeout=30.0, interval=0.1, what="condition"):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as e:  # the server may not be up yet
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what} (last error: {last!r})")


def http_status(url):
    try:
        return urllib.request.urlopen(url, timeout=2).status
    except urllib.error.HTTPError as e:
        return e.code


class Server:
    """What the tests need of a running Mailfleet: its ports and its CLI."""

    def __init__(self, data_dir, ports):
        self.data_dir = Path(data_dir)
        self.ports = ports
        self.host = "127.0.0.1"

    @property
    def admin_url(self):
        return f"http://127.0.0.1:{self.ports['admin']}"

    def cli(self, *args, input=None, check=True, env_extra=None):
        env = dict(os.environ)
        env.pop("MAILFLEET_ADMIN_TOKEN", None)
        env.update(env_extra or {})
        result = subprocess.run(
            [BIN, "--data-dir", str(self.data_dir), "--admin-url", self.admin_url, *args],
            input=input, capture_output=True, text=True, env=env, timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"mailfleet {' '.join(args)} failed: {result.stderr}")
        return result

    def add_user(self, address, password):
        domain = address.split("@", 1)[1]
        if domain not in self.cli("domain", "list").stdout.split():
            self.cli("domain", "add", domain)
        self.cli("user", "add", address, "--password", password)


class SingleNode(Server):
    def __init__(self, data_dir):
        super().__init__(data_dir, {k: free_port() for k in LISTEN_KEYS})
        self.proc = None
        self.log_path = self.data_dir.parent / "mailfleet.log"

    def env(self, extra=None):
        env = dict(os.environ)
        env.pop("MAILFLEET_ADMIN_TOKEN", None)  # the server generates its own
        for key, port in self.ports.items():
            env[f"MAILFLEET__LISTEN__{key.upper()}"] = f"127.0.0.1:{port}"
        env["MAILFLEET__SERVICES__FILTER_URL"] = f"http://127.0.0.1:{self.ports['filter_grpc']}"
        env["MAILFLEET__SERVICES__MAILSTORE_URL"] = f"http://127.0.0.1:{self.ports['mailstore_grpc']}"
        env["MAILFLEET__DNS__SERVERS"] = f'["{hermetic_dns()}"]'
        env.update(extra or {})
        return env

    def start(self, target="all", extra_env=None):
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [BIN, "serve", "--target", target, "--data-dir", str(self.data_dir)],
            env=self.env(extra_env), stdout=log, stderr=subprocess.STDOUT,
        )
        wait_until(lambda: http_status(self.admin_url + "/readyz") == 200,
                   what=f"{target} ready; log: {self.log_path}")
        return self

    def stop(self, sig=signal.SIGTERM, timeout=30):
        if self.proc is None:
            return None
        self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        self.proc = None
        return code


@pytest.fixture
def single_node(tmp_path):
    node = SingleNode(tmp_path / "data")
    node.start()
    yield node
    node.stop(signal.SIGKILL if node.proc and node.proc.poll() is not None else signal.SIGTERM)


class LocalCluster(Server):
    def __init__(self, data_dir):
        ports = {k: free_port() for k in ("smtp", "submission", "submissions", "imap", "pop3",
                                          "imaps", "pop3s", "admin")}
        super().__init__(data_dir, ports)
        self.proc = None

    def start(self):
        env = dict(os.environ)
        env.pop("MAILFLEET_ADMIN_TOKEN", None)
        env["MAILFLEET_BIN"] = BIN
        env.setdefault("MAILFLEET__DNS__SERVERS", f'["{hermetic_dns()}"]')
        for key, port in self.ports.items():
            env[f"MAILFLEET__LISTEN__{key.upper()}"] = f"127.0.0.1:{port}"
        self.proc = subprocess.Popen(
            [str(ROOT / "scripts" / "local-cluster"), "--data-dir", str(self.data_dir)],
            env=env, stdout=subprocess.PIPE, stderr=open(self.data_dir.parent / "cluster.err", "ab"),
            text=True,
        )
        deadline = time.time() + 120
        for line in self.proc.stdout:
            if "local cluster ready" in line:
                return self
            if time.time() > deadline:
                break
        raise AssertionError(f"local cluster did not start; see {self.data_dir}/*.log")

    def stop(self):
        if self.proc is None:
            return None
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self.proc = None
        return code

    def purge(self):
        """Removes PostgreSQL data kept outside the directory (scripts/lib/infra.sh)."""
        kept = self.data_dir / "infra" / "pg-path"
        if kept.exists():
            shutil.rmtree(kept.read_text().strip(), ignore_errors=True)


@pytest.fixture
def local_cluster(tmp_path):
    cluster = LocalCluster(tmp_path / "cluster")
    cluster.data_dir.mkdir(parents=True)
    cluster.start()
    yield cluster
    cluster.stop()
    cluster.purge()
