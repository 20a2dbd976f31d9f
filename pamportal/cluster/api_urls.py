"""URLs of the cluster setup API (2390) and the delegation API (2391). Mounted at the
root of the URL map that those listeners serve."""

from django.urls import path

from . import api

app_name = "cluster_api"
urlpatterns = [
    path("api/setup/v1/join", api.join, name="join"),
    path("api/setup/v1/join/<uuid:request_id>", api.join_status, name="join_status"),
    path("api/setup/v1/join/<uuid:request_id>/replica", api.join_replica, name="join_replica"),
    path("api/setup/v1/time", api.leader_time, name="time"),
    path("api/delegation/v1/heartbeat", api.heartbeat, name="heartbeat"),
    path("api/delegation/v1/removed", api.removed_notice, name="removed"),
]
