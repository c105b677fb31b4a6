# Policies of the pipeline roles. Every statement names the resources of this service
# (by name prefix, or by the Project tag where AWS gives resources random ids). "*" is
# used only for actions that AWS authorises on no resource type (kms:CreateKey,
# logs:DescribeLogGroups, ecs:RegisterTaskDefinition, …), and then always under a condition.

locals {
  name_glob         = "${var.name}*"
  role_arn_glob     = "arn:${local.partition}:iam::${local.account_id}:role/${var.name}-*"
  policy_arn_glob   = "arn:${local.partition}:iam::${local.account_id}:policy/${var.name}-*"
  alarm_arn_glob    = "arn:${local.partition}:cloudwatch:${local.region}:${local.account_id}:alarm:${var.name}-*"
  dashboard_arn     = "arn:${local.partition}:cloudwatch::${local.account_id}:dashboard/${var.name}"
  topic_arn_glob    = "arn:${local.partition}:sns:${local.region}:${local.account_id}:${var.name}-*"
  cluster_arn       = "arn:${local.partition}:ecs:${local.region}:${local.account_id}:cluster/${var.name}"
  service_arn_glob  = "arn:${local.partition}:ecs:${local.region}:${local.account_id}:service/${var.name}/*"
  task_def_arn_glob = "arn:${local.partition}:ecs:${local.region}:${local.account_id}:task-definition/${var.name}*:*"
  log_group_arns    = [local.log_group_arn_prefix, "${local.log_group_arn_prefix}/*"]
  queue_arns        = [local.queue_arn, local.dlq_arn]
  table_arns        = [local.routes_table_arn, local.ledger_table_arn]
  state_kms_key_set = var.state_kms_key_arn == null ? [] : [var.state_kms_key_arn]
}

# ---- read (plan, and refresh before every apply) ------------------------------------------

data "aws_iam_policy_document" "read" {
  statement {
    sid       = "ReadQueues"
    effect    = "Allow"
    actions   = ["sqs:GetQueueAttributes", "sqs:GetQueueUrl", "sqs:ListQueueTags", "sqs:ListDeadLetterSourceQueues"]
    resources = local.queue_arns
  }

  statement {
    sid    = "ReadTables"
    effect = "Allow"
    # Table metadata only: no GetItem, Query or Scan.
    actions = [
      "dynamodb:DescribeTable",
      "dynamodb:DescribeContinuousBackups",
      "dynamodb:DescribeTimeToLive",
      "dynamodb:DescribeContributorInsights",
      "dynamodb:DescribeKinesisStreamingDestination",
      "dynamodb:GetResourcePolicy",
      "dynamodb:ListTagsOfResource",
    ]
    resources = local.table_arns
  }

  statement {
    sid       = "ReadServiceKey"
    effect    = "Allow"
    actions   = ["kms:DescribeKey", "kms:GetKeyPolicy", "kms:GetKeyRotationStatus", "kms:ListResourceTags"]
    resources = [local.kms_key_arn_pattern]

    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/Project"
      values   = [var.name]
    }
  }

  statement {
    sid       = "ReadSourceBucketNotifications"
    effect    = "Allow"
    actions   = ["s3:GetBucketNotification"]
    resources = local.source_bucket_arns
  }

  statement {
    sid    = "ReadResourcesWithoutResourceType"
    effect = "Allow"
    actions = [
      "ecs:DescribeTaskDefinition",
      "application-autoscaling:DescribeScalableTargets",
      "application-autoscaling:DescribeScalingPolicies",
      "application-autoscaling:ListTagsForResource",
      "ec2:DescribeSecurityGroups",
      "ec2:DescribeSecurityGroupRules",
      "ec2:DescribeVpcs",
      "ec2:DescribeSubnets",
      "ec2:DescribeNetworkInterfaces",
      "logs:DescribeLogGroups",
      "iam:ListOpenIDConnectProviders",
    ]
    resources = ["*"]

    condition {
      test     = "StringEquals"
      variable = "aws:RequestedRegion"
      values   = [local.region]
    }
  }

  statement {
    sid       = "ReadEcs"
    effect    = "Allow"
    actions   = ["ecs:DescribeClusters", "ecs:DescribeServices", "ecs:ListTagsForResource"]
    resources = [local.cluster_arn, local.service_arn_glob]
  }

  statement {
    sid       = "ReadImages"
    effect    = "Allow"
    actions   = ["ecr:DescribeRepositories", "ecr:DescribeImages", "ecr:GetLifecyclePolicy", "ecr:GetRepositoryPolicy", "ecr:ListTagsForResource"]
    resources = local.ecr_repository_arns
  }

  statement {
    sid       = "ReadLogs"
    effect    = "Allow"
    actions   = ["logs:DescribeMetricFilters", "logs:ListTagsForResource", "logs:ListTagsLogGroup"]
    resources = local.log_group_arns
  }

  statement {
    sid       = "ReadAlarmsAndDashboard"
    effect    = "Allow"
    actions   = ["cloudwatch:DescribeAlarms", "cloudwatch:GetDashboard", "cloudwatch:ListTagsForResource"]
    resources = [local.alarm_arn_glob, local.dashboard_arn]
  }

  statement {
    sid       = "ReadAlarmTopic"
    effect    = "Allow"
    actions   = ["sns:GetTopicAttributes", "sns:ListTagsForResource", "sns:ListSubscriptionsByTopic", "sns:GetSubscriptionAttributes"]
    resources = [local.topic_arn_glob]
  }

  statement {
    sid    = "ReadServiceIam"
    effect = "Allow"
    actions = [
      "iam:GetRole",
      "iam:GetRolePolicy",
      "iam:ListRolePolicies",
      "iam:ListAttachedRolePolicies",
      "iam:ListRoleTags",
      "iam:GetPolicy",
      "iam:GetPolicyVersion",
      "iam:ListPolicyVersions",
      "iam:ListPolicyTags",
      "iam:GetOpenIDConnectProvider",
    ]
    resources = [local.role_arn_glob, local.policy_arn_glob, local.oidc_provider_arn]
  }
}

