# The roles the ECS task runs with. ECS grants one task role per *task*: both containers
# of the egress task (worker and sft-agent) share the worker task role, which therefore
# carries the agent's ledger rights too (statement SftAgentRecordsFileFates, kept apart
# so that they read as the agent's). Separating them per container would need an extra
# hop: the agent assuming a role of its own with the task role's credentials. The agent
# role below is for running the agent as a task of its own (e.g. beside a worker in
# another service, sharing the EFS volume); it carries the agent's statement only.
#
# Every role here carries the service permissions boundary (pipeline_policies.tf): the
# role-management pipeline can create and edit roles only with a boundary on them.

data "aws_iam_policy_document" "ecs_tasks_trust" {
  statement {
    sid     = "EcsTasks"
    effect  = "Allow"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }

    # Confused-deputy protection: only tasks of this account and region.
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }

    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:${local.partition}:ecs:${local.region}:${local.account_id}:*"]
    }
  }
}

# ---- worker task role --------------------------------------------------------------------

resource "aws_iam_role" "worker" {
  name                 = local.role_names.worker
  description          = "Egress task (worker and SFT agent): reads routed source prefixes, writes destinations, works the flag queue, records in the ledger."
  assume_role_policy   = data.aws_iam_policy_document.ecs_tasks_trust.json
  max_session_duration = 3600
  permissions_boundary = aws_iam_policy.service_boundary.arn
}

# The SFT agent's needs (docs/exactly-once.md): it finds the object row of each file it
# sends through the by_sft_path index, checks the unsent index, and records sending,
# sent, retry or parked on the row (UpdateItem). Nothing else: it creates no rows, reads
# no routes, touches no queue. Its own statement, in both the task role (one task role
# serves both containers) and the agent role.
data "aws_iam_policy_document" "sft_agent" {
  statement {
    sid       = "SftAgentRecordsFileFates"
    effect    = "Allow"
    actions   = ["dynamodb:UpdateItem"]
    resources = [local.ledger_table_arn]
  }

  statement {
    sid       = "SftAgentQueriesLedgerIndexes"
    effect    = "Allow"
    actions   = ["dynamodb:Query"]
    resources = [local.ledger_index_arn_glob]
  }

  # Completion events (docs/events.md): after it records a file sent, the agent reads the
  # delivery's route row and object rows to learn whether every file was sent, and claims
  # the delivery received with a conditional UpdateItem (above) before it announces it.
  statement {
    sid       = "SftAgentReadsDeliveries"
    effect    = "Allow"
    actions   = ["dynamodb:GetItem", "dynamodb:Query"]
    resources = [local.ledger_table_arn]
  }
}

data "aws_iam_policy_document" "worker" {
  # The agent's statements, for the sft-agent container of the same task.
  source_policy_documents = [data.aws_iam_policy_document.sft_agent.json]

  statement {
    sid       = "ReadRoutes"
    effect    = "Allow"
    actions   = ["dynamodb:PartiQLSelect", "dynamodb:GetItem", "dynamodb:Query"]
    resources = [local.routes_table_arn]
  }

  # Claims, progress and the audit trail (docs/exactly-once.md): the claim is a conditional
  # UpdateItem, object rows are written with PutItem / BatchWriteItem after a conditional
  # renewal of the claim (the fence), resumes Query the delivery's rows. DescribeTable: the
  # worker refuses to start on a table with another key schema.
  statement {
    sid    = "WorkerWritesLedger"
    effect = "Allow"
    actions = [
      "dynamodb:DescribeTable",
      "dynamodb:GetItem",
      "dynamodb:PutItem",
      "dynamodb:UpdateItem",
      "dynamodb:Query",
      "dynamodb:BatchWriteItem",
    ]
    resources = [local.ledger_table_arn]
  }

  statement {
    sid       = "WorkerQueriesLedgerIndexes"
    effect    = "Allow"
    actions   = ["dynamodb:Query"]
    resources = [local.ledger_index_arn_glob]
  }

  # SendMessage: a duplicate arriving while a live worker delivers is re-queued (a
  # delayed copy, then the original deleted) so its receive count never grows.
  statement {
    sid    = "WorkFlagQueue"
    effect = "Allow"
    actions = [
      "sqs:ReceiveMessage",
      "sqs:DeleteMessage",
      "sqs:ChangeMessageVisibility",
      "sqs:GetQueueAttributes",
      "sqs:GetQueueUrl",
      "sqs:SendMessage",
    ]
    resources = [local.queue_arn]
  }

  # Completion events (docs/events.md), from both containers of the task: the topic's
  # policy in the egress stack admits this role alone.
  statement {
    sid       = "PublishCompletionEvents"
    effect    = "Allow"
    actions   = ["sns:Publish"]
    resources = [local.events_topic_arn]
  }

  statement {
    sid       = "SendPermanentFailuresToDlq"
    effect    = "Allow"
    actions   = ["sqs:SendMessage", "sqs:GetQueueAttributes", "sqs:GetQueueUrl"]
    resources = [local.dlq_arn]
  }

  # Listing is allowed per bucket, under the routed prefixes only.
  dynamic "statement" {
    for_each = var.source_locations

    content {
      sid       = "ListSource${statement.key}"
      effect    = "Allow"
      actions   = ["s3:ListBucket"]
      resources = ["arn:${local.partition}:s3:::${statement.value.bucket}"]

      condition {
        test     = "StringLike"
        variable = "s3:prefix"
        values   = ["${statement.value.prefix}*"]
      }
    }
  }

  statement {
    sid       = "ReadSourceObjects"
    effect    = "Allow"
    actions   = ["s3:GetObject", "s3:GetObjectVersion", "s3:GetObjectTagging"]
    resources = local.source_object_arns
  }

  dynamic "statement" {
    for_each = length(var.source_kms_key_arns) > 0 ? [1] : []

    content {
      sid       = "DecryptWithNamedKeys"
      effect    = "Allow"
      actions   = ["kms:Decrypt"]
      resources = var.source_kms_key_arns
    }
  }

  # Re-wrap routes without role_arn read the recipient's public key with the task role.
  dynamic "statement" {
    for_each = length(var.rewrap_key_parameter_arns) > 0 ? [1] : []

    content {
      sid       = "ReadRewrapKeyParameters"
      effect    = "Allow"
      actions   = ["ssm:GetParameter"]
      resources = var.rewrap_key_parameter_arns
    }
  }

  dynamic "statement" {
    for_each = length(var.destination_role_arns) > 0 ? [1] : []

    content {
      sid       = "AssumeDestinationRoles"
      effect    = "Allow"
      actions   = ["sts:AssumeRole"]
      resources = var.destination_role_arns
    }
  }

  dynamic "statement" {
    for_each = length(var.destination_locations) > 0 ? [1] : []

    content {
      sid    = "WriteSameAccountDestinations"
      effect = "Allow"
      actions = [
        "s3:PutObject",
        "s3:PutObjectAcl",
        "s3:PutObjectTagging",
        "s3:AbortMultipartUpload",
        "s3:ListMultipartUploadParts",
      ]
      resources = local.destination_obj_arns
    }
  }

  # A claim taken over aborts the multipart uploads the lapsed claim opened but did not
  # record: it lists the open uploads under the destination prefix.
  dynamic "statement" {
    for_each = length(var.destination_locations) > 0 ? [1] : []

    content {
      sid       = "ListUploadsOfSameAccountDestinations"
      effect    = "Allow"
      actions   = ["s3:ListBucketMultipartUploads"]
      resources = local.destination_bkt_arns
    }
  }

  dynamic "statement" {
    for_each = length(var.destination_kms_key_arns) > 0 ? [1] : []

    content {
      sid       = "EncryptSameAccountDestinations"
      effect    = "Allow"
      actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
      resources = var.destination_kms_key_arns
    }
  }
}

