# The egress stack in the dev account (an example to adapt: VPC, buckets, keys, secrets).
# Applied by .github/workflows/infra.yml on pushes to develop (GitHub environment "dev"),
# with the deploy role of the roles stack; the image tag is the commit SHA the images
# pipeline pushed:
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
      Environment = "dev"
      Stack       = "egress"
      ManagedBy   = "terraform"
    }
  }
}

variable "region" {
  description = "AWS region of the dev deployment."
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
  vpc_id     = "vpc-0a1b2c3d4e5f60001"
  subnet_ids = ["subnet-0a1b2c3d4e5f60011", "subnet-0a1b2c3d4e5f60012"]

  source_buckets = [
    { bucket = "example-dev-pipeline-output", prefixes = ["exports/"] },
  ]
  flag_name         = "pipeline_success.flag"
  max_receive_count = 5

  image_tag            = var.image_tag
  decrypt_kms_key_arns = ["arn:aws:kms:eu-west-2:111111111111:key/00000000-0000-0000-0000-000000000001"]

  sft_agent_config_yaml = file("${path.module}/sft-agent.yaml")
  sft_agent_secret_arns = {
    client_cert = "arn:aws:secretsmanager:eu-west-2:111111111111:secret:data-egress/sft/client-cert-AbCdEf"
    client_key  = "arn:aws:secretsmanager:eu-west-2:111111111111:secret:data-egress/sft/client-key-AbCdEf"
    ca_bundle   = "arn:aws:secretsmanager:eu-west-2:111111111111:secret:data-egress/sft/ca-bundle-AbCdEf"
  }
  receiver_endpoints = [
    { description = "warehouse receiver", port = 8091, cidr_blocks = ["10.20.0.0/24"] },
  ]

  # Dev is small.
  task_cpu              = 512
  task_memory           = 1024
  ephemeral_storage_gib = 21
  min_capacity          = 1
  max_capacity          = 2

  alarm_email_addresses = ["data-egress-dev-alerts@example.com"]
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
