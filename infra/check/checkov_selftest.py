"""Self-test of the checkov scan: every rule must catch its violation.

    python checkov_selftest.py CHECKOV [checkov args...]     (run by checkov.sh)

Copies infra/terraform or infra/k8s once per case into a temporary directory, injects
one violation (an exact text edit that must apply exactly once), and runs checkov on
each copy. A case passes only if its copy fails the expected check;
the untouched copies must fail nothing, so a check that always fails is caught too,
and each check they skip inline must be listed, with its reason, in infra/README.md.
"""

import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
ZERO = "0" * 64

# (name, framework, file, old text, new text, check that must fail); old and new may be
# lists of the same length for several edits in the file.
CASES = [
    # --- the project's rules (infra/check/checkov/policies) ---
    ("region outside the EEA", "terraform", "variables.tf",
     'default     = "norwayeast"', 'default     = "uksouth"', "CKV_TAVLE_1"),
    ("a literal non-EEA location", "terraform", "monitoring.tf",
     'name                = "log-${local.name}"\n  location            = azurerm_resource_group.data.location',
     'name                = "log-${local.name}"\n  location            = "switzerlandnorth"', "CKV_TAVLE_1"),
    ("geo-redundant backup off", "terraform", "postgres.tf",
     "geo_redundant_backup_enabled = true", "geo_redundant_backup_enabled = false", "CKV_TAVLE_2"),
    ("EU region without an EEA pair", "terraform", "variables.tf",
     'default     = "norwayeast"', 'default     = "polandcentral"', "CKV_TAVLE_2"),
    ("backup retention 29 days", "terraform", "variables.tf",
     "default     = 35\n", "default     = 29\n", "CKV_TAVLE_3"),
    ("backup retention 36 days", "terraform", "postgres.tf",
     "backup_retention_days        = var.backup_retention_days", "backup_retention_days        = 36", "CKV_TAVLE_3"),
    ("logs kept 90 days", "terraform", "variables.tf",
     "default     = 365\n", "default     = 90\n", "CKV_TAVLE_4"),
    ("no diagnostic setting for the server", "terraform", "monitoring.tf",
     ["target_resource_id         = azurerm_postgresql_flexible_server.main.id",
      "condition     = azurerm_log_analytics_workspace.main.location == azurerm_postgresql_flexible_server.main.location"],
     ['target_resource_id         = "elsewhere"', "condition     = true"],
     "CKV_TAVLE_5"),
    ("diagnostics also to a storage account", "terraform", "monitoring.tf",
     'name                       = "diag-${local.name}-kv"',
     'name                       = "diag-${local.name}-kv"\n  storage_account_id         = "/subscriptions/x/storageAccounts/elsewhere"', "CKV_TAVLE_8"),
    ("public PostgreSQL server", "terraform", "postgres.tf",
     "  public_network_access_enabled = false\n\n  administrator_login", "  public_network_access_enabled = true\n\n  administrator_login", "CKV_TAVLE_6"),
    ("a PostgreSQL firewall rule", "terraform", "postgres.tf",
     "# --- Server parameters",
     'resource "azurerm_postgresql_flexible_server_firewall_rule" "office" {\n  name             = "office"\n  server_id        = azurerm_postgresql_flexible_server.main.id\n  start_ip_address = "203.0.113.1"\n  end_ip_address   = "203.0.113.1"\n}\n\n# --- Server parameters',
     "CKV_TAVLE_7"),
    ("app egress to anywhere", "kubernetes", "networkpolicy.yaml",
     "  egress:\n    # Database subnet (infra/terraform var.db_subnet_cidr; the test keeps them equal).\n    - to:\n        - ipBlock:\n            cidr: 10.60.1.0/24",
     "  egress:\n    # Database subnet (infra/terraform var.db_subnet_cidr; the test keeps them equal).\n    - to:\n        - ipBlock:\n            cidr: 0.0.0.0/0",
     "CKV_TAVLE_K8S_1"),
    ("app egress to another port", "kubernetes", "networkpolicy.yaml",
     "  egress:\n    # Database subnet (infra/terraform var.db_subnet_cidr; the test keeps them equal).\n",
     "  egress:\n    - to:\n        - ipBlock:\n            cidr: 10.60.1.0/24\n      ports:\n        - protocol: TCP\n          port: 443\n"
     "    # Database subnet (infra/terraform var.db_subnet_cidr; the test keeps them equal).\n",
     "CKV_TAVLE_K8S_1"),
    ("migration Job egress without ports", "kubernetes", "networkpolicy.yaml",
     "      app.kubernetes.io/component: migrate\n  policyTypes: [\"Ingress\", \"Egress\"]\n  egress:\n    - to:\n        - ipBlock:\n            cidr: 10.60.1.0/24\n      ports:\n        - protocol: TCP\n          port: 5432\n",
     "      app.kubernetes.io/component: migrate\n  policyTypes: [\"Ingress\", \"Egress\"]\n  egress:\n    - to:\n        - ipBlock:\n            cidr: 10.60.1.0/24\n",
     "CKV_TAVLE_K8S_1"),
    ("SpinApp image by tag", "kubernetes", "spinapp.yaml",
     f"tavle@sha256:{ZERO}", "tavle:0.1.0", "CKV_TAVLE_K8S_2"),
    ("Job image with a short digest", "kubernetes", "migration-job.yaml",
     f"tavle-operator@sha256:{ZERO}", "tavle-operator@sha256:0000", "CKV_TAVLE_K8S_2"),
    # --- the built-in findings this change fixed stay fixed ---
    ("Key Vault public network access", "terraform", "keyvault.tf",
     "public_network_access_enabled = false", "public_network_access_enabled = true", "CKV_AZURE_189"),
    ("private-endpoint subnet without NSG", "terraform", "main.tf",
     'resource "azurerm_subnet_network_security_group_association" "private_endpoints" {\n  subnet_id                 = azurerm_subnet.private_endpoints.id',
     'resource "azurerm_subnet_network_security_group_association" "private_endpoints" {\n  subnet_id                 = "elsewhere"',
     "CKV2_AZURE_31"),
    ("admin password secret without expiry", "terraform", "keyvault.tf",
     '  expiration_date = timeadd(time_rotating.postgres_admin_password.rotation_rfc3339, "720h")\n', "", "CKV_AZURE_41"),
    ("CronJob image by tag", "kubernetes", "retention-cronjob.yaml",
     f"curl@sha256:{ZERO}", "curl:8", "CKV_K8S_43"),
    ("Job image by tag, pulled only if not on the node", "kubernetes", "migration-job.yaml",
     [f"tavle-operator@sha256:{ZERO}", "imagePullPolicy: Always"], ["tavle-operator:0.1.0", "imagePullPolicy: IfNotPresent"],
     "CKV_K8S_15"),
    ("Job secret as an environment variable", "kubernetes", "migration-job.yaml",
     "            - name: DATABASE_URL_FILE\n              value: /run/secrets/tavle-migrate/database_url\n",
     "            - name: DATABASE_URL\n              valueFrom:\n                secretKeyRef:\n                  name: tavle-migrate\n                  key: database_url\n",
     "CKV_K8S_35"),
]

