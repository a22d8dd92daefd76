# Job store (SPOTSWEEP_TABLE_NAME): the DynamoJobStore's single table.
#   pk (S) / sk (S)  - studies, job records and per-epoch metrics
#   job_index        - GSI on job_id (S), projection ALL: find a job's record by id
# On-demand billing: no capacity to pay for while idle, only storage.

resource "aws_dynamodb_table" "jobs" {
  #checkov:skip=CKV_AWS_119:Encrypted with the AWS-managed aws/dynamodb key; a customer-managed KMS key would bill $1/month while the stack idles.
  name         = local.table_name
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "pk"
  range_key    = "sk"

  attribute {
    name = "pk"
    type = "S"
  }

  attribute {
    name = "sk"
    type = "S"
  }

  attribute {
    name = "job_id"
    type = "S"
  }

  global_secondary_index {
    name            = "job_index"
    hash_key        = "job_id"
    projection_type = "ALL"
  }

  point_in_time_recovery {
    enabled = true
  }

  # AWS-managed KMS key (aws/dynamodb).
  server_side_encryption {
    enabled = true
  }
}
