"""Offline mode: when the model hub is unreachable (or the config says so), tell huggingface_hub
and datasets before they are imported, so nothing waits on the network (datasets otherwise
makes a DNS lookup on every load)."""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)
OFFLINE_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")


def hub_reachable(host: str = "huggingface.co", timeout: float = 1.5) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def configure(mode: str | bool = "auto") -> bool:
    """Sets the HF offline variables; returns whether we are offline. `auto` probes the hub
    once per process tree (the answer is inherited through HARNESS_OFFLINE)."""
    if mode == "auto":
        cached = os.environ.get("HARNESS_OFFLINE")
        offline = cached == "1" if cached in ("0", "1") else not hub_reachable()
    else:
        offline = str(mode).lower() in ("true", "1", "yes")
    os.environ["HARNESS_OFFLINE"] = "1" if offline else "0"
    if offline:
        for var in OFFLINE_VARS:
            os.environ[var] = "1"
        try:  # already imported: its constants were read at import time
            import huggingface_hub.constants as hub_constants

            hub_constants.HF_HUB_OFFLINE = True
        except ImportError:
            pass
    return offline
