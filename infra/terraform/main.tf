data "azurerm_client_config" "current" {}

locals {
  name = "${var.name_prefix}-${var.environment}"

  # Geo-redundant backups are copied by Azure to the region's *paired* region. Only
  # regions whose pair is itself inside the EU/EEA may host Tavle, so that backups
  # never leave the EEA. Regions without a pair (polandcentral, italynorth,
  # spaincentral) are EU regions but cannot hold a geo-redundant backup and are
  # therefore refused by the precondition in postgres.tf.
  eea_geo_backup_pair = {
    norwayeast         = "norwaywest"
    norwaywest         = "norwayeast"
    swedencentral      = "swedensouth"
    swedensouth        = "swedencentral"
    westeurope         = "northeurope"
    northeurope        = "westeurope"
    germanywestcentral = "germanynorth"
    germanynorth       = "germanywestcentral"
    francecentral      = "francesouth"
    francesouth        = "francecentral"
  }

  aks_vnet_parts = var.aks_vnet_id == null ? [] : split("/", var.aks_vnet_id)

  tags = merge(var.tags, {
    application    = "tavle"
    environment    = var.environment
    data-residency = "eu-eea"
    managed-by     = "terraform"
  })
}

# Short random suffix: server and vault names are globally unique.
resource "random_string" "suffix" {
  length  = 5
  lower   = true
  upper   = false
  numeric = true
  special = false
}

resource "azurerm_resource_group" "data" {
  name     = "rg-${local.name}-data"
  location = var.location
  tags     = local.tags
}

# --- Private networking -----------------------------------------------------------

resource "azurerm_virtual_network" "data" {
  name                = "vnet-${local.name}-data"
  location            = azurerm_resource_group.data.location
  resource_group_name = azurerm_resource_group.data.name
  address_space       = var.vnet_address_space
  tags                = local.tags
}

# The server is injected into this subnet (VNet integration): it has no public
# endpoint at all, and only this VNet and peered VNets can reach it.
resource "azurerm_subnet" "postgres" {
  name                 = "snet-postgres"
  resource_group_name  = azurerm_resource_group.data.name
  virtual_network_name = azurerm_virtual_network.data.name
  address_prefixes     = [var.db_subnet_cidr]

  delegation {
    name = "postgres-flexible-server"
    service_delegation {
      name    = "Microsoft.DBforPostgreSQL/flexibleServers"
      actions = ["Microsoft.Network/virtualNetworks/subnets/join/action"]
    }
  }
}

resource "azurerm_subnet" "private_endpoints" {
  name                 = "snet-private-endpoints"
  resource_group_name  = azurerm_resource_group.data.name
  virtual_network_name = azurerm_virtual_network.data.name
  address_prefixes     = [var.private_endpoint_subnet_cidr]

  # Without this Azure ignores the subnet's NSG for traffic to private endpoints.
  private_endpoint_network_policies = "NetworkSecurityGroupEnabled"
}

# Firewall for the private-endpoint subnet (the Key Vault endpoint): HTTPS from inside
# the virtual network (this VNet and peered cluster VNets: ESO, the Terraform runner,
# the operators' jump host), nothing from the Internet.
resource "azurerm_network_security_group" "private_endpoints" {
  name                = "nsg-${local.name}-private-endpoints"
  location            = azurerm_resource_group.data.location
  resource_group_name = azurerm_resource_group.data.name
  tags                = local.tags

  security_rule {
    name                       = "allow-https-from-vnet"
    priority                   = 100
    direction                  = "Inbound"
    access                     = "Allow"
    protocol                   = "Tcp"
    source_port_range          = "*"
    destination_port_range     = "443"
    source_address_prefix      = "VirtualNetwork"
    destination_address_prefix = var.private_endpoint_subnet_cidr
  }

  # Nothing but HTTPS is served by a Key Vault endpoint: deny the rest of the VNet too.
  security_rule {
    name                       = "deny-vnet-other-inbound"
    priority                   = 3900
    direction                  = "Inbound"
    access                     = "Deny"
    protocol                   = "*"
    source_port_range          = "*"
    destination_port_range     = "*"
    source_address_prefix      = "VirtualNetwork"
    destination_address_prefix = "*"
  }

  security_rule {
    name                       = "deny-internet-inbound"
    priority                   = 4000
    direction                  = "Inbound"
    access                     = "Deny"
    protocol                   = "*"
    source_port_range          = "*"
    destination_port_range     = "*"
    source_address_prefix      = "Internet"
    destination_address_prefix = "*"
  }
}

