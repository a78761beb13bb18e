# Azure Database for PostgreSQL Flexible Server: private (VNet-injected), TLS-only,
# geo-redundant backups inside the EEA, >= 30 days of point-in-time restore.
#
# Roles: the administrator created here is used only to bootstrap the database roles
# (`tavle_owner` runs migrations, `tavle_app` is the least-privilege runtime role).
# Those roles and their grants are created by the documented SQL in infra/README.md
# ("Database roles"), not by Terraform, so no application credential ever sits in
# Terraform state.

# Generated administrator password: never typed by a person, stored only in the Key
# Vault (and, unavoidably, in the Terraform state, which is why the state backend is
# in the same EEA region with restricted access). URL-unreserved specials only, so it
# can be used in a connection URL without escaping.
resource "random_password" "postgres_admin" {
  # A new password (and with it a new Key Vault secret version and expiry) on the
  # first apply after each rotation date.
  keepers = {
    rotation = time_rotating.postgres_admin_password.id
  }

  length           = 40
  special          = true
  override_special = "-_.~"
  min_lower        = 4
  min_upper        = 4
  min_numeric      = 4
  min_special      = 2
}

# Rotation schedule of the administrator password (checked on every plan/apply).
resource "time_rotating" "postgres_admin_password" {
  rotation_days = var.admin_credential_rotation_days
}

resource "azurerm_postgresql_flexible_server" "main" {
  #checkov:skip=CKV2_AZURE_57:The server uses VNet integration (delegated_subnet_id, private DNS zone, public_network_access_enabled = false): it has only a private address inside our VNet and no public endpoint at all, which is what a private endpoint would give. Azure offers private endpoints only for servers in public-access mode; a VNet-integrated server cannot have one.
  name                = "psql-${local.name}-${random_string.suffix.result}"
  resource_group_name = azurerm_resource_group.data.name
  location            = azurerm_resource_group.data.location
  version             = var.postgres_version
  sku_name            = var.postgres_sku_name
  storage_mb          = var.postgres_storage_mb
  auto_grow_enabled   = true
  zone                = var.availability_zone

  # Private access only (VNet integration): no public endpoint, no firewall rules.
  delegated_subnet_id           = azurerm_subnet.postgres.id
  private_dns_zone_id           = azurerm_private_dns_zone.postgres.id
  public_network_access_enabled = false

  administrator_login    = var.administrator_login
  administrator_password = random_password.postgres_admin.result

  authentication {
    password_auth_enabled         = true
    active_directory_auth_enabled = false
  }

  # Seed 004 3.4.3.3.3: automated daily backups in at least two locations, kept at
  # least 30 days. Geo-redundant backup stores a copy in the paired region, which the
  # precondition below keeps inside the EEA (Norway East -> Norway West).
  backup_retention_days        = var.backup_retention_days
  geo_redundant_backup_enabled = true

  dynamic "high_availability" {
    for_each = var.high_availability_enabled ? [1] : []
    content {
      mode                      = "ZoneRedundant"
      standby_availability_zone = var.standby_availability_zone
    }
  }

  maintenance_window {
    day_of_week  = var.maintenance_window.day_of_week
    start_hour   = var.maintenance_window.start_hour
    start_minute = var.maintenance_window.start_minute
  }

  tags = local.tags

  depends_on = [
    azurerm_private_dns_zone_virtual_network_link.postgres_data,
    azurerm_subnet_network_security_group_association.postgres,
  ]

  lifecycle {
    # This server holds pupils' personal data: destroying it must be a deliberate
    # code change, never a side effect of a plan.
    prevent_destroy = true

    # After an HA fail-over Azure swaps the zones; do not fail back on every apply.
    ignore_changes = [
      zone,
      high_availability[0].standby_availability_zone,
    ]

    precondition {
      condition     = contains(keys(local.eea_geo_backup_pair), var.location)
      error_message = "Geo-redundant backups are copied to the Azure paired region. ${var.location} has no paired region inside the EU/EEA, so backups could not stay in the EEA. Use a paired EEA region (e.g. norwayeast, whose pair is norwaywest)."
    }

    precondition {
      condition     = !var.high_availability_enabled || var.availability_zone != var.standby_availability_zone
      error_message = "Zone-redundant high availability needs the standby in a different availability zone than the primary."
    }
  }
}

resource "azurerm_postgresql_flexible_server_database" "tavle" {
  name      = var.database_name
  server_id = azurerm_postgresql_flexible_server.main.id
  charset   = "UTF8"
  collation = "en_US.utf8"

  lifecycle {
    prevent_destroy = true
  }
}

# --- Server parameters ---------------------------------------------------------

# TLS is mandatory for every connection (seed 004 3.4.3.3.6 / 3.4.3.3.8). The server
# only refuses plain text; that clients verify it is up to their URLs: the app's db_url
# uses sslmode=require (verified by Spin against the node's trust store), the migration
# URL sslmode=verify-full (infra/README.md, "TLS to the database").
resource "azurerm_postgresql_flexible_server_configuration" "require_secure_transport" {
  name      = "require_secure_transport"
  server_id = azurerm_postgresql_flexible_server.main.id
  value     = "on"
}

resource "azurerm_postgresql_flexible_server_configuration" "ssl_min_protocol_version" {
  name      = "ssl_min_protocol_version"
  server_id = azurerm_postgresql_flexible_server.main.id
  value     = var.tls_min_version
}

# Who connected and when (administrators reaching personal data are logged, seed 004
# 3.4.3.3.10). Statement logging stays off on purpose: statement text and bind
# parameters could carry personal data, and `ALTER ROLE ... PASSWORD` would be logged
# in clear. Access to personal data is recorded by the application's own audit log.
resource "azurerm_postgresql_flexible_server_configuration" "log_connections" {
  name      = "log_connections"
  server_id = azurerm_postgresql_flexible_server.main.id
  value     = "on"
}

resource "azurerm_postgresql_flexible_server_configuration" "log_disconnections" {
  name      = "log_disconnections"
  server_id = azurerm_postgresql_flexible_server.main.id
  value     = "on"
}