# ---- Terraform state ----------------------------------------------------------------------

data "aws_iam_policy_document" "state_lock" {
  statement {
    sid       = "ListStatePrefix"
    effect    = "Allow"
    actions   = ["s3:ListBucket"]
    resources = [local.state_bucket_arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["${var.state_key_prefix}/*"]
    }
  }

  statement {
    sid       = "ReadState"
    effect    = "Allow"
    actions   = ["s3:GetObject"]
    resources = [local.state_objects_arn]
  }

  # S3-native state locking (use_lockfile): a plan writes and deletes <key>.tflock only.
  statement {
    sid       = "HoldStateLock"
    effect    = "Allow"
    actions   = ["s3:PutObject", "s3:DeleteObject"]
    resources = ["arn:${local.partition}:s3:::${var.state_bucket}/${var.state_key_prefix}/*.tflock"]
  }

  dynamic "statement" {
    for_each = length(local.state_kms_key_set) > 0 ? [1] : []

    content {
      sid       = "StateKey"
      effect    = "Allow"
      actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
      resources = local.state_kms_key_set
    }
  }
}

data "aws_iam_policy_document" "state_write" {
  source_policy_documents = [data.aws_iam_policy_document.state_lock.json]

  statement {
    sid       = "WriteState"
    effect    = "Allow"
    actions   = ["s3:PutObject", "s3:DeleteObject"]
    resources = [local.state_objects_arn]
  }
}

# ---- deploy: data plane resources (queue, tables, key, notifications) ---------------------

data "aws_iam_policy_document" "deploy_data" {
  statement {
    sid       = "ManageQueues"
    effect    = "Allow"
    actions   = ["sqs:CreateQueue", "sqs:DeleteQueue", "sqs:SetQueueAttributes", "sqs:TagQueue", "sqs:UntagQueue"]
    resources = local.queue_arns
  }

  # The tables' schema, backups and TTL; never their items (routes are managed with the CLI).
  statement {
    sid    = "ManageTables"
    effect = "Allow"
    actions = [
      "dynamodb:CreateTable",
      "dynamodb:DeleteTable",
      "dynamodb:UpdateTable",
      "dynamodb:UpdateContinuousBackups",
      "dynamodb:UpdateTimeToLive",
      "dynamodb:TagResource",
      "dynamodb:UntagResource",
    ]
    resources = local.table_arns
  }

  # CreateKey has no resource type; the key must be created with this project's tag.
  statement {
    sid       = "CreateServiceKey"
    effect    = "Allow"
    actions   = ["kms:CreateKey"]
    resources = ["*"]

    condition {
      test     = "StringEquals"
      variable = "aws:RequestTag/Project"
      values   = [var.name]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:RequestedRegion"
      values   = [local.region]
    }
  }

  statement {
    sid       = "TagNewServiceKey"
    effect    = "Allow"
    actions   = ["kms:TagResource"]
    resources = [local.kms_key_arn_pattern]

    condition {
      test     = "StringEquals"
      variable = "aws:RequestTag/Project"
      values   = [var.name]
    }
  }

  statement {
    sid    = "ManageServiceKey"
    effect = "Allow"
    actions = [
      "kms:PutKeyPolicy",
      "kms:EnableKeyRotation",
      "kms:UpdateKeyDescription",
      "kms:TagResource",
      "kms:UntagResource",
      "kms:ScheduleKeyDeletion",
      "kms:CreateGrant",
      "kms:RetireGrant",
    ]
    resources = [local.kms_key_arn_pattern]

    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/Project"
      values   = [var.name]
    }
  }

  statement {
    sid       = "ManageSourceBucketNotifications"
    effect    = "Allow"
    actions   = ["s3:PutBucketNotification", "s3:GetBucketNotification"]
    resources = local.source_bucket_arns
  }
}

