"""Adapters for the ports: `local` (embedded: SQLite and a directory) and `aws` (SQS, DynamoDB, S3)."""
