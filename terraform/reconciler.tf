# The scheduled reconciler: a Lambda function that repairs stranded jobs while no worker is up.
#
# Why: a purged queue, or messages dropped by the queue's retention, leave QUEUED jobs with no
# message. The backlog (visible + in-flight messages) is then 0, the group scales on the backlog,
# so no worker ever starts to repair them. Every reconciler_interval the function runs the
# reconciler once (submitter/reconciler_lambda.py: `reconcile_if_due`, with the store lock that
# idle workers take, so a run while workers are up does nothing); the messages it sends raise the
# backlog and the group scales out. About 8,600 runs of a second or two a month: cents, and the
# fleet stays at zero. Alternatives considered: min_size = 1 (a GPU instance billed around the
# clock: breaks scale-to-zero); the store's QUEUED count in the scaling metric (nothing publishes
# it: it needs a scheduled publisher anyway).
#
# Created only once its code is in the bucket: `submit deploy reconciler` uploads the zip and
# prints its key; `terraform apply -var reconciler_package_key=KEY`. Empty key: no function, and
# the rest of the stack applies as before.

locals {
  reconciler_enabled = var.reconciler_package_key != ""
  reconciler_name    = "${var.stack}-reconciler"
  # EventBridge wants the singular for one: rate(1 minute), rate(5 minutes).
  reconciler_schedule = var.reconcile_interval_minutes == 1 ? "rate(1 minute)" : "rate(${var.reconcile_interval_minutes} minutes)"
}

resource "aws_lambda_function" "reconciler" {
  #checkov:skip=CKV_AWS_50:No X-Ray tracing: one short run per interval whose JSON log line says what it did; Active tracing would add X-Ray write permissions to the role.
  #checkov:skip=CKV_AWS_116:No dead-letter queue for failed invocations: the next scheduled run repeats the work (every step is idempotent), and Lambda's Errors metric records the failure.
  #checkov:skip=CKV_AWS_117:Not in a VPC: it calls only SQS and DynamoDB APIs, and a VPC would need a NAT gateway (~$32/month idle) or interface endpoints billed by the hour.
  #checkov:skip=CKV_AWS_173:The environment holds resource names and numbers only, no secret: the AWS-managed key that Lambda always uses is enough.
  #checkov:skip=CKV_AWS_272:The code comes from this stack's bucket under deploy/, which only deployers can write (workers write only under studies/ and feature-cache/); code signing would add a signing profile to manage.
  count = local.reconciler_enabled ? 1 : 0

  function_name = local.reconciler_name
  description   = "spotsweep ${var.stack}: sends the messages of stranded jobs while no worker is up"
  role          = aws_iam_role.reconciler[0].arn
  runtime       = "python3.12" # submitter/deploy.py LAMBDA_PYTHON
  architectures = ["x86_64"]   # submitter/deploy.py LAMBDA_PLATFORM
  handler       = "submitter.reconciler_lambda.handler"
  s3_bucket     = aws_s3_bucket.artifacts.id
  s3_key        = var.reconciler_package_key
  memory_size   = 256
  timeout       = 300 # one pass over the table and the dead-letter queue; the lock lapses after 0.8 x interval
  # One run at a time even if an invocation overruns its interval (the store lock is the real
  # guard); -1 on accounts whose concurrency quota leaves no room to reserve (variables.tf).
  reserved_concurrent_executions = var.reconciler_reserved_concurrency

  environment {
    variables = {
      SPOTSWEEP_BACKEND              = "aws"
      SPOTSWEEP_STACK                = var.stack
      SPOTSWEEP_REGION               = var.region
      SPOTSWEEP_QUEUE_NAME           = aws_sqs_queue.jobs.name
      SPOTSWEEP_DLQ_NAME             = aws_sqs_queue.dlq.name
      SPOTSWEEP_TABLE_NAME           = aws_dynamodb_table.jobs.name
      SPOTSWEEP_BUCKET               = aws_s3_bucket.artifacts.bucket
      SPOTSWEEP_LEASE_S              = var.lease_s
      SPOTSWEEP_MAX_RECEIVES         = var.max_receive_count
      SPOTSWEEP_RECONCILE_INTERVAL_S = var.reconcile_interval_minutes * 60
    }
  }

  # The log group (with its retention) exists before the first run: the role may not create one.
  depends_on = [aws_cloudwatch_log_group.reconciler, aws_iam_role_policy.reconciler]
}

