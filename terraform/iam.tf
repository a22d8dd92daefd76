# Worker role and instance profile: least privilege, only the calls the worker makes, only
# on this stack's resources. Two actions cannot be scoped to a resource at all (AWS
# supports only Resource "*" for them); each such statement says so.

data "aws_iam_policy_document" "worker_assume" {
  statement {
    sid     = "Ec2AssumeRole"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ec2.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "worker" {
  name               = "${var.stack}-worker"
  description        = "spotsweep ${var.stack} GPU workers"
  assume_role_policy = data.aws_iam_policy_document.worker_assume.json
}

resource "aws_iam_instance_profile" "worker" {
  name = "${var.stack}-worker"
  role = aws_iam_role.worker.name
}

data "aws_iam_policy_document" "worker" {
  # JobQueue: receive/delete/extend/release, re-enqueue after a preemption.
  statement {
    sid = "JobQueue"
    actions = [
      "sqs:ReceiveMessage",
      "sqs:DeleteMessage",
      "sqs:ChangeMessageVisibility",
      "sqs:SendMessage",
      "sqs:GetQueueUrl",
      "sqs:GetQueueAttributes",
    ]
    resources = [
      aws_sqs_queue.jobs.arn,
      aws_sqs_queue.dlq.arn,
    ]
  }

  # JobStore: conditional transitions, per-epoch metrics, queries by study and by job id.
  # TransactWriteItems has no action of its own: it needs PutItem/UpdateItem and, for the
  # fencing-token check of per-epoch writes, ConditionCheckItem. DescribeTable: the
  # backend checks the table at startup.
  statement {
    sid = "JobStore"
    actions = [
      "dynamodb:GetItem",
      "dynamodb:PutItem",
      "dynamodb:UpdateItem",
      "dynamodb:Query",
      "dynamodb:BatchGetItem",
      "dynamodb:ConditionCheckItem",
      "dynamodb:DescribeTable",
    ]
    resources = [
      aws_dynamodb_table.jobs.arn,
      "${aws_dynamodb_table.jobs.arn}/index/*",
    ]
  }

  # ArtifactStore: list prefixes (bucket ARN).
  statement {
    sid       = "ArtifactsList"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.artifacts.arn]
  }

  # ArtifactStore reads: datasets, pretrained weights files, parents' checkpoints, feature
  # cache entries; anywhere in the bucket (s3:GetObject also covers HeadObject).
  statement {
    sid       = "ArtifactsRead"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.artifacts.arn}/*"]
  }

  # ArtifactStore writes, only under the two prefixes workers write (shared.paths.job_prefix
  # and the feature cache's prefix): a worker's credentials cannot overwrite a dataset or
  # weights file that other studies read. DeleteObject: every epoch replaces the previous
  # epoch's saved state, and the loser of a feature-cache race deletes its own uploads.
  # Multipart uploads (managed transfers) are covered by s3:PutObject.
  statement {
    sid = "ArtifactsWrite"
    actions = [
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
    ]
    resources = [
      "${aws_s3_bucket.artifacts.arn}/studies/*",
      "${aws_s3_bucket.artifacts.arn}/feature-cache/*",
    ]
  }

  # Scale-in safety: protect the instance while a job runs; an idle worker leaves the group
  # (terminate with the desired capacity decremented). Only this stack's group.
  statement {
    sid = "OwnAutoScalingGroup"
    actions = [
      "autoscaling:SetInstanceProtection",
      "autoscaling:TerminateInstanceInAutoScalingGroup",
    ]
    resources = [aws_autoscaling_group.workers.arn]
  }

  # Resource "*" (unavoidable): ec2:DescribeSpotPriceHistory and
  # autoscaling:DescribeAutoScalingGroups do not support resource-level permissions;
  # AWS accepts only "*" for them. Both are read-only: the worker's cost accounting and
  # its group's min_size (an idle worker does not leave a group at its minimum).
  statement {
    sid = "ReadOnlyDescribeUnscopable"
    actions = [
      "ec2:DescribeSpotPriceHistory",
      "autoscaling:DescribeAutoScalingGroups",
    ]
    resources = ["*"]
  }
}

resource "aws_iam_policy" "worker" {
  name        = "${var.stack}-worker"
  description = "spotsweep ${var.stack} worker: its queue, table, bucket and autoscaling group"
  policy      = data.aws_iam_policy_document.worker.json
}

resource "aws_iam_role_policy_attachment" "worker" {
  role       = aws_iam_role.worker.name
  policy_arn = aws_iam_policy.worker.arn
}

# Submitter policy: what `submit` does once the stack exists (study, status, leaderboard,
# report, export, predict, finetune/evaluate, retry/cancel/repair, dataset upload), for the
# stack's users to attach (output `submitter_policy_arn`). `terraform apply` creates the
# resources, so `submit init` and `submit deploy` stay with whoever runs Terraform.
data "aws_iam_policy_document" "submitter" {
  # Enqueue jobs; repair re-drives the dead-letter queue (receive there, send to the queue,
  # delete there) and releases what it looked at (ChangeMessageVisibility).
  statement {
    sid = "JobQueue"
    actions = [
      "sqs:SendMessage",
      "sqs:ReceiveMessage",
      "sqs:DeleteMessage",
      "sqs:ChangeMessageVisibility",
      "sqs:GetQueueUrl",
      "sqs:GetQueueAttributes",
    ]
    resources = [
      aws_sqs_queue.jobs.arn,
      aws_sqs_queue.dlq.arn,
    ]
  }

  # Job records: the submission's transaction (PutItem, ConditionCheckItem), status changes
  # (cancel, retry, repair), queries by study and by job id; no DeleteItem: records stay.
  statement {
    sid = "JobStore"
    actions = [
      "dynamodb:GetItem",
      "dynamodb:PutItem",
      "dynamodb:UpdateItem",
      "dynamodb:Query",
      "dynamodb:BatchGetItem",
      "dynamodb:ConditionCheckItem",
      "dynamodb:DescribeTable",
    ]
    resources = [
      aws_dynamodb_table.jobs.arn,
      "${aws_dynamodb_table.jobs.arn}/index/*",
    ]
  }

  statement {
    sid       = "ArtifactsList"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.artifacts.arn]
  }

  # Reads anywhere: checkpoints for export and predict, metrics for reports, datasets.
  statement {
    sid       = "ArtifactsRead"
    actions   = ["s3:GetObject"]
    resources = ["${aws_s3_bucket.artifacts.arn}/*"]
  }

  # Writes only under datasets/ (`submit dataset upload`): a submitter's credentials cannot
  # overwrite or delete a job's artifacts. DeleteObject: an upload first removes the old
  # manifest, so that a half-replaced dataset is never taken for a complete one.
  statement {
    sid = "DatasetsWrite"
    actions = [
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
    ]
    resources = ["${aws_s3_bucket.artifacts.arn}/datasets/*"]
  }
}

resource "aws_iam_policy" "submitter" {
  name        = "${var.stack}-submitter"
  description = "spotsweep ${var.stack} submitter: enqueue and follow studies, upload datasets"
  policy      = data.aws_iam_policy_document.submitter.json
}

# Container mode with an ECR image: exactly the pull actions (those of AWS's managed
# AmazonEC2ContainerRegistryPullOnly policy), on the image's repository only. Created only when
# worker_image names an ECR repository; the bootstrap logs in with `aws ecr get-login-password`.
locals {
  ecr_image = try(regex("^([0-9]{12})\\.dkr\\.ecr\\.([a-z0-9-]+)\\.amazonaws\\.com/([^:@]+)", var.worker_image), null)
}

data "aws_iam_policy_document" "worker_ecr" {
  count = local.ecr_image == null ? 0 : 1

  statement {
    sid = "PullWorkerImage"
    actions = [
      "ecr:BatchGetImage",
      "ecr:GetDownloadUrlForLayer",
      "ecr:BatchCheckLayerAvailability",
    ]
    resources = ["arn:aws:ecr:${local.ecr_image[1]}:${local.ecr_image[0]}:repository/${local.ecr_image[2]}"]
  }

  # Resource "*" (unavoidable): ecr:GetAuthorizationToken supports no resource-level
  # permission; the token alone grants nothing beyond the repository actions above.
  statement {
    sid       = "EcrLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }
}

resource "aws_iam_role_policy" "worker_ecr" {
  count  = local.ecr_image == null ? 0 : 1
  name   = "${var.stack}-worker-ecr-pull"
  role   = aws_iam_role.worker.id
  policy = data.aws_iam_policy_document.worker_ecr[0].json
}
