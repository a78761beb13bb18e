# Provider and Terraform versions are pinned: a provider upgrade is a reviewed change.
# After the first `terraform init` against the real backend, commit the generated
# `.terraform.lock.hcl` next to this file so every run uses the same provider build.
terraform {
  required_version = ">= 1.6.0, < 2.0.0"

  required_providers {
    azurerm = {
      source = "hashicorp/azurerm"
      # 4.42 introduced `rbac_authorization_enabled` on azurerm_key_vault; 5.x is a
      # breaking major and must be adopted deliberately.
      version = ">= 4.50.0, < 5.0.0"
    }
    random = {
      source  = "hashicorp/random"
      version = ">= 3.6.0, < 4.0.0"
    }
    time = {
      source  = "hashicorp/time"
      version = ">= 0.11.0, < 1.0.0"
    }
  }

  # State holds the generated administrator password, so it is personal-data-adjacent
  # and secret: it lives in an Azure Storage account in the same EEA region, with
  # Entra ID auth only. Values are passed at init time (see infra/README.md):
  #   terraform init -backend-config=backend.hcl
  backend "azurerm" {}
}

provider "azurerm" {
  subscription_id = var.subscription_id

  features {
    key_vault {
      # Never purge a soft-deleted vault (or its secrets) as a side effect of destroy.
      purge_soft_delete_on_destroy               = false
      purge_soft_deleted_secrets_on_destroy      = false
      recover_soft_deleted_key_vaults            = true
      recover_soft_deleted_secrets               = true
      purge_soft_deleted_keys_on_destroy         = false
      purge_soft_deleted_certificates_on_destroy = false
    }
    resource_group {
      prevent_deletion_if_contains_resources = true
    }
  }
}
