# Roles stack, dev account. Applied by .github/workflows/roles.yml on pushes to develop
# (GitHub environment "dev-roles"):
#   terraform -chdir=terraform/roles init -backend-config=environments/dev.s3.tfbackend -backend-config="bucket=<state bucket>"
#   terraform -chdir=terraform/roles plan -var-file=environments/dev.tfvars
region            = "eu-west-2"
github_repository = "example-org/data-egress"
state_bucket      = "example-dev-terraform-state"

# GitHub environments whose jobs may assume the deploy and role-management roles.
github_deploy_environments          = ["dev"]
github_role_management_environments = ["dev-roles"]

source_locations = [
  { bucket = "example-dev-pipeline-output", prefix = "exports/opsmi/" },
  { bucket = "example-dev-pipeline-output", prefix = "exports/warehouse/" },
]
source_kms_key_arns      = ["arn:aws:kms:eu-west-2:111111111111:key/00000000-0000-0000-0000-000000000001"]
destination_role_arns    = ["arn:aws:iam::222222222222:role/data-egress-writer"]
destination_locations    = [{ bucket = "example-dev-egress-landing", prefix = "opsmi/" }]
destination_kms_key_arns = []
# SSM parameters holding re-wrap routes' recipient keys (encrypting_key_ssm_parm_name).
rewrap_key_parameter_arns = ["arn:aws:ssm:eu-west-2:111111111111:parameter/data-egress/rewrap/*"]
sft_secret_arns = [
  "arn:aws:secretsmanager:eu-west-2:111111111111:secret:data-egress/sft/client-cert-AbCdEf",
  "arn:aws:secretsmanager:eu-west-2:111111111111:secret:data-egress/sft/client-key-AbCdEf",
  "arn:aws:secretsmanager:eu-west-2:111111111111:secret:data-egress/sft/ca-bundle-AbCdEf",
]
