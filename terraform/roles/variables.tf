variable "name" {
  description = "Prefix of every name this stack and the egress stack create (roles, queue, tables, log groups)."
  type        = string
  default     = "data-egress"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{2,30}$", var.name))
    error_message = "name: 3-31 lower-case letters, digits and dashes, starting with a letter."
  }
}

variable "region" {
  description = "AWS region of the service (the queue, tables, cluster)."
  type        = string
}

variable "tags" {
  description = "Extra tags on every resource."
  type        = map(string)
  default     = {}
}

# ---- GitHub OIDC ----------------------------------------------------------------------

variable "github_repository" {
  description = "The repository whose workflows may assume the pipeline roles, as owner/name. No wildcards."
  type        = string

  validation {
    condition     = can(regex("^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$", var.github_repository))
    error_message = "github_repository must be owner/name, letters, digits, '.', '_' and '-' only (no wildcards)."
  }
}

variable "github_deploy_environments" {
  description = <<-EOT
    GitHub environments whose jobs may assume the deploy role (infra.yml's apply job and
    images.yml's publish job): "prod" in the prod account, "dev" in dev. Each must have
    deployment branches limited to the apply branch, and prod required reviewers.
  EOT
  type        = list(string)
  default     = ["prod"]

  validation {
    condition     = length(var.github_deploy_environments) > 0 && alltrue([for e in var.github_deploy_environments : can(regex("^[A-Za-z0-9._-]+$", e))])
    error_message = "github_deploy_environments: at least one environment name; letters, digits, '.', '_' and '-' only (no wildcards)."
  }
}

variable "github_role_management_environments" {
  description = <<-EOT
    GitHub environments whose jobs may assume the role-management role (roles.yml's apply
    job): "prod-roles" in the prod account, "dev-roles" in dev. Kept apart from the deploy
    environments so that approving a deployment never grants IAM changes.
  EOT
  type        = list(string)
  default     = ["prod-roles"]

  validation {
    condition     = length(var.github_role_management_environments) > 0 && alltrue([for e in var.github_role_management_environments : can(regex("^[A-Za-z0-9._-]+$", e))])
    error_message = "github_role_management_environments: at least one environment name; letters, digits, '.', '_' and '-' only (no wildcards)."
  }
}

variable "create_github_oidc_provider" {
  description = "Create the account's GitHub OIDC provider; false when another stack already owns it (it is one per account)."
  type        = bool
  default     = true
}

variable "github_oidc_thumbprints" {
  description = "Thumbprints of the OIDC provider's certificate chain. AWS no longer checks them for GitHub's issuer, but the API still requires one."
  type        = list(string)
  default     = ["6938fd4d98bab03faadb97b34396831e3780aea1", "1c58a3a8518e8759bf075b76b750d4f2df264fcd"]
}

variable "trusted_central_roles" {
  description = <<-EOT
    Optional role hop: roles in a central (tooling) account that may assume the pipeline
    roles here, one list per role, so that the central role a pull request uses can reach
    only the plan role. The pipeline assumes the central role with OIDC, then this
    account's role with sts:ExternalId "<owner>/<name>:<plan|deploy|role-management>".
    Each central role's own trust must condition on the same GitHub subjects as the role
    it hops to. Empty: the pipeline roles trust GitHub's OIDC provider in this account only.
  EOT
  type = object({
    plan            = optional(list(string), [])
    deploy          = optional(list(string), [])
    role_management = optional(list(string), [])
  })
  default = {}

  validation {
    condition = alltrue([
      for arn in concat(var.trusted_central_roles.plan, var.trusted_central_roles.deploy, var.trusted_central_roles.role_management) :
      can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]+$", arn))
    ])
    error_message = "trusted_central_roles: full role ARNs only, no wildcards."
  }

  validation {
    condition = length(setintersection(
      toset(var.trusted_central_roles.plan),
      toset(concat(var.trusted_central_roles.deploy, var.trusted_central_roles.role_management)),
    )) == 0
    error_message = "trusted_central_roles: a central role used for plans (pull requests) must not also hop to deploy or role management."
  }
}

variable "max_session_duration_seconds" {
  description = "Maximum session of the pipeline roles."
  type        = number
  default     = 3600
}

# ---- Terraform state (used by the pipeline roles) --------------------------------------

variable "state_bucket" {
  description = "S3 bucket holding this account's Terraform state (created outside these stacks, with versioning)."
  type        = string
}

