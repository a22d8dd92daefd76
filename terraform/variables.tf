# ---------------------------------------------------------------------------------------
# Stack
# ---------------------------------------------------------------------------------------

variable "stack" {
  description = "Stack name (SPOTSWEEP_STACK). Prefix of every resource: <stack>-jobs, <stack>-jobs-dlq, table <stack>, bucket <stack>-artifacts-<account_id>, group <stack>-workers."
  type        = string
  default     = "spotsweep"

  validation {
    # lowercase for S3; <= 40 chars so "<stack>-artifacts-<12-digit account>" fits in 63
    condition     = can(regex("^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$", var.stack))
    error_message = "stack must be 1-40 characters of lowercase letters, digits and hyphens, not starting or ending with a hyphen."
  }
}

variable "region" {
  description = "AWS region (SPOTSWEEP_REGION)."
  type        = string
  default     = "us-east-1"

  validation {
    condition     = can(regex("^[a-z]{2}(-[a-z]+)+-[0-9]$", var.region))
    error_message = "region must look like us-east-1."
  }
}

variable "tags" {
  description = "Extra tags for every resource."
  type        = map(string)
  default     = {}
}

# ---------------------------------------------------------------------------------------
# Queue
# ---------------------------------------------------------------------------------------

variable "lease_s" {
  description = "Job lease in seconds (SPOTSWEEP_LEASE_S). The queue's visibility timeout equals it; workers heartbeat every third of it."
  type        = number
  default     = 300

  validation {
    condition     = var.lease_s >= 30 && var.lease_s <= 43200 && floor(var.lease_s) == var.lease_s
    error_message = "lease_s must be a whole number of seconds between 30 and 43200 (the SQS maximum)."
  }
}

variable "max_receive_count" {
  description = "Receives of one message before SQS moves it to the dead-letter queue (transient failures; preemptions re-enqueue a fresh message and do not count)."
  type        = number
  default     = 5

  validation {
    condition     = var.max_receive_count >= 1 && var.max_receive_count <= 1000 && floor(var.max_receive_count) == var.max_receive_count
    error_message = "max_receive_count must be a whole number between 1 and 1000."
  }
}

variable "queue_retention_days" {
  description = "Days a job message is kept in the queue: as long as SQS allows while staying shorter than the dead-letter queue's 14 days (the SQS maximum), since a redriven message keeps its first send time. A large study can wait in the queue this long; the reconciler re-sends a job before its message would expire."
  type        = number
  default     = 13

  validation {
    condition     = var.queue_retention_days >= 1 && var.queue_retention_days <= 13 && floor(var.queue_retention_days) == var.queue_retention_days
    error_message = "queue_retention_days must be a whole number from 1 to 13 (shorter than the DLQ's 14 days)."
  }
}

variable "alarm_actions" {
  description = "ARNs (e.g. an SNS topic) notified when the dead-letter queue is not empty."
  type        = list(string)
  default     = []
}

# ---------------------------------------------------------------------------------------
# Bucket
# ---------------------------------------------------------------------------------------

variable "noncurrent_version_days" {
  description = "Days after which overwritten/deleted object versions expire, bucket-wide."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_version_days >= 1
    error_message = "noncurrent_version_days must be at least 1."
  }
}

variable "checkpoint_noncurrent_days" {
  description = "Days after which superseded versions under studies/ (old checkpoints, rewritten every epoch) expire."
  type        = number
  default     = 7

  validation {
    condition     = var.checkpoint_noncurrent_days >= 1
    error_message = "checkpoint_noncurrent_days must be at least 1."
  }
}

variable "studies_expire_days" {
  description = "If set, days after which everything under studies/ (checkpoints, logs, results files) expires. null keeps study artifacts."
  type        = number
  default     = null

  validation {
    condition     = var.studies_expire_days == null ? true : var.studies_expire_days >= 1
    error_message = "studies_expire_days must be null or at least 1."
  }
}

variable "force_destroy" {
  description = "Let `terraform destroy` delete a non-empty artifacts bucket (all versions)."
  type        = bool
  default     = false
}

# ---------------------------------------------------------------------------------------
# Workers
# ---------------------------------------------------------------------------------------