# ---- deploy: compute, images, scaling, observability ----------------------------------------

data "aws_iam_policy_document" "deploy_compute" {
  statement {
    sid    = "EcsWithoutResourceType"
    effect = "Allow"
    actions = [
      "ecs:CreateCluster",
      "ecs:RegisterTaskDefinition",
      "ecs:DeregisterTaskDefinition",
      "ecr:GetAuthorizationToken",
      "application-autoscaling:RegisterScalableTarget",
      "application-autoscaling:DeregisterScalableTarget",
      "application-autoscaling:PutScalingPolicy",
      "application-autoscaling:DeleteScalingPolicy",
      "application-autoscaling:TagResource",
      "logs:DescribeLogGroups",
    ]
    resources = ["*"]

    condition {
      test     = "StringEquals"
      variable = "aws:RequestedRegion"
      values   = [local.region]
    }
  }

  statement {
    sid    = "ManageClusterAndService"
    effect = "Allow"
    actions = [
      "ecs:UpdateCluster",
      "ecs:UpdateClusterSettings",
      "ecs:PutClusterCapacityProviders",
      "ecs:DeleteCluster",
      "ecs:CreateService",
      "ecs:UpdateService",
      "ecs:DeleteService",
      "ecs:TagResource",
      "ecs:UntagResource",
    ]
    resources = [local.cluster_arn, local.service_arn_glob, local.task_def_arn_glob]
  }

  statement {
    sid    = "ManageAndPushImages"
    effect = "Allow"
    actions = [
      "ecr:CreateRepository",
      "ecr:DeleteRepository",
      "ecr:PutLifecyclePolicy",
      "ecr:DeleteLifecyclePolicy",
      "ecr:PutImageScanningConfiguration",
      "ecr:PutImageTagMutability",
      "ecr:TagResource",
      "ecr:UntagResource",
      "ecr:BatchCheckLayerAvailability",
      "ecr:InitiateLayerUpload",
      "ecr:UploadLayerPart",
      "ecr:CompleteLayerUpload",
      "ecr:PutImage",
      "ecr:BatchGetImage",
      "ecr:GetDownloadUrlForLayer",
    ]
    resources = local.ecr_repository_arns
  }

  statement {
    sid    = "ManageSecurityGroups"
    effect = "Allow"
    actions = [
      "ec2:CreateSecurityGroup",
      "ec2:DeleteSecurityGroup",
      "ec2:AuthorizeSecurityGroupEgress",
      "ec2:AuthorizeSecurityGroupIngress",
      "ec2:RevokeSecurityGroupEgress",
      "ec2:RevokeSecurityGroupIngress",
      "ec2:ModifySecurityGroupRules",
      "ec2:UpdateSecurityGroupRuleDescriptionsEgress",
      "ec2:UpdateSecurityGroupRuleDescriptionsIngress",
      "ec2:CreateTags",
      "ec2:DeleteTags",
    ]
    resources = [
      "arn:${local.partition}:ec2:${local.region}:${local.account_id}:security-group/*",
      "arn:${local.partition}:ec2:${local.region}:${local.account_id}:security-group-rule/*",
      "arn:${local.partition}:ec2:${local.region}:${local.account_id}:vpc/*",
    ]
  }

  statement {
    sid    = "ManageLogGroups"
    effect = "Allow"
    actions = [
      "logs:CreateLogGroup",
      "logs:DeleteLogGroup",
      "logs:PutRetentionPolicy",
      "logs:AssociateKmsKey",
      "logs:DisassociateKmsKey",
      "logs:TagResource",
      "logs:UntagResource",
      "logs:TagLogGroup",
      "logs:UntagLogGroup",
      "logs:PutMetricFilter",
      "logs:DeleteMetricFilter",
    ]
    resources = local.log_group_arns
  }

  statement {
    sid    = "ManageAlarmsAndDashboard"
    effect = "Allow"
    actions = [
      "cloudwatch:PutMetricAlarm",
      "cloudwatch:DeleteAlarms",
      "cloudwatch:TagResource",
      "cloudwatch:UntagResource",
      "cloudwatch:PutDashboard",
      "cloudwatch:DeleteDashboards",
    ]
    resources = [local.alarm_arn_glob, local.dashboard_arn]
  }

  statement {
    sid    = "ManageAlarmTopic"
    effect = "Allow"
    actions = [
      "sns:CreateTopic",
      "sns:DeleteTopic",
      "sns:SetTopicAttributes",
      "sns:Subscribe",
      "sns:Unsubscribe",
      "sns:TagResource",
      "sns:UntagResource",
    ]
    resources = [local.topic_arn_glob]
  }

  statement {
    sid     = "PassTaskRoles"
    effect  = "Allow"
    actions = ["iam:PassRole"]
    resources = [
      "arn:${local.partition}:iam::${local.account_id}:role/${local.role_names.worker}",
      "arn:${local.partition}:iam::${local.account_id}:role/${local.role_names.agent}",
      "arn:${local.partition}:iam::${local.account_id}:role/${local.role_names.execution}",
    ]

    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ecs-tasks.amazonaws.com"]
    }
  }

  statement {
    sid       = "ServiceLinkedRoles"
    effect    = "Allow"
    actions   = ["iam:CreateServiceLinkedRole"]
    resources = ["arn:${local.partition}:iam::${local.account_id}:role/aws-service-role/*"]

    condition {
      test     = "StringEquals"
      variable = "iam:AWSServiceName"
      values   = ["ecs.amazonaws.com", "ecs.application-autoscaling.amazonaws.com"]
    }
  }
}