variable "state_key_prefix" {
  description = "Key prefix of this service's state objects in state_bucket (the stacks use <prefix>/roles.tfstate and <prefix>/egress.tfstate)."
  type        = string
  default     = "data-egress"
}

variable "state_kms_key_arn" {
  description = "KMS key encrypting the state bucket, if it is a customer managed key; null for SSE-S3."
  type        = string
  default     = null
}

# ---- What the worker may touch -----------------------------------------------------------

variable "source_locations" {
  description = <<-EOT
    The routed prefixes the worker reads: one entry per bucket and prefix that routes name
    (the static part of a source_prefix, before any $TODAYS_… placeholder or '*').
    Reads are allowed under these prefixes only.
  EOT
  type = list(object({
    bucket = string
    prefix = string
  }))

  validation {
    condition = length(var.source_locations) > 0 && alltrue([
      for l in var.source_locations : can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", l.bucket)) && can(regex("^[^*?$]+/$", l.prefix))
    ])
    error_message = "source_locations: bucket names and non-empty prefixes ending in '/', with no '*', '?' or '$'."
  }
}

variable "source_kms_key_arns" {
  description = "KMS keys the worker may Decrypt with: keys wrapping the envelope data keys and the ESDK keys (EGRESS_KMS_KEY_ARNS), and SSE-KMS keys of the source buckets."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for arn in var.source_kms_key_arns : can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[0-9a-f-]+$", arn))])
    error_message = "source_kms_key_arns: full key ARNs (not aliases, not wildcards)."
  }
}

variable "destination_role_arns" {
  description = "Roles the worker may assume to write into other accounts (the routes' role_arn)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for arn in var.destination_role_arns : can(regex("^arn:aws[a-z-]*:iam::[0-9]{12}:role/[A-Za-z0-9+=,.@_/-]+$", arn))])
    error_message = "destination_role_arns: full role ARNs, no wildcards."
  }
}

variable "rewrap_key_parameter_arns" {
  description = <<-EOT
    SSM parameters the worker may read (ssm:GetParameter) for re-wrap routes that write
    with its own role: their encrypting_key_ssm_parm_name, the recipient's RSA public key.
    Full parameter ARNs, or a path ending in '/*' for every parameter below it. A route with
    role_arn reads its parameter as that role (the other account grants it). A SecureString
    parameter's KMS key goes into source_kms_key_arns.
  EOT
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for arn in var.rewrap_key_parameter_arns : can(regex("^arn:aws[a-z-]*:ssm:[a-z0-9-]+:[0-9]{12}:parameter/[A-Za-z0-9_.-]+(/[A-Za-z0-9_.-]+)*(/\\*)?$", arn))])
    error_message = "rewrap_key_parameter_arns: full SSM parameter ARNs, or a parameter path ending in '/*' (no other wildcard)."
  }
}

variable "destination_locations" {
  description = "Same-account destinations the worker writes with its own role (routes without role_arn): bucket and key prefix."
  type = list(object({
    bucket = string
    prefix = string
  }))
  default = []

  validation {
    condition = alltrue([
      for l in var.destination_locations : can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", l.bucket)) && can(regex("^[^*?$]*$", l.prefix))
    ])
    error_message = "destination_locations: bucket names and prefixes without '*', '?' or '$'."
  }
}

variable "destination_kms_key_arns" {
  description = "SSE-KMS keys of same-account destinations (the routes' destination_kms_key_id)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for arn in var.destination_kms_key_arns : can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[0-9a-f-]+$", arn))])
    error_message = "destination_kms_key_arns: full key ARNs, no wildcards."
  }
}

# ---- What the task execution role may read ---------------------------------------------

variable "sft_secret_arns" {
  description = "Secrets Manager secrets injected into the sft-agent container (client certificate, client key, CA bundle)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for arn in var.sft_secret_arns : can(regex("^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:[A-Za-z0-9/_+=.@-]+$", arn))])
    error_message = "sft_secret_arns: full secret ARNs, no wildcards."
  }
}

variable "secrets_kms_key_arns" {
  description = "Customer managed KMS keys encrypting those secrets (empty when they use the AWS managed key)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for arn in var.secrets_kms_key_arns : can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/[0-9a-f-]+$", arn))])
    error_message = "secrets_kms_key_arns: full key ARNs, no wildcards."
  }
}
