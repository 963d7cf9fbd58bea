# Plugin requirements for Packer >= 1.7, kept apart from the templates because Debian's
# packer 1.6.6 (which validates and builds packer/ in our tests, with its built-in builders)
# rejects `required_plugins`. With a current Packer run once:
#   packer init packer/plugins
packer {
  required_version = ">= 1.7.0"
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.3.0"
    }
    qemu = {
      source  = "github.com/hashicorp/qemu"
      version = ">= 1.1.0"
    }
  }
}
