# The tasks' security group: no inbound traffic but the optional metrics scrapers;
# outbound HTTPS (AWS APIs, receivers) and the receivers' own ports only.

resource "aws_security_group" "tasks" {
  name        = "${var.name}-tasks"
  description = "${var.name} worker and SFT agent tasks"
  vpc_id      = var.vpc_id
  tags        = merge(local.tags, { Name = "${var.name}-tasks" })

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_vpc_security_group_egress_rule" "https" {
  for_each = toset(var.https_egress_cidr_blocks)

  security_group_id = aws_security_group.tasks.id
  description       = "HTTPS to AWS APIs and receivers"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = each.value
  tags              = local.tags
}

locals {
  receiver_rules = merge({}, [
    for endpoint in var.receiver_endpoints : {
      for cidr in endpoint.cidr_blocks : "${endpoint.port}-${cidr}" => {
        description = endpoint.description
        port        = endpoint.port
        cidr        = cidr
      }
    }
  ]...)

  scraper_rules = merge({}, [
    for sg in var.metrics_scraper_security_group_ids : {
      for port in [local.worker_metrics, local.agent_metrics] : "${sg}-${port}" => { sg = sg, port = port }
    }
  ]...)
}

resource "aws_vpc_security_group_egress_rule" "receivers" {
  for_each = local.receiver_rules

  security_group_id = aws_security_group.tasks.id
  description       = "SFT receiver: ${each.value.description}"
  ip_protocol       = "tcp"
  from_port         = each.value.port
  to_port           = each.value.port
  cidr_ipv4         = each.value.cidr
  tags              = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "metrics" {
  for_each = local.scraper_rules

  security_group_id            = aws_security_group.tasks.id
  description                  = "Prometheus scrape of /metrics on ${each.value.port}"
  ip_protocol                  = "tcp"
  from_port                    = each.value.port
  to_port                      = each.value.port
  referenced_security_group_id = each.value.sg
  tags                         = local.tags
}
