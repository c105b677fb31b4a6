# The roles stack: IAM for the egress service and for the pipelines that deploy it.
# Applied by the role-management pipeline (.github/workflows/roles.yml); the very first
# apply in an account is done once by an administrator (see terraform/README.md).

terraform {
  required_version = ">= 1.11.0, < 2.0.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.80.0, < 6.0.0"
    }
  }

  # Partial configuration: bucket, key and region come from
  # environments/<env>.s3.tfbackend and -backend-config in the pipeline.
  backend "s3" {}
}

provider "aws" {
  region = var.region

  default_tags {
    tags = merge(var.tags, {
      Project   = var.name
      Stack     = "roles"
      ManagedBy = "terraform"
    })
  }
}
