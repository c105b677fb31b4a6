# One customer managed key for the service's own data at rest: the queue and DLQ, both
# tables, the shared EFS volume, the log groups, the alarm and events topics, the image
# repositories and ECS Exec sessions.
# No alias: managing one needs kms:ListAliases, which AWS grants only on "*"; the key is
# found through the stack's kms_key_arn output.
# (The producers' and destinations' keys are theirs; the roles stack grants the worker
# kms:Decrypt on them by name.)

resource "aws_kms_key" "service" {
  description             = "${var.name}: queue, tables, shared volume, logs, images and alarms at rest"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.service_key.json
  tags                    = local.tags
}

data "aws_iam_policy_document" "service_key" {
  # In a key policy the resource "*" means this key and nothing else, which checkov's IAM
  # checks (written for identity policies) cannot tell:
  #checkov:skip=CKV_AWS_109:Key policy: resource "*" is this key only; its administration stays with the account root.
  #checkov:skip=CKV_AWS_111:Key policy: resource "*" is this key only; write use is limited by principal and kms:ViaService.
  #checkov:skip=CKV_AWS_356:Key policy: resource "*" is this key only (a key policy cannot name other resources).

  statement {
    sid    = "AccountAdministersKey"
    effect = "Allow"
    # Named actions, no wildcards: administration only, none of the cryptographic uses.
    actions = [
      "kms:CreateGrant",
      "kms:DescribeKey",
      "kms:EnableKey",
      "kms:EnableKeyRotation",
      "kms:ListGrants",
      "kms:ListKeyPolicies",
      "kms:ListKeyRotations",
      "kms:ListResourceTags",
      "kms:PutKeyPolicy",
      "kms:UpdateKeyDescription",
      "kms:RevokeGrant",
      "kms:RetireGrant",
      "kms:DisableKey",
      "kms:DisableKeyRotation",
      "kms:GetKeyPolicy",
      "kms:GetKeyRotationStatus",
      "kms:TagResource",
      "kms:UntagResource",
      "kms:ScheduleKeyDeletion",
      "kms:CancelKeyDeletion",
      "kms:RotateKeyOnDemand",
    ]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }
  }

  # Principals of this account whose IAM policies allow it (operators, the deploy role)
  # may use the key, but only through the services that hold this service's data. EFS
  # needs CreateGrant, DescribeKey, GenerateDataKeyWithoutPlaintext and Decrypt of the
  # principal creating the file system; it then works through its grant.
  statement {
    sid       = "AccountUsesKeyThroughServices"
    effect    = "Allow"
    actions   = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncryptFrom", "kms:ReEncryptTo", "kms:GenerateDataKey", "kms:GenerateDataKeyWithoutPlaintext", "kms:DescribeKey", "kms:CreateGrant"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account_id}:root"]
    }

    condition {
      test     = "StringEquals"
      variable = "kms:CallerAccount"
      values   = [local.account_id]
    }

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values = [
        "sqs.${local.region}.amazonaws.com",
        "dynamodb.${local.region}.amazonaws.com",
        "ecr.${local.region}.amazonaws.com",
        "sns.${local.region}.amazonaws.com",
        "elasticfilesystem.${local.region}.amazonaws.com",
      ]
    }
  }

  # The worker: receive from the encrypted queue, send to the encrypted DLQ, read the
  # encrypted tables, publish to the encrypted events topic (both containers of the task
  # run as this role). Granted here because the key is created after the role.
  statement {
    sid       = "WorkerUsesQueueAndTables"
    effect    = "Allow"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = ["*"]

    principals {
      type        = "AWS"
      identifiers = [data.aws_iam_role.worker.arn]
    }

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["sqs.${local.region}.amazonaws.com", "dynamodb.${local.region}.amazonaws.com", "sns.${local.region}.amazonaws.com"]
    }
  }

  dynamic "statement" {
    for_each = var.enable_execute_command ? [1] : []

    content {
      sid       = "WorkerDecryptsExecSessions"
      effect    = "Allow"
      actions   = ["kms:Decrypt"]
      resources = ["*"]

      principals {
        type        = "AWS"
        identifiers = [data.aws_iam_role.worker.arn]
      }
    }
  }

  # S3 sends the flag notifications to the encrypted queue.
  statement {
    sid       = "S3SendsNotifications"
    effect    = "Allow"
    actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["s3.amazonaws.com"]
    }

    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = local.source_bucket_arns
    }
  }

  statement {
    sid       = "CloudWatchLogsEncryptsServiceLogs"
    effect    = "Allow"
    actions   = ["kms:Encrypt", "kms:Decrypt", "kms:ReEncryptFrom", "kms:ReEncryptTo", "kms:GenerateDataKey", "kms:GenerateDataKeyWithoutPlaintext", "kms:DescribeKey"]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["logs.${local.region}.amazonaws.com"]
    }

    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:${local.log_group_prefix}*"]
    }
  }

  # Alarms publish to the encrypted alarm topic.
  statement {
    sid       = "CloudWatchAlarmsPublish"
    effect    = "Allow"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = ["*"]

    principals {
      type        = "Service"
      identifiers = ["cloudwatch.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}
