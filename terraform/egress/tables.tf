# Routes (edited by operators with `egress routes …`, never by Terraform) and the ledger.

resource "aws_dynamodb_table" "routes" {
  name                        = local.routes_table_name
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = "source_prefix"
  range_key                   = "pipeline_name"
  deletion_protection_enabled = true

  attribute {
    name = "source_prefix"
    type = "S"
  }

  attribute {
    name = "pipeline_name"
    type = "S"
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled     = true
    kms_key_arn = aws_kms_key.service.arn
  }

  tags = local.tags
}

resource "aws_dynamodb_table" "ledger" {
  name                        = local.ledger_table_name
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = "delivery_id"
  deletion_protection_enabled = true

  attribute {
    name = "delivery_id"
    type = "S"
  }

  # Rows expire on their own (the worker sets expires_at); the audit trail is what remains.
  ttl {
    attribute_name = "expires_at"
    enabled        = true
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled     = true
    kms_key_arn = aws_kms_key.service.arn
  }

  tags = local.tags
}
