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

# Files the agent gave up on (moved to a route's error_folder after max_attempts).
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
