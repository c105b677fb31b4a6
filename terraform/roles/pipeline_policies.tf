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
  # EFS ids are random: the deploy policy scopes them by the Project tag, like the KMS key.
  efs_arn_globs = [
    "arn:${local.partition}:elasticfilesystem:${local.region}:${local.account_id}:file-system/*",
    "arn:${local.partition}:elasticfilesystem:${local.region}:${local.account_id}:access-point/*",
  ]
  network_interface_arns = [
    "arn:${local.partition}:ec2:${local.region}:${local.account_id}:network-interface/*",
    "arn:${local.partition}:ec2:${local.region}:${local.account_id}:subnet/*",
    "arn:${local.partition}:ec2:${local.region}:${local.account_id}:security-group/*",
  ]
  # The role-management role and its policy, and the permissions boundaries every role it
  # creates must carry (see "role management" below). Their ARNs follow from their names.
  role_management_role_arn   = "arn:${local.partition}:iam::${local.account_id}:role/${local.role_names.role_management}"
  role_management_policy_arn = "arn:${local.partition}:iam::${local.account_id}:policy/${var.name}-role-management"
  boundary_policy_names = {
    service  = "${var.name}-service-boundary"
    pipeline = "${var.name}-pipeline-boundary"
  }
  boundary_policy_arns = [for n in values(local.boundary_policy_names) : "arn:${local.partition}:iam::${local.account_id}:policy/${n}"]
  # Keys named by ARN that the service boundary lets the task roles use (their policies
  # say which role uses which).
  service_kms_key_arns = distinct(concat(var.source_kms_key_arns, var.destination_kms_key_arns, var.secrets_kms_key_arns))
  control_plane_arn_globs = [
    "arn:${local.partition}:ecs:${local.region}:${local.account_id}:*/${var.name}*",
    "arn:${local.partition}:ecr:${local.region}:${local.account_id}:repository/${var.name}/*",
    "${local.log_group_arn_prefix}*",
    local.alarm_arn_glob,
    local.dashboard_arn,
    local.topic_arn_glob,
    "arn:${local.partition}:elasticfilesystem:${local.region}:${local.account_id}:*",
  ]
  network_arn_globs = [
    "arn:${local.partition}:ec2:${local.region}:${local.account_id}:security-group/*",
    "arn:${local.partition}:ec2:${local.region}:${local.account_id}:security-group-rule/*",
    "arn:${local.partition}:ec2:${local.region}:${local.account_id}:vpc/*",
    "arn:${local.partition}:ec2:${local.region}:${local.account_id}:network-interface/*",
    "arn:${local.partition}:ec2:${local.region}:${local.account_id}:subnet/*",
  ]
  service_linked_role_services = [
    "ecs.amazonaws.com",
    "ecs.application-autoscaling.amazonaws.com",
    "elasticfilesystem.amazonaws.com",
    "backup.amazonaws.com",
  ]
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
      "elasticfilesystem:DescribeFileSystems",
      "elasticfilesystem:DescribeMountTargets",
      "elasticfilesystem:DescribeMountTargetSecurityGroups",
      "elasticfilesystem:DescribeAccessPoints",
      "elasticfilesystem:DescribeFileSystemPolicy",
      "elasticfilesystem:DescribeBackupPolicy",
      "elasticfilesystem:DescribeLifecycleConfiguration",
      "elasticfilesystem:ListTagsForResource",
    ]
    resources = ["*"]

    condition {
      test     = "StringEquals"
      variable = "aws:RequestedRegion"
      values   = [local.region]
    }
  }

  # IAM is global (its requests are not in the service's region): no region condition.
  statement {
    sid       = "ListOidcProviders"
    effect    = "Allow"
    actions   = ["iam:ListOpenIDConnectProviders"]
    resources = ["*"]
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

  # EFS creates the shared volume's file data key grant with the caller's rights.
  statement {
    sid       = "UseServiceKeyThroughEfs"
    effect    = "Allow"
    actions   = ["kms:GenerateDataKeyWithoutPlaintext", "kms:Decrypt"]
    resources = [local.kms_key_arn_pattern]

    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/Project"
      values   = [var.name]
    }

    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["elasticfilesystem.${local.region}.amazonaws.com"]
    }
  }

  # ---- the shared volume (EFS) ----
  # Created only encrypted and with this project's tag; managed only while it carries it.
  statement {
    sid       = "CreateEncryptedFileSystem"
    effect    = "Allow"
    actions   = ["elasticfilesystem:CreateFileSystem"]
    resources = [local.efs_arn_globs[0]]

    condition {
      test     = "StringEquals"
      variable = "aws:RequestTag/Project"
      values   = [var.name]
    }

    condition {
      test     = "Bool"
      variable = "elasticfilesystem:Encrypted"
      values   = ["true"]
    }
  }

  statement {
    sid       = "TagNewFileSystemsAndAccessPoints"
    effect    = "Allow"
    actions   = ["elasticfilesystem:TagResource"]
    resources = local.efs_arn_globs

    condition {
      test     = "StringEquals"
      variable = "aws:RequestTag/Project"
      values   = [var.name]
    }
  }

  statement {
    sid       = "CreateAccessPointsOnOwnFileSystem"
    effect    = "Allow"
    actions   = ["elasticfilesystem:CreateAccessPoint"]
    resources = [local.efs_arn_globs[0]]

    condition {
      test     = "StringEquals"
      variable = "aws:RequestTag/Project"
      values   = [var.name]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/Project"
      values   = [var.name]
    }
  }

  statement {
    sid    = "ManageOwnFileSystem"
    effect = "Allow"
    actions = [
      "elasticfilesystem:DeleteFileSystem",
      "elasticfilesystem:UpdateFileSystem",
      "elasticfilesystem:PutLifecycleConfiguration",
      "elasticfilesystem:PutBackupPolicy",
      "elasticfilesystem:PutFileSystemPolicy",
      "elasticfilesystem:DeleteFileSystemPolicy",
      "elasticfilesystem:CreateMountTarget",
      "elasticfilesystem:DeleteMountTarget",
      "elasticfilesystem:ModifyMountTargetSecurityGroups",
      "elasticfilesystem:DeleteAccessPoint",
      "elasticfilesystem:TagResource",
      "elasticfilesystem:UntagResource",
    ]
    resources = local.efs_arn_globs

    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/Project"
      values   = [var.name]
    }
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

  # EFS mount targets are network interfaces in the service subnets: CreateMountTarget,
  # DeleteMountTarget and ModifyMountTargetSecurityGroups need these EC2 rights of the
  # caller. Interface ids are random and the roles stack does not know the subnets, so
  # they are scoped to this account and region, like the security groups above.
  statement {
    sid       = "EfsMountTargetInterfaces"
    effect    = "Allow"
    actions   = ["ec2:CreateNetworkInterface", "ec2:DeleteNetworkInterface", "ec2:ModifyNetworkInterfaceAttribute"]
    resources = local.network_interface_arns
  }

  # EFS's own role is made with the first file system, AWS Backup's with the first
  # automatic backup policy.
  statement {
    sid       = "ServiceLinkedRoles"
    effect    = "Allow"
    actions   = ["iam:CreateServiceLinkedRole"]
    resources = ["arn:${local.partition}:iam::${local.account_id}:role/aws-service-role/*"]

    condition {
      test     = "StringEquals"
      variable = "iam:AWSServiceName"
      values   = local.service_linked_role_services
    }
  }
}

