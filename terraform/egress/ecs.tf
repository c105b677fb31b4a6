# The ECS cluster, the task (worker + SFT agent sharing /data-egress on EFS) and the service.

resource "aws_ecs_cluster" "this" {
  name = var.name

  # Container Insights publishes RunningTaskCount, which the backlog-per-task scaling uses.
  setting {
    name  = "containerInsights"
    value = "enabled"
  }

  configuration {
    execute_command_configuration {
      kms_key_id = aws_kms_key.service.arn
      logging    = "OVERRIDE"

      log_configuration {
        cloud_watch_encryption_enabled = true
        cloud_watch_log_group_name     = aws_cloudwatch_log_group.exec.name
      }
    }
  }

  tags = local.tags
}

locals {
  # Fixed settings of the worker; var.worker_environment may add others (the fixed ones win).
  worker_fixed_environment = {
    AWS_REGION                        = local.region
    EGRESS_QUEUE_URL                  = aws_sqs_queue.flags.url
    EGRESS_DLQ_URL                    = aws_sqs_queue.dlq.url
    EGRESS_ROUTES_TABLE               = aws_dynamodb_table.routes.name
    EGRESS_LEDGER_TABLE               = aws_dynamodb_table.ledger.name
    EGRESS_SFT_ROOT                   = local.sft_root
    EGRESS_FLAG_NAME                  = var.flag_name
    EGRESS_METRICS_PORT               = tostring(local.worker_metrics)
    EGRESS_SHUTDOWN_GRACE_SECONDS     = tostring(var.shutdown_grace_seconds)
    EGRESS_VISIBILITY_TIMEOUT_SECONDS = tostring(var.visibility_timeout_seconds)
    EGRESS_KMS_KEY_ARNS               = join(",", var.decrypt_kms_key_arns)
    EGRESS_LOG_FORMAT                 = "json"
    EGRESS_EVENTS_TOPIC_ARN           = aws_sns_topic.events.arn
  }
  worker_environment = merge(var.worker_environment, local.worker_fixed_environment)

  agent_environment = {
    AWS_REGION             = local.region
    SFT_AGENT_CONFIG       = local.agent_config_path
    SFT_AGENT_CONFIG_YAML  = var.sft_agent_config_yaml
    SFT_TLS_DIR            = local.agent_tls_dir
    SFT_AGENT_METRICS_PORT = tostring(local.agent_metrics)
    SFT_AGENT_LOG_FORMAT   = "json"
    # The agent records each file's fate in the ledger and checks for unsent files
    # (docs/exactly-once.md); the task role grants it what it needs (roles stack).
    SFT_AGENT_LEDGER_TABLE = aws_dynamodb_table.ledger.name
    # It announces SFT deliveries received (every file sent) on the events topic.
    SFT_AGENT_EVENTS_TOPIC_ARN = aws_sns_topic.events.arn
  }

  # The execution role reads these and ECS injects them as environment variables; the
  # image's entrypoint writes them to $SFT_TLS_DIR (mode 0600) and unsets them.
  agent_secrets = concat(
    [
      { name = "SFT_CLIENT_CERT_PEM", valueFrom = var.sft_agent_secret_arns.client_cert },
      { name = "SFT_CLIENT_KEY_PEM", valueFrom = var.sft_agent_secret_arns.client_key },
    ],
    var.sft_agent_secret_arns.ca_bundle == null ? [] : [
      { name = "SFT_CA_BUNDLE_PEM", valueFrom = var.sft_agent_secret_arns.ca_bundle },
    ],
  )

  # The root file systems are read-only; each container writes only to these volumes:
  # /data-egress on EFS (efs.tf), shared by both; the others on the task's (encrypted)
  # ephemeral storage, private to each container.
  container_definitions = [
    {
      name                   = "egress"
      image                  = local.egress_image
      essential              = true
      command                = ["run"]
      user                   = local.container_user
      readonlyRootFilesystem = true
      privileged             = false
      stopTimeout            = var.stop_timeout_seconds
      environment            = [for k in sort(keys(local.worker_environment)) : { name = k, value = local.worker_environment[k] }]
      portMappings           = [{ name = "egress-metrics", containerPort = local.worker_metrics, protocol = "tcp" }]
      mountPoints = [
        { sourceVolume = "data-egress", containerPath = local.sft_root, readOnly = false },
        { sourceVolume = "egress-tmp", containerPath = "/tmp", readOnly = false },
      ]
      healthCheck = {
        command     = ["CMD", "python", "/usr/local/bin/healthcheck.py", "http", "/healthz", "--port-env", "EGRESS_METRICS_PORT", "--port", tostring(local.worker_metrics)]
        interval    = 15
        timeout     = 5
        retries     = 3
        startPeriod = 30
      }
      linuxParameters = {
        initProcessEnabled = true
        capabilities       = { drop = ["ALL"] }
      }
      ulimits = [{ name = "nofile", softLimit = 65536, hardLimit = 65536 }]
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = aws_cloudwatch_log_group.egress.name
          awslogs-region        = local.region
          awslogs-stream-prefix = "egress"
          mode                  = "non-blocking"
          max-buffer-size       = "25m"
        }
      }
    },
    {
      name                   = "sft-agent"
      image                  = local.sft_agent_image
      essential              = true
      user                   = local.container_user
      readonlyRootFilesystem = true
      privileged             = false
      stopTimeout            = var.stop_timeout_seconds
      memoryReservation      = var.agent_memory_reservation
      # The config comes in an environment variable (Fargate mounts no single files): it
      # is written to the runtime volume, then the image's entrypoint takes over (and
      # execs the agent, which stays PID 1's child under the init process).
      entryPoint = ["/bin/sh", "-c"]
      command = [
        "umask 077 && printf '%s\\n' \"$SFT_AGENT_CONFIG_YAML\" > ${local.agent_config_path} && unset SFT_AGENT_CONFIG_YAML && exec /usr/local/bin/sft-agent-entrypoint.sh",
      ]
      environment  = [for k in sort(keys(local.agent_environment)) : { name = k, value = local.agent_environment[k] }]
      secrets      = local.agent_secrets
      portMappings = [{ name = "sft-agent-metrics", containerPort = local.agent_metrics, protocol = "tcp" }]
      mountPoints = [
        { sourceVolume = "data-egress", containerPath = local.sft_root, readOnly = false },
        { sourceVolume = "sft-agent-tmp", containerPath = "/tmp", readOnly = false },
        { sourceVolume = "sft-agent-run", containerPath = local.agent_runtime_dir, readOnly = false },
      ]
      healthCheck = {
        command     = ["CMD", "python", "/usr/local/bin/healthcheck.py", "http", "/healthz", "--port-env", "SFT_AGENT_METRICS_PORT", "--port", tostring(local.agent_metrics)]
        interval    = 15
        timeout     = 5
        retries     = 3
        startPeriod = 20
      }
      linuxParameters = {
        initProcessEnabled = true
        capabilities       = { drop = ["ALL"] }
      }
      logConfiguration = {
        logDriver = "awslogs"
        options = {
          awslogs-group         = aws_cloudwatch_log_group.sft_agent.name
          awslogs-region        = local.region
          awslogs-stream-prefix = "sft-agent"
          mode                  = "non-blocking"
          max-buffer-size       = "25m"
        }
      }
    },
  ]
}

