output "worker_task_role_arn" {
  description = "Task role of the egress task (both containers run with it)."
  value       = aws_iam_role.worker.arn
}

output "agent_task_role_arn" {
  description = "Role for the SFT agent run as a task of its own (the agent's ledger rights only)."
  value       = aws_iam_role.agent.arn
}

output "task_execution_role_arn" {
  description = "ECS task execution role (image pulls, log streams, the agent's secrets)."
  value       = aws_iam_role.execution.arn
}

output "deploy_role_arn" {
  description = "Role the infrastructure and images pipelines assume in the deploy environments (github_deploy_environments)."
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

output "permissions_boundary_arns" {
  description = "Permissions boundaries (service: task roles; pipeline: plan and deploy) that every role but role management carries, and every role the role-management role creates must."
  value       = { service = aws_iam_policy.service_boundary.arn, pipeline = aws_iam_policy.pipeline_boundary.arn }
}

output "github_oidc_provider_arn" {
  description = "The account's GitHub OIDC provider."
  value       = local.oidc_provider_arn
}
