# Artifact store (SPOTSWEEP_BUCKET = <stack>-artifacts-<account_id>).
# Layout: datasets/<name>/...  studies/<study>/jobs/<job>/...  feature-cache/...
# Private (all four public access blocks, ACLs disabled), encrypted, versioned, TLS only.

resource "aws_s3_bucket" "artifacts" {
  #checkov:skip=CKV_AWS_18:Server access logs would need a second bucket that bills while idle; use CloudTrail S3 data events when an audit trail is required.
  #checkov:skip=CKV_AWS_144:Artifacts are reproducible study outputs; cross-region replication would double storage cost. Versioning guards against deletes.
  #checkov:skip=CKV2_AWS_62:Nothing consumes bucket events: workers and the submitter find work through the queue and the table.
  bucket        = local.bucket_name
  force_destroy = var.force_destroy
}

resource "aws_s3_bucket_ownership_controls" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "artifacts" {
  bucket                  = aws_s3_bucket.artifacts.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_server_side_encryption_configuration" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id

  rule {
    # SSE-KMS with the AWS-managed aws/s3 key (free; no key policy to maintain) and an S3
    # bucket key, which keeps KMS request charges negligible.
    apply_server_side_encryption_by_default {
      sse_algorithm = "aws:kms"
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_versioning" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id

  # Versioning must be on before noncurrent-version rules mean anything.
  depends_on = [aws_s3_bucket_versioning.artifacts]

  rule {
    id     = "expire-noncurrent-versions"
    status = "Enabled"

    filter {}

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_days
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }

  # Checkpoints are rewritten under the same key every epoch: their old versions pile up
  # under studies/. Expire them sooner than elsewhere (the shorter of overlapping rules wins).
  rule {
    id     = "expire-old-study-checkpoints"
    status = "Enabled"

    filter {
      prefix = "studies/"
    }

    noncurrent_version_expiration {
      noncurrent_days = var.checkpoint_noncurrent_days
    }

    dynamic "expiration" {
      for_each = var.studies_expire_days == null ? [] : [var.studies_expire_days]
      content {
        days = expiration.value
      }
    }
  }
}

data "aws_iam_policy_document" "artifacts_tls_only" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    resources = [
      aws_s3_bucket.artifacts.arn,
      "${aws_s3_bucket.artifacts.arn}/*",
    ]

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id
  policy = data.aws_iam_policy_document.artifacts_tls_only.json

  # The public access block must exist first, or a policy could briefly be evaluated without it.
  depends_on = [aws_s3_bucket_public_access_block.artifacts]
}