variable "instance_types" {
  description = "GPU instance types the spot fleet may use (more types, more spot pools, fewer interruptions). One worker per instance, one job at a time."
  type        = list(string)
  default     = ["g4dn.xlarge", "g5.xlarge", "g6.xlarge", "g4dn.2xlarge", "g5.2xlarge", "g6.2xlarge"]

  validation {
    condition     = length(var.instance_types) >= 1 && alltrue([for t in var.instance_types : can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", t))])
    error_message = "instance_types must be a non-empty list of instance types like g5.xlarge."
  }
}

variable "spot_allocation_strategy" {
  description = "Spot allocation strategy across the instance types' pools."
  type        = string
  default     = "capacity-optimized"

  validation {
    condition     = contains(["capacity-optimized", "price-capacity-optimized", "capacity-optimized-prioritized"], var.spot_allocation_strategy)
    error_message = "spot_allocation_strategy must be capacity-optimized, price-capacity-optimized or capacity-optimized-prioritized."
  }
}

variable "min_size" {
  description = "Minimum workers. 0: nothing runs (or bills) while the queue is empty."
  type        = number
  default     = 0

  validation {
    condition     = var.min_size >= 0 && floor(var.min_size) == var.min_size
    error_message = "min_size must be a whole number >= 0."
  }
}

variable "max_size" {
  description = "Maximum workers (check your account's spot vCPU quota for G instances). ci/infra/scaling.py DEFAULT_MAX_SIZE = 4."
  type        = number
  default     = 4

  validation {
    condition     = var.max_size >= 1 && var.max_size <= 500 && floor(var.max_size) == var.max_size
    error_message = "max_size must be a whole number from 1 to 500."
  }
}

variable "target_backlog_per_instance" {
  description = "Jobs (waiting + in flight) per in-service worker that target tracking aims for: desired = ceil(backlog / target), clamped to min..max. Same default as ci/infra/scaling.py DEFAULT_TARGET_BACKLOG_PER_INSTANCE = 2."
  type        = number
  default     = 2

  validation {
    condition     = var.target_backlog_per_instance >= 1 && floor(var.target_backlog_per_instance) == var.target_backlog_per_instance
    error_message = "target_backlog_per_instance must be a whole number >= 1."
  }
}

variable "worker_idle_timeout_s" {
  description = "Seconds a worker waits without a job before it leaves the group (`worker run --idle-timeout`); the fleet reaches 0 this long after the queue empties. Same default as ci/infra/scaling.py DEFAULT_SCALE_TO_ZERO_AFTER_S = 600."
  type        = number
  default     = 600

  validation {
    condition     = var.worker_idle_timeout_s >= 60 && floor(var.worker_idle_timeout_s) == var.worker_idle_timeout_s
    error_message = "worker_idle_timeout_s must be a whole number of seconds >= 60."
  }
}

variable "instance_warmup_s" {
  description = "Seconds from launch until a new worker counts in the scaling metrics (boot, driver, install, dataset sync)."
  type        = number
  default     = 300

  validation {
    condition     = var.instance_warmup_s >= 0
    error_message = "instance_warmup_s must be >= 0."
  }
}

variable "ami_id" {
  description = "Worker AMI. null: the latest AMI matching ami_name_pattern (the Deep Learning Base GPU AMI, Ubuntu 24.04)."
  type        = string
  default     = null

  validation {
    condition     = var.ami_id == null ? true : can(regex("^ami-[0-9a-f]{8,17}$", var.ami_id))
    error_message = "ami_id must be null or an AMI id like ami-0123456789abcdef0."
  }
}

variable "ami_name_pattern" {
  description = "Name filter of the AMI (owner amazon) used when ami_id is null: AWS's maintained base GPU AMI (NVIDIA driver, CUDA, Docker with the NVIDIA container toolkit, AWS CLI, Python 3.12) with no framework; the bootstrap installs the worker and TensorFlow's CUDA build into a venv."
  type        = string
  default     = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 24.04) *"
}

variable "root_volume_size_gb" {
  description = "Root volume size in GiB (raised to the AMI's snapshot size if smaller)."
  type        = number
  default     = 120

  validation {
    condition     = var.root_volume_size_gb >= 8
    error_message = "root_volume_size_gb must be at least 8."
  }
}

variable "data_volume_size_gb" {
  description = "Encrypted gp3 data volume mounted at /data: the dataset and feature cache (SPOTSWEEP_CACHE_DIR=/data/cache). Deleted with the instance."
  type        = number
  default     = 200

  validation {
    condition     = var.data_volume_size_gb >= 1 && var.data_volume_size_gb <= 16384
    error_message = "data_volume_size_gb must be between 1 and 16384."
  }
}

variable "data_volume_throughput" {
  description = "gp3 throughput of the data volume in MiB/s (125-1000)."
  type        = number
  default     = 250

  validation {
    condition     = var.data_volume_throughput >= 125 && var.data_volume_throughput <= 1000
    error_message = "data_volume_throughput must be between 125 and 1000."
  }
}

variable "metadata_hop_limit" {
  description = "IMDSv2 PUT response hop limit. 1 for a worker on the host or in a container with host networking (the default user data); 2 only for a bridged container."
  type        = number
  default     = 1

  validation {
    condition     = contains([1, 2], var.metadata_hop_limit)
    error_message = "metadata_hop_limit must be 1 or 2."
  }
}

variable "associate_public_ip_address" {
  description = "Give workers a public IP for outbound traffic. Set false only with subnet_ids whose route reaches the internet through NAT (or VPC endpoints plus a reachable package source)."
  type        = bool
  default     = true
}

variable "vpc_id" {
  description = "VPC for the workers' security group. null: the default VPC."
  type        = string
  default     = null
}

variable "subnet_ids" {
  description = "Subnets for the workers (several AZs widen the spot pools). Empty: the default VPC's default subnets."
  type        = list(string)
  default     = []
}

variable "worker_package" {
  description = "The worker wheel in the stack's bucket that instances install (with the worker extra) when worker_image is empty. Empty: the one `submit deploy worker` last published (deploy/worker-wheel.txt names it, with its SHA-256). Or a key it printed, deploy/spotsweep-VERSION-py3-none-any.whl, to pin one. Never a package index name: the wheel is built from this repository."
  type        = string
  default     = ""

  validation {
    condition     = var.worker_package == "" || can(regex("^deploy/spotsweep-[A-Za-z0-9._+]+-py3-none-any\\.whl$", var.worker_package))
    error_message = "worker_package must be empty (the wheel `submit deploy worker` last published) or a key like deploy/spotsweep-0.1.0-py3-none-any.whl."
  }
}

variable "worker_python" {
  description = "Python the bootstrap makes the worker's venv with (>= 3.11, pyproject.toml's requires-python). The default AMI family (Deep Learning Base OSS Nvidia Driver GPU AMI, Ubuntu 24.04) has Python 3.12 there."
  type        = string
  default     = "/usr/bin/python3"

  validation {
    condition     = can(regex("^/[A-Za-z0-9._/-]+$", var.worker_python))
    error_message = "worker_python must be an absolute path."
  }
}

variable "worker_image" {
  description = "Worker container image (this repo's Dockerfile). When set, the instance runs `docker run --gpus all` of it instead of installing worker_package. An ECR image (ACCOUNT.dkr.ecr.REGION.amazonaws.com/...) is pulled after `aws ecr get-login-password` with the instance profile; other registries must be readable without credentials."
  type        = string
  default     = ""

  validation {
    condition     = !can(regex("[\"'`$\\\\\\s]", var.worker_image))
    error_message = "worker_image must contain no quotes, backticks, dollar signs, backslashes or whitespace."
  }
}

variable "price_per_hour" {
  description = "USD per instance-hour for cost accounting (SPOTSWEEP_PRICE_PER_HOUR). null: the worker looks up the spot price itself."
  type        = number
  default     = null
}

# ---------------------------------------------------------------------------------------
# Scheduled reconciler (reconciler.tf)
# ---------------------------------------------------------------------------------------

variable "reconciler_package_key" {
  description = "Key in the artifacts bucket of the reconciler function's zip, as printed by `submit deploy reconciler` (deploy/reconciler-<version>-<hash>.zip). Empty: no function, schedule or role is created (the stack applies before the package exists)."
  type        = string
  default     = ""

  validation {
    condition     = var.reconciler_package_key == "" || can(regex("^deploy/reconciler-[A-Za-z0-9._+-]+\\.zip$", var.reconciler_package_key))
    error_message = "reconciler_package_key must be empty or a key like deploy/reconciler-0.1.0-0123456789ab.zip (what `submit deploy reconciler` prints)."
  }
}

variable "reconcile_interval_minutes" {
  description = "Minutes between runs of the scheduled reconciler (SPOTSWEEP_RECONCILE_INTERVAL_S on the function): how long a purged or expired job waits for its message with no worker up."
  type        = number
  default     = 5

  validation {
    condition     = var.reconcile_interval_minutes >= 1 && var.reconcile_interval_minutes <= 60 && floor(var.reconcile_interval_minutes) == var.reconcile_interval_minutes
    error_message = "reconcile_interval_minutes must be a whole number from 1 to 60."
  }
}

variable "reconciler_log_retention_days" {
  description = "Days the reconciler function's log group keeps its lines (one JSON line per run)."
  type        = number
  default     = 30

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.reconciler_log_retention_days)
    error_message = "reconciler_log_retention_days must be one of CloudWatch Logs' retention periods (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, ... 3653)."
  }
}

variable "reconciler_reserved_concurrency" {
  description = "Reserved concurrency of the reconciler function: 1 (one run at a time even if one overruns its interval), or -1 (none) on accounts whose concurrency quota is too small to reserve from (new accounts with a quota of 10: AWS keeps 10 unreserved). The store lock keeps runs one at a time either way."
  type        = number
  default     = 1

  validation {
    condition     = contains([-1, 1], var.reconciler_reserved_concurrency)
    error_message = "reconciler_reserved_concurrency must be 1 or -1."
  }
}
