output "queue_url" {
  description = "The flag queue (EGRESS_QUEUE_URL)."
  value       = aws_sqs_queue.flags.url
}

output "dlq_url" {
  description = "The DLQ (EGRESS_DLQ_URL)."
  value       = aws_sqs_queue.dlq.url
}

output "routes_table_name" {
  description = "Routes table: manage its rows with `egress routes …`."
  value       = aws_dynamodb_table.routes.name
}

output "ledger_table_name" {
  description = "Ledger table (`egress history`)."
  value       = aws_dynamodb_table.ledger.name
}

output "efs_file_system_id" {
  description = "EFS file system of the shared /data-egress volume (backed up daily by AWS Backup)."
  value       = aws_efs_file_system.data_egress.id
}

output "efs_access_point_id" {
  description = "The access point the tasks mount /data-egress through (user 10001, root /data-egress)."
  value       = aws_efs_access_point.data_egress.id
}

output "kms_key_arn" {
  description = "The service's KMS key."
  value       = aws_kms_key.service.arn
}

output "ecr_repository_urls" {
  description = "Where the images pipeline pushes, by image."
  value       = { for k, r in aws_ecr_repository.images : k => r.repository_url }
}

output "cluster_name" {
  description = "ECS cluster."
  value       = aws_ecs_cluster.this.name
}

output "service_name" {
  description = "ECS service."
  value       = aws_ecs_service.egress.name
}

output "task_definition_arn" {
  description = "Task definition this apply deployed (the pipeline checks the service did not roll back from it)."
  value       = aws_ecs_task_definition.egress.arn
}

output "alarm_topic_arn" {
  description = "SNS topic of the alarms."
  value       = aws_sns_topic.alarms.arn
}

output "events_topic_arn" {
  description = "SNS topic of the completion events (EGRESS_EVENTS_TOPIC_ARN; docs/events.md): subscribe to it."
  value       = aws_sns_topic.events.arn
}

output "dashboard_name" {
  description = "CloudWatch dashboard."
  value       = aws_cloudwatch_dashboard.egress.dashboard_name
}
