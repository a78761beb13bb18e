# Key Vault in the same EEA region: the secret store behind every Spin variable.
# No public data-plane access at all: External Secrets Operator (infra/k8s/
# secretstore.yaml, workload identity), the Terraform runner and the operators reach it
# only through the private endpoint below, i.e. from this VNet or a peered one whose
# DNS resolves privatelink.vaultcore.azure.net (the cluster VNet, when aks_vnet_id is
# set). Creating the vault itself goes through Azure Resource Manager, which is not
# affected; writing the secrets below is data plane and needs that private path
# (infra/README.md, "Prerequisites").

resource "azurerm_key_vault" "main" {
  name                = "kv-${local.name}-${random_string.suffix.result}"
  location            = azurerm_resource_group.data.location
  resource_group_name = azurerm_resource_group.data.name
  tenant_id           = data.azurerm_client_config.current.tenant_id
  sku_name            = "standard"

  rbac_authorization_enabled = true
  soft_delete_retention_days = 90
  purge_protection_enabled   = true

  public_network_access_enabled = false

  network_acls {
    default_action = "Deny"
    bypass         = "None"
  }

  tags = local.tags

  lifecycle {
    prevent_destroy = true
  }
}

resource "azurerm_private_dns_zone" "key_vault" {
  name                = "privatelink.vaultcore.azure.net"
  resource_group_name = azurerm_resource_group.data.name
  tags                = local.tags
}

resource "azurerm_private_dns_zone_virtual_network_link" "key_vault_data" {
  name                  = "link-${local.name}-kv-data"
  private_dns_zone_name = azurerm_private_dns_zone.key_vault.name
  resource_group_name   = azurerm_resource_group.data.name
  virtual_network_id    = azurerm_virtual_network.data.id
  registration_enabled  = false
  tags                  = local.tags
}

resource "azurerm_private_dns_zone_virtual_network_link" "key_vault_aks" {
  count                 = var.aks_vnet_id == null ? 0 : 1
  name                  = "link-${local.name}-kv-aks"
  private_dns_zone_name = azurerm_private_dns_zone.key_vault.name
  resource_group_name   = azurerm_resource_group.data.name
  virtual_network_id    = var.aks_vnet_id
  registration_enabled  = false
  tags                  = local.tags
}

resource "azurerm_private_endpoint" "key_vault" {
  name                = "pe-${local.name}-kv"
  location            = azurerm_resource_group.data.location
  resource_group_name = azurerm_resource_group.data.name
  subnet_id           = azurerm_subnet.private_endpoints.id
  tags                = local.tags

  private_service_connection {
    name                           = "kv"
    private_connection_resource_id = azurerm_key_vault.main.id
    subresource_names              = ["vault"]
    is_manual_connection           = false
  }

  private_dns_zone_group {
    name                 = "kv"
    private_dns_zone_ids = [azurerm_private_dns_zone.key_vault.id]
  }
}

# The identity running Terraform may write secrets (administrator password, db host).
resource "azurerm_role_assignment" "terraform_secrets_officer" {
  scope                = azurerm_key_vault.main.id
  role_definition_name = "Key Vault Secrets Officer"
  principal_id         = data.azurerm_client_config.current.object_id
}

# Both secrets are written over the private endpoint (data plane), hence depends_on:
# only once the endpoint, its DNS records and, for a runner in the cluster VNet, the
# peering exist.
#
# Expires 30 days after its rotation is due: the first `terraform apply` after the
# rotation date replaces the password (postgres.tf) and writes a new version with a
# new expiry.
resource "azurerm_key_vault_secret" "postgres_admin_password" {
  name            = "tavle-pg-admin-password"
  value           = random_password.postgres_admin.result
  key_vault_id    = azurerm_key_vault.main.id
  content_type    = "PostgreSQL administrator password (break-glass / role bootstrap only)"
  expiration_date = timeadd(time_rotating.postgres_admin_password.rotation_rfc3339, "720h")
  tags            = local.tags

  depends_on = [
    azurerm_role_assignment.terraform_secrets_officer,
    azurerm_private_endpoint.key_vault,
    azurerm_private_dns_zone_virtual_network_link.key_vault_data,
    azurerm_private_dns_zone_virtual_network_link.key_vault_aks,
    azurerm_virtual_network_peering.aks_to_data,
    azurerm_virtual_network_peering.data_to_aks,
  ]
}

