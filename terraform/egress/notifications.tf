# S3 → SQS: an ObjectCreated notification for the flag object only (suffix filter), so the
# data files of a run never reach the queue. The resource owns the bucket's whole
# notification configuration (an S3 API limitation): buckets whose notifications are
# managed elsewhere set manage_notification = false and add this queue there.

resource "aws_s3_bucket_notification" "flags" {
  for_each = local.notified_buckets

  bucket = each.key

  dynamic "queue" {
    for_each = toset(each.value.prefixes)

    content {
      id            = "${var.name}-flag${queue.value == "" ? "" : "-${replace(queue.value, "/", "-")}"}"
      queue_arn     = aws_sqs_queue.flags.arn
      events        = ["s3:ObjectCreated:*"]
      filter_prefix = queue.value == "" ? null : queue.value
      filter_suffix = var.flag_name
    }
  }

  depends_on = [aws_sqs_queue_policy.flags]
}
