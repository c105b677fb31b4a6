# Roles stack, prod account. Applied by .github/workflows/roles.yml on pushes to main.
region                = "eu-west-2"
github_repository     = "example-org/data-egress"
github_apply_branches = ["main"]
state_bucket          = "example-prod-terraform-state"

# Optional role hop: the pipeline assumes a role of the central (tooling) account with
# OIDC, then this account's role. Leave empty to trust GitHub's OIDC provider directly.
trusted_central_role_arns = []

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
