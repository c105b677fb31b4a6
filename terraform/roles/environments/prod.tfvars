# Roles stack, prod account. Applied by .github/workflows/roles.yml on pushes to main
# (GitHub environment "prod-roles", with required reviewers).
region            = "eu-west-2"
github_repository = "example-org/data-egress"
state_bucket      = "example-prod-terraform-state"

# GitHub environments whose jobs may assume the deploy and role-management roles.
github_deploy_environments          = ["prod"]
github_role_management_environments = ["prod-roles"]

# Optional role hop: the pipeline assumes a role of the central (tooling) account with
# OIDC, then this account's role; one central role per pipeline role (a pull request's
# central role must reach the plan role only). Leave empty to trust GitHub's OIDC
# provider directly.
trusted_central_roles = {
  plan            = []
  deploy          = []
  role_management = []
}

source_locations = [
  { bucket = "example-prod-pipeline-output", prefix = "exports/opsmi/" },
  { bucket = "example-prod-pipeline-output", prefix = "exports/warehouse/" },
]
source_kms_key_arns      = ["arn:aws:kms:eu-west-2:333333333333:key/00000000-0000-0000-0000-000000000003"]
destination_role_arns    = ["arn:aws:iam::444444444444:role/data-egress-writer"]
destination_locations    = []
destination_kms_key_arns = []
sft_secret_arns = [
  "arn:aws:secretsmanager:eu-west-2:333333333333:secret:data-egress/sft/client-cert-AbCdEf",
  "arn:aws:secretsmanager:eu-west-2:333333333333:secret:data-egress/sft/client-key-AbCdEf",
  "arn:aws:secretsmanager:eu-west-2:333333333333:secret:data-egress/sft/ca-bundle-AbCdEf",
]
