"""Tavle's own rules for infra/k8s, as checkov custom checks (CKV_TAVLE_K8S_*)."""

import ipaddress
import re

from checkov.common.models.enums import CheckCategories, CheckResult
from checkov.kubernetes.checks.resource.base_spec_check import BaseK8Check

# Labels that select the pods which talk to the database: the Spin app (set by the
# SpinKube operator) and the migration Job.
DB_CLIENT_SELECTORS = [("core.spinkube.dev/app-name", None), ("app.kubernetes.io/component", "migrate")]


def _keys(d):
    """A mapping's keys without the line markers checkov adds (__startline__, ...)."""
    return {k for k in d if not (k.startswith("__") and k.endswith("__"))}


def _labels(d):
    return {k: v for k, v in (d or {}).items() if k in _keys(d or {})}


def _selects_db_client(policy):
    labels = ((policy.get("spec") or {}).get("podSelector") or {}).get("matchLabels") or {}
    return any(k in labels and (v is None or labels[k] == v) for k, v in DB_CLIENT_SELECTORS)


def _ports(rule):
    return sorted((p.get("protocol", "TCP"), p.get("port")) for p in rule.get("ports") or [])


def _is_db_rule(rule):
    """Exactly one subnet (no wider than a /16, no exceptions) on TCP 5432."""
    to = rule.get("to") or []
    if len(to) != 1 or _keys(to[0]) != {"ipBlock"} or _keys(to[0]["ipBlock"]) != {"cidr"}:
        return False
    try:
        net = ipaddress.ip_network(str(to[0]["ipBlock"]["cidr"]), strict=True)
    except ValueError:
        return False
    return net.prefixlen >= 16 and _ports(rule) == [("TCP", 5432)]


def _is_dns_rule(rule):
    """Cluster DNS (kube-dns in kube-system) on port 53 only."""
    to = rule.get("to") or []
    if len(to) != 1:
        return False
    ns = _labels((to[0].get("namespaceSelector") or {}).get("matchLabels"))
    pod = _labels((to[0].get("podSelector") or {}).get("matchLabels"))
    ports = _ports(rule)
    return (
        _keys(to[0]) == {"namespaceSelector", "podSelector"}
        and ns == {"kubernetes.io/metadata.name": "kube-system"}
        and pod == {"k8s-app": "kube-dns"}
        and ports
        and all(p in (("TCP", 53), ("UDP", 53)) for p in ports)
    )


class DbClientEgressOnlyToDatabase(BaseK8Check):
    def __init__(self):
        super().__init__(
            name="Tavle: the app and the migration Job may connect to the database subnet on 5432 and cluster DNS, nothing else",
            id="CKV_TAVLE_K8S_1",
            categories=[CheckCategories.NETWORKING],
            supported_entities=["NetworkPolicy"],
        )

    def scan_spec_conf(self, conf):
        if not _selects_db_client(conf):
            return CheckResult.UNKNOWN
        spec = conf.get("spec") or {}
        if "Egress" not in (spec.get("policyTypes") or []):
            return CheckResult.FAILED  # would leave egress to other policies
        rules = spec.get("egress") or []
        ok = any(_is_db_rule(r) for r in rules) and all(_is_db_rule(r) or _is_dns_rule(r) for r in rules)
        return CheckResult.PASSED if ok else CheckResult.FAILED


DIGEST_PINNED = re.compile(r"^[^@\s]+@sha256:[0-9a-f]{64}$")


def _pod_spec(conf):
    kind = conf.get("kind")
    spec = conf.get("spec") or {}
    if kind == "CronJob":
        return (((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
    if kind == "Pod":
        return spec
    return (spec.get("template") or {}).get("spec") or {}


class ImagesPinnedByDigest(BaseK8Check):
    def __init__(self):
        super().__init__(
            name="Tavle: every image (containers and the SpinApp) is repository@sha256:<64 hex>, so what runs is what was reviewed",
            id="CKV_TAVLE_K8S_2",
            categories=[CheckCategories.SUPPLY_CHAIN],
            supported_entities=["Pod", "Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "CronJob", "SpinApp"],
        )

    def scan_spec_conf(self, conf):
        if conf.get("kind") == "SpinApp":
            images = [(conf.get("spec") or {}).get("image")]
        else:
            spec = _pod_spec(conf)
            images = [c.get("image") for key in ("initContainers", "containers") for c in spec.get(key) or []]
        ok = bool(images) and all(isinstance(i, str) and DIGEST_PINNED.match(i) for i in images)
        return CheckResult.PASSED if ok else CheckResult.FAILED


DbClientEgressOnlyToDatabase()
ImagesPinnedByDigest()
