# GitHub's OIDC provider: workflows exchange their job's token for short-lived role
# credentials, so no access key is stored anywhere.

resource "aws_iam_openid_connect_provider" "github" {
  count = var.create_github_oidc_provider ? 1 : 0

  url             = "https://${local.github_oidc_host}"
  client_id_list  = ["sts.amazonaws.com"]
  thumbprint_list = var.github_oidc_thumbprints
}

data "aws_iam_openid_connect_provider" "github" {
  count = var.create_github_oidc_provider ? 0 : 1

  url = "https://${local.github_oidc_host}"
}

# Each pipeline role is reachable only from its own GitHub OIDC subject (the token's sub
# claim, exact match, and aud = sts.amazonaws.com):
#   plan             repo:<owner>/<name>:pull_request            (pull request jobs)
#   deploy           repo:<owner>/<name>:environment:<env>       (apply jobs of infra.yml, images.yml)
#   role-management  repo:<owner>/<name>:environment:<env>-roles (apply job of roles.yml)
# GitHub puts the environment in the subject of every job that declares one, so the apply
# roles need an approved deployment to a GitHub environment (required reviewers, and
# deployment branches limited to the apply branch: see terraform/README.md). A pull
# request's subject is never an environment one (its jobs cannot pass the environments'
# branch rules), so a pull request cannot reach deploy or role management.
#
# Optional hop from a central (tooling) account: each role trusts only its own central
# role(s), var.trusted_central_roles.<role>, and only when the hop names the role's purpose
# in sts:ExternalId (<owner>/<name>:<role>) and comes from exactly those role ARNs
# (aws:PrincipalArn, which still holds if someone widens the principal to the account).
# The external id is not a secret: it binds a hop to one repository and one purpose, so a
# central role shared by other pipelines cannot hop here by accident. No sts:TagSession:
# the workflows skip session tags (caller-chosen metadata that nothing here relies on, and
# with an external id condition the action's tagged hop would be refused). Whether the right
# GitHub job assumed the central role is decided by that role's own OIDC trust in the
# central account, which must condition on the same subjects as these.

data "aws_iam_policy_document" "trust_plan" {
  statement {
    sid     = "GitHubPullRequests"
    effect  = "Allow"
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = [local.oidc_provider_arn]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.github_oidc_host}:aud"
      values   = ["sts.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.github_oidc_host}:sub"
      values   = local.github_plan_subjects
    }
  }

  dynamic "statement" {
    for_each = length(var.trusted_central_roles.plan) > 0 ? [1] : []

    content {
      sid     = "CentralAccountHop"
      effect  = "Allow"
      actions = ["sts:AssumeRole"]

      principals {
        type        = "AWS"
        identifiers = var.trusted_central_roles.plan
      }

      condition {
        test     = "ArnEquals"
        variable = "aws:PrincipalArn"
        values   = var.trusted_central_roles.plan
      }

      condition {
        test     = "StringEquals"
        variable = "sts:ExternalId"
        values   = [local.central_hop_external_ids.plan]
      }
    }
  }
}

data "aws_iam_policy_document" "trust_deploy" {
  statement {
    sid     = "GitHubDeployEnvironments"
    effect  = "Allow"
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = [local.oidc_provider_arn]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.github_oidc_host}:aud"
      values   = ["sts.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.github_oidc_host}:sub"
      values   = local.github_deploy_subjects
    }
  }

  dynamic "statement" {
    for_each = length(var.trusted_central_roles.deploy) > 0 ? [1] : []

    content {
      sid     = "CentralAccountHop"
      effect  = "Allow"
      actions = ["sts:AssumeRole"]

      principals {
        type        = "AWS"
        identifiers = var.trusted_central_roles.deploy
      }

      condition {
        test     = "ArnEquals"
        variable = "aws:PrincipalArn"
        values   = var.trusted_central_roles.deploy
      }

      condition {
        test     = "StringEquals"
        variable = "sts:ExternalId"
        values   = [local.central_hop_external_ids.deploy]
      }
    }
  }
}

data "aws_iam_policy_document" "trust_role_management" {
  statement {
    sid     = "GitHubRoleManagementEnvironments"
    effect  = "Allow"
    actions = ["sts:AssumeRoleWithWebIdentity"]

    principals {
      type        = "Federated"
      identifiers = [local.oidc_provider_arn]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.github_oidc_host}:aud"
      values   = ["sts.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "${local.github_oidc_host}:sub"
      values   = local.github_role_management_subjects
    }
  }

  dynamic "statement" {
    for_each = length(var.trusted_central_roles.role_management) > 0 ? [1] : []

    content {
      sid     = "CentralAccountHop"
      effect  = "Allow"
      actions = ["sts:AssumeRole"]

      principals {
        type        = "AWS"
        identifiers = var.trusted_central_roles.role_management
      }

      condition {
        test     = "ArnEquals"
        variable = "aws:PrincipalArn"
        values   = var.trusted_central_roles.role_management
      }

      condition {
        test     = "StringEquals"
        variable = "sts:ExternalId"
        values   = [local.central_hop_external_ids.role_management]
      }
    }
  }
}