# ---- role management: this stack's own roles and policies, and the OIDC provider ----------
# The role-management role creates and edits the other roles of this stack, so it could
# otherwise grant any of them (or itself) anything. Three rules keep it inside the
# service:
#   1. every role it creates or whose policies it edits must carry one of the permissions
#      boundaries below (iam:PermissionsBoundary on each grant of CreateRole,
#      Put/DeleteRolePolicy, Attach/DetachRolePolicy, PutRolePermissionsBoundary):
#      whatever a policy says, a role can never do more than its boundary allows (the
#      egress stack's needs);
#   2. it cannot edit itself, nor its own policy (the only one attached to it), nor the
#      boundaries, nor remove a boundary from any role;
#   3. it attaches only this project's managed policies, never a boundary as one.
# It carries no boundary itself (it must manage IAM, which no boundary allows). So a
# change to this role, its policy or the boundaries is applied by an administrator, like
# the first apply (terraform/README.md); the pipeline applies everything else.
# What IAM offers no boundary condition for (DeleteRole, UpdateRole,
# UpdateAssumeRolePolicy, tags) is limited to this project's role names, and a role
# whose trust it edits still stays within its boundary.

data "aws_iam_policy_document" "role_management" {
  # Its own state access is part of its own policy (not the shared state-write policy):
  # a policy attached to it that it could edit would undo rule 2.
  source_policy_documents = [data.aws_iam_policy_document.state_write.json]

  statement {
    sid    = "ReadOwnIam"
    effect = "Allow"
    actions = [
      "iam:GetRole",
      "iam:GetRolePolicy",
      "iam:ListRolePolicies",
      "iam:ListAttachedRolePolicies",
      "iam:ListInstanceProfilesForRole",
      "iam:ListRoleTags",
      "iam:GetPolicy",
      "iam:GetPolicyVersion",
      "iam:ListPolicyVersions",
      "iam:ListPolicyTags",
      "iam:GetOpenIDConnectProvider",
    ]
    resources = [local.role_arn_glob, local.policy_arn_glob, local.oidc_provider_arn]
  }

  statement {
    sid       = "ListOidcProviders"
    effect    = "Allow"
    actions   = ["iam:ListOpenIDConnectProviders"]
    resources = ["*"]
  }

  # Actions IAM offers no iam:PermissionsBoundary condition for.
  statement {
    sid    = "ManageServiceRoles"
    effect = "Allow"
    actions = [
      "iam:DeleteRole",
      "iam:UpdateRole",
      "iam:UpdateRoleDescription",
      "iam:UpdateAssumeRolePolicy",
      "iam:TagRole",
      "iam:UntagRole",
    ]
    resources = [local.role_arn_glob]
  }

  # Rule 1: roles are created, and their policies edited, only with a boundary on them.
  statement {
    sid    = "CreateAndEditRolesWithinTheBoundary"
    effect = "Allow"
    actions = [
      "iam:CreateRole",
      "iam:PutRolePolicy",
      "iam:DeleteRolePolicy",
      "iam:DetachRolePolicy",
      "iam:PutRolePermissionsBoundary",
    ]
    resources = [local.role_arn_glob]

    condition {
      test     = "StringEquals"
      variable = "iam:PermissionsBoundary"
      values   = local.boundary_policy_arns
    }
  }

  # Rules 1 and 3: only this project's own managed policies, never AdministratorAccess & co.
  statement {
    sid       = "AttachOwnPoliciesWithinTheBoundary"
    effect    = "Allow"
    actions   = ["iam:AttachRolePolicy"]
    resources = [local.role_arn_glob]

    condition {
      test     = "ArnLike"
      variable = "iam:PolicyARN"
      values   = [local.policy_arn_glob]
    }

    condition {
      test     = "StringEquals"
      variable = "iam:PermissionsBoundary"
      values   = local.boundary_policy_arns
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

  # Rule 2: not itself.
  statement {
    sid    = "DenyEditingItself"
    effect = "Deny"
    actions = [
      "iam:AttachRolePolicy",
      "iam:CreateRole",
      "iam:DeleteRole",
      "iam:DeleteRolePermissionsBoundary",
      "iam:DeleteRolePolicy",
      "iam:DetachRolePolicy",
      "iam:PutRolePermissionsBoundary",
      "iam:PutRolePolicy",
      "iam:TagRole",
      "iam:UntagRole",
      "iam:UpdateAssumeRolePolicy",
      "iam:UpdateRole",
      "iam:UpdateRoleDescription",
    ]
    resources = [local.role_management_role_arn]
  }

  # Rule 2: not its own policy, not the boundaries.
  statement {
    sid    = "DenyEditingItsPolicyAndTheBoundaries"
    effect = "Deny"
    actions = [
      "iam:CreatePolicyVersion",
      "iam:DeletePolicy",
      "iam:DeletePolicyVersion",
      "iam:SetDefaultPolicyVersion",
    ]
    resources = concat(local.boundary_policy_arns, [local.role_management_policy_arn])
  }

  # Rule 2: no role loses its boundary.
  statement {
    sid       = "DenyRemovingBoundaries"
    effect    = "Deny"
    actions   = ["iam:DeleteRolePermissionsBoundary"]
    resources = ["*"]
  }

  # Rule 3: a boundary is a ceiling, never a grant.
  statement {
    sid       = "DenyAttachingBoundaries"
    effect    = "Deny"
    actions   = ["iam:AttachRolePolicy"]
    resources = ["*"]

    condition {
      test     = "ArnEquals"
      variable = "iam:PolicyARN"
      values   = local.boundary_policy_arns
    }
  }
}

# ---- the permissions boundaries ---------------------------------------------------------------
# The most any role of this stack but role management may ever do: what the egress stack
# needs, split in two so that each role's ceiling is its kind's needs only:
#   service   the task roles (worker and agent task, task execution): the data plane of
#             the service at run time; nothing of its infrastructure;
#   pipeline  the plan and deploy roles: the egress stack's infrastructure and the state;
#             no table items, no source or destination data.
# Each role's own policies grant a part of its boundary; a boundary only caps, so a
# role-management pipeline gone wrong still cannot hand a role IAM changes, other
# resources or other data. Neither allows IAM writes, beyond passing the task roles to ECS
# and the service-linked roles ECS, EFS and AWS Backup need.
# Named actions for S3, KMS, DynamoDB and SQS (the data), service prefixes for the control
# plane, always on this project's resources. A managed policy is capped at 6,144
# characters: keep them compact.

data "aws_iam_policy_document" "service_boundary" {
  statement {
    sid    = "Queues"
    effect = "Allow"
    actions = [
      "sqs:ChangeMessageVisibility",
      "sqs:DeleteMessage",
      "sqs:GetQueueAttributes",
      "sqs:GetQueueUrl",
      "sqs:ReceiveMessage",
      "sqs:SendMessage",
    ]
    resources = local.queue_arns
  }

  statement {
    sid    = "TableItems"
    effect = "Allow"
    actions = [
      "dynamodb:BatchWriteItem",
      "dynamodb:DescribeTable",
      "dynamodb:GetItem",
      "dynamodb:PartiQLSelect",
      "dynamodb:PutItem",
      "dynamodb:Query",
      "dynamodb:UpdateItem",
    ]
    resources = concat(local.table_arns, [local.ledger_index_arn_glob])
  }

  # Completion events (the worker task role publishes; egress stack, events.tf).
  statement {
    sid       = "EventsTopic"
    effect    = "Allow"
    actions   = ["sns:Publish"]
    resources = [local.events_topic_arn]
  }

  # The service key, through the services it encrypts (key policy: kms.tf of the egress stack).
  statement {
    sid       = "ServiceKey"
    effect    = "Allow"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [local.kms_key_arn_pattern]

    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/Project"
      values   = [var.name]
    }
  }

  # Producers' and destinations' keys and the secrets' keys, by ARN.
  dynamic "statement" {
    for_each = length(local.service_kms_key_arns) > 0 ? [1] : []

    content {
      sid       = "NamedKeys"
      effect    = "Allow"
      actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
      resources = local.service_kms_key_arns
    }
  }

  # Objects by bucket: the roles' own policies narrow them to the routed prefixes, and the
  # boundary keeps its size however many prefixes the routes name.
  statement {
    sid       = "SourceData"
    effect    = "Allow"
    actions   = ["s3:GetObject", "s3:GetObjectTagging", "s3:GetObjectVersion", "s3:ListBucket"]
    resources = concat(local.source_bucket_arns, [for arn in local.source_bucket_arns : "${arn}/*"])
  }

  dynamic "statement" {
    for_each = length(local.destination_bkt_arns) > 0 ? [1] : []

    content {
      sid    = "SameAccountDestinations"
      effect = "Allow"
      actions = [
        "s3:AbortMultipartUpload",
        "s3:ListBucketMultipartUploads",
        "s3:ListMultipartUploadParts",
        "s3:PutObject",
        "s3:PutObjectAcl",
        "s3:PutObjectTagging",
      ]
      resources = concat(local.destination_bkt_arns, [for arn in local.destination_bkt_arns : "${arn}/*"])
    }
  }

  dynamic "statement" {
    for_each = length(var.destination_role_arns) > 0 ? [1] : []

    content {
      sid       = "DestinationRoles"
      effect    = "Allow"
      actions   = ["sts:AssumeRole"]
      resources = var.destination_role_arns
    }
  }

  dynamic "statement" {
    for_each = length(var.rewrap_key_parameter_arns) > 0 ? [1] : []

    content {
      sid       = "RewrapKeyParameters"
      effect    = "Allow"
      actions   = ["ssm:GetParameter"]
      resources = var.rewrap_key_parameter_arns
    }
  }

  dynamic "statement" {
    for_each = length(var.sft_secret_arns) > 0 ? [1] : []

    content {
      sid       = "SftAgentSecrets"
      effect    = "Allow"
      actions   = ["secretsmanager:GetSecretValue"]
      resources = var.sft_secret_arns
    }
  }

  # The shared volume, as an NFS client (file system policy: efs.tf of the egress stack).
  statement {
    sid       = "SharedVolume"
    effect    = "Allow"
    actions   = ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]
    resources = [local.efs_arn_globs[0]]
  }

  # Task execution: image pulls and log streams.
  statement {
    sid       = "PullImages"
    effect    = "Allow"
    actions   = ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]
    resources = local.ecr_repository_arns
  }

  statement {
    sid       = "EcrAuthorizationToken"
    effect    = "Allow"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }

  statement {
    sid       = "WriteLogStreams"
    effect    = "Allow"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${local.log_group_arn_prefix}/*:log-stream:*"]
  }
}

data "aws_iam_policy_document" "pipeline_boundary" {
  statement {
    sid    = "Queues"
    effect = "Allow"
    actions = [
      "sqs:CreateQueue",
      "sqs:DeleteQueue",
      "sqs:GetQueueAttributes",
      "sqs:GetQueueUrl",
      "sqs:ListDeadLetterSourceQueues",
      "sqs:ListQueueTags",
      "sqs:SetQueueAttributes",
      "sqs:TagQueue",
      "sqs:UntagQueue",
    ]
    resources = local.queue_arns
  }

  # Schema, backups and TTL; never items (routes are the operators', through the CLI).
  statement {
    sid    = "Tables"
    effect = "Allow"
    actions = [
      "dynamodb:CreateTable",
      "dynamodb:DeleteTable",
      "dynamodb:DescribeContinuousBackups",
      "dynamodb:DescribeContributorInsights",
      "dynamodb:DescribeKinesisStreamingDestination",
      "dynamodb:DescribeTable",
      "dynamodb:DescribeTimeToLive",
      "dynamodb:GetResourcePolicy",
      "dynamodb:ListTagsOfResource",
      "dynamodb:TagResource",
      "dynamodb:UntagResource",
      "dynamodb:UpdateContinuousBackups",
      "dynamodb:UpdateTable",
      "dynamodb:UpdateTimeToLive",
    ]
    resources = concat(local.table_arns, [local.ledger_index_arn_glob])
  }

  statement {
    sid    = "ServiceKey"
    effect = "Allow"
    actions = [
      "kms:CreateGrant",
      "kms:Decrypt",
      "kms:DescribeKey",
      "kms:EnableKeyRotation",
      "kms:GenerateDataKeyWithoutPlaintext",
      "kms:GetKeyPolicy",
      "kms:GetKeyRotationStatus",
      "kms:ListResourceTags",
      "kms:PutKeyPolicy",
      "kms:RetireGrant",
      "kms:ScheduleKeyDeletion",
      "kms:TagResource",
      "kms:UntagResource",
      "kms:UpdateKeyDescription",
    ]
    resources = [local.kms_key_arn_pattern]

    condition {
      test     = "StringEquals"
      variable = "aws:ResourceTag/Project"
      values   = [var.name]
    }
  }

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
    sid       = "SourceBucketNotifications"
    effect    = "Allow"
    actions   = ["s3:GetBucketNotification", "s3:PutBucketNotification"]
    resources = local.source_bucket_arns
  }

  statement {
    sid       = "State"
    effect    = "Allow"
    actions   = ["s3:DeleteObject", "s3:GetObject", "s3:ListBucket", "s3:PutObject"]
    resources = [local.state_bucket_arn, local.state_objects_arn]
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

  # The control plane of the egress stack, on its own resources: cluster, service and
  # task definitions, image repositories, log groups, alarms, dashboard and alarm topic
  # (by name), and the shared volume (random ids: this account and region).
  statement {
    sid       = "ControlPlane"
    effect    = "Allow"
    actions   = ["ecs:*", "ecr:*", "logs:*", "cloudwatch:*", "sns:*", "elasticfilesystem:*"]
    resources = local.control_plane_arn_globs
  }

  # Network: security groups, and the interfaces of the EFS mount targets.
  statement {
    sid       = "Network"
    effect    = "Allow"
    actions   = ["ec2:*SecurityGroup*", "ec2:*NetworkInterface*", "ec2:CreateTags", "ec2:DeleteTags"]
    resources = local.network_arn_globs
  }

  # Actions AWS authorises on no resource type, in the service's region only.
  statement {
    sid    = "WithoutResourceType"
    effect = "Allow"
    actions = [
      "application-autoscaling:*",
      "ec2:Describe*",
      "ecr:GetAuthorizationToken",
      "ecs:CreateCluster",
      "ecs:DeregisterTaskDefinition",
      "ecs:DescribeTaskDefinition",
      "ecs:RegisterTaskDefinition",
      "elasticfilesystem:Describe*",
      "elasticfilesystem:ListTagsForResource",
      "logs:DescribeLogGroups",
    ]
    resources = ["*"]

    condition {
      test     = "StringEquals"
      variable = "aws:RequestedRegion"
      values   = [local.region]
    }
  }

  # IAM: read this project's roles, policies and OIDC provider; pass the task roles to
  # ECS; create the service-linked roles. Nothing else.
  statement {
    sid       = "ReadOwnIam"
    effect    = "Allow"
    actions   = ["iam:Get*", "iam:List*"]
    resources = [local.role_arn_glob, local.policy_arn_glob, local.oidc_provider_arn]
  }

  statement {
    sid       = "ListOidcProviders"
    effect    = "Allow"
    actions   = ["iam:ListOpenIDConnectProviders"]
    resources = ["*"]
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
      values   = local.service_linked_role_services
    }
  }
}
