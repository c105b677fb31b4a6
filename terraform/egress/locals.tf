data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

data "aws_region" "current" {}

# The roles come from the roles stack (terraform/roles), applied first.
data "aws_iam_role" "worker" {
  name = local.worker_task_role_name
}

data "aws_iam_role" "execution" {
  name = local.task_execution_role_name
}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = data.aws_region.current.name

  # The deploy role may create KMS keys only with this tag (see terraform/roles).
  tags = merge(var.tags, { Project = var.name })

  worker_task_role_name    = coalesce(var.worker_task_role_name, "${var.name}-worker-task")
  task_execution_role_name = coalesce(var.task_execution_role_name, "${var.name}-task-execution")
  routes_table_name        = coalesce(var.routes_table_name, var.name)
  ledger_table_name        = coalesce(var.ledger_table_name, "${var.name}-ledger")
  queue_name               = var.name
  dlq_name                 = "${var.name}-dlq"
  log_group_prefix         = "/ecs/${var.name}"

  source_bucket_arns = [for b in var.source_buckets : "arn:${local.partition}:s3:::${b.bucket}"]
  notified_buckets   = { for b in var.source_buckets : b.bucket => b if b.manage_notification }

  egress_image    = coalesce(var.egress_image, "${aws_ecr_repository.images["egress"].repository_url}:${var.image_tag}")
  sft_agent_image = coalesce(var.sft_agent_image, "${aws_ecr_repository.images["sft-agent"].repository_url}:${var.image_tag}")

  sft_root           = "/data-egress"
  worker_metrics     = 9090
  agent_metrics      = 9091
  agent_runtime_dir  = "/run/sft-agent"
  agent_config_path  = "/run/sft-agent/config.yaml"
  agent_tls_dir      = "/run/sft-agent/tls"
  container_uid      = 10001 # the images' USER (docker/*.Dockerfile)
  container_gid      = 10001
  container_user     = "${local.container_uid}:${local.container_gid}"
  agent_error_metric = "AgentFilesMovedToErrorFolder"
  metric_namespace   = "DataEgress/${var.name}"
}