SOURCES = {"terraform": os.path.join(ROOT, "infra", "terraform"), "kubernetes": os.path.join(ROOT, "infra", "k8s")}


def _reports(report_json):
    # One JSON document per scanned directory, one after the other; each is a report
    # or a list of reports.
    decoder, pos, reports = json.JSONDecoder(), 0, []
    text = report_json.strip()
    while pos < len(text):
        data, end = decoder.raw_decode(text, pos)
        reports.extend(data if isinstance(data, list) else [data])
        pos = end
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return reports


def failed_checks(report_json):
    """(check_id, absolute file path) of every failed check in checkov's JSON output."""
    reports = _reports(report_json)
    out = []
    for r in reports:
        for f in (r.get("results") or {}).get("failed_checks") or []:
            out.append((f["check_id"], os.path.realpath(f.get("file_abs_path") or "")))
    return out


def skipped_checks(report_json):
    """(check_id, resource, reason) of every check skipped inline."""
    out = []
    for r in _reports(report_json):
        for f in (r.get("results") or {}).get("skipped_checks") or []:
            out.append((f["check_id"], f.get("resource", ""), (f.get("check_result") or {}).get("suppress_comment", "")))
    return out


def main():
    checkov, extra = sys.argv[1], [a for a in sys.argv[2:] if a not in ("--compact", "--quiet")]
    readme = open(os.path.join(ROOT, "infra", "README.md"), encoding="utf-8").read().splitlines()
    problems = []
    with tempfile.TemporaryDirectory(prefix="tavle-checkov-selftest-") as tmp:
        dirs = {fw: [] for fw in SOURCES}
        for fw, src in SOURCES.items():
            base = os.path.join(tmp, f"untouched-{fw}")
            shutil.copytree(src, base)
            dirs[fw].append((None, base))
        for i, (name, fw, file, old, new, check) in enumerate(CASES):
            d = os.path.join(tmp, f"case-{i:02d}-" + re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-"))
            shutil.copytree(SOURCES[fw], d)
            path = os.path.join(d, file)
            text = open(path, encoding="utf-8").read()
            edits = list(zip(old, new)) if isinstance(old, list) else [(old, new)]
            bad = [o for o, _ in edits if text.count(o) != 1]
            if bad:
                problems.append(f'"{name}": an edit does not match exactly once in {file}: {bad[0]!r} (update the self-test)')
                continue
            for o, n in edits:
                text = text.replace(o, n)
            open(path, "w", encoding="utf-8").write(text)
            dirs[fw].append((i, d))

        # One checkov run per copy: given several directories at once, checkov merges
        # files with the same relative path and reports only one of them.
        def scan(fw, d):
            return subprocess.run([checkov, "--framework", fw, "-o", "json", "-d", d, *extra], capture_output=True, text=True)

        jobs = [(fw, i, d) for fw, entries in dirs.items() for i, d in entries]
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
            runs = list(pool.map(lambda j: scan(j[0], j[2]), jobs))
        for (fw, i, d), run in zip(jobs, runs):
            if run.returncode not in (0, 1) or not run.stdout.strip():
                problems.append(f"checkov ({fw}, {os.path.basename(d)}) exited {run.returncode}: {run.stderr.strip()[-2000:]}")
                continue
            real = os.path.realpath(d) + os.sep
            here = sorted({c for c, f in failed_checks(run.stdout) if f.startswith(real)})
            if i is None:
                if here:
                    problems.append(f"the untouched copy of infra/{os.path.basename(SOURCES[fw])} fails {here}")
                # Every inline skip has a reason and is listed in infra/README.md
                # ("Accepted skips": a table row naming the check and the resource).
                for check, resource, reason in skipped_checks(run.stdout):
                    listed = any(f"`{check}`" in line and f"`{resource}`" in line for line in readme)
                    if len(reason.strip()) < 40 or not listed:
                        problems.append(f"skip of {check} on {resource}: needs a reason and a row in infra/README.md, Accepted skips")
                    else:
                        print(f"infra/check: checkov skip (listed in infra/README.md): {check} on {resource}")
                continue
            name, check = CASES[i][0], CASES[i][5]
            if check in here:
                print(f"infra/check: checkov self-test: {name}: caught by {check}")
            else:
                problems.append(f'"{name}": expected {check} to fail, checkov reported {here or "nothing"}')

    if problems:
        print(f"infra/check: checkov self-test FAILED ({len(problems)} problem(s)):", file=sys.stderr)
        for p in problems:
            print(f"  - {p}", file=sys.stderr)
        sys.exit(1)
    print(f"infra/check: checkov self-test: all {len(CASES)} injected violations caught")


if __name__ == "__main__":
    main()
