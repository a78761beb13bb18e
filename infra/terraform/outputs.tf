# Outputs are non-secret by rule: no password, key or connection URL is ever an output
# (infra/check/check_hcl.mjs enforces this). Secrets are read from the Key Vault.

output "server_fqdn" {
  description = "PostgreSQL server FQDN (resolves privately inside linked VNets). Value of the Spin variable db_host."
  value       = azurerm_postgresql_flexible_server.main.fqdn
}

output "database_name" {
  description = "Application database name."
  value       = azurerm_postgresql_flexible_server_database.tavle.name
}

output "geo_backup_region" {
  description = "Region that holds the geo-redundant backup copy (always inside the EEA)."
  value       = local.eea_geo_backup_pair[var.location]
}

output "key_vault_name" {
  description = "Key Vault holding the Spin variables' secrets."
  value       = azurerm_key_vault.main.name
}

output "key_vault_uri" {
  description = "Key Vault URI for infra/k8s/secretstore.yaml (vaultUrl)."
  value       = azurerm_key_vault.main.vault_uri
}

output "eso_client_id" {
  description = "Client ID of the External Secrets workload identity (annotation on the tavle-eso ServiceAccount); null when aks_oidc_issuer_url is unset."
  value       = var.aks_oidc_issuer_url == null ? null : azurerm_user_assigned_identity.eso[0].client_id
}

output "db_subnet_cidr" {
  description = "Database subnet; infra/k8s/networkpolicy.yaml allows egress only to this CIDR on 5432."
  value       = var.db_subnet_cidr
}