# Not a secret, but kept next to db_url so both change together (e.g. after a restore
# to a new server). Feeds the Spin variable `db_host` (allowed_outbound_hosts); db_url
# names the same FQDN, which the server certificate is verified against.
resource "azurerm_key_vault_secret" "db_host" {
  #checkov:skip=CKV_AZURE_41:Not a secret but the server's host name (also the output server_fqdn), kept in Key Vault only so that it changes together with db_url. It does not rotate, so an expiry date would only mark a valid value as expired, one that readers are meant not to use after that date.
  name         = "tavle-db-host"
  value        = azurerm_postgresql_flexible_server.main.fqdn
  key_vault_id = azurerm_key_vault.main.id
  content_type = "Spin variable db_host (PostgreSQL server FQDN)"
  tags         = local.tags

  depends_on = [
    azurerm_role_assignment.terraform_secrets_officer,
    azurerm_private_endpoint.key_vault,
    azurerm_private_dns_zone_virtual_network_link.key_vault_data,
    azurerm_private_dns_zone_virtual_network_link.key_vault_aks,
    azurerm_virtual_network_peering.aks_to_data,
    azurerm_virtual_network_peering.data_to_aks,
  ]
}

# --- Secrets set out of band ---------------------------------------------------------
# Every other secret in this vault is written by an operator (`az keyvault secret set`,
# infra/README.md 3.3) and is deliberately NOT a Terraform resource: the azurerm
# provider reads a secret's value back into state on every refresh (ignore_changes
# does not prevent that), so managing them here, even with a placeholder value, would
# copy the application's credentials into Terraform state. They are:
#   tavle-db-url, tavle-token-signing-key, tavle-token-public-keys, tavle-identity-key,
#   tavle-identity-previous-keys, tavle-blind-index-key, tavle-webhook-secret-key,
#   tavle-webhook-secret-previous-keys, tavle-migrate-database-url,
#   tavle-retention-db-url (the retention component's login tavle_retention_1),
#   tavle-scheduler-token (the retention scheduler's bearer token; read by the app and
#   by the scheduler).
# External Secrets reads each of them (infra/k8s/externalsecrets.yaml) with the
# read-only role below; no Terraform change is needed when one is added.

# --- Workload identity for External Secrets Operator -----------------------------

resource "azurerm_user_assigned_identity" "eso" {
  count               = var.aks_oidc_issuer_url == null ? 0 : 1
  name                = "id-${local.name}-eso"
  location            = azurerm_resource_group.data.location
  resource_group_name = azurerm_resource_group.data.name
  tags                = local.tags
}

resource "azurerm_federated_identity_credential" "eso" {
  count               = var.aks_oidc_issuer_url == null ? 0 : 1
  name                = "fic-${local.name}-eso"
  resource_group_name = azurerm_resource_group.data.name
  parent_id           = azurerm_user_assigned_identity.eso[0].id
  audience            = ["api://AzureADTokenExchange"]
  issuer              = var.aks_oidc_issuer_url
  subject             = "system:serviceaccount:${var.k8s_namespace}:${var.eso_service_account}"
}

# Read-only access to secret values; no key, certificate or management rights.
resource "azurerm_role_assignment" "eso_secrets_user" {
  count                = var.aks_oidc_issuer_url == null ? 0 : 1
  scope                = azurerm_key_vault.main.id
  role_definition_name = "Key Vault Secrets User"
  principal_id         = azurerm_user_assigned_identity.eso[0].principal_id
}
