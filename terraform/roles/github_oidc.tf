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

# Trust of the roles that apply (deploy, role management): pushes to the apply branches
# of this repository only, plus the optional hop from a central account's role.
data "aws_iam_policy_document" "trust_apply" {
  statement {
    sid     = "GitHubApplyBranches"
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
      values   = local.github_apply_subjects
    }
  }

  dynamic "statement" {
    for_each = length(var.trusted_central_role_arns) > 0 ? [1] : []

    content {
      sid     = "CentralAccountHop"
      effect  = "Allow"
      actions = ["sts:AssumeRole", "sts:TagSession"]

      principals {
        type        = "AWS"
        identifiers = var.trusted_central_role_arns
      }
    }
  }
}

# Trust of the read-only plan role: pull requests of this repository only.
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
    for_each = length(var.trusted_central_role_arns) > 0 ? [1] : []

    content {
      sid     = "CentralAccountHop"
      effect  = "Allow"
      actions = ["sts:AssumeRole", "sts:TagSession"]

      principals {
        type        = "AWS"
        identifiers = var.trusted_central_role_arns
      }
    }
  }
}
