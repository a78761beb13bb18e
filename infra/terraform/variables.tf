# Inputs of the Tavle data tier. Every default is the production choice for a
# Norwegian municipality; the validations make the GDPR constraints (EU/EEA only,
# >= 30 days of point-in-time restore, TLS) impossible to configure away.

variable "subscription_id" {
  description = "Azure subscription that holds the Tavle data tier."
  type        = string

  validation {
    condition     = can(regex("^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", var.subscription_id))
    error_message = "subscription_id must be a subscription GUID."
  }
}

variable "location" {
  description = "Azure region (short name) for every resource. Must be an EU/EEA region; Norway East is what a Norwegian municipality expects."
  type        = string
  default     = "norwayeast"

  # Explicit allowlist of Azure regions located in the EU/EEA. The United Kingdom
  # (uksouth, ukwest) and Switzerland (switzerlandnorth, switzerlandwest) are NOT in
  # the EEA and are deliberately absent, as is every region outside Europe.
  # Adding a region is a reviewed change: confirm it is physically in the EU/EEA and,
  # because backups are geo-redundant, that its paired region is too (see
  # local.eea_geo_backup_pair in main.tf).
  validation {
    condition = contains([
      "norwayeast",         # Oslo, Norway (EEA)
      "norwaywest",         # Stavanger, Norway (EEA)
      "swedencentral",      # Gävle, Sweden (EU)
      "swedensouth",        # Malmö, Sweden (EU)
      "westeurope",         # Netherlands (EU)
      "northeurope",        # Ireland (EU)
      "germanywestcentral", # Frankfurt, Germany (EU)
      "germanynorth",       # Berlin, Germany (EU)
      "francecentral",      # Paris, France (EU)
      "francesouth",        # Marseille, France (EU)
      "polandcentral",      # Warsaw, Poland (EU), no paired region
      "italynorth",         # Milan, Italy (EU), no paired region
      "spaincentral",       # Madrid, Spain (EU), no paired region
    ], var.location)
    error_message = "location must be an Azure region inside the EU/EEA, written as its lower-case short name (e.g. norwayeast). UK and Swiss regions are outside the EEA and are refused."
  }
}

variable "environment" {
  description = "Short environment name used in resource names (e.g. prod, test)."
  type        = string
  default     = "prod"

  validation {
    condition     = can(regex("^[a-z][a-z0-9]{1,4}$", var.environment))
    error_message = "environment must be 2-5 lower-case letters or digits, starting with a letter."
  }
}

variable "name_prefix" {
  description = "Prefix for resource names."
  type        = string
  default     = "tavle"

  validation {
    condition     = can(regex("^[a-z][a-z0-9]{1,7}$", var.name_prefix))
    error_message = "name_prefix must be 2-8 lower-case letters or digits, starting with a letter (Key Vault names are limited to 24 characters)."
  }
}

variable "tags" {
  description = "Extra tags for every resource."
  type        = map(string)
  default     = {}
}

# --- PostgreSQL -----------------------------------------------------------------

variable "postgres_version" {
  description = "Major PostgreSQL version."
  type        = string
  default     = "16"

  validation {
    condition     = contains(["15", "16", "17"], var.postgres_version)
    error_message = "postgres_version must be 15, 16 or 17."
  }
}

variable "postgres_sku_name" {
  description = "Compute SKU. General Purpose or Memory Optimized is required for high availability (Burstable does not support it)."
  type        = string
  default     = "GP_Standard_D2ds_v5"

  validation {
    condition     = can(regex("^(B|GP|MO)_Standard_", var.postgres_sku_name))
    error_message = "postgres_sku_name must be a Flexible Server SKU such as GP_Standard_D2ds_v5."
  }
}

variable "postgres_storage_mb" {
  description = "Provisioned storage in MiB (can only grow). Auto-grow is enabled."
  type        = number
  default     = 65536
}

variable "database_name" {
  description = "Name of the application database."
  type        = string
  default     = "tavle"

  validation {
    condition     = can(regex("^[a-z][a-z0-9_]{0,62}$", var.database_name))
    error_message = "database_name must be a lower-case PostgreSQL identifier."
  }
}

variable "administrator_login" {
  description = "Server administrator (break-glass and role bootstrap only; the application never uses it)."
  type        = string
  default     = "tavleadmin"

  validation {
    condition     = can(regex("^[a-z][a-z0-9_]{2,62}$", var.administrator_login)) && !contains(["admin", "administrator", "azure_superuser", "azure_pg_admin", "root", "guest", "public", "postgres"], var.administrator_login)
    error_message = "administrator_login must be a lower-case identifier and not a reserved name (admin, postgres, azure_superuser, ...)."
  }
}

