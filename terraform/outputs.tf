output "region" {
  description = "SPOTSWEEP_REGION"
  value       = var.region
}

output "queue_name" {
  description = "SPOTSWEEP_QUEUE_NAME"
  value       = aws_sqs_queue.jobs.name
}

output "queue_url" {
  description = "Job queue URL"
  value       = aws_sqs_queue.jobs.url
}

output "dlq_name" {
  description = "SPOTSWEEP_DLQ_NAME"
  value       = aws_sqs_queue.dlq.name
}

output "dlq_url" {
  description = "Dead-letter queue URL"
  value       = aws_sqs_queue.dlq.url
}

output "table_name" {
  description = "SPOTSWEEP_TABLE_NAME"
  value       = aws_dynamodb_table.jobs.name
}

output "bucket_name" {
  description = "SPOTSWEEP_BUCKET (<stack>-artifacts-<account_id>)"
  value       = aws_s3_bucket.artifacts.bucket
}

output "asg_name" {
  description = "SPOTSWEEP_ASG_NAME: the workers' autoscaling group"
  value       = aws_autoscaling_group.workers.name
}

output "launch_template_id" {
  description = "Worker launch template"
  value       = aws_launch_template.worker.id
}

output "worker_role_arn" {
  description = "The workers' IAM role"
  value       = aws_iam_role.worker.arn
}

output "ami_id" {
  description = "The worker AMI in use"
  value       = data.aws_ami.worker.id
}

output "env_exports" {
  description = "Settings for `submit` on this stack (the workers get theirs, plus SPOTSWEEP_ASG_NAME and SPOTSWEEP_CACHE_DIR, from the user data): eval \"$(terraform output -raw env_exports)\""
  value = join(" ", [
    "export",
    "SPOTSWEEP_BACKEND=aws",
    "SPOTSWEEP_STACK=${var.stack}",
    "SPOTSWEEP_REGION=${var.region}",
    "SPOTSWEEP_QUEUE_NAME=${aws_sqs_queue.jobs.name}",
    "SPOTSWEEP_DLQ_NAME=${aws_sqs_queue.dlq.name}",
    "SPOTSWEEP_TABLE_NAME=${aws_dynamodb_table.jobs.name}",
    "SPOTSWEEP_BUCKET=${aws_s3_bucket.artifacts.bucket}",
    "SPOTSWEEP_LEASE_S=${var.lease_s}",
    "SPOTSWEEP_MAX_RECEIVES=${var.max_receive_count}",
    "AWS_DEFAULT_REGION=${var.region}",
  ])
}

output "reconciler_function_name" {
  description = "The scheduled reconciler's Lambda function (null until reconciler_package_key is set): aws logs tail /aws/lambda/<name>"
  value       = one(aws_lambda_function.reconciler[*].function_name)
}

output "submitter_policy_arn" {
  description = "The least-privilege policy for the people who run `submit` on this stack: aws iam attach-user-policy --user-name NAME --policy-arn <arn>"
  value       = aws_iam_policy.submitter.arn
}

output "submitter_policy_json" {
  description = "The submitter policy's document (for an identity-center permission set or another account's role)"
  value       = data.aws_iam_policy_document.submitter.json
}
