# Diagnostic logs stay in the same EEA region as the data: a Log Analytics workspace
# in var.location receives the PostgreSQL server logs (connections, errors) and the
# Key Vault audit log (who read or changed which secret).

resource "azurerm_log_analytics_workspace" "main" {
  name                = "log-${local.name}"
  location            = azurerm_resource_group.data.location
  resource_group_name = azurerm_resource_group.data.name
  sku                 = "PerGB2018"
  retention_in_days   = var.log_retention_days
  tags                = local.tags
}

resource "azurerm_monitor_diagnostic_setting" "postgres" {
  name                       = "diag-${local.name}-postgres"
  target_resource_id         = azurerm_postgresql_flexible_server.main.id
  log_analytics_workspace_id = azurerm_log_analytics_workspace.main.id

  enabled_log {
    category = "PostgreSQLLogs"
  }

  lifecycle {
    precondition {
      condition     = azurerm_log_analytics_workspace.main.location == azurerm_postgresql_flexible_server.main.location
      error_message = "PostgreSQL diagnostic logs must be kept in the same region as the server."
    }
  }
}

resource "azurerm_monitor_diagnostic_setting" "key_vault" {
  name                       = "diag-${local.name}-kv"
  target_resource_id         = azurerm_key_vault.main.id
  log_analytics_workspace_id = azurerm_log_analytics_workspace.main.id

  enabled_log {
    category = "AuditEvent"
  }
}
