# Names, lookups and shared values. Every name below is also what the Python settings
# (SPOTSWEEP_*) default to for the stack, except the bucket, which carries the account id
# to be globally unique and is therefore exported explicitly (outputs.tf: env_exports).

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition

  queue_name  = "${var.stack}-jobs"     # SPOTSWEEP_QUEUE_NAME
  dlq_name    = "${var.stack}-jobs-dlq" # SPOTSWEEP_DLQ_NAME
  table_name  = var.stack               # SPOTSWEEP_TABLE_NAME
  bucket_name = "${var.stack}-artifacts-${local.account_id}"
  asg_name    = "${var.stack}-workers" # SPOTSWEEP_ASG_NAME (named here: the launch template needs it before the group exists)

  data_mount = "/data"
  cache_dir  = "/data/cache" # SPOTSWEEP_CACHE_DIR on the instance

  tags = merge(var.tags, {
    Project = "spotsweep"
    Stack   = var.stack
  })
}

# Network: the default VPC's subnets unless given. Workers need outbound HTTPS only
# (SQS, DynamoDB, S3, autoscaling APIs, PyPI or the image registry); no inbound rule, no
# NAT gateway (it would bill ~$32/month while idle), so instances get a public IP.
data "aws_vpc" "default" {
  count   = var.vpc_id == null ? 1 : 0
  default = true
}

locals {
  vpc_id = var.vpc_id != null ? var.vpc_id : data.aws_vpc.default[0].id
}

data "aws_subnets" "default" {
  count = length(var.subnet_ids) == 0 ? 1 : 0

  filter {
    name   = "vpc-id"
    values = [local.vpc_id]
  }

  filter {
    name   = "default-for-az"
    values = ["true"]
  }
}

locals {
  subnet_ids = length(var.subnet_ids) > 0 ? var.subnet_ids : data.aws_subnets.default[0].ids
}
