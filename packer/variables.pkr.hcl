# Variables of the nodeforge Packer templates.
# The renderer writes the profile-derived ones to build/<site>/packer/site.auto.pkrvars.json;
# builder/packer.py adds the per-run ones (build_dir, manifest_path, qemu_* runtime paths)
# with -var. builder/INTERFACES.md lists which is which.

# --- identity (every target) ---------------------------------------------------------------
variable "site" {
  type = string
}
variable "image_name" {
  type        = string
  description = "Image name from the profile (image.name); a timestamp is appended for AMIs."
}
variable "profile_hash" {
  type = string
}
variable "builder_version" {
  type    = string
  default = "0.0.0"
}
variable "builder_commit" {
  type    = string
  default = "unknown"
}
variable "build_time" {
  type        = string
  description = "Unix epoch of the inputs (SOURCE_DATE_EPOCH)."
}
variable "ubuntu_release" {
  type    = string
  default = "24.04"
}
variable "ubuntu_codename" {
  type    = string
  default = "noble"
}
variable "kubernetes_version" {
  type = string
}
variable "crio_version" {
  type = string
}
variable "gpu" {
  type    = bool
  default = false
}
variable "nvidia_driver_branch" {
  type    = string
  default = ""
}
variable "provision_env" {
  type        = list(string)
  default     = []
  description = "The NF_* variables (KEY=value), also in build_dir/scripts/provision.env."
}
variable "provision_steps" {
  type        = string
  default     = ""
  description = "NF_STEPS for provision.sh (empty = every step); the qcow2 layer cache splits the build (builder/targets/layers.py)."
}
variable "disk_size_gb" {
  type    = number
  default = 20
}

# --- per run (builder/packer.py) --------------------------------------------------------
variable "build_dir" {
  type        = string
  description = "The rendered build tree build/<site> (scripts/ and files/ are uploaded)."
}
variable "manifest_path" {
  type    = string
  default = "packer-manifest.json"
}
variable "ssh_username" {
  type    = string
  default = "ubuntu"
}

# --- amazon-ebs -------------------------------------------------------------------------------
variable "aws_region" {
  type    = string
  default = "eu-central-1"
}
variable "aws_instance_type" {
  type    = string
  default = "t3.large"
}
variable "aws_volume_size_gb" {
  type    = number
  default = 30
}
variable "aws_source_ami_owner" {
  type        = string
  default     = "099720109477"
  description = "Canonical."
}
variable "aws_source_ami_name" {
  type        = string
  default     = ""
  description = "Name filter; empty = Canonical's server image of ubuntu_codename/ubuntu_release."
}
variable "aws_ami_regions" {
  type        = list(string)
  default     = []
  description = "Copy the AMI to these regions too."
}
variable "aws_ami_users" {
  type        = list(string)
  default     = []
  description = "Share the AMI with these account ids."
}
variable "aws_kms_key_id" {
  type        = string
  default     = ""
  description = "Customer-managed KMS key (id, alias or ARN) for the AMI; empty = the default EBS key (cannot be shared)."
}
variable "aws_region_kms_key_ids" {
  type        = map(string)
  default     = {}
  description = "Region -> KMS key for each copy in aws_ami_regions (empty: copies use their region's default key, which cannot be shared)."
}
variable "aws_subnet_id" {
  type    = string
  default = ""
}
variable "aws_vpc_id" {
  type    = string
  default = ""
}
variable "aws_ssh_interface" {
  type        = string
  default     = "public_ip"
  description = "public_ip, private_ip, public_dns, private_dns or session_manager."
}
variable "aws_associate_public_ip" {
  type    = bool
  default = true
}
variable "aws_tags" {
  type    = map(string)
  default = {}
}

# --- qemu ---------------------------------------------------------------------------------------
variable "qemu_base_image_url" {
  type        = string
  default     = "https://cloud-images.ubuntu.com/releases/24.04/release/ubuntu-24.04-server-cloudimg-amd64.img"
  description = "Ubuntu cloud image (URL or local path); an offline site points at its mirror."
}
variable "qemu_base_image_checksum" {
  type        = string
  default     = "file:https://cloud-images.ubuntu.com/releases/24.04/release/SHA256SUMS"
  description = "sha256:<hex>, file:<SHA256SUMS url>, or none."
}
variable "qemu_accelerator" {
  type        = string
  default     = "kvm"
  description = "kvm, tcg (builder/packer.py picks tcg where nested KVM hangs), hvf, whpx."
}
variable "qemu_output_dir" {
  type    = string
  default = "output-qemu"
}
variable "qemu_seed_dir" {
  type        = string
  default     = ""
  description = "NoCloud seed (user-data with the build-time SSH key, meta-data)."
}
variable "qemu_ssh_private_key_file" {
  type    = string
  default = ""
}
variable "qemu_args" {
  type        = list(list(string))
  default     = []
  description = "Extra QEMU arguments (e.g. direct kernel boot of the test stand-in image)."
}
variable "qemu_memory_mb" {
  type    = number
  default = 2048
}
variable "qemu_cpus" {
  type    = number
  default = 2
}
variable "qemu_ssh_timeout" {
  type    = string
  default = "15m"
}