# ---- role management: this stack's own roles and policies, and the OIDC provider ----------

data "aws_iam_policy_document" "role_management" {
  statement {
    sid    = "ManageServiceRoles"
    effect = "Allow"
    actions = [
      "iam:CreateRole",
      "iam:DeleteRole",
      "iam:UpdateRole",
      "iam:UpdateRoleDescription",
      "iam:UpdateAssumeRolePolicy",
      "iam:TagRole",
      "iam:UntagRole",
      "iam:PutRolePolicy",
      "iam:DeleteRolePolicy",
      "iam:DetachRolePolicy",
    ]
    resources = [local.role_arn_glob]
  }

  # Only this project's own managed policies may be attached: never AdministratorAccess & co.
  statement {
    sid       = "AttachOwnPoliciesOnly"
    effect    = "Allow"
    actions   = ["iam:AttachRolePolicy"]
    resources = [local.role_arn_glob]

    condition {
      test     = "ArnLike"
      variable = "iam:PolicyARN"
      values   = [local.policy_arn_glob]
    }
  }

  statement {
    sid    = "ManageOwnPolicies"
    effect = "Allow"
    actions = [
      "iam:CreatePolicy",
      "iam:DeletePolicy",
      "iam:CreatePolicyVersion",
      "iam:DeletePolicyVersion",
      "iam:SetDefaultPolicyVersion",
      "iam:TagPolicy",
      "iam:UntagPolicy",
    ]
    resources = [local.policy_arn_glob]
  }

  statement {
    sid    = "ManageGitHubOidcProvider"
    effect = "Allow"
    actions = [
      "iam:CreateOpenIDConnectProvider",
      "iam:DeleteOpenIDConnectProvider",
      "iam:UpdateOpenIDConnectProviderThumbprint",
      "iam:AddClientIDToOpenIDConnectProvider",
      "iam:RemoveClientIDFromOpenIDConnectProvider",
      "iam:TagOpenIDConnectProvider",
      "iam:UntagOpenIDConnectProvider",
    ]
    resources = ["arn:${local.partition}:iam::${local.account_id}:oidc-provider/${local.github_oidc_host}"]
  }
}
