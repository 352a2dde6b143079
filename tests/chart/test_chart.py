"""The Helm chart and the kustomize manifests: linted, rendered with several
value sets by Helm's own library, every object validated against the
Kubernetes schemas, the rendered config accepted by `mailfleet config check`.
"""

import os
import subprocess
import sys
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "mailfleet"
VALUES = sorted((Path(__file__).parent / "values").glob("*.yaml"))
BIN = os.environ.get("MAILFLEET_BIN", str(ROOT / "target" / "debug" / "mailfleet"))
K8S_VERSION = "1.33"

# Kinds from operators (cert-manager, KEDA, Prometheus Operator): no schema
# ships with kubernetes-validate; their shape is checked by hand below.
CRD_KINDS = {
    ("cert-manager.io/v1", "Certificate"),
    ("keda.sh/v1alpha1", "ScaledObject"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
}


def render(values, name="mail"):
    rendered = helm.Chart.load(str(CHART)).render(values, name=name, namespace="mail")
    docs = []
    for path, text in rendered.items():
        if path.endswith("NOTES.txt"):
            continue
        docs.extend(d for d in yaml.safe_load_all(text) if d)
    return docs


def validate(doc):
    if (doc["apiVersion"], doc["kind"]) in CRD_KINDS:
        assert doc["metadata"]["name"] and doc["spec"], doc
        return
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_chart_lints():
    for values in VALUES:
        # lint() returns the linter's messages; errors raise.
        helm.lint(str(CHART), values=yaml.safe_load(values.read_text()))


@pytest.mark.parametrize("values_file", VALUES, ids=lambda p: p.stem)
def test_every_rendered_object_is_valid(values_file, tmp_path):
    values = yaml.safe_load(values_file.read_text())
    docs = render(values)
    assert docs
    seen = set()
    for doc in docs:
        validate(doc)
        key = (doc["kind"], doc["metadata"]["name"])
        assert key not in seen, f"two objects named {key}"
        seen.add(key)

    deployments = [d for d in docs if d["kind"] == "Deployment"]
    enabled = [k for k, t in values.get("targets", {}).items() if t.get("enabled", True)]
    assert len(deployments) == (len(enabled) if values.get("targets") else 5)
    for d in deployments:
        pod = d["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        [c] = pod["containers"]
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]
        low_ports = [p for p in c["ports"] if p["containerPort"] < 1024]
        # NET_BIND_SERVICE only where a port below 1024 is bound.
        assert ("NET_BIND_SERVICE" in sc["capabilities"].get("add", [])) == bool(low_ports), d["metadata"]["name"]
        assert c["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert c["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert c["args"][:2] == ["serve", "--target"]

    # The generated config, with the env each container gets, passes the
    # binary's own check.
    [cm] = [d for d in docs if d["kind"] == "ConfigMap"]
    conf = tmp_path / "config.toml"
    conf.write_text(cm["data"]["config.toml"])
    for d in deployments:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MAILFLEET__")}
        for e in d["spec"]["template"]["spec"]["containers"][0]["env"]:
            if "value" in e:
                env[e["name"]] = e["value"]
        out = subprocess.run([BIN, "config", "check", str(conf)], env=env,
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, (d["metadata"]["name"], out.stderr, conf.read_text())


def test_mail_services_keep_client_ips_by_default():
    docs = render(yaml.safe_load((CHART.parent.parent / "tests/chart/values/minimal.yaml").read_text()))
    lbs = [d for d in docs if d["kind"] == "Service" and d["spec"]["type"] == "LoadBalancer"]
    assert {d["metadata"]["name"] for d in lbs} == {"mail-mailfleet-smtp", "mail-mailfleet-imap-pop3"}
    for d in lbs:
        assert d["spec"]["externalTrafficPolicy"] == "Local"
    smtp = next(d for d in lbs if d["metadata"]["name"].endswith("-smtp"))
    assert {p["port"] for p in smtp["spec"]["ports"]} == {25, 587, 465}


def test_config_values_reach_the_server_as_typed_overrides(tmp_path):
    values = yaml.safe_load((Path(__file__).parent / "values/full.yaml").read_text())
    docs = render(values)
    edge = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"].endswith("smtp-edge"))
    env = {e["name"]: e.get("value") for e in edge["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MAILFLEET__SMTP__MAX_MESSAGE_SIZE"] == "52428800"
    assert env["MAILFLEET__DELIVERY__WORKERS"] == "8"


@pytest.mark.parametrize("bad, message", [
    ({}, "adminToken.existingSecret is required"),
    ({"hostname": "bad host name"}, "hostname"),
    ({"targets": {"smtpEdge": {"enabled": True, "replicas": 1, "replica": 3}}}, "replica"),
    ({"logFormat": "xml"}, "logFormat"),
])
def test_bad_values_are_refused(bad, message):
    values = {"adminToken": {"existingSecret": "a"}, "postgresql": {"existingSecret": "p"}}
    if bad == {}:
        values = {}
    else:
        values.update(bad)
    with pytest.raises(helm.HelmError) as e:
        render(values)
    assert message in str(e.value)


def test_k8s_base_is_rendered_from_the_chart():
    out = subprocess.run([sys.executable, str(ROOT / "scripts/render-k8s"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("overlay", ["base", "overlays/small", "overlays/production"])
def test_kustomize_renders_valid_objects(overlay):
    out = subprocess.run(["kubectl", "kustomize", str(ROOT / "k8s" / overlay)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert any(d["kind"] == "Deployment" for d in docs)
    for doc in docs:
        validate(doc)


def _lease_jobs():
    """The singleton jobs the server elects, read from runtime::leader::jobs,
    so a job added there without RBAC for its Lease fails here."""
    import re
    text = (ROOT / "services/runtime/src/leader.rs").read_text()
    block = text[text.index("pub mod jobs {"):]
    block = block[:block.index("\n}\n")]
    jobs = re.findall(r'pub const [A-Z_]+: &str = "([a-z-]+)";', block)
    assert jobs
    return jobs


def _pods(docs):
    return {d["metadata"]["labels"]["app.kubernetes.io/component"]: d["spec"]["template"]["spec"]
            for d in docs if d["kind"] == "Deployment"}


def test_leader_election_rbac_is_the_release_leases_only():
    docs = render(yaml.safe_load((Path(__file__).parent / "values/minimal.yaml").read_text()))
    [cm] = [d for d in docs if d["kind"] == "ConfigMap"]
    import tomllib
    cluster = tomllib.loads(cm["data"]["config.toml"])["cluster"]
    assert cluster["leader_election"] == "kubernetes"
    prefix = cluster["lease_name_prefix"]
    assert prefix == "mail-mailfleet"

    [role] = [d for d in docs if d["kind"] == "Role"]
    [binding] = [d for d in docs if d["kind"] == "RoleBinding"]
    verbs = {}
    for rule in role["rules"]:
        assert rule["apiGroups"] == ["coordination.k8s.io"] and rule["resources"] == ["leases"], rule
        for verb in rule["verbs"]:
            verbs[verb] = rule.get("resourceNames")
    assert set(verbs) == {"get", "create", "update", "patch"}
    # Everything but create is limited to this release's Leases, one per job.
    expected = sorted(f"{prefix}-{job}" for job in _lease_jobs())
    for verb in ("get", "update", "patch"):
        assert sorted(verbs[verb]) == expected, verb
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                                  "name": role["metadata"]["name"]}

    pods = _pods(docs)
    [sa] = [d for d in docs if d["kind"] == "ServiceAccount"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": "mail"}]
    # A token only in the targets with a singleton job.
    tokens = {t for t, pod in pods.items() if pod["automountServiceAccountToken"]}
    assert tokens == {"smtp-edge", "delivery", "mailstore"}
    for target, pod in pods.items():
        assert pod["serviceAccountName"] == sa["metadata"]["name"]
        env = {e["name"]: e for e in pod["containers"][0]["env"]}
        assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}, target


def test_leader_election_off_mounts_no_token_and_creates_no_role():
    docs = render(yaml.safe_load((Path(__file__).parent / "values/no-leader-election.yaml").read_text()))
    assert not [d for d in docs if d["kind"] in ("Role", "RoleBinding")]
    assert not [t for t, pod in _pods(docs).items() if pod["automountServiceAccountToken"]]
    [cm] = [d for d in docs if d["kind"] == "ConfigMap"]
    assert 'leader_election = "off"' in cm["data"]["config.toml"]


def test_rbac_create_false_leaves_permissions_to_the_operator():
    values = yaml.safe_load((Path(__file__).parent / "values/minimal.yaml").read_text())
    values["rbac"] = {"create": False}
    docs = render(values)
    assert not [d for d in docs if d["kind"] in ("Role", "RoleBinding")]
    # Still elected: the pods need their token.
    assert _pods(docs)["mailstore"]["automountServiceAccountToken"] is True


@pytest.mark.parametrize("overlay", ["base", "overlays/small", "overlays/production"])
def test_kustomize_binds_the_lease_role_in_the_overlay_namespace(overlay):
    out = subprocess.run(["kubectl", "kustomize", str(ROOT / "k8s" / overlay)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    docs = [d for d in yaml.safe_load_all(out.stdout) if d]
    [binding] = [d for d in docs if d["kind"] == "RoleBinding"]
    [sa] = [d for d in docs if d["kind"] == "ServiceAccount"]
    namespaces = {d["metadata"]["namespace"] for d in docs}
    assert len(namespaces) == 1, namespaces
    # A subject in another namespace would leave the pods without the Role.
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                    "namespace": sa["metadata"]["namespace"]}]


BLOB_TARGETS = {"smtp-edge", "delivery", "mailstore"}


def _config(docs):
    import tomllib
    [cm] = [d for d in docs if d["kind"] == "ConfigMap"]
    return tomllib.loads(cm["data"]["config.toml"])


def _env(pod):
    return {e["name"]: e for e in pod["containers"][0]["env"]}


def test_s3_blobs_need_no_shared_volume():
    values = yaml.safe_load((Path(__file__).parent / "values/s3-blobs.yaml").read_text())
    docs = render(values)
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]

    backends = _config(docs)["backends"]
    assert backends["blob_url"] == "s3://mail-blobs/prod"
    assert backends["blob_s3_endpoint"] == "http://minio.storage:9000"
    assert backends["blob_s3_allow_http"] is True
    # blob_dir would point into the pod's emptyDir: a spool no other pod sees.
    assert "blob_dir" not in backends

    pods = _pods(docs)
    assert set(pods) == BLOB_TARGETS | {"filter", "access"}
    for target, pod in pods.items():
        assert "blobs" not in {v["name"] for v in pod["volumes"]}, target
        mounts = {m["mountPath"]: m["name"] for m in pod["containers"][0]["volumeMounts"]}
        assert not [p for p in mounts if p.startswith("/var/lib/mailfleet/blobs")], target
        # The root FS stays read-only: data_dir is still a writable emptyDir.
        assert mounts["/var/lib/mailfleet"] == "data", target
        [data] = [v for v in pod["volumes"] if v["name"] == "data"]
        assert data == {"name": "data", "emptyDir": {}}, target

        env = _env(pod)
        if target in BLOB_TARGETS:
            assert env["AWS_ACCESS_KEY_ID"]["valueFrom"] == {
                "secretKeyRef": {"name": "mailfleet-s3", "key": "AWS_ACCESS_KEY_ID"}}, target
            assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"] == {
                "secretKeyRef": {"name": "mailfleet-s3", "key": "AWS_SECRET_ACCESS_KEY"}}, target
            assert env["AWS_REGION"]["value"] == "us-east-1", target
        else:
            # filter and access never touch blobs: no keys for them.
            assert not [k for k in env if k.startswith("AWS_")], target

    # The pods reach the S3 endpoint: no policy of the chart limits egress.
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    assert policies
    for p in policies:
        assert p["spec"]["policyTypes"] == ["Ingress"], p["metadata"]["name"]
        assert "egress" not in p["spec"]


def test_s3_config_with_the_secret_keys_passes_config_check(tmp_path):
    """What smtp-edge runs with: the rendered config plus its env, the Secret's
    keys filled in as the kubelet would."""
    values = yaml.safe_load((Path(__file__).parent / "values/s3-blobs.yaml").read_text())
    docs = render(values)
    [cm] = [d for d in docs if d["kind"] == "ConfigMap"]
    conf = tmp_path / "config.toml"
    conf.write_text(cm["data"]["config.toml"])
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MAILFLEET__", "AWS_"))}
    for e in _env(_pods(docs)["smtp-edge"]).values():
        env[e["name"]] = e.get("value", "from-secret")
    assert env["AWS_SECRET_ACCESS_KEY"] == "from-secret"
    out = subprocess.run([BIN, "config", "check", str(conf)], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    # The same check refuses a bucket URL of another scheme, so passing means
    # the server read blob_url.
    conf.write_text(cm["data"]["config.toml"].replace("s3://mail-blobs", "gs://mail-blobs"))
    out = subprocess.run([BIN, "config", "check", str(conf)], env=env,
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 64 and "backends.blob_url" in out.stderr, out.stderr


def test_s3_key_names_in_the_secret_are_configurable():
    values = yaml.safe_load((Path(__file__).parent / "values/s3-blobs.yaml").read_text())
    values["blobs"]["s3"].update(accessKeyIdKey="access-key", secretAccessKeyKey="secret-key")
    env = _env(_pods(render(values))["mailstore"])
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"]["secretKeyRef"]["key"] == "access-key"
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["key"] == "secret-key"


def test_s3_without_secret_or_region_adds_no_aws_env():
    """Credentials from elsewhere (workload identity, extraEnv): the chart
    must not shadow them with empty variables."""
    values = yaml.safe_load((Path(__file__).parent / "values/minimal.yaml").read_text())
    values["blobs"] = {"s3": {"url": "s3://bucket"}}
    docs = render(values)
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    backends = _config(docs)["backends"]
    assert backends["blob_url"] == "s3://bucket"
    assert backends["blob_s3_allow_http"] is False
    assert "blob_s3_endpoint" not in backends
    for target, pod in _pods(docs).items():
        assert not [k for k in _env(pod) if k.startswith("AWS_")], target


def test_the_default_keeps_blobs_on_the_shared_claim():
    docs = render(yaml.safe_load((Path(__file__).parent / "values/minimal.yaml").read_text()))
    [pvc] = [d for d in docs if d["kind"] == "PersistentVolumeClaim"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    backends = _config(docs)["backends"]
    assert backends["blob_dir"] == "/var/lib/mailfleet/blobs"
    assert "blob_url" not in backends
    for target, pod in _pods(docs).items():
        claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                  if v["name"] == "blobs"]
        assert claims == ([pvc["metadata"]["name"]] if target in BLOB_TARGETS else []), target
        assert not [k for k in _env(pod) if k.startswith("AWS_")], target


@pytest.mark.parametrize("s3, message", [
    ({"url": "gs://bucket/prefix"}, "/blobs/s3/url"),
    ({"url": "https://bucket.s3.amazonaws.com/prefix"}, "/blobs/s3/url"),
    ({"url": "s3://"}, "/blobs/s3/url"),
    ({"url": "s3://bucket", "endpoint": "minio:9000"}, "/blobs/s3/endpoint"),
    ({"url": "s3://bucket", "endpoint": "http://minio:9000"}, "blobs.s3.allowHttp"),
    ({"endpoint": "https://minio:9000"}, "need blobs.s3.url"),
    ({"existingSecret": "keys"}, "need blobs.s3.url"),
    ({"url": "s3://bucket", "accessKey": "AKIA..."}, "accessKey"),
])
def test_bad_s3_values_are_refused(s3, message):
    values = yaml.safe_load((Path(__file__).parent / "values/minimal.yaml").read_text())
    values["blobs"] = {"s3": s3}
    with pytest.raises(helm.HelmError) as e:
        render(values)
    assert message in str(e.value)
