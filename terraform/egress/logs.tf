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
