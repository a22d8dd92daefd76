# Operational alarms. (The scale-from-zero alarm lives with its policy in autoscaling.tf.)

# A job in the dead-letter queue failed max_receive_count times: look at it
# (`submit status`, then `submit retry STUDY` once fixed).
resource "aws_cloudwatch_metric_alarm" "dlq_not_empty" {
  alarm_name          = "${var.stack}-jobs-dlq-not-empty"
  alarm_description   = "Jobs reached the dead-letter queue ${aws_sqs_queue.dlq.name} after ${var.max_receive_count} receives."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = aws_sqs_queue.dlq.name }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  treat_missing_data  = "notBreaching"
  alarm_actions       = var.alarm_actions
  ok_actions          = var.alarm_actions
}
