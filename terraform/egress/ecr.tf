# Repositories of the two images the task runs; the images pipeline pushes to them with
# the commit SHA as tag (tags are immutable, so a tag always names the same image).

resource "aws_ecr_repository" "images" {
  for_each = toset(["egress", "sft-agent"])

  name                 = "${var.name}/${each.key}"
  image_tag_mutability = "IMMUTABLE"

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "KMS"
    kms_key         = aws_kms_key.service.arn
  }

  tags = local.tags
}

resource "aws_ecr_lifecycle_policy" "images" {
  for_each = aws_ecr_repository.images

  repository = each.value.name
  policy = jsonencode({
    rules = [{
      rulePriority = 1
      description  = "Keep the 100 newest images (rollbacks reach back that far)"
      selection = {
        tagStatus   = "any"
        countType   = "imageCountMoreThan"
        countNumber = 100
      }
      action = { type = "expire" }
    }]
  })
}
