# The shared volume /data-egress on EFS. The worker writes SFT files there and the agent
# sends and deletes them; on the task's ephemeral storage those files died with the task
# (a deployment, a scale-in, a crash), on EFS they outlive it and every task sees them
# (docs/exactly-once.md: a dead agent's claimed files are put back by a live one).
#
# Encrypted at rest with the service key and in transit (TLS, enforced by the file system
# policy); reached only through one access point that pins the containers' user (10001)
# and the /data-egress directory, only by the task role, only from the tasks' security
# group. AWS Backup's automatic daily backups are on (35 days' retention, in the account's
# aws/efs/automatic-backup-vault).

resource "aws_efs_file_system" "data_egress" {
  creation_token   = "${var.name}-data-egress"
  encrypted        = true
  kms_key_id       = aws_kms_key.service.arn
  performance_mode = "generalPurpose"
  # Elastic: throughput follows the load (bursts of large SFT files, idle in between)
  # and is paid per use, with no burst credits to run out of.
  throughput_mode = "elastic"

  # No lifecycle policy to Infrequent Access: files stay only until the agent sent them
  # (minutes), so they would never age into IA, and IA reads are billed per access.

  tags = merge(local.tags, { Name = "${var.name}-data-egress" })
}

resource "aws_efs_backup_policy" "data_egress" {
  file_system_id = aws_efs_file_system.data_egress.id

  backup_policy {
    status = "ENABLED"
  }
}

# Every client is user 10001:10001 (the images' USER, see docker/*.Dockerfile) whatever it
# claims, and sees /data-egress of the file system as its root, created on first use
# with the same owner and mode as the images' own /data-egress.
resource "aws_efs_access_point" "data_egress" {
  file_system_id = aws_efs_file_system.data_egress.id

  posix_user {
    uid = local.container_uid
    gid = local.container_gid
  }

  root_directory {
    path = local.sft_root

    creation_info {
      owner_uid   = local.container_uid
      owner_gid   = local.container_gid
      permissions = "0750"
    }
  }

  tags = merge(local.tags, { Name = "${var.name}-data-egress" })
}

# One mount target per service subnet (EFS allows one per Availability Zone: the
# subnets must be in different zones, as subnet_ids says).
resource "aws_efs_mount_target" "data_egress" {
  for_each = toset(var.subnet_ids)

  file_system_id  = aws_efs_file_system.data_egress.id
  subnet_id       = each.value
  security_groups = [aws_security_group.efs.id]
}

# ---- network: NFS from the tasks' security group only ----------------------------------------

# name_prefix: a replacement is created before the old group goes (names are unique per VPC).
resource "aws_security_group" "efs" {
  name_prefix = "${var.name}-efs-"
  description = "${var.name} EFS mount targets: NFS from the service's tasks only"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = "${var.name}-efs" })

  lifecycle {
    create_before_destroy = true
  }
}

# The only ingress: NFS (2049) from the tasks' security group, no CIDR. No egress rules:
# security groups are stateful, so replies need none.
resource "aws_vpc_security_group_ingress_rule" "efs_from_tasks" {
  security_group_id            = aws_security_group.efs.id
  description                  = "NFS from the ${var.name} tasks"
  ip_protocol                  = "tcp"
  from_port                    = 2049
  to_port                      = 2049
  referenced_security_group_id = aws_security_group.tasks.id
  tags                         = local.tags
}

resource "aws_vpc_security_group_egress_rule" "tasks_to_efs" {
  security_group_id            = aws_security_group.tasks.id
  description                  = "NFS to the ${var.name} EFS mount targets"
  ip_protocol                  = "tcp"
  from_port                    = 2049
  to_port                      = 2049
  referenced_security_group_id = aws_security_group.efs.id
  tags                         = local.tags
}

# ---- file system policy ------------------------------------------------------------------------
# Once a file system policy exists, EFS authorises every NFS client with IAM (without one,
# any client that reaches a mount target may mount it). The task role is granted here,
# like its use of the service key in kms.tf: the roles stack is applied first and cannot
# name a file system or an access point that do not exist yet (their ids are random).
# Same account: an allow in the file system policy is enough, no identity policy needed.

data "aws_iam_policy_document" "efs" {
  statement {
    sid    = "TaskRoleMountsThroughTheAccessPoint"
    effect = "Allow"
    # Read and write; never ClientRootAccess (the access point squashes to 10001 anyway).
    actions   = ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]
    resources = [aws_efs_file_system.data_egress.arn]

    principals {
      type        = "AWS"
      identifiers = [data.aws_iam_role.worker.arn]
    }

    condition {
      test     = "StringEquals"
      variable = "elasticfilesystem:AccessPointArn"
      values   = [aws_efs_access_point.data_egress.arn]
    }

    condition {
      test     = "Bool"
      variable = "elasticfilesystem:AccessedViaMountTarget"
      values   = ["true"]
    }
  }

  statement {
    sid       = "DenyUnencryptedTransport"
    effect    = "Deny"
    actions   = ["*"]
    resources = [aws_efs_file_system.data_egress.arn]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_efs_file_system_policy" "data_egress" {
  file_system_id = aws_efs_file_system.data_egress.id
  policy         = data.aws_iam_policy_document.efs.json
}
