# ---- naming ----------------------------------------------------------------------------

variable "name" {
  description = "Prefix of every name (queue, tables, cluster, log groups); the roles stack must use the same."
  type        = string
  default     = "data-egress"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{2,30}$", var.name))
    error_message = "name: 3-31 lower-case letters, digits and dashes, starting with a letter."
  }
}

variable "routes_table_name" {
  description = "Routes table (EGRESS_ROUTES_TABLE). Null: the name itself (data-egress)."
  type        = string
  default     = null
}

variable "ledger_table_name" {
  description = "Ledger table (EGRESS_LEDGER_TABLE). Null: <name>-ledger (data-egress-ledger)."
  type        = string
  default     = null
}

variable "worker_task_role_name" {
  description = "Task role created by the roles stack. Null: <name>-worker-task."
  type        = string
  default     = null
}

variable "task_execution_role_name" {
  description = "Task execution role created by the roles stack. Null: <name>-task-execution."
  type        = string
  default     = null
}

# ---- network ---------------------------------------------------------------------------

variable "vpc_id" {
  description = "VPC of the service."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets of the tasks (with a NAT gateway or VPC endpoints for S3, SQS, DynamoDB, KMS, ECR, Logs, Secrets Manager, STS), one per Availability Zone: each also gets a mount target of the shared EFS volume."
  type        = list(string)

  validation {
    condition     = length(var.subnet_ids) > 0 && length(distinct(var.subnet_ids)) == length(var.subnet_ids)
    error_message = "subnet_ids: at least one subnet, each once."
  }
}

variable "https_egress_cidr_blocks" {
  description = "Where the tasks may open HTTPS (443) connections: AWS APIs and receivers on 443. Narrow it to the VPC endpoints' and receivers' ranges where you can."
  type        = list(string)
  default     = ["0.0.0.0/0"]
}

variable "receiver_endpoints" {
  description = "Receivers of the SFT agent listening on a port other than 443."
  type = list(object({
    description = string
    port        = number
    cidr_blocks = list(string)
  }))
  default = []
}

variable "metrics_scraper_security_group_ids" {
  description = "Security groups (e.g. Prometheus) allowed to scrape the worker (9090) and the agent (9091)."
  type        = list(string)
  default     = []
}

# ---- events ----------------------------------------------------------------------------

variable "flag_name" {
  description = "Name of the marker object that completes a pipeline run (EGRESS_FLAG_NAME); the S3 notification is filtered on it."
  type        = string
  default     = "pipeline_success.flag"

  validation {
    condition     = length(var.flag_name) > 0 && !strcontains(var.flag_name, "/")
    error_message = "flag_name: a non-empty object name without '/'."
  }
}

variable "source_buckets" {
  description = <<-EOT
    Buckets whose flag uploads are delivered. Terraform then owns each bucket's whole
    notification configuration (an S3 limitation): set manage_notification = false for a
    bucket whose notifications are managed elsewhere, and add the queue there.
    prefixes narrows the notification (non-overlapping prefixes; [""] for the whole bucket).
  EOT
  type = list(object({
    bucket              = string
    prefixes            = optional(list(string), [""])
    manage_notification = optional(bool, true)
  }))

  validation {
    condition     = length(var.source_buckets) > 0
    error_message = "source_buckets: at least one bucket."
  }
}

# ---- queue -------------------------------------------------------------------------------

variable "max_receive_count" {
  description = "Receives before a message the worker keeps failing on (transient failures) moves to the DLQ."
  type        = number
  default     = 5

  validation {
    condition     = var.max_receive_count >= 1 && var.max_receive_count <= 1000
    error_message = "max_receive_count: 1 to 1000."
  }
}

variable "visibility_timeout_seconds" {
  description = "Queue visibility timeout; the worker sets the same on receive and extends it by heartbeat (EGRESS_VISIBILITY_TIMEOUT_SECONDS)."
  type        = number
  default     = 120
}

variable "message_retention_seconds" {
  description = "How long the flag queue keeps a message."
  type        = number
  default     = 345600
}

variable "dlq_message_retention_seconds" {
  description = "How long the DLQ keeps a message (longer than the queue's: the enqueue time carries over)."
  type        = number
  default     = 1209600
}

# ---- images and task -------------------------------------------------------------------

variable "image_tag" {
  description = "Tag of both images in this stack's ECR repositories (the pipeline passes the commit SHA)."
  type        = string
}

variable "egress_image" {
  description = "Full image reference of the worker, overriding <repository>:<image_tag>."
  type        = string
  default     = null
}

variable "sft_agent_image" {
  description = "Full image reference of the agent, overriding <repository>:<image_tag>."
  type        = string
  default     = null
}

variable "task_cpu" {
  description = "Task CPU units (both containers)."
  type        = number
  default     = 1024
}

variable "task_memory" {
  description = "Task memory in MiB (both containers)."
  type        = number
  default     = 2048
}

variable "agent_memory_reservation" {
  description = "Memory (MiB) reserved for the sft-agent container inside the task."
  type        = number
  default     = 256
}

variable "ephemeral_storage_gib" {
  description = "Task ephemeral storage (GiB, 21-200): the containers' /tmp and the agent's runtime folder. The shared /data-egress volume is on EFS (efs.tf), not here."
  type        = number
  default     = 50

  validation {
    condition     = var.ephemeral_storage_gib >= 21 && var.ephemeral_storage_gib <= 200
    error_message = "ephemeral_storage_gib: 21 to 200 (Fargate)."
  }
}

