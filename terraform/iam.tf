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
      "dynamodb:BatchWriteItem",
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
  # autoscaling:DescribeAutoScalingInstances do not support resource-level permissions;
  # AWS accepts only "*" for them. Both are read-only: the worker's cost accounting and
  # finding its own group membership.
  statement {
    sid = "ReadOnlyDescribeUnscopable"
    actions = [
      "ec2:DescribeSpotPriceHistory",
      "autoscaling:DescribeAutoScalingInstances",
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
