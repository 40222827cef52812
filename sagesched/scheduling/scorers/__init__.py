"""Pod scorers, one small file each, registered by name (picker.SCORERS): importing registers them."""
from sagesched.scheduling.scorers import (  # noqa: F401
    free_kv,
    kv,
    least_requests,
    prefix,
    queue,
)
