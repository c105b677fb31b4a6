data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition
  region     = var.region

  # Names shared with the egress stack (terraform/egress uses the same defaults).
  role_names = {
    worker          = "${var.name}-worker-task"
    agent           = "${var.name}-agent-task"
    execution       = "${var.name}-task-execution"
    deploy          = "${var.name}-deploy"
    plan            = "${var.name}-plan"
    role_management = "${var.name}-role-management"
  }

  queue_name        = var.name
  dlq_name          = "${var.name}-dlq"
  routes_table_name = var.name
  ledger_table_name = "${var.name}-ledger"
  log_group_prefix  = "/ecs/${var.name}"
  ecr_repositories  = ["${var.name}/egress", "${var.name}/sft-agent"]

  queue_arn        = "arn:${local.partition}:sqs:${local.region}:${local.account_id}:${local.queue_name}"
  dlq_arn          = "arn:${local.partition}:sqs:${local.region}:${local.account_id}:${local.dlq_name}"
  routes_table_arn = "arn:${local.partition}:dynamodb:${local.region}:${local.account_id}:table/${local.routes_table_name}"
  ledger_table_arn = "arn:${local.partition}:dynamodb:${local.region}:${local.account_id}:table/${local.ledger_table_name}"
  # The completion events topic (egress stack, events.tf).
  events_topic_arn = "arn:${local.partition}:sns:${local.region}:${local.account_id}:${var.name}-events"
  # The ledger's global secondary indexes (by_sft_path, unsent).
  ledger_index_arn_glob = "${local.ledger_table_arn}/index/*"
  ecr_repository_arns = [
    for r in local.ecr_repositories : "arn:${local.partition}:ecr:${local.region}:${local.account_id}:repository/${r}"
  ]
  log_group_arn_prefix = "arn:${local.partition}:logs:${local.region}:${local.account_id}:log-group:${local.log_group_prefix}"
  # Every key this project creates is tagged Project = var.name; KMS key ARNs are random,
  # so management rights on the service key are scoped by that tag.
  kms_key_arn_pattern = "arn:${local.partition}:kms:${local.region}:${local.account_id}:key/*"

  source_buckets       = distinct([for l in var.source_locations : l.bucket])
  source_bucket_arns   = [for b in local.source_buckets : "arn:${local.partition}:s3:::${b}"]
  source_object_arns   = [for l in var.source_locations : "arn:${local.partition}:s3:::${l.bucket}/${l.prefix}*"]
  destination_buckets  = distinct([for l in var.destination_locations : l.bucket])
  destination_obj_arns = [for l in var.destination_locations : "arn:${local.partition}:s3:::${l.bucket}/${l.prefix}*"]
  destination_bkt_arns = [for b in local.destination_buckets : "arn:${local.partition}:s3:::${b}"]
  state_bucket_arn     = "arn:${local.partition}:s3:::${var.state_bucket}"
  state_objects_arn    = "arn:${local.partition}:s3:::${var.state_bucket}/${var.state_key_prefix}/*"
  oidc_provider_arn    = var.create_github_oidc_provider ? aws_iam_openid_connect_provider.github[0].arn : data.aws_iam_openid_connect_provider.github[0].arn
  github_oidc_host     = "token.actions.githubusercontent.com"

  # OIDC subjects of each pipeline role (github_oidc.tf).
  github_plan_subjects            = ["repo:${var.github_repository}:pull_request"]
  github_deploy_subjects          = [for e in var.github_deploy_environments : "repo:${var.github_repository}:environment:${e}"]
  github_role_management_subjects = [for e in var.github_role_management_environments : "repo:${var.github_repository}:environment:${e}"]
  # sts:ExternalId a central-account hop must present, per role (the workflows pass it).
  central_hop_external_ids = {
    plan            = "${var.github_repository}:plan"
    deploy          = "${var.github_repository}:deploy"
    role_management = "${var.github_repository}:role-management"
  }
}
