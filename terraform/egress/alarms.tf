resource "aws_sns_topic" "alarms" {
  name              = "${var.name}-alarms"
  kms_master_key_id = aws_kms_key.service.arn
  tags              = local.tags
}

resource "aws_sns_topic_subscription" "alarm_email" {
  for_each = toset(var.alarm_email_addresses)

  topic_arn = aws_sns_topic.alarms.arn
  protocol  = "email"
  endpoint  = each.value
}

# Anything in the DLQ is a flag that was not delivered: a permanent failure (reason in
# the message attributes) or one that kept failing. Redrive with `egress dlq redrive`.
resource "aws_cloudwatch_metric_alarm" "dlq_not_empty" {
  alarm_name          = "${var.name}-dlq-not-empty"
  alarm_description   = "Flags in ${aws_sqs_queue.dlq.name}: undelivered. See the reason attribute, fix, then `egress dlq redrive`."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateNumberOfMessagesVisible"
  dimensions          = { QueueName = aws_sqs_queue.dlq.name }
  statistic           = "Maximum"
  period              = 60
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]
  tags                = local.tags
}

# Flags waiting too long: the service is down, stuck or too small.
resource "aws_cloudwatch_metric_alarm" "oldest_message_age" {
  alarm_name          = "${var.name}-oldest-flag-too-old"
  alarm_description   = "A flag has waited more than ${var.oldest_message_age_alarm_seconds}s in ${aws_sqs_queue.flags.name}."
  namespace           = "AWS/SQS"
  metric_name         = "ApproximateAgeOfOldestMessage"
  dimensions          = { QueueName = aws_sqs_queue.flags.name }
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 2
  datapoints_to_alarm = 2
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.oldest_message_age_alarm_seconds
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  ok_actions          = [aws_sns_topic.alarms.arn]
  tags                = local.tags
}

# ---- the SFT agent -----------------------------------------------------------------------------
# The agent's alarms read the gauges of logs.tf. Each states how it treats missing data
# (periods in which no agent logged the value), because silence means different things:
# only agent_oldest_file_age counts it as a failure (every agent logs route_status every
# minute, so silence is a stopped agent); the others leave that to it and neither page
# twice nor clear themselves while the agent is quiet.

# Files the agent gave up on (moved to a route's error_folder after max_attempts): this
# one fires once per file parked (event count); agent_error_files below stays in alarm as
# long as files remain in an error folder, and clears when an operator has dealt with them.
resource "aws_cloudwatch_metric_alarm" "agent_error_folder" {
  alarm_name          = "${var.name}-agent-error-folder-files"
  alarm_description   = "The SFT agent moved files to an error folder: they were not delivered. See the .error.json beside each."
  namespace           = local.metric_namespace
  metric_name         = local.agent_error_metric
  statistic           = "Sum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_sns_topic.alarms.arn]
  tags                = local.tags

  depends_on = [aws_cloudwatch_log_metric_filter.agent_error_folder]
}

# Files piling up in a route's folder (the receiver is slow or failing, or too few threads).
resource "aws_cloudwatch_metric_alarm" "agent_backlog" {
  alarm_name          = "${var.name}-agent-backlog"
  alarm_description   = "An SFT route's folder has held more than ${var.agent_backlog_alarm_threshold} files waiting for the agent for 15 minutes. Find the route: the agent's route_status log lines (dashboard)."
  namespace           = local.metric_namespace
  metric_name         = local.agent_log_metrics.backlog.metric
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 3
  datapoints_to_alarm = 3
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.agent_backlog_alarm_threshold
  # notBreaching: no route_status line means no agent is running (agent_oldest_file_age
  # pages for that) or no route is configured; a backlog is only ever a reported number.
  treat_missing_data = "notBreaching"
  alarm_actions      = [aws_sns_topic.alarms.arn]
  ok_actions         = [aws_sns_topic.alarms.arn]
  tags               = local.tags

  depends_on = [aws_cloudwatch_log_metric_filter.agent_gauges]
}

