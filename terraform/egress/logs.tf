resource "aws_cloudwatch_log_group" "egress" {
  name              = "${local.log_group_prefix}/egress"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.service.arn
  tags              = local.tags
}

resource "aws_cloudwatch_log_group" "sft_agent" {
  name              = "${local.log_group_prefix}/sft-agent"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.service.arn
  tags              = local.tags
}

resource "aws_cloudwatch_log_group" "exec" {
  name              = "${local.log_group_prefix}/exec"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.service.arn
  tags              = local.tags
}

# The agent logs one JSON line per file it gives up on (event "moved_to_error_folder",
# after max_attempts): each is a file an operator must look at.
resource "aws_cloudwatch_log_metric_filter" "agent_error_folder" {
  name           = "${var.name}-agent-moved-to-error-folder"
  log_group_name = aws_cloudwatch_log_group.sft_agent.name
  pattern        = "{ $.event = \"moved_to_error_folder\" }"

  metric_transformation {
    name          = local.agent_error_metric
    namespace     = local.metric_namespace
    value         = "1"
    default_value = "0"
    unit          = "Count"
  }
}

# Gauges the agent logs as JSON lines (structlog, field `event`):
#   every minute, one line per route:
#     {"event": "route_status", "route": …, "backlog": N, "oldest_file_age_seconds": N,
#      "error_files": N, "cert_expiry_days": N}
#   every unsent check (docs/exactly-once.md):
#     {"event": "unsent_files", "count": N, "oldest_seconds": N}
# One metric per value (a filter publishes one metric), without a route dimension: the
# alarms need the worst route (Maximum, or Minimum for the certificate), and the log line
# names it (the dashboard's "Agent: route status" query lists every route). No
# default_value: a gauge must not read 0 when nothing was logged (a 0 would also trip
# the certificate alarm); missing data is handled by each alarm (alarms.tf).
locals {
  agent_log_metrics = {
    backlog = {
      event  = "route_status"
      field  = "backlog"
      metric = "AgentBacklogFiles"
      unit   = "Count"
    }
    oldest_file_age = {
      event  = "route_status"
      field  = "oldest_file_age_seconds"
      metric = "AgentOldestFileAgeSeconds"
      unit   = "Seconds"
    }
    error_files = {
      event  = "route_status"
      field  = "error_files"
      metric = "AgentErrorFolderFiles"
      unit   = "Count"
    }
    cert_expiry = {
      event  = "route_status"
      field  = "cert_expiry_days"
      metric = "AgentClientCertExpiryDays"
      unit   = "None"
    }
    unsent_files = {
      event  = "unsent_files"
      field  = "count"
      metric = "AgentUnsentFiles"
      unit   = "Count"
    }
    oldest_unsent = {
      event  = "unsent_files"
      field  = "oldest_seconds"
      metric = "AgentOldestUnsentSeconds"
      unit   = "Seconds"
    }
  }
}

resource "aws_cloudwatch_log_metric_filter" "agent_gauges" {
  for_each = local.agent_log_metrics

  name           = "${var.name}-agent-${replace(each.key, "_", "-")}"
  log_group_name = aws_cloudwatch_log_group.sft_agent.name
  pattern        = "{ $.event = \"${each.value.event}\" }"

  metric_transformation {
    name      = each.value.metric
    namespace = local.metric_namespace
    value     = "$.${each.value.field}"
    unit      = each.value.unit
  }
}
