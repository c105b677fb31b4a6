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

# The ledger (docs/exactly-once.md): one item per delivery (record = "route") and one per
# object of it (record = "obj#<name>"), plus two sparse indexes the SFT agent reads:
#   by_sft_path  which object row a file the agent sends belongs to (path + digest)
#   unsent       files the worker wrote that the agent has not sent or parked yet
# Changing the key schema (it was delivery_id alone) REPLACES the table: Terraform
# destroys and recreates it, and the worker refuses a table with the old schema anyway.
# That is acceptable because the table holds only the audit trail and no apply has ever
# run against it; should one exist, turn its deletion protection off (or delete it) first.
resource "aws_dynamodb_table" "ledger" {
  name                        = local.ledger_table_name
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = "delivery_id"
  range_key                   = "record"
  deletion_protection_enabled = true

  attribute {
    name = "delivery_id"
    type = "S"
  }

  attribute {
    name = "record"
    type = "S"
  }

  # Keys of the indexes: only object rows of SFT routes carry them (sparse indexes).
  attribute {
    name = "sft_path"
    type = "S"
  }

  attribute {
    name = "sha256"
    type = "S"
  }

  attribute {
    name = "unsent"
    type = "S"
  }

  attribute {
    name = "written_epoch"
    type = "N"
  }

  global_secondary_index {
    name            = "by_sft_path"
    hash_key        = "sft_path"
    range_key       = "sha256"
    projection_type = "ALL"
  }

  global_secondary_index {
    name            = "unsent"
    hash_key        = "unsent"
    range_key       = "written_epoch"
    projection_type = "ALL"
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
