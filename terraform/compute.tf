# Worker launch template: the Deep Learning Base GPU AMI (Ubuntu 24.04: NVIDIA driver, Docker,
# AWS CLI, Python 3.12; no framework), IMDSv2 only, encrypted gp3 volumes, user data that mounts
# the data volume at /data, installs the worker's wheel from the bucket (`submit deploy worker`)
# with TensorFlow into a venv and starts `worker run` under systemd (terraform/README.md).
# The user data holds names and numbers only: credentials come from the instance profile
# through IMDSv2.

# The latest Deep Learning Base GPU AMI by name, or the one given in var.ami_id.
data "aws_ami" "worker" {
  most_recent = true
  owners      = var.ami_id == null ? ["amazon"] : null

  filter {
    name   = var.ami_id == null ? "name" : "image-id"
    values = [var.ami_id == null ? var.ami_name_pattern : var.ami_id]
  }

  filter {
    name   = "architecture"
    values = ["x86_64"]
  }

  filter {
    name   = "state"
    values = ["available"]
  }
}

locals {
  root_device_name = data.aws_ami.worker.root_device_name
  # The root volume may not be smaller than the AMI's snapshot.
  root_snapshot_gb = try(max([
    for m in data.aws_ami.worker.block_device_mappings :
    tonumber(m.ebs["volume_size"]) if m.device_name == local.root_device_name
  ]...), 0)
  root_volume_size_gb = max(var.root_volume_size_gb, local.root_snapshot_gb)

  user_data = templatefile("${path.module}/templates/user_data.sh.tftpl", {
    stack          = var.stack
    region         = var.region
    queue_name     = aws_sqs_queue.jobs.name
    dlq_name       = aws_sqs_queue.dlq.name
    table_name     = aws_dynamodb_table.jobs.name
    bucket         = aws_s3_bucket.artifacts.bucket
    lease_s        = var.lease_s
    max_receives   = var.max_receive_count
    asg_name       = local.asg_name
    data_mount     = local.data_mount
    cache_dir      = local.cache_dir
    idle_timeout_s = var.worker_idle_timeout_s
    price_per_hour = var.price_per_hour == null ? "" : tostring(var.price_per_hour)
    worker_package = var.worker_package
    worker_python  = var.worker_python
    worker_image   = var.worker_image
    metadata_url   = "http://169.254.169.254"
  })
}

resource "aws_security_group" "worker" {
  name        = "${var.stack}-worker"
  description = "spotsweep workers: no inbound; outbound HTTPS only (AWS APIs, package index, image registry)"
  vpc_id      = local.vpc_id

  egress {
    description      = "HTTPS to AWS APIs, PyPI and the image registry"
    from_port        = 443
    to_port          = 443
    protocol         = "tcp"
    cidr_blocks      = ["0.0.0.0/0"]
    ipv6_cidr_blocks = ["::/0"]
  }
}

resource "aws_launch_template" "worker" {
  #checkov:skip=CKV_AWS_88:Workers reach AWS APIs and package indexes through a public IP instead of a NAT gateway (~$32/month idle); the security group allows no inbound traffic.
  name_prefix            = "${var.stack}-worker-"
  description            = "spotsweep ${var.stack} GPU spot worker"
  image_id               = data.aws_ami.worker.id
  ebs_optimized          = true
  update_default_version = true
  user_data              = base64encode(local.user_data)

  iam_instance_profile {
    arn = aws_iam_instance_profile.worker.arn
  }

  # IMDSv2 only. Hop limit 1 keeps tokens on the host; the container mode of the user data
  # uses host networking, so 1 suffices there too (2 only for a bridged container).
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = var.metadata_hop_limit
    instance_metadata_tags      = "disabled"
  }

  monitoring {
    enabled = true
  }

  network_interfaces {
    device_index                = 0
    associate_public_ip_address = var.associate_public_ip_address
    security_groups             = [aws_security_group.worker.id]
    delete_on_termination       = true
  }

  # Root volume: the AMI's, encrypted, gp3.
  block_device_mappings {
    device_name = local.root_device_name

    ebs {
      volume_size           = local.root_volume_size_gb
      volume_type           = "gp3"
      encrypted             = true
      delete_on_termination = true
    }
  }

  # Data volume: the dataset/feature cache, mounted at /data by the user data.
  block_device_mappings {
    device_name = "/dev/sdf"

    ebs {
      volume_size           = var.data_volume_size_gb
      volume_type           = "gp3"
      iops                  = 3000
      throughput            = var.data_volume_throughput
      encrypted             = true
      delete_on_termination = true
    }
  }

  tag_specifications {
    resource_type = "instance"
    tags          = merge(local.tags, { Name = "${var.stack}-worker" })
  }

  tag_specifications {
    resource_type = "volume"
    tags          = merge(local.tags, { Name = "${var.stack}-worker" })
  }

  lifecycle {
    create_before_destroy = true
  }
}
