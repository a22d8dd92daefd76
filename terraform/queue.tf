# Job queue (SPOTSWEEP_QUEUE_NAME) and its dead-letter queue (SPOTSWEEP_DLQ_NAME).
#
# - visibility timeout = the job lease (SPOTSWEEP_LEASE_S); workers extend it while they run.
# - a message received max_receive_count times without being deleted (transient failures,
#   crashed workers) moves to the DLQ; preemptions re-enqueue a fresh message instead.
# - the DLQ keeps messages 14 days, longer than the queue, so nothing expires there first.
# - SSE with SQS-managed keys: no KMS key to pay for while idle.

locals {
  queue_retention_s = var.queue_retention_days * 86400
  dlq_retention_s   = 14 * 86400 # the SQS maximum
}

resource "aws_sqs_queue" "dlq" {
  name                      = local.dlq_name
  message_retention_seconds = local.dlq_retention_s
  sqs_managed_sse_enabled   = true
}

resource "aws_sqs_queue" "jobs" {
  name                       = local.queue_name
  visibility_timeout_seconds = var.lease_s
  message_retention_seconds  = local.queue_retention_s
  receive_wait_time_seconds  = 20 # long polling
  max_message_size           = 262144
  sqs_managed_sse_enabled    = true

  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dlq.arn
    maxReceiveCount     = var.max_receive_count
  })
}

# Only the job queue may use the DLQ as its dead-letter target.
resource "aws_sqs_queue_redrive_allow_policy" "dlq" {
  queue_url = aws_sqs_queue.dlq.id

  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.jobs.arn]
  })
}
