# Spot GPU workers that follow the queue. The rule (ci/infra/scaling.py states the same rule
# as a tested pure function, desired_capacity / scale_from_zero_steps / should_leave_group):
#
#   backlog = ApproximateNumberOfMessagesVisible + ApproximateNumberOfMessagesNotVisible
#   desired = ceil(backlog / target_backlog_per_instance), clamped to min_size..max_size
#
# 1. Target tracking on the metric-math expression backlog / GroupInServiceInstances with
#    target value target_backlog_per_instance (default 2 = DEFAULT_TARGET_BACKLOG_PER_INSTANCE).
#    It scales out and in proportionally; a worker running a job protects itself from
#    scale-in, so scale-in only ever removes idle instances.
# 2. Target tracking cannot leave zero (it multiplies the current capacity, and with no
#    instance in service the expression divides by zero and yields no data point). A step
#    policy, alarmed on "backlog > 0 and no instance in service", sets the capacity exactly
#    to ceil(backlog / target) from a step table (scale_from_zero_steps in scaling.py).
# 3. Scale to zero: an idle worker leaves the group after worker_idle_timeout_s (default
#    600 = DEFAULT_SCALE_TO_ZERO_AFTER_S), decrementing the desired capacity; target
#    tracking's scale-in follows the backlog metric to min_size as well.

locals {
  # Must equal MAX_SCALE_FROM_ZERO_STEPS in ci/infra/scaling.py (CI checks it).
  scale_from_zero_max_steps = 10
  scale_from_zero_n         = min(var.max_size, local.scale_from_zero_max_steps)

  # Step k covers the integer backlogs with ceil(backlog / target) == k:
  # (k-1)*target + 1 <= backlog < k*target + 1; the first starts at the threshold (0), the last is open.
  scale_from_zero_steps = [
    for k in range(1, local.scale_from_zero_n + 1) : {
      lower    = k == 1 ? 0 : (k - 1) * var.target_backlog_per_instance + 1
      upper    = k == local.scale_from_zero_n ? null : k * var.target_backlog_per_instance + 1
      capacity = k
    }
  ]
}

resource "aws_autoscaling_group" "workers" {
  # Queue workers serve no traffic: no load balancer, EC2 health checks.
  name                      = local.asg_name
  min_size                  = var.min_size
  max_size                  = var.max_size
  vpc_zone_identifier       = local.subnet_ids
  capacity_rebalance        = true
  health_check_type         = "EC2"
  health_check_grace_period = 300
  default_instance_warmup   = var.instance_warmup_s
  wait_for_capacity_timeout = "0"

  # The group metrics the scaling expression divides by (1-minute granularity).
  enabled_metrics = [
    "GroupInServiceInstances",
    "GroupDesiredCapacity",
    "GroupPendingInstances",
    "GroupTotalInstances",
  ]
  metrics_granularity = "1Minute"

  mixed_instances_policy {
    instances_distribution {
      on_demand_base_capacity                  = 0
      on_demand_percentage_above_base_capacity = 0
      spot_allocation_strategy                 = var.spot_allocation_strategy
    }

    launch_template {
      launch_template_specification {
        launch_template_id = aws_launch_template.worker.id
        version            = aws_launch_template.worker.latest_version
      }

      dynamic "override" {
        for_each = var.instance_types
        content {
          instance_type = override.value
        }
      }
    }
  }

  tag {
    key                 = "Name"
    value               = "${var.stack}-worker"
    propagate_at_launch = true
  }

  tag {
    key                 = "Stack"
    value               = var.stack
    propagate_at_launch = true
  }

  lifecycle {
    # The scaling policies and the workers themselves own the desired capacity.
    ignore_changes = [desired_capacity]
  }
}

