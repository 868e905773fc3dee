"""The former home of video I/O, kept because MLflow models logged before it moved to `vimi.io.video`
carry code that imports this path (a pyfunc is logged as code)."""

from vimi.io.video import *  # noqa: F401,F403
