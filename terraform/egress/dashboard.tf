locals {
  queue_dimensions   = ["QueueName", aws_sqs_queue.flags.name]
  dlq_dimensions     = ["QueueName", aws_sqs_queue.dlq.name]
  service_dimensions = ["ClusterName", aws_ecs_cluster.this.name, "ServiceName", aws_ecs_service.egress.name]

  dashboard_widgets = [
    {
      type = "metric", x = 0, y = 0, width = 12, height = 6
      properties = {
        title  = "Flag queue: waiting and in flight"
        region = local.region
        stat   = "Sum"
        period = 60
        metrics = [
          concat(["AWS/SQS", "ApproximateNumberOfMessagesVisible"], local.queue_dimensions, [{ label = "waiting" }]),
          concat(["AWS/SQS", "ApproximateNumberOfMessagesNotVisible"], local.queue_dimensions, [{ label = "in flight" }]),
        ]
      }
    },
    {
      type = "metric", x = 12, y = 0, width = 12, height = 6
      properties = {
        title   = "Oldest flag waiting (s)"
        region  = local.region
        stat    = "Maximum"
        period  = 60
        metrics = [concat(["AWS/SQS", "ApproximateAgeOfOldestMessage"], local.queue_dimensions)]
        annotations = {
          horizontal = [{ label = "alarm", value = var.oldest_message_age_alarm_seconds }]
        }
      }
    },
    {
      type = "metric", x = 0, y = 6, width = 8, height = 6
      properties = {
        title   = "DLQ: undelivered flags"
        region  = local.region
        stat    = "Maximum"
        period  = 60
        metrics = [concat(["AWS/SQS", "ApproximateNumberOfMessagesVisible"], local.dlq_dimensions)]
      }
    },
    {
      type = "metric", x = 8, y = 6, width = 8, height = 6
      properties = {
        title   = "Running tasks"
        region  = local.region
        stat    = "Average"
        period  = 60
        metrics = [concat(["ECS/ContainerInsights", "RunningTaskCount"], local.service_dimensions)]
      }
    },
    {
      type = "metric", x = 16, y = 6, width = 8, height = 6
      properties = {
        title   = "Agent: files moved to error folders"
        region  = local.region
        stat    = "Sum"
        period  = 300
        metrics = [[local.metric_namespace, local.agent_error_metric]]
      }
    },
    {
      type = "metric", x = 0, y = 12, width = 12, height = 6
      properties = {
        title  = "Task CPU and memory (%)"
        region = local.region
        stat   = "Average"
        period = 60
        metrics = [
          concat(["AWS/ECS", "CPUUtilization"], local.service_dimensions),
          concat(["AWS/ECS", "MemoryUtilization"], local.service_dimensions),
        ]
      }
    },
    {
      type = "metric", x = 12, y = 12, width = 12, height = 6
      properties = {
        title  = "Task ephemeral storage: /tmp (GiB)"
        region = local.region
        stat   = "Maximum"
        period = 60
        metrics = [
          concat(["ECS/ContainerInsights", "EphemeralStorageUtilized"], local.service_dimensions),
          concat(["ECS/ContainerInsights", "EphemeralStorageReserved"], local.service_dimensions),
        ]
      }
    },
    {
      type = "metric", x = 0, y = 18, width = 8, height = 6
      properties = {
        title  = "Agent: files waiting (worst route)"
        region = local.region
        stat   = "Maximum"
        period = 60
        metrics = [
          [local.metric_namespace, local.agent_log_metrics.backlog.metric, { label = "backlog" }],
          [local.metric_namespace, local.agent_log_metrics.error_files.metric, { label = "in error folders" }],
          [local.metric_namespace, local.agent_log_metrics.unsent_files.metric, { label = "unsent (ledger)" }],
        ]
      }
    },
    {
      type = "metric", x = 8, y = 18, width = 8, height = 6
      properties = {
        title  = "Agent: oldest file waiting (s)"
        region = local.region
        stat   = "Maximum"
        period = 60
        metrics = [
          [local.metric_namespace, local.agent_log_metrics.oldest_file_age.metric, { label = "in a route folder" }],
          [local.metric_namespace, local.agent_log_metrics.oldest_unsent.metric, { label = "unsent (ledger)" }],
        ]
        annotations = {
          horizontal = [{ label = "alarm", value = var.agent_oldest_file_age_alarm_seconds }]
        }
      }
    },
    {
      type = "metric", x = 16, y = 18, width = 8, height = 6
      properties = {
        title  = "Shared volume (EFS): clients and I/O"
        region = local.region
        period = 300
        metrics = [
          ["AWS/EFS", "ClientConnections", "FileSystemId", aws_efs_file_system.data_egress.id, { stat = "Sum", label = "client connections" }],
          ["AWS/EFS", "MeteredIOBytes", "FileSystemId", aws_efs_file_system.data_egress.id, { stat = "Sum", label = "metered I/O bytes", yAxis = "right" }],
        ]
      }
    },
    {
      type = "log", x = 0, y = 24, width = 24, height = 6
      properties = {
        title  = "Agent: route status (latest per route)"
        region = local.region
        query  = "SOURCE '${aws_cloudwatch_log_group.sft_agent.name}' | filter event = 'route_status' | stats latest(backlog) as backlog, latest(oldest_file_age_seconds) as oldest_s, latest(error_files) as errors, latest(cert_expiry_days) as cert_days by route"
      }
    },
    {
      type = "log", x = 0, y = 30, width = 24, height = 6
      properties = {
        title  = "Worker: DLQ moves and failures"
        region = local.region
        query  = "SOURCE '${aws_cloudwatch_log_group.egress.name}' | fields @timestamp, event, reason, flag_key, pipeline, recipient | filter level in ['error', 'warning'] | sort @timestamp desc | limit 50"
      }
    },
  ]
}

resource "aws_cloudwatch_dashboard" "egress" {
  dashboard_name = var.name
  dashboard_body = jsonencode({ widgets = local.dashboard_widgets })
}
