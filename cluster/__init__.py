"""Ray start-up and resource shares: the one place that decides where work runs."""
from cluster.resources import DevicePlan, ResourceShare, plan_devices, share_for
from cluster.runtime import RayConfig, connect

__all__ = ["DevicePlan", "RayConfig", "ResourceShare", "connect", "plan_devices", "share_for"]