# Files not leaving: the oldest file waiting in a route's folder, or no agent reporting.
resource "aws_cloudwatch_metric_alarm" "agent_oldest_file_age" {
  alarm_name          = "${var.name}-agent-oldest-file-too-old"
  alarm_description   = "A file has waited more than ${var.agent_oldest_file_age_alarm_seconds}s in an SFT route's folder${var.agent_silence_alarms ? ", or no SFT agent has reported for 10 minutes" : ""}. See the agent's route_status and error log lines."
  namespace           = local.metric_namespace
  metric_name         = local.agent_log_metrics.oldest_file_age.metric
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 2
  datapoints_to_alarm = 2
  comparison_operator = "GreaterThanThreshold"
  threshold           = var.agent_oldest_file_age_alarm_seconds
  # breaching (by default): every agent logs route_status every minute for every route,
  # so two silent periods mean no agent is running its loop (tasks down, agent crash
  # looping, logging broken) and files are not leaving either. agent_silence_alarms =
  # false (a deployment without SFT routes, which never logs route_status) makes it
  # notBreaching.
  treat_missing_data = var.agent_silence_alarms ? "breaching" : "notBreaching"
  alarm_actions      = [aws_sns_topic.alarms.arn]
  ok_actions         = [aws_sns_topic.alarms.arn]
  tags               = local.tags

  depends_on = [aws_cloudwatch_log_metric_filter.agent_gauges]
}

# Files sitting in an error folder (the route_status gauge), until an operator moves them.
resource "aws_cloudwatch_metric_alarm" "agent_error_files" {
  alarm_name          = "${var.name}-agent-error-folder-not-empty"
  alarm_description   = "Files wait in an SFT route's error folder: they were not delivered. See the .error.json beside each, then resend or remove them."
  namespace           = local.metric_namespace
  metric_name         = local.agent_log_metrics.error_files.metric
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  # ignore: a quiet agent says nothing about the error folders, whose files stay until
  # someone acts; the alarm keeps its state instead of clearing (silence is
  # agent_oldest_file_age's job).
  treat_missing_data = "ignore"
  alarm_actions      = [aws_sns_topic.alarms.arn]
  ok_actions         = [aws_sns_topic.alarms.arn]
  tags               = local.tags

  depends_on = [aws_cloudwatch_log_metric_filter.agent_gauges]
}

# The agent's client certificate (mTLS to the receivers) is about to expire.
resource "aws_cloudwatch_metric_alarm" "agent_cert_expiry" {
  alarm_name          = "${var.name}-agent-client-cert-expiring"
  alarm_description   = "The SFT agent's client certificate expires in less than ${var.agent_cert_expiry_alarm_days} days: renew it in Secrets Manager, then redeploy the service."
  namespace           = local.metric_namespace
  metric_name         = local.agent_log_metrics.cert_expiry.metric
  statistic           = "Minimum"
  period              = 3600
  evaluation_periods  = 1
  comparison_operator = "LessThanThreshold"
  threshold           = var.agent_cert_expiry_alarm_days
  # ignore: an expiry date does not move while the agent is quiet; keep the state.
  treat_missing_data = "ignore"
  alarm_actions      = [aws_sns_topic.alarms.arn]
  ok_actions         = [aws_sns_topic.alarms.arn]
  tags               = local.tags

  depends_on = [aws_cloudwatch_log_metric_filter.agent_gauges]
}

# Files the worker wrote (ledger) that the agent has not sent or parked after its
# unsent_after age: lost between the two programs, the exactly-once contract's alarm.
resource "aws_cloudwatch_metric_alarm" "agent_unsent_files" {
  alarm_name          = "${var.name}-agent-unsent-files"
  alarm_description   = "The ledger holds SFT files the worker wrote that the agent has not sent: see the agent's unsent_files log lines and the ledger's unsent index (docs/exactly-once.md)."
  namespace           = local.metric_namespace
  metric_name         = local.agent_log_metrics.unsent_files.metric
  statistic           = "Maximum"
  period              = 300
  evaluation_periods  = 1
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  # ignore: the count is logged once per unsent check, whose interval may exceed the
  # period; the periods between checks must neither clear nor raise the alarm.
  treat_missing_data = "ignore"
  alarm_actions      = [aws_sns_topic.alarms.arn]
  ok_actions         = [aws_sns_topic.alarms.arn]
  tags               = local.tags

  depends_on = [aws_cloudwatch_log_metric_filter.agent_gauges]
}
