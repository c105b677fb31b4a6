# The pipelines' roles:
#   plan             read-only; pull requests plan both stacks with it
#   deploy           applies the egress stack and pushes the images (GitHub environments
#                    dev / prod)
#   role-management  applies this stack (GitHub environments dev-roles / prod-roles)
# None of them holds a stored key: GitHub's OIDC token is exchanged for each job, and
# each role trusts only its own subject (github_oidc.tf).
# plan and deploy carry the pipeline permissions boundary (pipeline_policies.tf); role
# management cannot carry one (it manages IAM) and instead cannot edit itself.

resource "aws_iam_role" "plan" {
  name                 = local.role_names.plan
  description          = "Plans the ${var.name} stacks on pull requests (read-only)."
  assume_role_policy   = data.aws_iam_policy_document.trust_plan.json
  max_session_duration = var.max_session_duration_seconds
  permissions_boundary = aws_iam_policy.pipeline_boundary.arn
}

resource "aws_iam_role" "deploy" {
  name                 = local.role_names.deploy
  description          = "Applies the ${var.name} egress stack and pushes its images (infra and images pipelines)."
  assume_role_policy   = data.aws_iam_policy_document.trust_deploy.json
  max_session_duration = var.max_session_duration_seconds
  permissions_boundary = aws_iam_policy.pipeline_boundary.arn
}

# Created (and changed) by an administrator only: it denies itself any edit of itself.
resource "aws_iam_role" "role_management" {
  name                 = local.role_names.role_management
  description          = "Applies the ${var.name} roles stack (role-management pipeline)."
  assume_role_policy   = data.aws_iam_policy_document.trust_role_management.json
  max_session_duration = var.max_session_duration_seconds
}

# ---- managed policies --------------------------------------------------------------------

resource "aws_iam_policy" "read" {
  name        = "${var.name}-pipeline-read"
  description = "Read what the ${var.name} stacks manage (refresh and plan)."
  policy      = data.aws_iam_policy_document.read.json
}

resource "aws_iam_policy" "state_lock" {
  name        = "${var.name}-pipeline-state-lock"
  description = "Read the ${var.name} Terraform state and hold its lock (plans)."
  policy      = data.aws_iam_policy_document.state_lock.json
}

resource "aws_iam_policy" "state_write" {
  name        = "${var.name}-pipeline-state-write"
  description = "Write the ${var.name} Terraform state (applies)."
  policy      = data.aws_iam_policy_document.state_write.json
}

resource "aws_iam_policy" "deploy_data" {
  name        = "${var.name}-deploy-data"
  description = "Manage the ${var.name} queue, tables, KMS key and source bucket notifications."
  policy      = data.aws_iam_policy_document.deploy_data.json
}

resource "aws_iam_policy" "deploy_compute" {
  name        = "${var.name}-deploy-compute"
  description = "Manage the ${var.name} ECS service, images, scaling, logs, alarms and dashboard."
  policy      = data.aws_iam_policy_document.deploy_compute.json
}

resource "aws_iam_policy" "role_management" {
  name        = "${var.name}-role-management"
  description = "Manage the ${var.name} roles (within the permissions boundary), policies and the GitHub OIDC provider; read and write the state."
  policy      = data.aws_iam_policy_document.role_management.json
}

# Attached to nothing: the permissions boundaries of every role but role management
# (service: the task roles; pipeline: plan and deploy). Their ARNs follow from their
# names (local.boundary_policy_arns), which the role-management policy's conditions name.
resource "aws_iam_policy" "service_boundary" {
  name        = local.boundary_policy_names.service
  description = "Permissions boundary of the ${var.name} task roles: the most they may ever do."
  policy      = data.aws_iam_policy_document.service_boundary.json
}

resource "aws_iam_policy" "pipeline_boundary" {
  name        = local.boundary_policy_names.pipeline
  description = "Permissions boundary of the ${var.name} plan and deploy roles: the most they may ever do."
  policy      = data.aws_iam_policy_document.pipeline_boundary.json
}

locals {
  pipeline_policy_attachments = {
    "plan-read"      = { role = aws_iam_role.plan.name, policy = aws_iam_policy.read.arn }
    "plan-state"     = { role = aws_iam_role.plan.name, policy = aws_iam_policy.state_lock.arn }
    "deploy-read"    = { role = aws_iam_role.deploy.name, policy = aws_iam_policy.read.arn }
    "deploy-state"   = { role = aws_iam_role.deploy.name, policy = aws_iam_policy.state_write.arn }
    "deploy-data"    = { role = aws_iam_role.deploy.name, policy = aws_iam_policy.deploy_data.arn }
    "deploy-compute" = { role = aws_iam_role.deploy.name, policy = aws_iam_policy.deploy_compute.arn }
    # One policy only (IAM reads and the state included), which it cannot edit.
    "role-management-iam" = { role = aws_iam_role.role_management.name, policy = aws_iam_policy.role_management.arn }
  }
}

resource "aws_iam_role_policy_attachment" "pipeline" {
  for_each = local.pipeline_policy_attachments

  role       = each.value.role
  policy_arn = each.value.policy
}
