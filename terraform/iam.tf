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

  # ArtifactStore: datasets, checkpoints, logs, feature cache (object ARNs). Multipart
  # uploads (managed transfers) are covered by s3:PutObject.
  statement {
    sid = "ArtifactsObjects"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:AbortMultipartUpload",
    ]
    resources = ["${aws_s3_bucket.artifacts.arn}/*"]
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