resource "aws_iam_role_policy" "worker" {
  name   = "${local.role_names.worker}-access"
  role   = aws_iam_role.worker.id
  policy = data.aws_iam_policy_document.worker.json
}

# ---- agent task role ---------------------------------------------------------------------

resource "aws_iam_role" "agent" {
  name                 = local.role_names.agent
  description          = "SFT agent run as a task of its own: records file fates in the ledger (it reads a volume and pushes over mTLS)."
  assume_role_policy   = data.aws_iam_policy_document.ecs_tasks_trust.json
  max_session_duration = 3600
  permissions_boundary = aws_iam_policy.service_boundary.arn
}

resource "aws_iam_role_policy" "agent" {
  name   = "${local.role_names.agent}-access"
  role   = aws_iam_role.agent.id
  policy = data.aws_iam_policy_document.sft_agent.json
}

# ---- task execution role ---------------------------------------------------------------
# Used by the ECS agent, not by the containers: pulls the images, writes the log
# streams, reads the named secrets injected into the sft-agent container.

resource "aws_iam_role" "execution" {
  name                 = local.role_names.execution
  description          = "ECS task execution: image pulls, log streams, the sft-agent's named secrets."
  assume_role_policy   = data.aws_iam_policy_document.ecs_tasks_trust.json
  max_session_duration = 3600
  permissions_boundary = aws_iam_policy.service_boundary.arn
}

data "aws_iam_policy_document" "execution" {
  statement {
    sid    = "EcrAuthorizationToken"
    effect = "Allow"
    # GetAuthorizationToken has no resource type: AWS only accepts "*" for it.
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }

  statement {
    sid       = "PullServiceImages"
    effect    = "Allow"
    actions   = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"]
    resources = local.ecr_repository_arns
  }

  statement {
    sid       = "WriteServiceLogStreams"
    effect    = "Allow"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${local.log_group_arn_prefix}/*:log-stream:*"]
  }

  dynamic "statement" {
    for_each = length(var.sft_secret_arns) > 0 ? [1] : []

    content {
      sid       = "ReadSftAgentSecrets"
      effect    = "Allow"
      actions   = ["secretsmanager:GetSecretValue"]
      resources = var.sft_secret_arns
    }
  }

  dynamic "statement" {
    for_each = length(var.secrets_kms_key_arns) > 0 ? [1] : []

    content {
      sid       = "DecryptSftAgentSecrets"
      effect    = "Allow"
      actions   = ["kms:Decrypt"]
      resources = var.secrets_kms_key_arns

      condition {
        test     = "StringEquals"
        variable = "kms:ViaService"
        values   = ["secretsmanager.${local.region}.amazonaws.com"]
      }
    }
  }
}

resource "aws_iam_role_policy" "execution" {
  name   = "${local.role_names.execution}-access"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution.json
}