resource "aws_ecs_task_definition" "egress" {
  family                   = var.name
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.task_cpu
  memory                   = var.task_memory
  task_role_arn            = data.aws_iam_role.worker.arn
  execution_role_arn       = data.aws_iam_role.execution.arn
  container_definitions    = jsonencode(local.container_definitions)

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.cpu_architecture
  }

  ephemeral_storage {
    size_in_gib = var.ephemeral_storage_gib
  }

  # Shared by the worker (writes SFT files) and the agent (sends and deletes them), on
  # EFS so that files outlive the task and every task sees them: TLS to the mount target,
  # through the access point (user 10001, root /data-egress), authorised with the task
  # role (the file system policy allows no other way in).
  volume {
    name = "data-egress"

    efs_volume_configuration {
      file_system_id     = aws_efs_file_system.data_egress.id
      transit_encryption = "ENABLED"

      authorization_config {
        access_point_id = aws_efs_access_point.data_egress.id
        iam             = "ENABLED"
      }
    }
  }

  volume {
    name = "egress-tmp"
  }

  volume {
    name = "sft-agent-tmp"
  }

  volume {
    name = "sft-agent-run"
  }

  tags = local.tags
}

resource "aws_ecs_service" "egress" {
  name                    = var.name
  cluster                 = aws_ecs_cluster.this.id
  task_definition         = aws_ecs_task_definition.egress.arn
  desired_count           = var.desired_count
  launch_type             = "FARGATE"
  platform_version        = "LATEST"
  enable_execute_command  = var.enable_execute_command
  propagate_tags          = "SERVICE"
  enable_ecs_managed_tags = true

  # New tasks start before old ones stop; a deployment whose tasks do not become healthy
  # is stopped and rolled back to the last working task definition.
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }

  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = [aws_security_group.tasks.id]
    assign_public_ip = false
  }

  wait_for_steady_state = true

  lifecycle {
    # Autoscaling owns the count once the service exists.
    ignore_changes = [desired_count]
  }

  # Tasks mount /data-egress when they start: the mount targets, the NFS rules and the
  # file system policy must exist first, or the first tasks fail and roll back.
  depends_on = [
    aws_efs_mount_target.data_egress,
    aws_efs_file_system_policy.data_egress,
    aws_vpc_security_group_ingress_rule.efs_from_tasks,
    aws_vpc_security_group_egress_rule.tasks_to_efs,
  ]

  tags = local.tags
}