variable "cpu_architecture" {
  description = "X86_64 or ARM64: must match the images' platform."
  type        = string
  default     = "X86_64"
}

variable "shutdown_grace_seconds" {
  description = "Time in-flight work gets after SIGTERM (EGRESS_SHUTDOWN_GRACE_SECONDS)."
  type        = number
  default     = 25
}

variable "stop_timeout_seconds" {
  description = "ECS stopTimeout of both containers: how long ECS waits after SIGTERM before SIGKILL. Must exceed the grace period, leaving the worker time to release unfinished work (visibility 0, uploads aborted, temp files removed)."
  type        = number
  default     = 40

  validation {
    condition     = var.stop_timeout_seconds > var.shutdown_grace_seconds && var.stop_timeout_seconds <= 120
    error_message = "stop_timeout_seconds must exceed shutdown_grace_seconds (the worker needs time to release unfinished work after its grace period) and be at most 120 (Fargate)."
  }
}

variable "worker_environment" {
  description = "Extra EGRESS_* settings of the worker (e.g. EGRESS_CONCURRENCY, EGRESS_PART_SIZE_MB); see the README's configuration table."
  type        = map(string)
  default = {
    EGRESS_CONCURRENCY  = "4"
    EGRESS_PART_SIZE_MB = "16"
  }
}

variable "decrypt_kms_key_arns" {
  description = "KMS keys the worker may decrypt with (EGRESS_KMS_KEY_ARNS); the roles stack grants kms:Decrypt on the same keys."
  type        = list(string)
  default     = []
}

variable "sft_agent_config_yaml" {
  description = "The SFT agent's YAML config (docs/sft-agent.md). Its tls paths must be under /run/sft-agent/tls/ (client.pem, client-key.pem, ca.pem), where the entrypoint writes the secrets."
  type        = string
}

variable "sft_agent_secret_arns" {
  description = "Secrets Manager secrets holding the agent's PEM client certificate, client key and CA bundle."
  type = object({
    client_cert = string
    client_key  = string
    ca_bundle   = optional(string)
  })
}

variable "enable_execute_command" {
  description = "Allow ECS Exec into the tasks (logged, encrypted with the service key)."
  type        = bool
  default     = false
}

# ---- scaling -----------------------------------------------------------------------------

variable "desired_count" {
  description = "Tasks at creation; afterwards autoscaling owns the count."
  type        = number
  default     = 1
}

variable "min_capacity" {
  description = "Fewest tasks (at least 1: the backlog per task divides by the running tasks)."
  type        = number
  default     = 1

  validation {
    condition     = var.min_capacity >= 1
    error_message = "min_capacity must be at least 1."
  }
}

variable "max_capacity" {
  description = "Most tasks."
  type        = number
  default     = 10
}

variable "backlog_per_task_target" {
  description = "Target of (visible + in-flight messages) / running tasks. Default: twice EGRESS_CONCURRENCY, so each task has its slots full and as much again waiting."
  type        = number
  default     = 8
}

variable "scale_in_cooldown_seconds" {
  description = "Wait after a scale-in before another."
  type        = number
  default     = 300
}

variable "scale_out_cooldown_seconds" {
  description = "Wait after a scale-out before another."
  type        = number
  default     = 60
}

# ---- observability ---------------------------------------------------------------------

variable "log_retention_days" {
  description = "Retention of the log groups."
  type        = number
  default     = 365
}

variable "oldest_message_age_alarm_seconds" {
  description = "Alarm when the oldest flag message waits longer than this."
  type        = number
  default     = 1800
}

variable "agent_backlog_alarm_threshold" {
  description = "Alarm when an SFT route's folder holds more files than this, waiting for the agent, for 15 minutes (the largest backlog the agent logs in route_status)."
  type        = number
  default     = 100

  validation {
    condition     = var.agent_backlog_alarm_threshold >= 1
    error_message = "agent_backlog_alarm_threshold: at least 1."
  }
}

variable "agent_oldest_file_age_alarm_seconds" {
  description = "Alarm when the oldest file waiting in an SFT route's folder is older than this (seconds). Leave room for the agent's retries (retry.max_delay in its config)."
  type        = number
  default     = 3600

  validation {
    condition     = var.agent_oldest_file_age_alarm_seconds >= 60
    error_message = "agent_oldest_file_age_alarm_seconds: at least 60."
  }
}

variable "agent_cert_expiry_alarm_days" {
  description = "Alarm when the SFT agent's client certificate expires in fewer days than this."
  type        = number
  default     = 14

  validation {
    condition     = var.agent_cert_expiry_alarm_days >= 1
    error_message = "agent_cert_expiry_alarm_days: at least 1."
  }
}

variable "agent_silence_alarms" {
  description = "Whether no route_status line from any SFT agent for 10 minutes raises the oldest-file alarm (the agent is not running). Set false only where the agent has no routes, so never logs route_status."
  type        = bool
  default     = true
}

variable "alarm_email_addresses" {
  description = "Addresses subscribed to the alarm topic (each confirms by mail)."
  type        = list(string)
  default     = []
}

variable "event_subscriber_account_ids" {
  description = "Accounts whose principals may subscribe to the completion events topic (docs/events.md); the account of the stack always may."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for a in var.event_subscriber_account_ids : can(regex("^[0-9]{12}$", a))])
    error_message = "event_subscriber_account_ids: 12-digit AWS account ids."
  }
}

variable "tags" {
  description = "Extra tags on the module's resources (the provider's default_tags apply too)."
  type        = map(string)
  default     = {}
}
