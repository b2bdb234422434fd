"""moto in server mode for the local AWS, with the CompleteLifecycleAction responder it lacks.

moto 5.2.5 answers SSM, EC2, Auto Scaling, ECR and STS but has no CompleteLifecycleAction:
`install_responders` adds the smallest one, which checks the group, hook and instance as AWS
does and records the call (`completions`), so a rehearsal can show that the agent completed
its lifecycle action. moto's state is per process: every server in one process shares it.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Dict, List, Tuple

from campfleet.rehearsal.procs import LocalAwsError, free_port, wait_port

_COMPLETIONS: List[Dict[str, str]] = []
_COMPLETIONS_LOCK = threading.Lock()


def install_responders() -> None:
    """Add CompleteLifecycleAction to moto's Auto Scaling responses (once per process)."""
    from moto.autoscaling.exceptions import ValidationError
    from moto.autoscaling.responses import AutoScalingResponse
    from moto.core.responses import EmptyResult

    if hasattr(AutoScalingResponse, "complete_lifecycle_action"):
        return

    def complete_lifecycle_action(self: Any) -> Any:
        group_name = self._get_param("AutoScalingGroupName")
        hook_name = self._get_param("LifecycleHookName")
        instance_id = self._get_param("InstanceId") or ""
        token = self._get_param("LifecycleActionToken") or ""
        result = self._get_param("LifecycleActionResult")
        backend = self.autoscaling_backend
        group = backend.autoscaling_groups.get(group_name)
        if group is None:
            raise ValidationError(f"Group {group_name} not found")
        hook = backend.lifecycle_hooks.get(f"{group_name}_{hook_name}")
        if hook is None:
            raise ValidationError(f"No Lifecycle Hook found with name {hook_name}")
        if result not in ("CONTINUE", "ABANDON"):
            raise ValidationError("LifecycleActionResult must be CONTINUE or ABANDON")
        if not instance_id and not token:
            raise ValidationError("InstanceId or LifecycleActionToken is required")
        members = {state.instance.id for state in group.instance_states}
        if instance_id and instance_id not in members:
            raise ValidationError(
                f"No active Lifecycle Action found with instance ID {instance_id}"
            )
        with _COMPLETIONS_LOCK:
            _COMPLETIONS.append(
                {
                    "group": group_name,
                    "hook": hook_name,
                    "transition": hook.lifecycle_transition or "",
                    "instance": instance_id,
                    "token": token,
                    "result": result,
                }
            )
        return EmptyResult()

    AutoScalingResponse.complete_lifecycle_action = complete_lifecycle_action  # type: ignore[attr-defined]


def start_moto() -> Tuple[Any, int]:
    """A started `ThreadedMotoServer` on 127.0.0.1 (responders installed) and its port."""
    try:
        from moto.server import ThreadedMotoServer
    except ImportError as exc:
        raise LocalAwsError(
            f"moto's server mode is not installed ({exc}): run `make local` or "
            "`pip install -r requirements-dev.txt -c constraints.txt`"
        ) from exc
    install_responders()
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # no line per request
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    wait_port("127.0.0.1", port, "moto")
    return server, port


def completions(instance_id: str) -> List[Dict[str, str]]:
    """The CompleteLifecycleAction calls recorded for an instance, oldest first."""
    with _COMPLETIONS_LOCK:
        return [dict(c) for c in _COMPLETIONS if c["instance"] == instance_id]
