output "worker_task_role_arn" {
  description = "Task role of the egress task (both containers run with it)."
  value       = aws_iam_role.worker.arn
}

output "agent_task_role_arn" {
  description = "Role for the SFT agent run as a task of its own (no permissions)."
  value       = aws_iam_role.agent.arn
}

output "task_execution_role_arn" {
  description = "ECS task execution role (image pulls, log streams, the agent's secrets)."
  value       = aws_iam_role.execution.arn
}

output "deploy_role_arn" {
  description = "Role the infrastructure and images pipelines assume on the apply branches."
  value       = aws_iam_role.deploy.arn
}

output "plan_role_arn" {
  description = "Read-only role pull requests plan with."
  value       = aws_iam_role.plan.arn
}

output "role_management_role_arn" {
  description = "Role the role-management pipeline assumes to apply this stack."
  value       = aws_iam_role.role_management.arn
}

output "github_oidc_provider_arn" {
  description = "The account's GitHub OIDC provider."
  value       = local.oidc_provider_arn
}
