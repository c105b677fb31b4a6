# The egress stack in the prod account (an example to adapt: VPC, buckets, keys, secrets).
# Applied by .github/workflows/infra.yml on pushes to main (GitHub environment "prod",
# with required reviewers), with the deploy role of the roles stack; the image tag is the
# commit SHA the images pipeline pushed:
#
#   terraform init -backend-config=backend.s3.tfbackend -backend-config="bucket=<state bucket>"
#   TF_VAR_image_tag=<sha> terraform plan

terraform {
  required_version = ">= 1.11.0, < 2.0.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.80.0, < 6.0.0"
    }
  }

  backend "s3" {}
}

provider "aws" {
  region = var.region

  default_tags {
    tags = {
      Project     = "data-egress"
      Environment = "prod"
      Stack       = "egress"
      ManagedBy   = "terraform"
    }
  }
}

variable "region" {
  description = "AWS region of the prod deployment."
  type        = string
  default     = "eu-west-2"
}

variable "image_tag" {
  description = "Tag of both images (the commit SHA pushed by the images pipeline)."
  type        = string
}

module "egress" {
  source = "../.."

  name       = "data-egress"
  vpc_id     = "vpc-0f1e2d3c4b5a60001"
  subnet_ids = ["subnet-0f1e2d3c4b5a60011", "subnet-0f1e2d3c4b5a60012"]

  source_buckets = [
    { bucket = "example-prod-pipeline-output", prefixes = ["exports/"] },
  ]
  flag_name         = "pipeline_success.flag"
  max_receive_count = 5

  image_tag            = var.image_tag
  decrypt_kms_key_arns = ["arn:aws:kms:eu-west-2:333333333333:key/00000000-0000-0000-0000-000000000003"]

  sft_agent_config_yaml = file("${path.module}/sft-agent.yaml")
  sft_agent_secret_arns = {
    client_cert = "arn:aws:secretsmanager:eu-west-2:333333333333:secret:data-egress/sft/client-cert-AbCdEf"
    client_key  = "arn:aws:secretsmanager:eu-west-2:333333333333:secret:data-egress/sft/client-key-AbCdEf"
    ca_bundle   = "arn:aws:secretsmanager:eu-west-2:333333333333:secret:data-egress/sft/ca-bundle-AbCdEf"
  }
  receiver_endpoints = [
    { description = "warehouse receiver", port = 8091, cidr_blocks = ["10.40.0.0/24"] },
  ]

  # Prod: two tasks at least (one per AZ). SFT files wait on the shared EFS volume; the
  # ephemeral storage holds the containers' /tmp only.
  task_cpu                = 2048
  task_memory             = 4096
  ephemeral_storage_gib   = 100
  min_capacity            = 2
  desired_count           = 2
  max_capacity            = 20
  backlog_per_task_target = 8

  alarm_email_addresses = ["data-egress-alerts@example.com"]
}

output "queue_url" {
  description = "The flag queue."
  value       = module.egress.queue_url
}

output "events_topic_arn" {
  description = "Completion events topic (docs/events.md): subscribe receiving teams' queues to it."
  value       = module.egress.events_topic_arn
}

output "task_definition_arn" {
  description = "Task definition this apply deployed."
  value       = module.egress.task_definition_arn
}

output "cluster_name" {
  description = "ECS cluster."
  value       = module.egress.cluster_name
}

output "service_name" {
  description = "ECS service."
  value       = module.egress.service_name
}
