"""The machine a measurement ran on, for result files: the processor's model name.

``platform.processor()`` is empty on most Linux systems, so result files written with it could not say which CPU
produced a timing; :func:`cpu_model` reads the model name the kernel reports instead.
"""

from __future__ import annotations

import platform


def cpu_model() -> str:
    """The processor's model name (Linux: ``/proc/cpuinfo``'s ``model name``; elsewhere ``platform.processor()``);
    empty when the platform does not say."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()
