"""The fleet's CloudWatch metrics: names (shared with the alarms in components/alerts.py) and
the datapoints the mux publishes every minute.

CloudWatch alarms cannot put values into their text, so the lost/failed alarm watches a count
(`ShipsDown`) and the ids are published beside it, one `ShipDown` datapoint per ship with an
`InstanceId` dimension: the console's metric browser (and `campfleet status`) name the ships.
Stdlib only: the Pulumi program imports the names without the mux's dependencies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from campfleet.mux.metrics import FleetSample

NAMESPACE = "campfleet"
PUBLISH_SECONDS = 60
STACK = "Stack"  # the dimension every metric has
SHIPS = "Ships"  # + State: ships per state
SHIPS_READY = "ShipsReady"  # available or running
SHIPS_DOWN = "ShipsDown"  # lost or failed, awaiting replacement
SHIP_DOWN = "ShipDown"  # + InstanceId, State: 1 for each such ship
GATE_OPEN = "ReadinessGateOpen"  # 1 open, 0 closed
MAX_PER_CALL = 1000  # PutMetricData's limit of metrics per request


def metric_data(stack: str, sample: FleetSample) -> list[dict[str, Any]]:
    """PutMetricData entries for one sample; every fleet-wide value is sent, zeros included,
    so an alarm sees a healthy fleet as a datapoint, not as missing data."""
    stack_dim = {"Name": STACK, "Value": stack}

    def point(name: str, value: int, **dims: str) -> dict[str, Any]:
        dimensions = [stack_dim, *({"Name": k, "Value": v} for k, v in dims.items())]
        return {"MetricName": name, "Dimensions": dimensions, "Value": value, "Unit": "Count"}

    data = [point(SHIPS, n, State=state) for state, n in sorted(sample.counts.items())]
    data.append(point(SHIPS_READY, sample.ready))
    data.append(point(SHIPS_DOWN, len(sample.down)))
    data.append(point(GATE_OPEN, int(sample.gate_open)))
    data.extend(point(SHIP_DOWN, 1, InstanceId=s.ship_id, State=s.state) for s in sample.down)
    return data


def batches(data: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    return [data[i : i + MAX_PER_CALL] for i in range(0, len(data), MAX_PER_CALL)]
