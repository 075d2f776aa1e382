"""Alarms and one dashboard: DLQ depth, function errors and throttles, API 5xx and latency.

Every alarm goes to one SNS topic (encrypted, TLS-only); ``-c ig3:alarm-email=...`` subscribes
an address. A message in any DLQ is an alarm: at-least-once processing means a DLQ message is
work that failed every retry.
"""
from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subs
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from ig3_cdk.settings import StageSettings

ERROR_RATE_THRESHOLD = 5.0  # percent of invocations in 5 minutes


class Monitoring(Construct):
    def __init__(self, scope: Construct, id: str, *, functions: dict[str, lambda_.Function],
                 queues: dict[str, sqs.IQueue], dlqs: dict[str, sqs.IQueue], api: apigw.RestApi,
                 settings: StageSettings):
        super().__init__(scope, id)
        self.topic = sns.Topic(self, "Alarms", display_name=f"ig3 {settings.stage} alarms", enforce_ssl=True,
                               master_key=kms.Alias.from_alias_name(self, "SnsKey", "alias/aws/sns"))
        if settings.alarm_email:
            self.topic.add_subscription(subs.EmailSubscription(settings.alarm_email))
        action = cw_actions.SnsAction(self.topic)
        self.alarms: dict[str, cw.Alarm] = {}

        def alarm(name: str, metric: cw.IMetric, threshold: float, description: str,
                  op=cw.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD, periods: int = 1) -> cw.Alarm:
            a = cw.Alarm(self, name, metric=metric, threshold=threshold, evaluation_periods=periods,
                         comparison_operator=op, treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
                         alarm_description=description)
            a.add_alarm_action(action)
            a.add_ok_action(action)
            self.alarms[name] = a
            return a

        five = Duration.minutes(5)
        for name, dlq in dlqs.items():
            alarm(f"{name}-dlq-depth", dlq.metric_approximate_number_of_messages_visible(period=Duration.minutes(1),
                                                                                          statistic="Maximum"),
                  1, f"messages in the {name} DLQ: work that failed every retry")
        for name, q in queues.items():
            alarm(f"{name}-age", q.metric_approximate_age_of_oldest_message(period=five, statistic="Maximum"),
                  300, f"{name} queue: oldest message older than 5 minutes (consumer stalled or throttled)",
                  periods=2)
        for name, fn in functions.items():
            rate = cw.MathExpression(
                expression="100 * errors / MAX([invocations, 1])", period=five, label=f"{name} error %",
                using_metrics={"errors": fn.metric_errors(period=five, statistic="Sum"),
                               "invocations": fn.metric_invocations(period=five, statistic="Sum")})
            alarm(f"{name}-error-rate", rate, ERROR_RATE_THRESHOLD, f"{name}: more than 5% of invocations failed")
            alarm(f"{name}-throttles", fn.metric_throttles(period=five, statistic="Sum"), 1,
                  f"{name} was throttled (concurrency limit)")
        alarm("api-5xx", api.metric_server_error(period=five, statistic="Sum"), 5, "API returned 5xx responses")
        alarm("api-latency-p99", api.metric_latency(period=five, statistic="p99"), 5000,
              "API p99 latency above 5 s", periods=3)

        self.dashboard = cw.Dashboard(self, "Dashboard", dashboard_name=f"ig3-{settings.stage}",
                                      default_interval=Duration.hours(3))
        self.dashboard.add_widgets(
            cw.GraphWidget(title="API requests / 4xx / 5xx", width=12, left=[
                api.metric_count(period=Duration.minutes(1)), api.metric_client_error(period=Duration.minutes(1)),
                api.metric_server_error(period=Duration.minutes(1))]),
            cw.GraphWidget(title="API latency p50 / p99", width=12, left=[
                api.metric_latency(statistic="p50"), api.metric_latency(statistic="p99")]),
        )
        self.dashboard.add_widgets(
            cw.GraphWidget(title="Invocations", width=8, left=[f.metric_invocations() for f in functions.values()]),
            cw.GraphWidget(title="Errors", width=8, left=[f.metric_errors() for f in functions.values()]),
            cw.GraphWidget(title="Duration p99", width=8,
                           left=[f.metric_duration(statistic="p99") for f in functions.values()]),
        )
        self.dashboard.add_widgets(
            cw.GraphWidget(title="Queue depth", width=12,
                           left=[q.metric_approximate_number_of_messages_visible() for q in queues.values()]),
            cw.GraphWidget(title="DLQ depth", width=12,
                           left=[q.metric_approximate_number_of_messages_visible() for q in dlqs.values()]),
        )
        self.dashboard.add_widgets(cw.AlarmStatusWidget(title="Alarms", width=24, alarms=list(self.alarms.values())))
