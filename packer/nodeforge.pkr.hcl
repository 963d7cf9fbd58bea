# nodeforge node images: one build, two sources (AMI and qcow2), the same provisioning scripts.
# Plugins: see plugins/required.pkr.hcl (`packer init packer/plugins` with Packer >= 1.7).

locals {
  stamp           = formatdate("YYYYMMDD-hhmmss", timestamp())
  source_ami_name = var.aws_source_ami_name != "" ? var.aws_source_ami_name : "ubuntu/images/hvm-ssd-gp3/ubuntu-${var.ubuntu_codename}-${var.ubuntu_release}-amd64-server-*"
  tags = merge(var.aws_tags, {
    "Name"                      = "${var.image_name}-${local.stamp}"
    "nodeforge:site"            = var.site
    "nodeforge:profile-hash"    = var.profile_hash
    "nodeforge:builder-version" = var.builder_version
    "nodeforge:builder-commit"  = var.builder_commit
    "nodeforge:build-time"      = var.build_time
    "nodeforge:kubernetes"      = var.kubernetes_version
    "nodeforge:crio"            = var.crio_version
    "nodeforge:nvidia-driver"   = var.gpu ? var.nvidia_driver_branch : "none"
    "nodeforge:ubuntu-release"  = var.ubuntu_release
  })
}

source "amazon-ebs" "node" {
  region        = var.aws_region
  instance_type = var.aws_instance_type
  ami_name      = "${var.image_name}-${local.stamp}"
  ami_regions   = var.aws_ami_regions
  ami_users     = var.aws_ami_users

  source_ami_filter {
    filters = {
      name                = local.source_ami_name
      architecture        = "x86_64"
      root-device-type    = "ebs"
      virtualization-type = "hvm"
    }
    owners      = [var.aws_source_ami_owner]
    most_recent = true
  }

  launch_block_device_mappings {
    device_name           = "/dev/sda1"
    volume_size           = var.aws_volume_size_gb
    volume_type           = "gp3"
    iops                  = 3000
    throughput            = 125
    encrypted             = true
    delete_on_termination = true
  }
  encrypt_boot = true
  # empty: the region's default EBS key; the plugin refuses ami_users then (profile check)
  kms_key_id = var.aws_kms_key_id
  # copies in ami_regions: kms_key_id covers the build region only (profile check)
  region_kms_key_ids = var.aws_region_kms_key_ids

  # IMDSv2 only: on instances launched from the AMI (plugin >= 1.2.2) ...
  imds_support = "v2.0"
  # ... and on the build instance
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  subnet_id                   = var.aws_subnet_id
  vpc_id                      = var.aws_vpc_id
  associate_public_ip_address = var.aws_associate_public_ip
  ssh_interface               = var.aws_ssh_interface
  ssh_username                = var.ssh_username

  tags          = local.tags
  snapshot_tags = local.tags
  run_tags      = { "Name" = "packer-${var.image_name}", "nodeforge:site" = var.site }
}

source "qemu" "node" {
  iso_url          = var.qemu_base_image_url
  iso_checksum     = var.qemu_base_image_checksum
  disk_image       = true
  use_backing_file = false
  format           = "qcow2"
  disk_size        = "${var.disk_size_gb}G"
  disk_interface   = "virtio"
  net_device       = "virtio-net"
  accelerator      = var.qemu_accelerator
  headless         = true
  boot_wait        = "0s" # a cloud image needs no boot command
  memory           = var.qemu_memory_mb
  cpus             = var.qemu_cpus
  qemuargs         = var.qemu_args
  output_directory = var.qemu_output_dir
  vm_name          = "${var.image_name}.qcow2"

  # NoCloud seed with the build-time SSH key (made fresh by builder/packer.py per build)
  cd_files = ["${var.qemu_seed_dir}/user-data", "${var.qemu_seed_dir}/meta-data"]
  cd_label = "cidata"

  ssh_username         = var.ssh_username
  ssh_private_key_file = var.qemu_ssh_private_key_file
  ssh_timeout          = var.qemu_ssh_timeout
  shutdown_command     = "sudo shutdown -P now"
}

build {
  sources = ["source.amazon-ebs.node", "source.qemu.node"]

  provisioner "shell" {
    inline = ["rm -rf /tmp/nodeforge", "mkdir -p /tmp/nodeforge"]
  }

  # the rendered build tree: scripts/ (with provision.env) and files/ (the root-fs overlay)
  provisioner "file" {
    source      = "${var.build_dir}/scripts"
    destination = "/tmp/nodeforge/"
  }
  provisioner "file" {
    source      = "${var.build_dir}/files"
    destination = "/tmp/nodeforge/"
  }

  provisioner "shell" {
    environment_vars = concat(var.provision_env, ["NF_FILES_DIR=/tmp/nodeforge/files", "NF_STEPS=${var.provision_steps}"])
    execute_command  = "chmod +x {{ .Path }}; sudo -E env {{ .Vars }} bash '{{ .Path }}'"
    inline = [
      "bash /tmp/nodeforge/scripts/provision.sh",
      # no build-time leftovers: staging copy (may hold a site token) and the build key
      "rm -rf /tmp/nodeforge",
      "rm -f /root/.ssh/authorized_keys /home/${var.ssh_username}/.ssh/authorized_keys",
    ]
  }

  post-processor "manifest" {
    output     = var.manifest_path
    strip_path = false
    custom_data = {
      site               = var.site
      profile_hash       = var.profile_hash
      builder_version    = var.builder_version
      builder_commit     = var.builder_commit
      build_time         = var.build_time
      kubernetes_version = var.kubernetes_version
      crio_version       = var.crio_version
      gpu                = var.gpu ? "true" : "false"
    }
  }
}
