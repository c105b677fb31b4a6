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
        title  = "Ephemeral storage of the shared volume (GiB)"
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
      type = "log", x = 0, y = 18, width = 24, height = 6
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