resource "azurerm_subnet_network_security_group_association" "private_endpoints" {
  subnet_id                 = azurerm_subnet.private_endpoints.id
  network_security_group_id = azurerm_network_security_group.private_endpoints.id
}

# Firewall for the database subnet (seed 004 3.4.3.3.9): PostgreSQL from inside the
# virtual network (this VNet and peered cluster VNets), nothing from the Internet.
resource "azurerm_network_security_group" "postgres" {
  name                = "nsg-${local.name}-postgres"
  location            = azurerm_resource_group.data.location
  resource_group_name = azurerm_resource_group.data.name
  tags                = local.tags

  security_rule {
    name                       = "allow-postgres-from-vnet"
    priority                   = 100
    direction                  = "Inbound"
    access                     = "Allow"
    protocol                   = "Tcp"
    source_port_range          = "*"
    destination_port_range     = "5432"
    source_address_prefix      = "VirtualNetwork"
    destination_address_prefix = var.db_subnet_cidr
  }

  # Explicit, although the default rules already deny Internet inbound traffic.
  # Azure platform traffic (AzureLoadBalancer) keeps its default allow rule.
  security_rule {
    name                       = "deny-internet-inbound"
    priority                   = 4000
    direction                  = "Inbound"
    access                     = "Deny"
    protocol                   = "*"
    source_port_range          = "*"
    destination_port_range     = "*"
    source_address_prefix      = "Internet"
    destination_address_prefix = "*"
  }
}

resource "azurerm_subnet_network_security_group_association" "postgres" {
  subnet_id                 = azurerm_subnet.postgres.id
  network_security_group_id = azurerm_network_security_group.postgres.id
}

# Private DNS: the server FQDN resolves to its private address only inside linked VNets.
resource "azurerm_private_dns_zone" "postgres" {
  name                = "${local.name}.private.postgres.database.azure.com"
  resource_group_name = azurerm_resource_group.data.name
  tags                = local.tags
}

resource "azurerm_private_dns_zone_virtual_network_link" "postgres_data" {
  name                  = "link-${local.name}-data"
  private_dns_zone_name = azurerm_private_dns_zone.postgres.name
  resource_group_name   = azurerm_resource_group.data.name
  virtual_network_id    = azurerm_virtual_network.data.id
  registration_enabled  = false
  tags                  = local.tags
}

resource "azurerm_private_dns_zone_virtual_network_link" "postgres_aks" {
  count                 = var.aks_vnet_id == null ? 0 : 1
  name                  = "link-${local.name}-aks"
  private_dns_zone_name = azurerm_private_dns_zone.postgres.name
  resource_group_name   = azurerm_resource_group.data.name
  virtual_network_id    = var.aks_vnet_id
  registration_enabled  = false
  tags                  = local.tags
}

# Peering with the cluster VNet (both directions), so pods reach the database subnet.
resource "azurerm_virtual_network_peering" "data_to_aks" {
  count                        = var.aks_vnet_id == null ? 0 : 1
  name                         = "peer-${local.name}-data-to-aks"
  resource_group_name          = azurerm_resource_group.data.name
  virtual_network_name         = azurerm_virtual_network.data.name
  remote_virtual_network_id    = var.aks_vnet_id
  allow_virtual_network_access = true
  allow_forwarded_traffic      = false
  allow_gateway_transit        = false
}

resource "azurerm_virtual_network_peering" "aks_to_data" {
  count                        = var.aks_vnet_id == null ? 0 : 1
  name                         = "peer-${local.name}-aks-to-data"
  resource_group_name          = local.aks_vnet_parts[4]
  virtual_network_name         = local.aks_vnet_parts[8]
  remote_virtual_network_id    = azurerm_virtual_network.data.id
  allow_virtual_network_access = true
  allow_forwarded_traffic      = false
  allow_gateway_transit        = false
}
