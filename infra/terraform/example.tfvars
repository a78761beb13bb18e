# Example input for production in Norway East. Copy to prod.tfvars and run
#   terraform plan -var-file=prod.tfvars
subscription_id = "00000000-0000-0000-0000-000000000000"
location        = "norwayeast"
environment     = "prod"

high_availability_enabled = true
backup_retention_days     = 35

# The Kubernetes cluster that runs the SpinApp (peering + private DNS + workload identity).
aks_vnet_id         = "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-aks-prod/providers/Microsoft.Network/virtualNetworks/vnet-aks-prod"
aks_oidc_issuer_url = "https://norwayeast.oic.prod-aks.azure.com/00000000-0000-0000-0000-000000000000/00000000-0000-0000-0000-000000000000/"

