# Completion events (docs/events.md): one JSON message per route outcome of every flag
# (delivered, failed, received), published by the worker and the SFT agent of the task.
# Encrypted with the service key; only the task role may publish (its IAM policy in the
# roles stack grants sns:Publish on this topic, and the topic policy denies everyone else).
# Subscribers filter on the message attributes `outcome` and `pipeline_name`.

resource "aws_sns_topic" "events" {
  name              = "${var.name}-events"
  kms_master_key_id = aws_kms_key.service.arn
  tags              = local.tags
}

resource "aws_sns_topic_policy" "events" {
  arn    = aws_sns_topic.events.arn
  policy = data.aws_iam_policy_document.events_topic.json
}

data "aws_iam_policy_document" "events_topic" {
  statement {
    sid       = "TaskRolePublishes"
    effect    = "Allow"
    actions   = ["sns:Publish"]
    resources = [aws_sns_topic.events.arn]

    principals {
      type        = "AWS"
      identifiers = [data.aws_iam_role.worker.arn]
    }
  }

  # An IAM policy elsewhere in the account cannot add a publisher: events are the
  # service's word that a delivery happened.
  statement {
    sid       = "OnlyTheTaskRolePublishes"
    effect    = "Deny"
    actions   = ["sns:Publish"]
    resources = [aws_sns_topic.events.arn]

    principals {
      type        = "AWS"
      identifiers = ["*"]
    }

    condition {
      test     = "ArnNotEquals"
      variable = "aws:PrincipalArn"
      values   = [data.aws_iam_role.worker.arn]
    }
  }

  statement {
    sid       = "DenyPlainTransport"
    effect    = "Deny"
    actions   = ["sns:Publish", "sns:Subscribe"]
    resources = [aws_sns_topic.events.arn]

    principals {
      type        = "AWS"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  # Receiving teams in other accounts subscribe their own queues or functions.
  dynamic "statement" {
    for_each = length(var.event_subscriber_account_ids) > 0 ? [1] : []

    content {
      sid       = "SubscriberAccountsSubscribe"
      effect    = "Allow"
      actions   = ["sns:Subscribe"]
      resources = [aws_sns_topic.events.arn]

      principals {
        type        = "AWS"
        identifiers = [for account in var.event_subscriber_account_ids : "arn:${local.partition}:iam::${account}:root"]
      }
    }
  }
}
