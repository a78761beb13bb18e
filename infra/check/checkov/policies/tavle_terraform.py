"""Tavle's own rules for infra/terraform, as checkov custom checks (CKV_TAVLE_*).

Checkov renders variables and references before these run, so `location =
azurerm_resource_group.data.location` arrives as the region itself. A value checkov
could not resolve fails: a rule we cannot prove counts as broken.
"""

import json
import os

from checkov.common.models.enums import CheckCategories, CheckResult
from checkov.terraform.checks.resource.base_resource_check import BaseResourceCheck

# Azure EU/EEA regions and their EEA paired regions (where geo-redundant backups are
# copied): one list for this file and check_hcl.mjs.
with open(os.path.join(os.path.dirname(__file__), "..", "..", "eea_regions.json"), encoding="utf-8") as f:
    _REGIONS = json.load(f)
EEA_REGIONS = set(_REGIONS["regions"])
EEA_GEO_BACKUP_PAIR = dict(_REGIONS["geo_backup_pair"])


def value(conf, key):
    """The attribute's rendered value (checkov wraps every value in a list)."""
    v = conf.get(key)
    if isinstance(v, list):
        return v[0] if len(v) == 1 else v
    return v


def as_int(v):
    try:
        return int(v) if float(v) == int(float(v)) else None
    except (TypeError, ValueError):
        return None


class EeaRegionOnly(BaseResourceCheck):
    def __init__(self):
        super().__init__(
            name="Tavle: every Azure resource with a location is in an EU/EEA region (seeds 001, 003)",
            id="CKV_TAVLE_1",
            categories=[CheckCategories.GENERAL_SECURITY],
            supported_resources=["azurerm_*"],
        )

    def scan_resource_conf(self, conf):
        if "location" not in conf:
            return CheckResult.UNKNOWN  # global resources (DNS zones, role assignments, ...)
        self.evaluated_keys = ["location"]
        loc = value(conf, "location")
        return CheckResult.PASSED if isinstance(loc, str) and loc in EEA_REGIONS else CheckResult.FAILED


class GeoBackupPairInEea(BaseResourceCheck):
    def __init__(self):
        super().__init__(
            name="Tavle: PostgreSQL has geo-redundant backups, in a region whose Azure pair is in the EU/EEA (seed 004 3.4.3.3.3)",
            id="CKV_TAVLE_2",
            categories=[CheckCategories.BACKUP_AND_RECOVERY],
            supported_resources=["azurerm_postgresql_flexible_server"],
        )

    def scan_resource_conf(self, conf):
        self.evaluated_keys = ["location", "geo_redundant_backup_enabled"]
        loc = value(conf, "location")
        ok = value(conf, "geo_redundant_backup_enabled") is True and loc in EEA_GEO_BACKUP_PAIR
        return CheckResult.PASSED if ok else CheckResult.FAILED


class BackupRetention30To35(BaseResourceCheck):
    def __init__(self):
        super().__init__(
            name="Tavle: PostgreSQL backups are kept 30 to 35 days (seed 004 3.4.3.3.3)",
            id="CKV_TAVLE_3",
            categories=[CheckCategories.BACKUP_AND_RECOVERY],
            supported_resources=["azurerm_postgresql_flexible_server"],
        )

    def scan_resource_conf(self, conf):
        self.evaluated_keys = ["backup_retention_days"]
        days = as_int(value(conf, "backup_retention_days"))
        return CheckResult.PASSED if days is not None and 30 <= days <= 35 else CheckResult.FAILED


class LogRetention183Days(BaseResourceCheck):
    def __init__(self):
        super().__init__(
            name="Tavle: the Log Analytics workspace keeps logs at least 183 days (seed 004 3.4.3.3.10)",
            id="CKV_TAVLE_4",
            categories=[CheckCategories.LOGGING],
            supported_resources=["azurerm_log_analytics_workspace"],
        )

    def scan_resource_conf(self, conf):
        self.evaluated_keys = ["retention_in_days"]
        days = as_int(value(conf, "retention_in_days"))
        return CheckResult.PASSED if days is not None and days >= 183 else CheckResult.FAILED


class PostgresPrivateOnly(BaseResourceCheck):
    def __init__(self):
        super().__init__(
            name="Tavle: PostgreSQL has no public endpoint (VNet integration with private DNS)",
            id="CKV_TAVLE_6",
            categories=[CheckCategories.NETWORKING],
            supported_resources=["azurerm_postgresql_flexible_server"],
        )

    def scan_resource_conf(self, conf):
        self.evaluated_keys = ["public_network_access_enabled", "delegated_subnet_id", "private_dns_zone_id"]
        ok = (
            value(conf, "public_network_access_enabled") is False
            and bool(value(conf, "delegated_subnet_id"))
            and bool(value(conf, "private_dns_zone_id"))
        )
        return CheckResult.PASSED if ok else CheckResult.FAILED


class NoPostgresFirewallRules(BaseResourceCheck):
    def __init__(self):
        super().__init__(
            name="Tavle: no PostgreSQL firewall rules (the server has no public endpoint to open)",
            id="CKV_TAVLE_7",
            categories=[CheckCategories.NETWORKING],
            supported_resources=["azurerm_postgresql_flexible_server_firewall_rule"],
        )

    def scan_resource_conf(self, conf):
        self.evaluated_keys = []
        return CheckResult.FAILED  # its mere existence breaks the rule


EeaRegionOnly()
GeoBackupPairInEea()
BackupRetention30To35()
LogRetention183Days()
PostgresPrivateOnly()
NoPostgresFirewallRules()
