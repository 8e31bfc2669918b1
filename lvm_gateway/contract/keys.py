"""Every Redis key and channel name, built in one place from the deployment's prefix.

{prefix}:rollouts                  set of the rollouts the policy declares (the controller's)
{prefix}:rollouts:removed          set of rollouts once declared, since removed from the policy
{prefix}:rollout:{name}:spec       JSON {spec, stable, canary}: the YAML, as last loaded
{prefix}:rollout:{name}:status     hash {data: JSON status, version, fence}
{prefix}:rollout:{name}:thresholds JSON tunables (seeded from the YAML on start)
{prefix}:rollout:{name}:history    stream of transitions, oldest first
{prefix}:epoch                     bumped by every transition (gateways poll it)
{prefix}:events                    pub/sub channel: "<name> <version>" per transition
{prefix}:leader                    the controller lease, "<fencing token>:<identity>"
{prefix}:fence                     the fencing token counter
{prefix}:notify:targets           JSON list of the policy's webhooks, as last loaded
{prefix}:notify:since             hash target id -> ms when first registered (its first cursor)
{prefix}:notify:cursor            hash "<target id>:<rollout>" -> last history id notified
{prefix}:win:{variant}:{bucket}    window counters of one time bucket (contract.windows)
{prefix}:agg:{name}:{run}:{scope}:{variant}
                                   the same counters summed over a whole rollout run
                                   (scope `rollout`) or one step (scope `step:{i}:{since}`);
                                   run and since are the start times in ms (rollout.aggregates)
{prefix}:agg:{name}:{run}:mark     the last time bucket folded into that run's aggregates
{prefix}:pred:{request_id}         a sampled prediction record, for feedback
{prefix}:fb:{request_id}           set once by the first feedback for a request
"""

from __future__ import annotations

from dataclasses import dataclass

HISTORY_MAXLEN = 10_000  # history entries kept per rollout (approximate trim)


@dataclass(frozen=True, slots=True)
class RedisKeys:
    prefix: str

    @property
    def rollouts(self) -> str:
        return f"{self.prefix}:rollouts"

    @property
    def rollouts_removed(self) -> str:
        return f"{self.prefix}:rollouts:removed"

    @property
    def epoch(self) -> str:
        return f"{self.prefix}:epoch"

    @property
    def events(self) -> str:
        return f"{self.prefix}:events"

    @property
    def leader(self) -> str:
        return f"{self.prefix}:leader"

    @property
    def feedback_key(self) -> str:
        return f"{self.prefix}:feedback-key"

    @property
    def fence(self) -> str:
        return f"{self.prefix}:fence"

    def notify(self, part: str) -> str:
        return f"{self.prefix}:notify:{part}"

    def rollout(self, name: str, part: str) -> str:
        return f"{self.prefix}:rollout:{name}:{part}"

    def window(self, variant: str, bucket: int) -> str:
        return f"{self.prefix}:win:{variant}:{bucket}"

    def aggregate(self, name: str, run: str, scope: str, variant: str) -> str:
        return f"{self.prefix}:agg:{name}:{run}:{scope}:{variant}"

    def fold_mark(self, name: str, run: str) -> str:
        return f"{self.prefix}:agg:{name}:{run}:mark"

    def prediction(self, request_id: str) -> str:
        return f"{self.prefix}:pred:{request_id}"

    def feedback_seen(self, request_id: str) -> str:
        return f"{self.prefix}:fb:{request_id}"
