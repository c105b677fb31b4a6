# The egress stack as a module: queue + DLQ, the S3 notification, the routes and ledger
# tables, a KMS key, the ECS cluster/task/service with both containers, autoscaling on
# the queue backlog, log groups, alarms and a dashboard. Root modules that call it live
# in environments/<env>/ and are applied by .github/workflows/infra.yml with the deploy
# role of the roles stack (terraform/roles), which must be applied first.

terraform {
  required_version = ">= 1.11.0, < 2.0.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.80.0, < 6.0.0"
    }
  }
}