# (1) Target tracking: backlog per in-service instance -> target_backlog_per_instance.
resource "aws_autoscaling_policy" "backlog_per_instance" {
  name                      = "${var.stack}-backlog-per-instance"
  autoscaling_group_name    = aws_autoscaling_group.workers.name
  policy_type               = "TargetTrackingScaling"
  estimated_instance_warmup = var.instance_warmup_s

  target_tracking_configuration {
    target_value     = var.target_backlog_per_instance
    disable_scale_in = false

    customized_metric_specification {
      metrics {
        id          = "visible"
        label       = "Jobs waiting"
        return_data = false

        metric_stat {
          stat = "Sum"

          metric {
            namespace   = "AWS/SQS"
            metric_name = "ApproximateNumberOfMessagesVisible"

            dimensions {
              name  = "QueueName"
              value = aws_sqs_queue.jobs.name
            }
          }
        }
      }

      metrics {
        id          = "in_flight"
        label       = "Jobs running"
        return_data = false

        metric_stat {
          stat = "Sum"

          metric {
            namespace   = "AWS/SQS"
            metric_name = "ApproximateNumberOfMessagesNotVisible"

            dimensions {
              name  = "QueueName"
              value = aws_sqs_queue.jobs.name
            }
          }
        }
      }

      metrics {
        id          = "in_service"
        label       = "Workers in service"
        return_data = false

        metric_stat {
          stat = "Average"

          metric {
            namespace   = "AWS/AutoScaling"
            metric_name = "GroupInServiceInstances"

            dimensions {
              name  = "AutoScalingGroupName"
              value = aws_autoscaling_group.workers.name
            }
          }
        }
      }

      metrics {
        id          = "backlog_per_instance"
        label       = "Backlog per instance"
        expression  = "(visible + in_flight) / in_service"
        return_data = true
      }
    }
  }
}

# (2) Scale out from zero: ExactCapacity ceil(backlog / target) while no instance is in service.
resource "aws_autoscaling_policy" "scale_from_zero" {
  name                      = "${var.stack}-scale-from-zero"
  autoscaling_group_name    = aws_autoscaling_group.workers.name
  policy_type               = "StepScaling"
  adjustment_type           = "ExactCapacity"
  metric_aggregation_type   = "Maximum"
  estimated_instance_warmup = var.instance_warmup_s

  dynamic "step_adjustment" {
    for_each = local.scale_from_zero_steps
    content {
      metric_interval_lower_bound = step_adjustment.value.lower
      metric_interval_upper_bound = step_adjustment.value.upper
      scaling_adjustment          = step_adjustment.value.capacity
    }
  }
}

resource "aws_cloudwatch_metric_alarm" "scale_from_zero" {
  alarm_name          = "${var.stack}-jobs-waiting-no-workers"
  alarm_description   = "Jobs are queued and no worker is in service: start ceil(backlog / ${var.target_backlog_per_instance}) workers."
  comparison_operator = "GreaterThanThreshold"
  threshold           = 0
  evaluation_periods  = 1
  datapoints_to_alarm = 1
  treat_missing_data  = "notBreaching"
  alarm_actions       = [aws_autoscaling_policy.scale_from_zero.arn]

  metric_query {
    id          = "visible"
    return_data = false

    metric {
      namespace   = "AWS/SQS"
      metric_name = "ApproximateNumberOfMessagesVisible"
      period      = 60
      stat        = "Maximum"
      dimensions = {
        QueueName = aws_sqs_queue.jobs.name
      }
    }
  }

  metric_query {
    id          = "in_flight"
    return_data = false

    metric {
      namespace   = "AWS/SQS"
      metric_name = "ApproximateNumberOfMessagesNotVisible"
      period      = 60
      stat        = "Maximum"
      dimensions = {
        QueueName = aws_sqs_queue.jobs.name
      }
    }
  }

  metric_query {
    id          = "in_service"
    return_data = false

    metric {
      namespace   = "AWS/AutoScaling"
      metric_name = "GroupInServiceInstances"
      period      = 60
      stat        = "Maximum"
      dimensions = {
        AutoScalingGroupName = aws_autoscaling_group.workers.name
      }
    }
  }

  # The backlog while no worker is in service, else 0 (FILL: a metric without data points counts as 0).
  metric_query {
    id          = "backlog_without_workers"
    label       = "Backlog with no worker in service"
    expression  = "IF(FILL(in_service, 0) == 0, FILL(visible, 0) + FILL(in_flight, 0), 0)"
    return_data = true
  }
}