variable "backup_retention_days" {
  description = "Days of point-in-time restore. Seed 004 3.4.3.3.3: backups kept at least 30 days (Azure allows at most 35)."
  type        = number
  default     = 35

  validation {
    condition     = var.backup_retention_days >= 30 && var.backup_retention_days <= 35 && floor(var.backup_retention_days) == var.backup_retention_days
    error_message = "backup_retention_days must be a whole number between 30 (seed 004: at least 30 days) and 35 (the Azure maximum)."
  }
}

variable "admin_credential_rotation_days" {
  description = "Days after which the next terraform apply replaces the administrator password. Its Key Vault secret expires 30 days after that date."
  type        = number
  default     = 90

  validation {
    condition     = var.admin_credential_rotation_days >= 30 && var.admin_credential_rotation_days <= 365
    error_message = "admin_credential_rotation_days must be between 30 and 365."
  }
}

variable "high_availability_enabled" {
  description = "Zone-redundant high availability (a hot standby in another availability zone of the same region). Recommended for production; doubles compute cost."
  type        = bool
  default     = false
}

variable "availability_zone" {
  description = "Availability zone of the primary server."
  type        = string
  default     = "1"

  validation {
    condition     = contains(["1", "2", "3"], var.availability_zone)
    error_message = "availability_zone must be 1, 2 or 3."
  }
}

variable "standby_availability_zone" {
  description = "Availability zone of the standby when high availability is enabled; must differ from availability_zone."
  type        = string
  default     = "2"

  validation {
    condition     = contains(["1", "2", "3"], var.standby_availability_zone)
    error_message = "standby_availability_zone must be 1, 2 or 3."
  }
}

variable "tls_min_version" {
  description = "Lowest TLS protocol version the server accepts."
  type        = string
  default     = "TLSv1.2"

  validation {
    condition     = contains(["TLSv1.2", "TLSv1.3"], var.tls_min_version)
    error_message = "tls_min_version must be TLSv1.2 or TLSv1.3; older protocols are refused."
  }
}

variable "maintenance_window" {
  description = "Weekly maintenance window in UTC (day 0 = Sunday). Default: Sunday 02:00 UTC, outside school hours."
  type = object({
    day_of_week  = number
    start_hour   = number
    start_minute = number
  })
  default = {
    day_of_week  = 0
    start_hour   = 2
    start_minute = 0
  }
}

# --- Networking -----------------------------------------------------------------

variable "vnet_address_space" {
  description = "Address space of the data VNet."
  type        = list(string)
  default     = ["10.60.0.0/16"]
}

variable "db_subnet_cidr" {
  description = "Subnet delegated to PostgreSQL Flexible Server. infra/k8s/networkpolicy.yaml allows egress to exactly this CIDR on 5432; keep the two in sync."
  type        = string
  default     = "10.60.1.0/24"

  validation {
    condition     = can(cidrhost(var.db_subnet_cidr, 0))
    error_message = "db_subnet_cidr must be a CIDR block."
  }
}

variable "private_endpoint_subnet_cidr" {
  description = "Subnet for the Key Vault private endpoint."
  type        = string
  default     = "10.60.2.0/24"

  validation {
    condition     = can(cidrhost(var.private_endpoint_subnet_cidr, 0))
    error_message = "private_endpoint_subnet_cidr must be a CIDR block."
  }
}

variable "aks_vnet_id" {
  description = "Resource ID of the VNet the Kubernetes cluster runs in. When set, the data VNet is peered with it and the private DNS zones are linked to it, so pods resolve and reach the database privately."
  type        = string
  default     = null
  nullable    = true
}

# --- Kubernetes / External Secrets --------------------------------------------

variable "aks_oidc_issuer_url" {
  description = "OIDC issuer URL of the cluster. When set, a user-assigned identity with a federated credential for the External Secrets service account is created and granted read access to the vault's secrets."
  type        = string
  default     = null
  nullable    = true
}

variable "k8s_namespace" {
  description = "Namespace of the Tavle deployment (infra/k8s)."
  type        = string
  default     = "tavle"
}

variable "eso_service_account" {
  description = "ServiceAccount the SecretStore authenticates as (infra/k8s/secretstore.yaml)."
  type        = string
  default     = "tavle-eso"
}

# --- Logs -----------------------------------------------------------------------

variable "log_retention_days" {
  description = "Retention of PostgreSQL and Key Vault diagnostic logs in Log Analytics. Seed 004 3.4.3.3.10: logs of access to personal data are kept at least 6 months."
  type        = number
  default     = 365

  validation {
    condition     = var.log_retention_days >= 183 && var.log_retention_days <= 730
    error_message = "log_retention_days must be between 183 (six months, seed 004) and 730."
  }
}