resource "aws_cloudwatch_log_group" "reconciler" {
  #checkov:skip=CKV_AWS_158:Encrypted by CloudWatch Logs' own key; a customer-managed KMS key would bill $1/month while the stack idles, for one JSON line per run.
  #checkov:skip=CKV_AWS_338:One JSON line per run of a repair job; a year of them has no use. reconciler_log_retention_days sets it.
  count = local.reconciler_enabled ? 1 : 0

  name              = "/aws/lambda/${local.reconciler_name}"
  retention_in_days = var.reconciler_log_retention_days
}

# --- schedule: an EventBridge rule and the permission for it (and nothing else) to invoke ---

resource "aws_cloudwatch_event_rule" "reconciler" {
  count = local.reconciler_enabled ? 1 : 0

  name                = local.reconciler_name
  description         = "spotsweep ${var.stack}: run the reconciler every ${var.reconcile_interval_minutes} minute(s)"
  schedule_expression = local.reconciler_schedule
}

resource "aws_cloudwatch_event_target" "reconciler" {
  count = local.reconciler_enabled ? 1 : 0

  rule = aws_cloudwatch_event_rule.reconciler[0].name
  arn  = aws_lambda_function.reconciler[0].arn
}

resource "aws_lambda_permission" "reconciler_schedule" {
  count = local.reconciler_enabled ? 1 : 0

  statement_id  = "AllowScheduleInvoke"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.reconciler[0].function_name
  principal     = "events.amazonaws.com"
  source_arn    = aws_cloudwatch_event_rule.reconciler[0].arn
}

# --- role: least privilege, exactly the calls of shared/reconcile.py on this stack's resources ---

data "aws_iam_policy_document" "reconciler_assume" {
  statement {
    sid     = "LambdaAssumeRole"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "reconciler" {
  count = local.reconciler_enabled ? 1 : 0

  name               = local.reconciler_name
  description        = "spotsweep ${var.stack} scheduled reconciler"
  assume_role_policy = data.aws_iam_policy_document.reconciler_assume.json
}

data "aws_iam_policy_document" "reconciler" {
  count = local.reconciler_enabled ? 1 : 0

  # Opening (GetQueueUrl) and the queue counts the resend rule compares with the store
  # (GetQueueAttributes), of both queues.
  statement {
    sid = "Queues"
    actions = [
      "sqs:GetQueueUrl",
      "sqs:GetQueueAttributes",
    ]
    resources = [
      aws_sqs_queue.jobs.arn,
      aws_sqs_queue.dlq.arn,
    ]
  }

  # The one path of every job message (shared/submission.py enqueue_records: SendMessageBatch is
  # authorized as SendMessage): missing messages, re-driven dead letters, follow-up jobs.
  statement {
    sid       = "SendJobs"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.jobs.arn]
  }

  # Dead letters: paged through (ReceiveMessage), and deleted once re-driven or recorded FAILED
  # (DeleteMessageBatch is authorized as DeleteMessage). Only the dead-letter queue.
  statement {
    sid = "DeadLetters"
    actions = [
      "sqs:ReceiveMessage",
      "sqs:DeleteMessage",
    ]
    resources = [aws_sqs_queue.dlq.arn]
  }

  # The store (shared/backends/aws_dynamo.py): list studies (Query + BatchGetItem) and jobs
  # (Query), read one (GetItem); the lock and new follow-up records (PutItem, also inside
  # TransactWriteItems, which has no action of its own); claim, finish, reset, cancel, stamp
  # enqueued_at, mark a stage (UpdateItem, also inside transactions). No index: the reconciler
  # never looks a job up by id alone; no DescribeTable: it skips open_aws's start-up checks.
  statement {
    sid = "JobStore"
    actions = [
      "dynamodb:GetItem",
      "dynamodb:PutItem",
      "dynamodb:UpdateItem",
      "dynamodb:Query",
      "dynamodb:BatchGetItem",
    ]
    resources = [aws_dynamodb_table.jobs.arn]
  }

  # Its own log group's streams (the group itself is Terraform's).
  statement {
    sid = "OwnLogs"
    actions = [
      "logs:CreateLogStream",
      "logs:PutLogEvents",
    ]
    resources = ["${aws_cloudwatch_log_group.reconciler[0].arn}:*"]
  }
}

resource "aws_iam_role_policy" "reconciler" {
  count = local.reconciler_enabled ? 1 : 0

  name   = local.reconciler_name
  role   = aws_iam_role.reconciler[0].id
  policy = data.aws_iam_policy_document.reconciler[0].json
}
